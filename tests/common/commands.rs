//! Commands the integration tests send, built with plausible values. Times are fixed (around
//! 2026-01-01 in UTC and London), so days are known.

use std::collections::HashMap;

use dietstream_schemas::types::{
    ActivityLevel, AggregateType, AwardXp, AwardXpPayload, CommandHeader, DeleteMeal,
    DeleteMealPayload, LogMeal, LogMealPayload, LogWater, LogWaterPayload, MealDeletionReason,
    MealItem, MealSource, MealType, RegisterUser, RegisterUserPayload, UpdateMeal,
    UpdateMealPayload, XpSource,
};
use dietstream_schemas::Command;
use uuid::Uuid;

/// 2026-01-01T00:00:00Z in microseconds.
pub const NEW_YEAR_2026: i64 = 1_767_225_600_000_000;

/// The header of a command for `aggregate_id`, sent on behalf of that id as user.
pub fn header(
    aggregate_id: &str,
    aggregate_type: AggregateType,
    command_type: &str,
    expected: Option<i64>,
) -> CommandHeader {
    CommandHeader {
        command_id: Uuid::new_v4(),
        command_type: command_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        aggregate_type,
        expected_version: expected,
        issued_at: NEW_YEAR_2026,
        user_id: Some(aggregate_id.to_owned()),
        session_id: None,
        correlation_id: None,
        causation_id: None,
        metadata: HashMap::new(),
    }
}

/// Registers `user` (time zone Europe/London), expecting it not to exist.
pub fn register(user: &str) -> Command {
    Command::RegisterUser(RegisterUser {
        header: header(user, AggregateType::User, "user.register", Some(0)),
        payload: RegisterUserPayload {
            display_name: format!("Player {user}"),
            email: format!("{user}@example.com"),
            locale: "en-GB".to_owned(),
            time_zone: "Europe/London".to_owned(),
            birth_year: None,
            height_cm: None,
            weight_kg: None,
            activity_level: ActivityLevel::ModeratelyActive,
            referral_code: None,
        },
    })
}

/// Water drunk on 2026-01-01 at 09:33 UTC.
pub fn log_water(user: &str, expected: Option<i64>, millilitres: i32) -> Command {
    Command::LogWater(LogWater {
        header: header(user, AggregateType::User, "nutrition.water.log", expected),
        payload: LogWaterPayload {
            intake_id: Uuid::new_v4(),
            millilitres,
            drunk_at: NEW_YEAR_2026 + 34_400_000_000,
        },
    })
}

fn porridge(energy_kcal: f64) -> Vec<MealItem> {
    vec![MealItem {
        food_id: "porridge".to_owned(),
        food_name: "Porridge".to_owned(),
        grams: 250.0,
        energy_kcal,
        protein_g: 10.0,
        carbohydrate_g: 40.0,
        fat_g: 5.0,
        fibre_g: Some(4.0),
        sugar_g: None,
        sodium_mg: None,
    }]
}

/// A one-item meal eaten at `eaten_at` (microseconds since the epoch).
pub fn log_meal(user: &str, meal: Uuid, eaten_at: i64, energy_kcal: f64) -> Command {
    Command::LogMeal(LogMeal {
        header: header(user, AggregateType::User, "nutrition.meal.log", None),
        payload: LogMealPayload {
            meal_id: meal,
            meal_type: MealType::Breakfast,
            eaten_at,
            items: porridge(energy_kcal),
            note: None,
            source: MealSource::Manual,
        },
    })
}

/// The meal's energy changed; still eaten at `eaten_at`.
pub fn update_meal(user: &str, meal: Uuid, eaten_at: i64, energy_kcal: f64) -> Command {
    Command::UpdateMeal(UpdateMeal {
        header: header(user, AggregateType::User, "nutrition.meal.update", None),
        payload: UpdateMealPayload {
            meal_id: meal,
            meal_type: MealType::Breakfast,
            eaten_at,
            items: porridge(energy_kcal),
            note: Some("bigger bowl".to_owned()),
        },
    })
}

/// The meal deleted at the user's request.
pub fn delete_meal(user: &str, meal: Uuid) -> Command {
    Command::DeleteMeal(DeleteMeal {
        header: header(user, AggregateType::User, "nutrition.meal.delete", None),
        payload: DeleteMealPayload {
            meal_id: meal,
            reason: MealDeletionReason::UserRequest,
        },
    })
}

/// XP granted by an operator.
pub fn award_xp(user: &str, xp: i32) -> Command {
    Command::AwardXp(AwardXp {
        header: header(user, AggregateType::User, "user.xp.award", None),
        payload: AwardXpPayload {
            xp,
            source: XpSource::Adjustment,
            source_id: None,
        },
    })
}

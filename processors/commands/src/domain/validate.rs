//! Value checks shared by the aggregates: each failure is a `VALIDATION_ERROR` naming the
//! field by its dotted path.

use std::str::FromStr;

use dietstream_schemas::types::MealItem;
use dietstream_schemas::Command;

use super::Rejection;

/// The bounds the command processor enforces on values; anything outside is refused with
/// `VALIDATION_ERROR` (a typo or a unit mix-up is far likelier than a 6 kg portion).
pub mod limits {
    /// Microseconds in one day.
    pub const DAY_MICROS: i64 = 86_400_000_000;
    /// How far `eaten_at` / `drunk_at` may lie after `header.issued_at` (clock skew, time zones).
    pub const MAX_AHEAD_MICROS: i64 = DAY_MICROS;
    /// Items per meal, at least 1.
    pub const MAX_MEAL_ITEMS: usize = 100;
    /// Portion of one item: more than 0 and at most this many grams.
    pub const MAX_ITEM_GRAMS: f64 = 5_000.0;
    /// Energy of one item: 0 to this many kilocalories.
    pub const MAX_ITEM_ENERGY_KCAL: f64 = 10_000.0;
    /// Protein, carbohydrate, fat, fibre and sugar of one item: 0 to this many grams.
    pub const MAX_ITEM_NUTRIENT_G: f64 = 5_000.0;
    /// Sodium of one item: 0 to this many milligrams.
    pub const MAX_ITEM_SODIUM_MG: f64 = 100_000.0;
    /// One water intake: 1 to this many millilitres.
    pub const MAX_WATER_ML: i32 = 5_000;
    /// Daily energy goal: more than 0 and at most this many kilocalories.
    pub const MAX_GOAL_ENERGY_KCAL: f64 = 20_000.0;
    /// Daily protein, carbohydrate, fat and fibre goals: more than 0 and at most this many grams.
    pub const MAX_GOAL_NUTRIENT_G: f64 = 2_000.0;
    /// Daily water goal: 1 to this many millilitres.
    pub const MAX_GOAL_WATER_ML: i32 = 20_000;
    /// One XP award (`user.xp.award`): 1 to this much XP.
    pub const MAX_XP_AWARD: i32 = 1_000_000;
    /// XP of a quest reward or completion: 0 to this much.
    pub const MAX_QUEST_XP: i32 = 1_000_000;
    /// Quest target: more than 0 and at most this much, in the quest's unit.
    pub const MAX_QUEST_TARGET: f64 = 1e9;
    /// Year of birth range.
    pub const BIRTH_YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;
    /// Body height range in centimetres.
    pub const HEIGHT_CM: std::ops::RangeInclusive<f64> = 30.0..=300.0;
    /// Body weight range in kilograms.
    pub const WEIGHT_KG: std::ops::RangeInclusive<f64> = 2.0..=700.0;
    /// AI feedback rating range.
    pub const RATINGS: std::ops::RangeInclusive<i32> = 1..=5;
    /// Model confidence range.
    pub const CONFIDENCE: std::ops::RangeInclusive<f64> = 0.0..=1.0;
    /// Days of history an AI query may use as context.
    pub const MAX_CONTEXT_WINDOW_DAYS: i32 = 3_650;
}

pub(crate) type Check = Result<(), Rejection>;

/// Common header checks: the header must describe the record it travels in.
pub(crate) fn header(command: &Command) -> Check {
    let h = command.header();
    if h.command_type != command.record_type() {
        return Err(Rejection::validation(
            "header.command_type",
            format!(
                "header.command_type is {:?}, but the record is {}",
                h.command_type,
                command.record_type()
            ),
        ));
    }
    non_empty(&h.aggregate_id, "header.aggregate_id")
}

/// Refuses an enum value read as UNKNOWN (a symbol this processor does not know).
pub(crate) fn known(is_unknown: bool, field: &str) -> Check {
    if is_unknown {
        Err(Rejection::validation(
            field,
            format!("{field} is UNKNOWN (a value this processor does not know)"),
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn non_empty(value: &str, field: &str) -> Check {
    if value.trim().is_empty() {
        Err(Rejection::validation(
            field,
            format!("{field} must not be empty"),
        ))
    } else {
        Ok(())
    }
}

/// `value` must be finite and within `min..=max`; with `min_exclusive` the minimum itself is
/// refused too (portions and targets of 0).
pub(crate) fn number(value: f64, min: f64, min_exclusive: bool, max: f64, field: &str) -> Check {
    let low_ok = if min_exclusive {
        value > min
    } else {
        value >= min
    };
    if value.is_finite() && low_ok && value <= max {
        Ok(())
    } else {
        let low = if min_exclusive {
            "more than"
        } else {
            "at least"
        };
        Err(Rejection::validation(
            field,
            format!("{field} is {value}; it must be {low} {min} and at most {max}"),
        ))
    }
}

pub(crate) fn int_range(value: i64, min: i64, max: i64, field: &str) -> Check {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Rejection::validation(
            field,
            format!("{field} is {value}; it must be between {min} and {max}"),
        ))
    }
}

pub(crate) fn email(value: &str, field: &str) -> Check {
    non_empty(value, field)?;
    match value.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err(Rejection::validation(
            field,
            format!("{field} is not an e-mail address"),
        )),
    }
}

pub(crate) fn time_zone(value: &str, field: &str) -> Check {
    match chrono_tz::Tz::from_str(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(Rejection::validation(
            field,
            format!("{field} {value:?} is not an IANA time-zone name"),
        )),
    }
}

/// An instant the user reports (eaten, drunk): representable, and not later than one day after
/// the command was issued.
pub(crate) fn reported_instant(value: i64, issued_at: i64, field: &str) -> Check {
    if chrono::DateTime::from_timestamp_micros(value).is_none() {
        return Err(Rejection::validation(
            field,
            format!("{field} is not a representable instant"),
        ));
    }
    if value > issued_at.saturating_add(limits::MAX_AHEAD_MICROS) {
        return Err(Rejection::validation(
            field,
            format!("{field} lies more than one day after header.issued_at"),
        ));
    }
    Ok(())
}

pub(crate) fn meal_items(items: &[MealItem]) -> Check {
    use limits::*;
    if items.is_empty() {
        return Err(Rejection::validation(
            "payload.items",
            "a meal needs at least one item",
        ));
    }
    if items.len() > MAX_MEAL_ITEMS {
        return Err(Rejection::validation(
            "payload.items",
            format!("a meal has at most {MAX_MEAL_ITEMS} items"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let f = |name: &str| format!("payload.items[{i}].{name}");
        non_empty(&item.food_id, &f("food_id"))?;
        non_empty(&item.food_name, &f("food_name"))?;
        number(item.grams, 0.0, true, MAX_ITEM_GRAMS, &f("grams"))?;
        number(
            item.energy_kcal,
            0.0,
            false,
            MAX_ITEM_ENERGY_KCAL,
            &f("energy_kcal"),
        )?;
        number(
            item.protein_g,
            0.0,
            false,
            MAX_ITEM_NUTRIENT_G,
            &f("protein_g"),
        )?;
        number(
            item.carbohydrate_g,
            0.0,
            false,
            MAX_ITEM_NUTRIENT_G,
            &f("carbohydrate_g"),
        )?;
        number(item.fat_g, 0.0, false, MAX_ITEM_NUTRIENT_G, &f("fat_g"))?;
        if let Some(v) = item.fibre_g {
            number(v, 0.0, false, MAX_ITEM_NUTRIENT_G, &f("fibre_g"))?;
        }
        if let Some(v) = item.sugar_g {
            number(v, 0.0, false, MAX_ITEM_NUTRIENT_G, &f("sugar_g"))?;
        }
        if let Some(v) = item.sodium_mg {
            number(v, 0.0, false, MAX_ITEM_SODIUM_MG, &f("sodium_mg"))?;
        }
    }
    Ok(())
}

//! The simulator's game data: foods with their nutrients per portion, quest definitions, and
//! the texts players type. Data, not logic, so that realistic values are easy to read and change.

use dietstream_schemas::types::{MealType, QuestKind, QuestUnit, RewardKind};

/// One food of the catalogue with the nutrients of one standard portion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Food {
    /// Catalogue id (`MealItem.food_id`).
    pub id: &'static str,
    /// Name shown to the player.
    pub name: &'static str,
    /// Grams in one standard portion.
    pub grams: f64,
    /// Kilocalories per portion.
    pub kcal: f64,
    /// Protein per portion, g.
    pub protein_g: f64,
    /// Carbohydrate per portion, g.
    pub carbohydrate_g: f64,
    /// Fat per portion, g.
    pub fat_g: f64,
    /// Fibre per portion, g; `None` where the food data has no value.
    pub fibre_g: Option<f64>,
    /// Sugars per portion, g; `None` where the food data has no value.
    pub sugar_g: Option<f64>,
    /// Sodium per portion, mg; `None` where the food data has no value.
    pub sodium_mg: Option<f64>,
    /// Meals the food is usually eaten at.
    pub meals: &'static [MealType],
}

const B: MealType = MealType::Breakfast;
const L: MealType = MealType::Lunch;
const D: MealType = MealType::Dinner;
const S: MealType = MealType::Snack;

macro_rules! food {
    ($id:literal, $name:literal, $g:literal g, $kcal:literal kcal, $p:literal, $c:literal, $f:literal,
     $fibre:expr, $sugar:expr, $sodium:expr, [$($meal:expr),+]) => {
        Food {
            id: $id,
            name: $name,
            grams: $g,
            kcal: $kcal,
            protein_g: $p,
            carbohydrate_g: $c,
            fat_g: $f,
            fibre_g: $fibre,
            sugar_g: $sugar,
            sodium_mg: $sodium,
            meals: &[$($meal),+],
        }
    };
}

/// The food catalogue: typical portions with values from common nutrition tables (rounded).
/// Protein, carbohydrate and fat in g; fibre and sugar in g, sodium in mg (`None`: no data).
pub const FOODS: &[Food] = &[
    food!("oats-porridge", "Porridge oats", 40.0 g, 150.0 kcal, 5.3, 27.0, 2.7, Some(4.0), Some(0.4), Some(2.0), [B]),
    food!("banana", "Banana", 120.0 g, 107.0 kcal, 1.3, 27.4, 0.4, Some(3.1), Some(14.7), Some(1.0), [B, S]),
    food!("apple", "Apple", 180.0 g, 94.0 kcal, 0.5, 25.0, 0.3, Some(4.4), Some(18.7), Some(2.0), [B, S]),
    food!("greek-yoghurt", "Greek yoghurt", 170.0 g, 100.0 kcal, 17.0, 6.0, 0.7, Some(0.0), Some(5.5), Some(61.0), [B, S]),
    food!("wholemeal-toast", "Wholemeal toast", 35.0 g, 90.0 kcal, 4.5, 15.0, 1.2, Some(2.4), Some(1.5), Some(150.0), [B]),
    food!("boiled-egg", "Boiled egg", 50.0 g, 78.0 kcal, 6.3, 0.6, 5.3, Some(0.0), Some(0.6), Some(62.0), [B, L]),
    food!("orange-juice", "Orange juice", 250.0 g, 112.0 kcal, 1.7, 26.0, 0.5, Some(0.5), Some(21.0), Some(2.0), [B]),
    food!("coffee-milk", "Coffee with milk", 240.0 g, 30.0 kcal, 2.0, 3.0, 1.0, None, Some(3.0), Some(40.0), [B, S]),
    food!("chicken-breast", "Grilled chicken breast", 150.0 g, 248.0 kcal, 46.5, 0.0, 5.4, Some(0.0), Some(0.0), Some(111.0), [L, D]),
    food!("brown-rice", "Brown rice, cooked", 150.0 g, 165.0 kcal, 3.9, 34.5, 1.4, Some(2.7), Some(0.5), Some(8.0), [L, D]),
    food!("pasta", "Pasta, cooked", 180.0 g, 284.0 kcal, 10.4, 56.0, 1.7, Some(3.2), Some(1.0), Some(2.0), [L, D]),
    food!("tomato-sauce", "Tomato sauce", 125.0 g, 60.0 kcal, 2.0, 10.0, 1.5, Some(2.5), Some(7.0), Some(480.0), [L, D]),
    food!("salmon", "Baked salmon", 140.0 g, 290.0 kcal, 28.0, 0.0, 19.0, Some(0.0), Some(0.0), Some(85.0), [D]),
    food!("broccoli", "Steamed broccoli", 90.0 g, 31.0 kcal, 2.5, 6.0, 0.3, Some(2.4), Some(1.5), Some(30.0), [L, D]),
    food!("mixed-salad", "Mixed salad", 85.0 g, 17.0 kcal, 1.2, 3.0, 0.2, Some(1.8), None, None, [L, D]),
    food!("lentil-soup", "Lentil soup", 250.0 g, 180.0 kcal, 11.0, 28.0, 3.0, Some(8.0), Some(3.0), Some(560.0), [L]),
    food!("cheddar", "Cheddar", 30.0 g, 121.0 kcal, 7.5, 0.4, 10.0, None, Some(0.1), Some(186.0), [L, S]),
    food!("almonds", "Almonds", 28.0 g, 164.0 kcal, 6.0, 6.0, 14.0, Some(3.5), Some(1.2), Some(0.0), [S]),
    food!("pizza-margherita", "Pizza margherita, slice", 110.0 g, 270.0 kcal, 11.0, 33.0, 10.0, Some(2.0), Some(3.6), Some(600.0), [L, D]),
    food!("dark-chocolate", "Dark chocolate", 45.0 g, 235.0 kcal, 3.4, 26.0, 13.0, Some(1.5), Some(24.0), Some(35.0), [S]),
];

/// Portion sizes a player picks, as a factor of the standard portion.
pub const PORTIONS: &[f64] = &[0.5, 0.75, 1.0, 1.0, 1.0, 1.25, 1.5, 2.0];

/// One quest of the game catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuestDefinition {
    /// `quest_definition_id`.
    pub id: &'static str,
    /// What it measures.
    pub kind: QuestKind,
    /// Progress needed, in `unit`.
    pub target: f64,
    /// Unit of target and progress.
    pub unit: QuestUnit,
    /// Days until the quest expires.
    pub days: i64,
    /// XP of the reward.
    pub xp: i32,
    /// What the reward consists of.
    pub reward: RewardKind,
}

/// The quest catalogue.
pub const QUESTS: &[QuestDefinition] = &[
    QuestDefinition {
        id: "hydration-day",
        kind: QuestKind::Hydration,
        target: 2000.0,
        unit: QuestUnit::Millilitres,
        days: 1,
        xp: 50,
        reward: RewardKind::Xp,
    },
    QuestDefinition {
        id: "log-3-meals",
        kind: QuestKind::MealLogging,
        target: 3.0,
        unit: QuestUnit::Meals,
        days: 1,
        xp: 30,
        reward: RewardKind::Xp,
    },
    QuestDefinition {
        id: "protein-100",
        kind: QuestKind::ProteinTarget,
        target: 100.0,
        unit: QuestUnit::Grams,
        days: 1,
        xp: 40,
        reward: RewardKind::Badge,
    },
    QuestDefinition {
        id: "fibre-25",
        kind: QuestKind::FibreTarget,
        target: 25.0,
        unit: QuestUnit::Grams,
        days: 1,
        xp: 40,
        reward: RewardKind::Xp,
    },
    QuestDefinition {
        id: "energy-budget-week",
        kind: QuestKind::EnergyBudget,
        target: 5.0,
        unit: QuestUnit::Days,
        days: 7,
        xp: 120,
        reward: RewardKind::Bundle,
    },
    QuestDefinition {
        id: "streak-7",
        kind: QuestKind::Streak,
        target: 7.0,
        unit: QuestUnit::Days,
        days: 10,
        xp: 150,
        reward: RewardKind::Item,
    },
    QuestDefinition {
        id: "social-butterfly",
        kind: QuestKind::Social,
        target: 3.0,
        unit: QuestUnit::Count,
        days: 3,
        xp: 25,
        reward: RewardKind::Xp,
    },
];

/// Display names; a player's number is appended.
pub const FIRST_NAMES: &[&str] = &[
    "Ada", "Ben", "Chloe", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kira",
    "Luca", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara",
];

/// Locale, IANA time zone and its standard UTC offset in hours. Times of day are kept between
/// 06:00 and 22:00 local, so a daylight-saving hour never moves a meal to another day.
pub const LOCALES: &[(&str, &str, i64)] = &[
    ("en-GB", "Europe/London", 0),
    ("de-DE", "Europe/Berlin", 1),
    ("fr-FR", "Europe/Paris", 1),
    ("en-US", "America/New_York", -5),
    ("ja-JP", "Asia/Tokyo", 9),
    ("en-AU", "Australia/Sydney", 10),
];

/// Questions players ask the AI coach.
pub const PROMPTS: &[&str] = &[
    "How much protein should I eat after a workout?",
    "Was my lunch today balanced?",
    "I keep snacking in the evening. Any tips?",
    "How can I drink more water during the day?",
    "Is oatmeal a good breakfast for losing weight?",
    "What is a quick high-fibre dinner?",
    "Why am I always hungry after breakfast?",
];

/// Answers of the AI coach.
pub const RESPONSES: &[&str] = &[
    "Aim for 20 to 40 g of protein within two hours after training, e.g. yoghurt or chicken.",
    "Your lunch had good protein; adding vegetables would raise the fibre.",
    "Plan a filling snack like almonds or an apple earlier, and keep sweets out of sight.",
    "Keep a bottle on your desk and drink a glass with every meal.",
    "Oats are filling and high in fibre; watch the toppings.",
    "Try lentil soup with a side salad: quick, filling and rich in fibre.",
    "Add protein and fibre to breakfast, e.g. eggs or Greek yoghurt with fruit.",
];

/// Texts of posts.
pub const POSTS: &[&str] = &[
    "Day 5 of logging every meal!",
    "New personal best: 2.5 litres of water today.",
    "Meal prep Sunday done.",
    "Who else is on the hydration quest?",
    "Tried the lentil soup the coach suggested. Delicious.",
];

/// Texts of comments.
pub const COMMENTS: &[&str] = &[
    "Great job!",
    "Keep it up!",
    "Recipe please?",
    "Same here, day 3.",
    "That looks tasty.",
];

/// Notes on meals.
pub const MEAL_NOTES: &[&str] = &[
    "eaten in a hurry",
    "homemade",
    "restaurant",
    "shared with a friend",
];

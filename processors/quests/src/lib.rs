//! The quests read-model processor (issue 5).

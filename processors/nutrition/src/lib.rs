//! The nutrition read-model processor (issue 5).

//! The engagement read-model processor (issue 5).

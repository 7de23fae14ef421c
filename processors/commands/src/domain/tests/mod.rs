//! Tests of the aggregates: a given/when/then harness, one test per rule and rejection, and
//! property tests that decide + apply agrees with a replay of the produced events.

mod ai;
mod general;
mod harness;
mod props;
mod social;
mod user;

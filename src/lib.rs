//! dietstream: the event store and stream-processing pipeline of the Diet Planner Game.
//!
//! Kafka is the event store, Avro in the Confluent wire format is the contract, ScyllaDB (or
//! Cassandra locally) holds the read models. See `README.md` for how to run it and
//! `../shared/DESIGN.md` for the decisions behind it.

pub mod bus;
pub mod config;
pub mod connect;
pub mod contract;
pub mod dlq;
pub mod kafka;
pub mod progress;
pub mod query;
pub mod read_model;
pub mod replay;
pub mod roundtrip;
pub mod run;
pub mod simulate;
pub mod store;

//! The command processor: the single writer of the event topics (DESIGN decision 3).
//!
//! [`domain`] holds the aggregates and their rules as pure code: a command either yields
//! events or a rejection. The processor around it consumes `diet.commands`, keeps the state of
//! the aggregates of its partitions, and writes events, snapshots, replies and its consumer
//! offsets in Kafka transactions.

pub mod config;
pub mod domain;
pub mod processor;
mod restore;
pub mod topics;

pub use config::CommandsConfig;
pub use processor::{run, ProcessorError, RunSummary};
pub use topics::Topics;

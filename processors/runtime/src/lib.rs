//! What every dietstream processor shares: the seed's retry policy, dead letters, the
//! [`Projection`] contract, the CQL [`Store`] and the consume loop ([`consume::run`]).

pub mod consume;
pub mod dead_letter;
pub mod projection;
pub mod retry;
pub mod store;

pub use consume::{LoopConfig, LoopSummary, ProcessorTopics, RuntimeError};
pub use projection::{Effects, Origin, Projection, Row, RuleError, Table};
pub use retry::RetryPolicy;
pub use store::{Store, StoreError, Stored};

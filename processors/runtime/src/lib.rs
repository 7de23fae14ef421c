//! What every dietstream processor shares: the seed's retry policy, dead letters, the
//! [`Projection`] contract (with its [partial rows](projection#partial-rows)), the CQL
//! [`Store`], the consume loop ([`consume::run`]), the Prometheus metrics a processor reports
//! ([`ProcessorMetrics`]) and the endpoint that serves them with the health checks
//! ([`serve`], [`Health`], configured by [`MetricsConfig`]), the generations of a read
//! model that a rebuild switches between ([`generation`]), and sums of logged amounts that do
//! not depend on the order of their terms ([`amount`]).

pub mod amount;
pub mod config;
pub mod consume;
pub mod dead_letter;
pub mod generation;
pub mod headers;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod partials;
pub mod projection;
pub mod retry;
pub mod store;

pub use config::MetricsConfig;
pub use consume::{LoopConfig, LoopSummary, Parts, ProcessorTopics, RuntimeError};
pub use http::{serve, Health, HttpError, Server};
pub use metrics::{ProcessorMetrics, Rebalance};
pub use projection::{
    caused_command, Effects, Origin, Partial, PartialTable, Projection, Row, RuleError, Sum, Table,
};
pub use retry::RetryPolicy;
pub use store::{Store, StoreError, Stored};

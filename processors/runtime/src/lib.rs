//! What every dietstream processor shares: the seed's retry policy, the Prometheus metrics a
//! processor reports ([`ProcessorMetrics`]) and the endpoint that serves them with the health
//! checks ([`serve`], [`Health`], configured by [`MetricsConfig`]). The shared consume loop of
//! the read-model processors joins them later (DESIGN, "Layout").

pub mod config;
pub mod http;
pub mod metrics;
pub mod retry;

pub use config::MetricsConfig;
pub use http::{serve, Health, HttpError, Server};
pub use metrics::{ProcessorMetrics, Rebalance};
pub use retry::RetryPolicy;

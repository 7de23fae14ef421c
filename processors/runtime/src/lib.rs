//! What every dietstream processor shares. For now the seed's retry policy; the shared consume
//! loop of the read-model processors joins it later (DESIGN, "Layout").

pub mod retry;

pub use retry::RetryPolicy;

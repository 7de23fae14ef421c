//! The Avro contract of dietstream.
//!
//! `schemas/avro/*.avsc` is the source of truth (DESIGN decision 2). This crate embeds those
//! files, checks them as one [`catalog::Catalog`], produces the self-contained form that is
//! registered, generates the Rust types ([`types`]) at build time, and checks compatibility
//! without a registry ([`compat`]).

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod envelope;
pub mod headers;
pub mod positional;
pub mod registry;

pub use envelope::{Command, Event};

/// Rust types generated from the `.avsc` files by `rsgen-avro` (see `build.rs`): one struct per
/// record, one enum per Avro enum, named as in the schemas.
#[allow(
    deprecated,
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod types {
    include!(concat!(env!("OUT_DIR"), "/types.rs"));
}

#[cfg(test)]
mod datum;
#[cfg(test)]
mod positional_tests;
#[cfg(test)]
mod tests;

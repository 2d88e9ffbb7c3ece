//! bestofn: an OpenAI-compatible proxy that answers each chat completion with the best of N
//! upstream samples, scored by a reward model.
//!
//! The domain (`bon`, `score`, `samples`, `eval`, `error`) lives in the `bestofn-core` crate,
//! which depends on no HTTP crate; this crate adds the server, the one upstream client, the
//! scorers that call HTTP backends, and the CLI, and re-exports the core's modules under their
//! usual paths.

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod metrics;
pub mod openai;
pub mod record;
pub mod remote;
pub mod server;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod upstream;
pub mod wiring;

pub use bestofn_core::{Error, bon, error, eval, samples, score};

//! bestofn: an OpenAI-compatible proxy that answers each chat completion with the best of N
//! upstream samples, scored by a reward model.
//!
//! Domain logic (`bon`, `score`) knows nothing of HTTP; `server` is a thin layer over it, and
//! the offline evaluator calls the same scorers and selection.

#![forbid(unsafe_code)]

pub mod backend;
pub mod bon;
pub mod config;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod openai;
pub mod record;
pub mod remote;
pub mod samples;
pub mod score;
pub mod server;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod upstream;
pub mod wiring;

pub use error::Error;

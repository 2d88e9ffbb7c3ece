//! bestofn's core: what a best-of-N run is, apart from how its bytes travel. The policy, the one
//! driver of a run (`bon::driver`, shared by the proxy and `eval replay`), selection, the scorer
//! interface and the scorers that need no network, adaptive sampling's stopping rules, the
//! samples record, and the eval math. It depends on no HTTP server or client crate: the
//! `bestofn` crate (server, upstream client, remote scorers, CLI) is built on top of it.

#![forbid(unsafe_code)]

pub mod bon;
pub mod error;
pub mod eval;
pub mod samples;
pub mod score;

pub use error::Error;

//! Lacquer: a caching reverse proxy, a shared HTTP cache per RFC 9111.
//!
//! See ARCHITECTURE.md at the top of the repository for the map of modules and the
//! life of a request.

#![deny(unsafe_code)]

// Public: what the binary, the tests and the benches use. The rest is the crate's own.
pub mod body;
pub mod cache;
pub mod config;
pub(crate) mod error;
pub(crate) mod fleet;
pub mod logging;
pub(crate) mod metrics;
pub mod purge;
pub mod rules;
pub mod serve;
pub(crate) mod tls;
pub mod tools;

// The modules under their own names too (`lacquer::freshness`, `crate::key`): the
// folders show the architecture, the paths stay short.
pub use cache::{coalesce, key, store, tags};
pub use rules::{conditional, directives, freshness, vary};
pub(crate) use rules::{forward, outcome};
pub use serve::server;
pub(crate) use serve::{admin, fetch, origin, proxy, render, request};
pub use tools::{cli, demo_origin, testbed};

//! Lacquer: a caching reverse proxy, a shared HTTP cache per RFC 9111.
//!
//! See ARCHITECTURE.md at the top of the repository for the map of modules and the
//! life of a request.

#![deny(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod coalesce;
pub mod conditional;
pub mod config;
pub mod demo_origin;
pub mod directives;
pub mod fetch;
pub mod forward;
pub mod freshness;
pub mod key;
pub mod metrics;
pub mod origin;
pub mod outcome;
pub mod proxy;
pub mod purge;
pub mod render;
pub mod request;
pub mod server;
pub mod store;
pub mod tags;
pub mod tls;
pub mod vary;

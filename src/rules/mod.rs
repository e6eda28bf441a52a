//! The HTTP rules as pure functions over plain data: Cache-Control and targeted
//! fields, freshness and reuse (RFC 9111), conditionals and ranges (RFC 9110),
//! Vary matching and normalizers, forwarding fields, and the outcome that renders
//! `Cache-Status` (RFC 9211). No I/O, no clock: tested as tables.

pub mod conditional;
pub mod directives;
pub(crate) mod forward;
pub mod freshness;
pub(crate) mod outcome;
pub mod vary;

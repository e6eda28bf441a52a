//! The server and everything with I/O on a request's path: the listener
//! (`server`), a request's way in (`proxy`), the fetcher (`fetch`), the origins
//! (`origin`), the admin API (`admin`), how responses leave (`render`) and what a
//! request carries (`request`).

pub(crate) mod admin;
pub(crate) mod fetch;
pub(crate) mod origin;
pub(crate) mod proxy;
pub(crate) mod render;
pub(crate) mod request;
pub mod server;

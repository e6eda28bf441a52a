//! The server and everything with I/O on a request's path: the listener
//! (`server`), a request's way in (`proxy`), the fetcher (`fetch`), the origins
//! (`origin`), the admin API (`admin`), how responses leave (`render`) and what a
//! request carries (`request`).

pub mod admin;
pub mod fetch;
pub mod origin;
pub mod proxy;
pub mod render;
pub mod request;
pub mod server;

//! The client tools, outside the server's core: `lacquer purge` and `lacquer
//! verify` (`cli`) and the demo origin (`demo_origin`).

pub mod cli;
pub mod demo_origin;
pub mod testbed;

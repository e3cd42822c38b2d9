//! herd: an application-server herd.
//!
//! Clients report their location to any server (`IAMAT`); the servers flood
//! each newer location to their neighbours, and any server answers "what is
//! near this client?" (`WHATSAT`) from a places provider. `../SPEC.md` in the
//! shared folder is the contract; `ARCHITECTURE.md` is the map of this crate.

pub mod config;
pub mod direct_append;
pub mod flood;
pub mod framing;
pub mod logging;
mod page_cache;
pub mod places;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod storage;
pub mod store;
pub mod time;

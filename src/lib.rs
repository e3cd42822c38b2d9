//! herd: an application-server herd.
//!
//! Clients report their location to any server (`IAMAT`); the servers flood
//! each newer location to their neighbours, and any server answers "what is
//! near this client?" (`WHATSAT`) from a places provider. `docs/protocol.md`
//! is the wire protocol; `ARCHITECTURE.md` is the map of this crate.

pub mod admin;
pub mod client;
pub mod config;
pub mod history;
pub mod log;
pub mod peer;
pub mod places;
pub mod protocol;
pub mod replica;
pub mod server;
pub mod stats;
pub mod tls;

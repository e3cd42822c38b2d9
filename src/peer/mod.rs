//! Server-to-server links: authentication, flooding and catch-up.
//!
//! Each direction of a link is one TCP connection, dialled by the sender to
//! the receiver's peer port. The receiver keeps, per neighbour, a *cursor*
//! (see `replica`): the neighbour's run id and the highest of its sequence
//! numbers up to which it holds everything the neighbour has accepted. When a
//! link comes up the receiver tells the sender its cursor, and the sender
//! streams its store's sequence from there on: first what was missed, then
//! live updates as they are accepted. Catch-up and flooding are one
//! mechanism, and the work on reconnect is what was missed, not the size of
//! the store. `docs/flooding.md` describes the algorithm, `docs/protocol.md`
//! the bytes.
//!
//! The wing's rooms: `wire` (the format), `auth` (MACs and frame keys),
//! `routes` (who gets a report at once), `link` (the decisions, no IO),
//! `shell` (the tasks that own sockets and timers) and `sim` (an in-memory
//! network that drives `link` for tests).

pub mod auth;
pub mod link;
pub mod routes;
mod shell;
pub mod sim;
pub mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::replica::Replica;
use crate::stats::ServerStats;
use auth::Secret;
use routes::Routes;

pub use wire::{Hello, PayloadLine, parse_hello, parse_payload_line};

/// A configured neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub name: String,
    /// Its peer port, `host:port`.
    pub peer_address: String,
}

/// How long a link may stay silent, and how often a link speaks when it
/// has nothing to say.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub silence: Duration,
    pub heartbeat: Duration,
}

/// One server's peer links.
pub struct Links {
    me: String,
    secret: Secret,
    neighbours: Vec<Neighbour>,
    /// How long each origin's reports wait for each neighbour (see
    /// `routes`).
    routes: Routes,
    replica: Arc<Replica>,
    timing: Timing,
    stats: Arc<ServerStats>,
    /// Wakes the dialler to a neighbour that just showed up.
    wake: Vec<Notify>,
    /// The receiving session of each neighbour, cancelled when a newer one
    /// from the same neighbour replaces it.
    sessions: Mutex<Vec<Option<CancellationToken>>>,
}

impl Links {
    /// The links of server `me` to `neighbours` (in the order the
    /// replica's cursors number them), proving `secret`.
    pub fn new(
        me: &str,
        neighbours: Vec<Neighbour>,
        routes: Routes,
        secret: Vec<u8>,
        replica: Arc<Replica>,
        timing: Timing,
        stats: Arc<ServerStats>,
    ) -> Self {
        let count = neighbours.len();
        Self {
            me: me.to_owned(),
            secret: Secret::new(secret),
            neighbours,
            routes,
            replica,
            timing,
            stats,
            wake: (0..count).map(|_| Notify::new()).collect(),
            sessions: Mutex::new(vec![None; count]),
        }
    }

    /// Starts the peer listener and one dialler per neighbour.
    pub fn start(
        self: &Arc<Self>,
        listener: TcpListener,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        shell::start(self, listener, tasks, shutdown);
    }

    fn neighbour_index(&self, name: &[u8]) -> Option<usize> {
        self.neighbours
            .iter()
            .position(|n| n.name.as_bytes() == name)
    }
}

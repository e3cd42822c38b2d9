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
//! The wing's rooms: `wire` (the format), `auth` (keys and encryption),
//! `topology` (which links of the herd are up, flooded as link state),
//! `routes` (each origin's tree over the live links), `link` (the
//! decisions, no IO), `failures` (when a failing link is worth a warning),
//! `shell` (the tasks that own sockets and timers) and `sim` (an in-memory
//! network that drives `link` for tests).

pub mod auth;
pub mod failures;
pub mod link;
pub mod routes;
mod shell;
pub mod sim;
pub mod topology;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::log::OPERATOR;
use crate::replica::Replica;
use crate::stats::ServerStats;
use auth::Keyring;
use failures::Failures;
use routes::Routes;
use topology::{Learned, Topology};

pub use shell::LinkError;
pub use wire::{Hello, PROTOCOL_VERSION, PayloadLine, parse_hello, parse_payload_line};

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
    /// The herd secrets this server accepts, the first the one it dials
    /// with; replaced while it runs when the herd rotates its secret.
    keyring: Arc<Keyring>,
    neighbours: Vec<Neighbour>,
    /// Each origin's tree over the links known to be up (see `routes`),
    /// replaced whenever `topology` changes.
    routes: Mutex<Arc<Routes>>,
    topology: Mutex<Topology>,
    /// `topology` changed since `routes` was worked out.
    stale: AtomicBool,
    /// Link-state lines waiting for each neighbour's sending link, and the
    /// wake-up that tells it so.
    control: Vec<Mutex<Vec<u8>>>,
    control_ready: Vec<Notify>,
    replica: Arc<Replica>,
    timing: Timing,
    stats: Arc<ServerStats>,
    /// Wakes the dialler to a neighbour that just showed up.
    wake: Vec<Notify>,
    /// The receiving session of each neighbour, cancelled when a newer one
    /// from the same neighbour replaces it.
    sessions: Mutex<Vec<Option<CancellationToken>>>,
    /// Refused attempts to link in, per neighbour claimed, then one for
    /// diallers that claim no neighbour: what to warn about.
    incoming: Mutex<Vec<Failures<std::mem::Discriminant<LinkError>>>>,
    /// When refusing a neighbour's report for room is worth a warning again.
    refusals: crate::log::Throttle,
}

impl Links {
    /// The links of server `me` to `neighbours` (in the order the
    /// replica's cursors number them), with the herd secrets of `keyring`.
    pub fn new(
        me: &str,
        neighbours: Vec<Neighbour>,
        keyring: Arc<Keyring>,
        replica: Arc<Replica>,
        timing: Timing,
        stats: Arc<ServerStats>,
    ) -> Self {
        let count = neighbours.len();
        let topology = Topology::new(me, neighbours.iter().map(|n| n.name.clone()).collect());
        Self {
            me: me.to_owned(),
            keyring,
            neighbours,
            routes: Mutex::new(Arc::new(topology.routes())),
            stale: AtomicBool::new(false),
            topology: Mutex::new(topology),
            control: (0..count).map(|_| Mutex::default()).collect(),
            control_ready: (0..count).map(|_| Notify::new()).collect(),
            replica,
            timing,
            stats,
            wake: (0..count).map(|_| Notify::new()).collect(),
            sessions: Mutex::new(vec![None; count]),
            incoming: Mutex::new((0..=count).map(|_| Failures::new()).collect()),
            refusals: crate::log::Throttle::new(60),
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

    /// The trees as now known: worked out again if the topology changed
    /// since, once for a burst of link-state lines.
    fn routes(&self) -> Arc<Routes> {
        if self.stale.swap(false, Ordering::AcqRel) {
            let (routes, live) = {
                let topology = self.lock_topology();
                (Arc::new(topology.routes()), topology.live_links())
            };
            // Rare (a link changed somewhere): worth a line for an operator.
            info!("routes worked out again: {live} links of the herd up");
            *self.routes.lock().expect("routes lock is never poisoned") = routes;
        }
        self.routes
            .lock()
            .expect("routes lock is never poisoned")
            .clone()
    }

    /// The live links of the herd as far as this server knows (both ends
    /// claim them), each as its two servers' names in order.
    pub fn live_links(&self) -> Vec<(String, String)> {
        self.lock_topology().live_pairs()
    }

    /// This server's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    fn lock_topology(&self) -> std::sync::MutexGuard<'_, Topology> {
        self.topology
            .lock()
            .expect("topology lock is never poisoned")
    }

    /// The sending link to neighbour `index` came up or went down: this
    /// server's claim changes, the trees are marked to be worked out again
    /// before the next frame, and the herd is told. A link that comes up is
    /// sent the whole table; one that goes down is sent nothing until then.
    fn link_changed(&self, index: usize, up: bool) {
        let mut topology = self.lock_topology();
        {
            let mut queue = self.control[index]
                .lock()
                .expect("control lock is never poisoned");
            queue.clear();
            if up {
                for line in topology.table() {
                    wire::push_line(&mut queue, &line);
                }
            }
        }
        if let Some(line) = topology.set_link(index, up, version_clock()) {
            self.stale.store(true, Ordering::Release);
            self.flood(&topology, &line, None);
        }
        if up {
            self.control_ready[index].notify_one();
            if (0..self.neighbours.len()).all(|other| topology.is_up(other)) {
                let names: Vec<&str> = self.neighbours.iter().map(|n| n.name.as_str()).collect();
                info!(target: OPERATOR, "all links up: sending to {}", names.join(", "));
            }
        }
    }

    /// Takes in a link-state line from neighbour `from`.
    fn learn(&self, from: usize, line: &[u8]) {
        let mut topology = self.lock_topology();
        match topology.apply(line) {
            Learned::Newer => {
                self.stale.store(true, Ordering::Release);
                self.flood(&topology, line, Some(from));
            }
            Learned::AboutMe => {
                let line = topology.reannounce(version_clock());
                self.flood(&topology, &line, None);
            }
            Learned::Known => {}
            Learned::Malformed => {
                warn!(neighbour = %self.neighbours[from].name, "ignored a malformed link-state line");
            }
        }
    }

    /// Queues a link-state line for every neighbour but `except` whose
    /// link is up (one that comes up is sent the whole table).
    fn flood(&self, topology: &Topology, line: &[u8], except: Option<usize>) {
        for (index, queue) in self.control.iter().enumerate() {
            if Some(index) != except && topology.is_up(index) {
                wire::push_line(
                    &mut queue.lock().expect("control lock is never poisoned"),
                    line,
                );
                self.control_ready[index].notify_one();
            }
        }
    }

    /// Takes the link-state lines waiting for neighbour `index`.
    fn take_control(&self, index: usize, into: &mut Vec<u8>) {
        into.append(
            &mut self.control[index]
                .lock()
                .expect("control lock is never poisoned"),
        );
    }

    fn neighbour_index(&self, name: &[u8]) -> Option<usize> {
        self.neighbours
            .iter()
            .position(|n| n.name.as_bytes() == name)
    }
}

/// A link-state version that only grows, also across restarts: the wall
/// clock in nanoseconds (`Topology` keeps each version above the last).
fn version_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

//! The client side of a server: the accept loop, per-address limits, one
//! task per connection (`connection`), and what each line is answered
//! (`handler`).

mod connection;
pub mod handler;
pub mod limits;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::places::render::Answers;
use crate::replica::Replica;
use crate::stats::ServerStats;
use limits::PerIp;

/// What a server's client connections share.
pub struct Clients {
    /// The server's name, which its AT lines carry.
    pub name: String,
    pub replica: Arc<Replica>,
    pub answers: Arc<Answers>,
    pub limits: Limits,
    pub stats: Arc<ServerStats>,
    /// When refusing a new client at the ceiling is worth a warning again.
    pub refusals: crate::log::Throttle,
}

/// Accepts client connections until `shutdown`, each served by a task of
/// `tasks`.
pub async fn accept(
    clients: &Arc<Clients>,
    listener: TcpListener,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(clients.limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    loop {
        // Past the limit, new connections wait in the listen backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            () = shutdown.cancelled() => return,
        };
        let (stream, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, not exit.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(slot) = PerIp::claim(&per_ip, address.ip(), clients.limits.max_connections_per_ip)
        else {
            clients.stats.connections_refused.bump();
            debug!(%address, "too many connections from this address; closed");
            continue;
        };
        clients.stats.connections.bump();
        let clients = clients.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(error) = connection::serve(&clients, stream, address, &shutdown).await {
                debug!(%address, %error, "client connection ended with an error");
            }
            clients.stats.connections_closed.bump();
            drop((permit, slot));
        });
    }
}

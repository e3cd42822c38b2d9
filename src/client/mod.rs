//! The client side of a server: the accept loops (plain TCP and TLS, under
//! the same limits), per-address limits, one task per connection
//! (`connection`), and what each line is answered (`handler`).

mod connection;
pub mod handler;
pub mod limits;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::places::render::Answers;
use crate::replica::Replica;
use crate::stats::ServerStats;
use limits::PerIp;
use tls::ClientTls;

/// What a server's client connections share, on every client port.
pub struct Clients {
    /// The server's name, which its AT lines carry.
    pub name: String,
    pub replica: Arc<Replica>,
    pub answers: Arc<Answers>,
    pub limits: Limits,
    pub stats: Arc<ServerStats>,
    /// When refusing a new client at the ceiling is worth a warning again.
    pub refusals: crate::log::Throttle,
    /// `max_connections`, for the plain and the TLS port together.
    permits: Arc<Semaphore>,
    /// `max_connections_per_ip`, for the plain and the TLS port together.
    per_ip: Arc<PerIp>,
}

impl Clients {
    pub fn new(
        name: String,
        replica: Arc<Replica>,
        answers: Arc<Answers>,
        limits: Limits,
        stats: Arc<ServerStats>,
    ) -> Self {
        Self {
            name,
            replica,
            answers,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Arc::new(PerIp::default()),
            limits,
            stats,
            refusals: crate::log::Throttle::new(60),
        }
    }
}

/// Accepts client connections until `shutdown`, each served by a task of
/// `tasks`: in plain TCP, or over TLS with `tls`.
pub async fn accept(
    clients: &Arc<Clients>,
    listener: TcpListener,
    tls: Option<Arc<ClientTls>>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    loop {
        // Past the limit, new connections wait in the listen backlog.
        let permit = tokio::select! {
            permit = clients.permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
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
        let Some(slot) = PerIp::claim(
            &clients.per_ip,
            address.ip(),
            clients.limits.max_connections_per_ip,
        ) else {
            clients.stats.connections_refused.bump();
            debug!(%address, "too many connections from this address; closed");
            continue;
        };
        clients.stats.connections.bump();
        let clients = clients.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let served = match stream.set_nodelay(true) {
                Err(error) => Err(error),
                Ok(()) => match tls {
                    None => connection::serve(&clients, stream, address, &shutdown).await,
                    Some(tls) => serve_tls(&clients, &tls, stream, address, &shutdown).await,
                },
            };
            if let Err(error) = served {
                debug!(%address, %error, "client connection ended with an error");
            }
            clients.stats.connections_closed.bump();
            drop((permit, slot));
        });
    }
}

/// The TLS handshake, then the connection as on the plain port. A client
/// that does not finish its handshake within the idle timeout is cut off,
/// as one that sends no whole line is.
async fn serve_tls(
    clients: &Clients,
    tls: &ClientTls,
    stream: TcpStream,
    address: SocketAddr,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let patience = Duration::from_secs(clients.limits.idle_timeout_secs);
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(patience, tls.accept(stream)) => handshake,
        () = shutdown.cancelled() => return Ok(()),
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            clients.stats.tls_handshakes_failed.bump();
            debug!(%address, %error, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            clients.stats.tls_handshakes_failed.bump();
            debug!(%address, "TLS handshake not finished within the idle timeout; closed");
            return Ok(());
        }
    };
    connection::serve(clients, stream, address, shutdown).await
}

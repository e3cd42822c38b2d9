//! One server of the herd, assembled: its replica, its peer links, its
//! client side and its admin port, started on bound listeners and stopped
//! together.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, Admin, HerdMap, Sources};
use crate::client::tls::ClientTls;
use crate::client::{self, Clients};
use crate::config::{HerdConfig, HistoryConfig, Limits, UnknownServer};
use crate::history::archiver::{self, ArchiverSetup};
use crate::peer::auth::Keyring;
use crate::peer::{Links, Neighbour, Timing};
use crate::places::Places;
use crate::places::render::Answers;
use crate::replica::Replica;
use crate::replica::storage::StorageError;
use crate::replica::store::Bounds;
use crate::stats::ServerStats;

pub use crate::replica::StorageSetup;

/// Everything a server needs to start, apart from its sockets.
pub struct ServerSetup {
    pub name: String,
    pub neighbours: Vec<Neighbour>,
    /// The herd secrets peer links accept, the first the one they dial
    /// with. Held by the caller too, which may replace them while the
    /// server runs (key rotation).
    pub keyring: Arc<Keyring>,
    pub places: Arc<dyn Places>,
    pub limits: Limits,
    /// Where to keep the store on disk; `None` keeps it in memory only.
    pub storage: Option<StorageSetup>,
    /// How long the store keeps a client, and how many it takes.
    pub bounds: Bounds,
    /// Told once the server has its store open and takes connections: what
    /// `herd serve` reports as ready. Dropped unsent if it fails to start.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// The core database to archive this server's own clients' reports
    /// to; `None` archives nothing. Needs `storage`: the archive reads the
    /// store log.
    pub history: Option<HistoryConfig>,
    /// The herd as configured, for the admin port's view of it.
    pub herd: HerdMap,
    /// The certificate shown on the TLS client port, which needs one.
    /// Held by the caller too, which may replace it while the server runs.
    pub client_tls: Option<Arc<ClientTls>>,
}

impl ServerSetup {
    /// The setup of server `name` of `config`.
    pub fn from_config(
        config: &HerdConfig,
        name: &str,
        keyring: Arc<Keyring>,
        places: Arc<dyn Places>,
    ) -> Result<Self, UnknownServer> {
        let server = config.server(name)?;
        let neighbours = server
            .neighbours
            .iter()
            .map(|neighbour| Neighbour {
                name: neighbour.clone(),
                peer_address: config
                    .server(neighbour)
                    .expect("config checks that neighbours exist")
                    .peer
                    .clone(),
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            neighbours,
            keyring,
            places,
            limits: config.limits.clone(),
            storage: Some(StorageSetup {
                dir: config.storage.data_dir.join(name),
                durability: config.storage.durability,
                sync_interval: Duration::from_millis(config.storage.sync_interval_ms),
                archived: None,
            }),
            bounds: bounds_of(config),
            ready: None,
            history: config.history.clone(),
            herd: HerdMap::from_config(config, Some(name)),
            client_tls: None,
        })
    }
}

/// The store bounds of `config`'s servers. A neighbour's report is held
/// to the ceiling times the servers of the herd: each server takes at most
/// `max_clients` new clients from its own clients, so a herd whose servers
/// share the config never reaches it (docs/storage.md, "Bounds").
pub fn bounds_of(config: &HerdConfig) -> Bounds {
    let max_clients = config.limits.max_clients;
    Bounds {
        ttl_secs: config.storage.client_ttl_secs,
        max_clients,
        max_clients_from_neighbours: max_clients.saturating_mul(config.servers.len()),
    }
}

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How long connections get to finish their replies after a shutdown
/// request, so that the whole server stops within a second.
const DRAIN_TIME: Duration = Duration::from_millis(700);

/// The sockets a server listens on, already bound.
pub struct Listeners {
    /// The plain TCP client port, unless the server takes clients over
    /// TLS only.
    pub client: Option<TcpListener>,
    /// The TLS client port, if the server has one (and then
    /// `ServerSetup::client_tls`).
    pub client_tls: Option<TcpListener>,
    pub peer: TcpListener,
    /// The admin port, if the server has one.
    pub admin: Option<TcpListener>,
}

/// Runs a server on already bound client and peer listeners, with no admin
/// port, until `shutdown` is cancelled.
///
/// The binary binds the configured ports; tests bind port 0.
pub async fn run(
    setup: ServerSetup,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listeners = Listeners {
        client: Some(client_listener),
        client_tls: None,
        peer: peer_listener,
        admin: None,
    };
    serve(setup, listeners, shutdown).await
}

/// Runs a server on already bound listeners until `shutdown` is cancelled.
pub async fn serve(
    setup: ServerSetup,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let started = std::time::Instant::now();
    // Names this run in the log: the `listening` line and every reference
    // to a places answer logged earlier in the run carry it.
    let run = crate::log::timestamp(std::time::SystemTime::now());
    let Listeners {
        client: client_listener,
        client_tls: tls_listener,
        peer: peer_listener,
        admin: admin_listener,
    } = listeners;
    let tls_listener = match (tls_listener, setup.client_tls) {
        (Some(listener), Some(tls)) => Some((listener, tls)),
        (None, _) => None,
        (Some(_), None) => {
            return Err(ServerError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a TLS client port needs a certificate",
            )));
        }
    };
    let tasks = TaskTracker::new();
    // Up before the store is read back, so that /healthz answers (and
    // /readyz says not yet) during a long replay.
    let admin = match admin_listener {
        Some(listener) => {
            let address = listener.local_addr()?.to_string();
            let admin = Admin::new(setup.herd.clone(), shutdown.clone());
            let serving = admin.clone();
            tasks.spawn(async move {
                if let Err(error) = admin::serve(serving, listener).await {
                    warn!(%error, "the admin port failed");
                }
            });
            Some((admin, address))
        }
        None => None,
    };
    let names = setup.neighbours.iter().map(|n| n.name.clone()).collect();
    let mut storage = setup.storage;
    // The admin port answers /history from the same database.
    let core_database = setup.history.clone();
    let history = match (setup.history, &mut storage) {
        (Some(history), Some(storage)) => {
            let archived = Arc::new(AtomicU64::new(0));
            storage.archived = Some(archived.clone());
            Some((history, archived))
        }
        (Some(_), None) => {
            warn!("[history] needs a store on disk to archive from; archiving nothing");
            None
        }
        (None, _) => None,
    };
    let replica = Arc::new(Replica::open(storage, names, setup.bounds).await?);
    let stats = Arc::new(ServerStats::new(setup.neighbours.len()));
    if let Some((config, archived)) = history {
        archiver::start(
            ArchiverSetup {
                server: setup.name.clone(),
                run: replica.run(),
                log_dir: replica
                    .log_dir()
                    .expect("a replica opened with storage has a log")
                    .to_owned(),
                config,
                archived,
                stats: stats.clone(),
            },
            shutdown.clone(),
        )?;
    }
    let timing = Timing {
        silence: setup.limits.link_silence(),
        heartbeat: setup.limits.link_heartbeat(),
    };
    let links = Arc::new(Links::new(
        &setup.name,
        setup.neighbours,
        setup.keyring,
        replica.clone(),
        timing,
        stats.clone(),
    ));
    let answers = Arc::new(Answers::new(setup.places, run.clone()));
    let clients = Arc::new(Clients::new(
        setup.name.clone(),
        replica.clone(),
        answers.clone(),
        setup.limits,
        stats.clone(),
    ));
    let address_of = |listener: Option<&TcpListener>| match listener {
        Some(listener) => listener.local_addr().map(|address| address.to_string()),
        None => Ok("none".to_owned()),
    };
    let client_address = address_of(client_listener.as_ref())?;
    let tls_address = address_of(tls_listener.as_ref().map(|(listener, _)| listener))?;
    let peer_address = peer_listener.local_addr()?.to_string();
    info!(
        server = %setup.name,
        client = %client_address,
        client_tls = %tls_address,
        peer = %peer_address,
        %run,
        admin = admin.as_ref().map_or("none", |(_, address)| address.as_str()),
        peer_protocol = crate::peer::PROTOCOL_VERSION,
        "listening"
    );
    links.start(peer_listener, &tasks, &shutdown);
    tasks.spawn(replica.clone().compact_now_and_then(shutdown.clone()));
    tasks.spawn(
        replica
            .clone()
            .expire_now_and_then(shutdown.clone(), crate::replica::unix_secs),
    );
    if let Some(ready) = setup.ready {
        // Whoever waits may have gone; the server runs all the same.
        let _ = ready.send(());
    }
    if let Some((admin, admin_address)) = admin {
        let sources = Sources::new(
            &setup.name,
            admin::status::Addresses {
                client: client_address,
                client_tls: tls_address,
                peer: peer_address,
                admin: admin_address,
            },
            started,
            replica.clone(),
            links.clone(),
            stats.clone(),
            answers,
        )
        .with_core_database(core_database);
        tasks.spawn(admin.ready(sources));
    }
    let plain = async {
        if let Some(listener) = client_listener {
            client::accept(&clients, listener, None, &tasks, &shutdown).await;
        }
    };
    let tls = async {
        if let Some((listener, tls)) = tls_listener {
            client::accept(&clients, listener, Some(tls), &tasks, &shutdown).await;
        }
    };
    // Each loop ends with the shutdown; a server with no client port at
    // all (a neighbour only) waits for it too.
    tokio::join!(plain, tls, shutdown.cancelled());
    tasks.close();
    if tokio::time::timeout(DRAIN_TIME, tasks.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish in time; closing them");
    }
    replica.close();
    let s = &stats;
    info!(
        server = %setup.name,
        connections = s.connections.get(),
        iamat_stored = s.iamat_stored.get(),
        iamat_not_newer = s.iamat_not_newer.get(),
        whatsat = s.whatsat.get(),
        invalid = s.invalid.get(),
        frames_sent = s.frames_sent.get(),
        updates_sent = s.updates_sent.get(),
        watermarks_sent = s.watermarks_sent.get(),
        watermark_bytes_sent = s.watermark_bytes_sent.get(),
        frames_received = s.frames_received.get(),
        updates_received = s.updates_received.get(),
        updates_stored = s.updates_stored.get(),
        links_up = s.links_up.get(),
        links_down = s.links_down.get(),
        reports_archived = s.reports_archived.get(),
        archive_failures = s.archive_failures.get(),
        "stopped"
    );
    Ok(())
}

//! The admin port: HTTP on a server's `admin` address, for people and
//! monitoring, never for clients or neighbours.
//!
//! - `/metrics`: every counter, for Prometheus (`metrics`);
//! - `/healthz` (the process answers) and `/readyz` (the store is
//!   recovered and the client port is served);
//! - `/status`: this server as JSON, `/herd`: every server of the herd as
//!   seen from here, `/recent`: the newest reports (`status`);
//! - `/history?client=ID`: a client's archived reports, or those near a
//!   place, from the core database of `[history]` (`history`);
//! - `/`: the live dashboard, a page built into the binary, and
//!   `/map.json`, the dots of its world map (`dashboard`).
//!
//! The wing reads the replica, the links and the counters; it changes
//! nothing, and no other wing imports it. `server` starts it before the
//! store is opened, so that `/healthz` answers during a long replay, and
//! hands it the wings once they run (`Admin::ready`).

pub mod dashboard;
pub mod history;
pub mod metrics;
pub mod process;
pub mod status;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{HerdConfig, HistoryConfig};
use crate::peer::Links;
use crate::places::render::Answers;
use crate::replica::Replica;
use crate::stats::{ServerStats, unix_millis};
use status::{Addresses, Rates, Totals};

/// How long `/herd` waits for each other server's status.
const HERD_PATIENCE: Duration = Duration::from_millis(800);
/// How many one-second rates `/status` keeps: five minutes.
const HISTORY: usize = 300;

/// The herd as the config describes it: every server's name, admin
/// address and neighbours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HerdMap {
    /// The server this map is for, if any.
    pub me: Option<String>,
    pub servers: Vec<Member>,
}

/// One server of a [`HerdMap`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub admin: Option<String>,
    pub neighbours: Vec<String>,
}

impl HerdMap {
    /// The herd of `config`, as seen by server `me`.
    pub fn from_config(config: &HerdConfig, me: Option<&str>) -> Self {
        Self {
            me: me.map(str::to_owned),
            servers: config
                .servers
                .iter()
                .map(|server| Member {
                    name: server.name.clone(),
                    admin: server.admin.clone(),
                    neighbours: server.neighbours.clone(),
                })
                .collect(),
        }
    }

    /// Every configured link once, its ends in config order.
    pub fn links(&self) -> Vec<(String, String)> {
        let position = |name: &str| self.servers.iter().position(|s| s.name == name);
        let mut links = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            for neighbour in &server.neighbours {
                if position(neighbour).is_some_and(|j| j > i) {
                    links.push((server.name.clone(), neighbour.clone()));
                }
            }
        }
        links
    }
}

/// What the admin port reads: the wings of a running server.
pub struct Sources {
    pub name: String,
    pub addresses: Addresses,
    pub started: Instant,
    pub started_unix_ms: i64,
    pub replica: Arc<Replica>,
    pub links: Arc<Links>,
    pub stats: Arc<ServerStats>,
    pub answers: Arc<Answers>,
    /// The core database `/history` reads, if the server has one.
    pub core_database: Option<HistoryConfig>,
    history: History,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("name", &self.name).finish()
    }
}

impl Sources {
    /// The sources of server `name`, started at `started`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        addresses: Addresses,
        started: Instant,
        replica: Arc<Replica>,
        links: Arc<Links>,
        stats: Arc<ServerStats>,
        answers: Arc<Answers>,
    ) -> Self {
        let started_unix_ms =
            unix_millis() - i64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        Self {
            name: name.to_owned(),
            addresses,
            started,
            started_unix_ms,
            replica,
            links,
            stats,
            answers,
            core_database: None,
            history: History::default(),
        }
    }

    /// The same, answering `/history` from the core database `config`.
    #[must_use]
    pub fn with_core_database(mut self, config: Option<HistoryConfig>) -> Self {
        self.core_database = config;
        self
    }
}

/// Rates of the last seconds, sampled once a second.
#[derive(Default)]
struct History {
    inner: Mutex<HistoryInner>,
}

#[derive(Default)]
struct HistoryInner {
    last: Option<(Instant, Totals, Vec<u64>)>,
    rates: Rates,
    link_rates: Vec<f64>,
    history: VecDeque<Rates>,
}

impl History {
    /// Takes a sample of `sources`' counters.
    fn sample(&self, sources: &Sources) {
        let now = Instant::now();
        let totals = Totals::read(sources);
        let sent: Vec<u64> = sources
            .stats
            .neighbours
            .iter()
            .map(|n| n.updates_sent.get())
            .collect();
        let mut inner = self.inner.lock().expect("history lock is never poisoned");
        if let Some((then, earlier, earlier_sent)) = &inner.last {
            let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rates = totals.rates_since(earlier, seconds);
            inner.link_rates = sent
                .iter()
                .zip(earlier_sent)
                .map(|(now, then)| now.saturating_sub(*then) as f64 / seconds)
                .collect();
            inner.rates = rates;
            if inner.history.len() == HISTORY {
                inner.history.pop_front();
            }
            inner.history.push_back(rates);
        }
        inner.last = Some((now, totals, sent));
    }

    /// The last rates, the history, and each link's updates sent per second.
    fn read(&self) -> (Rates, Vec<Rates>, Vec<f64>) {
        let inner = self.inner.lock().expect("history lock is never poisoned");
        (
            inner.rates,
            inner.history.iter().copied().collect(),
            inner.link_rates.clone(),
        )
    }
}

/// The admin port of one server.
pub struct Admin {
    herd: HerdMap,
    sources: OnceLock<Arc<Sources>>,
    shutdown: CancellationToken,
}

impl Admin {
    /// The admin port of a server of `herd` that stops on `shutdown`; not
    /// ready until [`Admin::ready`].
    pub fn new(herd: HerdMap, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            herd,
            sources: OnceLock::new(),
            shutdown,
        })
    }

    /// The server runs: from now on the admin port reads `sources`, and a
    /// task samples its rates once a second until shutdown.
    pub fn ready(&self, sources: Sources) -> impl Future<Output = ()> + use<> {
        let sources = self.sources.get_or_init(|| Arc::new(sources)).clone();
        let shutdown = self.shutdown.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => sources.history.sample(&sources),
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }

    fn sources(&self) -> Option<&Arc<Sources>> {
        self.sources.get()
    }
}

/// Serves the admin port on `listener` until the admin's shutdown.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = admin.shutdown.clone();
    let router = Router::new()
        .route("/", get(dashboard_page))
        .route("/map.json", get(map))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/herd", get(herd))
        .route("/recent", get(recent))
        .route("/history", get(history_reports))
        .with_state(admin);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// 503 with a reason.
fn unavailable(why: &'static str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

/// JSON that any page may read (the dashboard of another server, say).
fn json<T: serde::Serialize>(value: &T) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::to_string(value).expect("status types always serialize"),
    )
        .into_response()
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    if admin.shutdown.is_cancelled() {
        unavailable("shutting down")
    } else if admin.sources().is_none() {
        unavailable("not ready: the store is being recovered")
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let Some(sources) = admin.sources() else {
        return unavailable("not ready: the store is being recovered");
    };
    // Prometheus asks for OpenMetrics first; anything else gets the
    // classic text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        metrics::OPENMETRICS_TEXT
    } else {
        metrics::PROMETHEUS_TEXT
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        metrics::encode(sources, openmetrics),
    )
        .into_response()
}

async fn status(State(admin): State<Arc<Admin>>) -> Response {
    match admin.sources() {
        Some(sources) => json(&status::status(sources)),
        None => unavailable("not ready: the store is being recovered"),
    }
}

async fn herd(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sources) = admin.sources() else {
        return unavailable("not ready: the store is being recovered");
    };
    let own = status::status(sources);
    json(&status::herd_view(&admin.herd, Some(own), HERD_PATIENCE).await)
}

#[derive(serde::Deserialize)]
struct RecentQuery {
    count: Option<usize>,
}

async fn recent(State(admin): State<Arc<Admin>>, Query(query): Query<RecentQuery>) -> Response {
    let Some(sources) = admin.sources() else {
        return unavailable("not ready: the store is being recovered");
    };
    let count = query.count.unwrap_or(200).clamp(1, 2_000);
    json(&status::recent(sources, count))
}

async fn history_reports(
    State(admin): State<Arc<Admin>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let Some(sources) = admin.sources() else {
        return unavailable("not ready: the store is being recovered");
    };
    let Some(config) = sources.core_database.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "this server's config has no [history] table: nothing is archived\n",
        )
            .into_response();
    };
    let request = match history::Request::parse(&params) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    // The database's clients block (and PostgreSQL's must not even be
    // dropped on a runtime thread): the whole query runs on a blocking one.
    match tokio::task::spawn_blocking(move || request.run(&config)).await {
        Ok(Ok(reports)) => json(&reports),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the core database cannot answer: {error}\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the query failed\n").into_response(),
    }
}

async fn dashboard_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        dashboard::PAGE,
    )
        .into_response()
}

async fn map() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        dashboard::map_json(),
    )
        .into_response()
}

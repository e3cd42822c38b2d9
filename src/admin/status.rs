//! `/status`, `/herd` and `/recent`: what a server says about itself, about
//! the whole herd as seen from it, and the reports it took in last, as
//! JSON. The types are shared with `herd status`, which reads them back.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{HerdMap, Sources};
use crate::replica::store::Batch;
use crate::stats::unix_millis;

/// One server, as its `/status` describes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub version: String,
    pub uptime_seconds: f64,
    pub started_unix_ms: i64,
    pub addresses: Addresses,
    pub clients_held: usize,
    /// The highest sequence number given out.
    pub head: u64,
    pub neighbours: Vec<NeighbourStatus>,
    /// Live links of the whole herd as this server knows them (both ends
    /// claim them), each as two names in order.
    pub herd_links_live: Vec<(String, String)>,
    pub totals: Totals,
    /// Per second, over the last second.
    pub rates: Rates,
    /// Per second, one entry a second, oldest first (at most five minutes).
    pub history: Vec<Rates>,
}

/// Where a server listens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Addresses {
    /// The plain TCP client port, or `none`.
    pub client: String,
    /// The TLS client port, or `none`.
    #[serde(default = "none")]
    pub client_tls: String,
    pub peer: String,
    pub admin: String,
}

fn none() -> String {
    "none".to_owned()
}

/// One neighbour's link.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NeighbourStatus {
    pub name: String,
    /// Up when this server's sending link and the neighbour's to it are
    /// both up.
    pub up: bool,
    pub sending: Direction,
    pub receiving: Direction,
    /// When a frame last came from it (Unix ms; 0 never).
    pub last_heard_unix_ms: i64,
    /// Reports numbered here that the link has yet to send (upper bound).
    pub backlog: u64,
    pub lag_seconds: f64,
    pub updates_sent: u64,
    pub updates_received: u64,
    /// Updates sent to it per second, over the last second.
    pub updates_sent_per_second: f64,
}

/// One direction of a link.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Direction {
    pub up: bool,
    /// When it last came up or went down (Unix ms; 0 never).
    pub since_unix_ms: i64,
}

/// Counts since the server started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub iamat: u64,
    pub whatsat: u64,
    pub invalid: u64,
    pub updates_received: u64,
    pub updates_sent: u64,
    pub places_queries: u64,
    pub places_cache_hits: u64,
}

/// Counts per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub iamat: f64,
    pub whatsat: f64,
    pub updates_received: f64,
    pub updates_sent: f64,
}

impl Totals {
    /// The counts as now.
    pub fn read(sources: &Sources) -> Self {
        let s = &sources.stats;
        let (places_queries, answer_hits) = sources.answers.counts();
        let provider_hits = sources
            .answers
            .provider_stats()
            .map_or(0, |provider| provider.cache_hits.get());
        Self {
            iamat: s.iamat_stored.get() + s.iamat_not_newer.get(),
            whatsat: s.whatsat.get() + s.whatsat_unknown.get(),
            invalid: s.invalid.get(),
            updates_received: s.updates_received.get(),
            updates_sent: s.updates_sent.get(),
            places_queries,
            places_cache_hits: answer_hits + provider_hits,
        }
    }

    /// The rates from `earlier`, `seconds` before.
    pub fn rates_since(&self, earlier: &Totals, seconds: f64) -> Rates {
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds.max(1e-9);
        Rates {
            iamat: rate(self.iamat, earlier.iamat),
            whatsat: rate(self.whatsat, earlier.whatsat),
            updates_received: rate(self.updates_received, earlier.updates_received),
            updates_sent: rate(self.updates_sent, earlier.updates_sent),
        }
    }
}

/// The status of the server `sources` describe.
pub fn status(sources: &Sources) -> Status {
    let s = &sources.stats;
    let store = sources.replica.store();
    let head = store.head();
    let now = unix_millis();
    let (rates, history, link_rates) = sources.history.read();
    let neighbours = sources
        .replica
        .neighbours()
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let n = s.neighbour(index)?;
            let sending = Direction {
                up: n.sending_up.get() == 1,
                since_unix_ms: n.sending_since.get(),
            };
            let receiving = Direction {
                up: n.receiving_up.get() == 1,
                since_unix_ms: n.receiving_since.get(),
            };
            Some(NeighbourStatus {
                name: name.clone(),
                up: sending.up && receiving.up,
                sending,
                receiving,
                last_heard_unix_ms: n.last_heard.get(),
                backlog: n.backlog(head),
                lag_seconds: n.lag_seconds(head, now),
                updates_sent: n.updates_sent.get(),
                updates_received: n.updates_received.get(),
                updates_sent_per_second: link_rates.get(index).copied().unwrap_or(0.0),
            })
        })
        .collect();
    Status {
        name: sources.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: sources.started.elapsed().as_secs_f64(),
        started_unix_ms: sources.started_unix_ms,
        addresses: sources.addresses.clone(),
        clients_held: store.len(),
        head,
        neighbours,
        herd_links_live: sources.links.live_links(),
        totals: Totals::read(sources),
        rates,
        history,
    }
}

/// A report as the map shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentReport {
    /// This server's sequence number for it.
    pub seq: u64,
    pub client_id: String,
    /// The server the client reported to.
    pub server: String,
    pub lat: f64,
    pub lng: f64,
}

/// The newest `count` reports this server numbered, oldest first.
pub fn recent(sources: &Sources, count: usize) -> Vec<RecentReport> {
    let store = sources.replica.store();
    // Superseded reports leave gaps in the sequence: look back further than
    // `count`, and keep the newest `count` found.
    let after = store.head().saturating_sub(count as u64 * 4);
    let mut batch = Batch::new();
    let _ = store.since(after, None, count * 4, &mut batch);
    let mut reports: Vec<RecentReport> = batch
        .iter()
        .filter_map(|(picked, at_line)| {
            let at = crate::protocol::parse_at_line(at_line)?;
            Some(RecentReport {
                seq: picked.seq,
                client_id: String::from_utf8_lossy(at.client_id).into_owned(),
                server: String::from_utf8_lossy(at.server).into_owned(),
                lat: at.location.lat,
                lng: at.location.lng,
            })
        })
        .collect();
    let skip = reports.len().saturating_sub(count);
    reports.drain(..skip);
    reports
}

/// The herd as seen from one server: each server's status, or why it could
/// not be had, and each configured link's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HerdView {
    /// The server that answered.
    pub from: String,
    pub servers: Vec<ServerView>,
    pub links: Vec<LinkView>,
}

/// One server of a [`HerdView`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    pub name: String,
    pub admin: Option<String>,
    pub reachable: bool,
    /// Why it is not reachable.
    pub error: Option<String>,
    pub status: Option<Status>,
}

/// One configured link of a [`HerdView`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub a: String,
    pub b: String,
    /// `up` (both directions), `one-way`, or `down`.
    pub state: String,
    /// Updates per second over it, both ways together.
    pub updates_per_second: f64,
}

/// Asks every server of `herd` for its status (this one's is `own`, when
/// asked from a server), at most `patience` each, all at once.
pub async fn herd_view(herd: &HerdMap, own: Option<Status>, patience: Duration) -> HerdView {
    let asks = herd.servers.iter().map(|member| {
        let own = own.as_ref().filter(|own| own.name == member.name).cloned();
        async move {
            let outcome = match (own, &member.admin) {
                (Some(own), _) => Ok(own),
                (None, Some(admin)) => fetch_status(admin, patience).await,
                (None, None) => Err("no admin address in the config".to_owned()),
            };
            let (status, error) = match outcome {
                Ok(status) => (Some(status), None),
                Err(error) => (None, Some(error)),
            };
            ServerView {
                name: member.name.clone(),
                admin: member.admin.clone(),
                reachable: status.is_some(),
                error,
                status,
            }
        }
    });
    let servers = futures_join_all(asks).await;
    let links = link_views(herd, &servers);
    HerdView {
        from: own_name(herd),
        servers,
        links,
    }
}

fn own_name(herd: &HerdMap) -> String {
    herd.me.clone().unwrap_or_default()
}

/// Each configured link's state from both ends' statuses: up when both
/// sending links are up, one-way when one is, down otherwise (an
/// unreachable end's links are down).
pub fn link_views(herd: &HerdMap, servers: &[ServerView]) -> Vec<LinkView> {
    let sending = |from: &str, to: &str| -> Option<&NeighbourStatus> {
        servers
            .iter()
            .find(|s| s.name == from)?
            .status
            .as_ref()?
            .neighbours
            .iter()
            .find(|n| n.name == to)
    };
    herd.links()
        .into_iter()
        .map(|(a, b)| {
            let ab = sending(&a, &b);
            let ba = sending(&b, &a);
            let up = |n: Option<&NeighbourStatus>| n.is_some_and(|n| n.sending.up);
            let state = match (up(ab), up(ba)) {
                (true, true) => "up",
                (false, false) => "down",
                _ => "one-way",
            };
            let rate = |n: Option<&NeighbourStatus>| n.map_or(0.0, |n| n.updates_sent_per_second);
            LinkView {
                state: state.to_owned(),
                updates_per_second: rate(ab) + rate(ba),
                a,
                b,
            }
        })
        .collect()
}

/// Runs every future of `futures` at once and returns their outputs in
/// order.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

/// The status of the server whose admin address is `admin`.
pub async fn fetch_status(admin: &str, patience: Duration) -> Result<Status, String> {
    let body = get(admin, "/status", patience).await?;
    serde_json::from_slice(&body).map_err(|error| format!("{admin}: not a status: {error}"))
}

/// The most of an answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// `GET path` from the HTTP server at `address`, within `patience`: the
/// body of a 200 answer, or why there is none. (A few lines of HTTP/1.0
/// are all an admin port needs, with no client library for them.)
pub async fn get(address: &str, path: &str, patience: Duration) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("{address}: {error}"))?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .await
            .map_err(|error| format!("{address}: {error}"))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|error| format!("{address}: {error}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(patience, exchange)
        .await
        .map_err(|_| format!("{address}: no answer within {} ms", patience.as_millis()))??;
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("{address}: not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split(' ').nth(1) != Some("200") {
        return Err(format!("{address}: {status_line}"));
    }
    Ok(answer[split + 4..].to_vec())
}

//! One server of the herd: the client accept loop, one task per client
//! connection, and shutdown. Flooding to neighbours is `flood`'s.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{HerdConfig, Limits};
use crate::log::{MessageLines, Show};
use crate::peer::routes::Routes;
use crate::peer::{Flood, Neighbour};
use crate::places::{NearbyQuery, Places, PlacesError, json::to_styled_string};
use crate::protocol::framing::{Frame, LineFramer};
use crate::protocol::time::Timestamp;
use crate::protocol::{self, Request};
use crate::replica::storage::{Durability, Storage};
use crate::replica::store::{Batch, Source, Store};

/// Everything a server needs to start, apart from its sockets.
pub struct ServerSetup {
    pub name: String,
    pub neighbours: Vec<Neighbour>,
    /// How long each origin's reports wait for each neighbour: the trees
    /// of the whole herd, worked out from the config (see `routes`).
    pub routes: Routes,
    /// The herd's shared secret, which peer links prove they know.
    pub secret: Vec<u8>,
    pub places: Arc<dyn Places>,
    pub limits: Limits,
    /// Where to keep the store on disk; `None` keeps it in memory only.
    pub storage: Option<StorageSetup>,
}

/// Where and how a server keeps its store on disk.
#[derive(Clone, Debug)]
pub struct StorageSetup {
    pub dir: PathBuf,
    pub durability: Durability,
    pub sync_interval: Duration,
}

impl ServerSetup {
    /// The setup of server `name` of `config`.
    pub fn from_config(
        config: &HerdConfig,
        name: &str,
        secret: Vec<u8>,
        places: Arc<dyn Places>,
    ) -> Result<Self, String> {
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
        let herd: Vec<(&str, Vec<&str>)> = config
            .servers
            .iter()
            .map(|server| {
                let theirs = server.neighbours.iter().map(String::as_str).collect();
                (server.name.as_str(), theirs)
            })
            .collect();
        let names: Vec<&str> = server.neighbours.iter().map(String::as_str).collect();
        Ok(Self {
            name: name.to_owned(),
            neighbours,
            routes: Routes::new(name, &names, &herd),
            secret,
            places,
            limits: config.limits.clone(),
            storage: Some(StorageSetup {
                dir: config.storage.data_dir.join(name),
                durability: config.storage.durability,
                sync_interval: Duration::from_millis(config.storage.sync_interval_ms),
            }),
        })
    }
}

/// The state one server shares between its tasks.
pub struct Server {
    pub name: String,
    pub store: Store,
    pub places: Arc<dyn Places>,
    pub limits: Limits,
    pub flood: Flood,
    pub storage: Option<Arc<Storage>>,
    /// Rendered WHATSAT JSON by query, for providers whose answers are fixed.
    pub answers: Mutex<HashMap<AnswerKey, Arc<RenderedPlaces>>>,
    /// How many answers have entered the answer cache (their log numbers).
    pub answers_numbered: AtomicU64,
}

impl Server {
    /// Stores the report of `at_line` (an AT line whose client time is
    /// `client_time`) if it is newer, logs it to disk and hands it to the
    /// links. Returns whether it was newer.
    pub fn accept(&self, at_line: &[u8], client_time: Timestamp, source: Source) -> bool {
        let Some(seq) = self.store.update(at_line, client_time, source) else {
            return false;
        };
        self.stored(seq, at_line);
        true
    }

    /// Logs to disk the report of `at_line`, just stored under `seq`, and
    /// hands it to the links.
    pub fn stored(&self, seq: u64, at_line: &[u8]) {
        if let Some(storage) = &self.storage {
            storage.append_report(seq, at_line);
        }
        // The links are woken once the batch this report came in is done
        // (`Flood::announce`).
        self.flood.updated();
    }
}

/// How long connections get to finish their replies after a shutdown
/// request, so that the whole server stops within a second (SPEC §8).
const DRAIN_TIME: Duration = Duration::from_millis(700);

/// Runs a server on already bound listeners until `shutdown` is cancelled.
///
/// The binary binds the configured ports; tests bind port 0.
pub async fn run(
    setup: ServerSetup,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (store, storage, run, cursors) = match setup.storage {
        Some(storage_setup) => {
            let (store, storage, recovered) = tokio::task::spawn_blocking(move || {
                let store = Store::new();
                // Each report goes into the store as it is read from disk.
                let (storage, recovered) = Storage::open(
                    &storage_setup.dir,
                    storage_setup.durability,
                    storage_setup.sync_interval,
                    &mut |seq, at_line| match protocol::parse_at_line(at_line) {
                        Some(at) => store.restore(at_line, at.client_time, seq),
                        None => warn!("skipped an unreadable report in the store log"),
                    },
                )?;
                Ok::<_, crate::replica::storage::StorageError>((store, storage, recovered))
            })
            .await??;
            store.continue_from(recovered.next_seq);
            storage.start_syncer();
            (store, Some(storage), recovered.run, recovered.cursors)
        }
        None => (
            Store::new(),
            None,
            rand::random::<u64>() | 1,
            Default::default(),
        ),
    };
    let server = Arc::new(Server {
        flood: Flood::new(
            &setup.name,
            setup.neighbours,
            setup.routes,
            setup.secret,
            run,
            &cursors,
        ),
        name: setup.name,
        store,
        places: setup.places,
        limits: setup.limits,
        storage,
        answers: Mutex::default(),
        answers_numbered: AtomicU64::new(0),
    });
    info!(
        server = %server.name,
        client = %client_listener.local_addr()?,
        peer = %peer_listener.local_addr()?,
        "listening"
    );
    let tasks = TaskTracker::new();
    crate::peer::start(&server, peer_listener, &tasks, &shutdown);
    if server.storage.is_some() {
        tasks.spawn(compact_now_and_then(server.clone(), shutdown.clone()));
    }
    accept_clients(&server, client_listener, &tasks, &shutdown).await;
    tasks.close();
    if tokio::time::timeout(DRAIN_TIME, tasks.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish in time; closing them");
    }
    if let Some(storage) = &server.storage {
        storage.close();
    }
    info!(server = %server.name, "stopped");
    Ok(())
}

/// Rewrites the store log when superseded records pile up.
async fn compact_now_and_then(server: Arc<Server>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Some(storage) = server.storage.clone() else {
            return;
        };
        if !storage.wants_compaction(server.store.len()) {
            continue;
        }
        let server = server.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            storage.compact(
                || server.flood.cursor_list(),
                |put| {
                    let mut next = 0;
                    let mut batch = Batch::new();
                    loop {
                        batch.clear();
                        let reached = server.store.since(next, None, 4096, &mut batch).reached;
                        for (picked, at_line) in batch.iter() {
                            put(picked.seq, at_line);
                        }
                        if reached == next {
                            break;
                        }
                        next = reached;
                    }
                },
            )
        })
        .await;
        if let Ok(Err(error)) = outcome {
            warn!(%error, "compacting the store log failed");
        }
    }
}

async fn accept_clients(
    server: &Arc<Server>,
    listener: TcpListener,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(server.limits.max_connections));
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
        let Some(slot) = PerIp::claim(&per_ip, address.ip(), server.limits.max_connections_per_ip)
        else {
            debug!(%address, "too many connections from this address; closed");
            continue;
        };
        let server = server.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(error) = serve_client(&server, stream, address, &shutdown).await {
                debug!(%address, %error, "client connection ended with an error");
            }
            drop((permit, slot));
        });
    }
}

/// Client connections per IP address.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in the per-address count, given back on drop.
struct PerIpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn claim(table: &Arc<PerIp>, ip: IpAddr, limit: usize) -> Option<PerIpSlot> {
        let mut counts = table.counts.lock().expect("per-IP lock is never poisoned");
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PerIpSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .table
            .counts
            .lock()
            .expect("per-IP lock is never poisoned");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves one client connection: lines in, one reply per line, in order.
async fn serve_client(
    server: &Server,
    mut stream: TcpStream,
    address: SocketAddr,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    debug!(%address, "client connected");
    // Formatted once: every message in and out is logged with it.
    let address_text = address.to_string();
    let limits = &server.limits;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut framer = LineFramer::new(limits.max_line_bytes);
    let mut out = Vec::new();
    let mut deadline = Instant::now() + idle;
    // When the bytes being answered were read: the receipt time of every
    // line they hold (they arrived together), from which IAMAT's skew is
    // counted. One clock reading per read, not per line.
    let mut received = now_nanos();
    // One idle timer and one shutdown waiter for the connection's life,
    // rather than a new one registered and dropped at every read: the
    // timer is moved on only when it fires early (lines came meanwhile).
    let idle_timer = tokio::time::sleep_until(deadline);
    let cancelled = shutdown.cancelled();
    tokio::pin!(idle_timer, cancelled);
    loop {
        let mut answered = false;
        // The lines of one read, logged together (see `MessageLines`).
        let mut log = MessageLines::start();
        while let Some(frame) = framer.next_frame() {
            answered = true;
            answer(server, frame, received, &address_text, &mut out, &mut log).await;
            // A client that does not read its replies stops being read.
            if out.len() >= limits.max_unsent_bytes {
                log.restamp();
                reply(server, &mut stream, &mut out, idle).await?;
            }
        }
        drop(log);
        if !out.is_empty() {
            reply(server, &mut stream, &mut out, idle).await?;
        }
        // Idle means no complete line (bytes alone do not count: a slowloris
        // client is cut off too); one clock reading per batch of lines.
        if answered {
            deadline = Instant::now() + idle;
        }
        // Wait for bytes before giving the connection a buffer, so that idle
        // connections cost no buffer memory.
        framer.release_if_empty();
        tokio::select! {
            ready = stream.readable() => ready?,
            () = &mut idle_timer => {
                if Instant::now() >= deadline {
                    debug!(%address, "idle timeout; closing");
                    break;
                }
                idle_timer.as_mut().reset(deadline);
                continue;
            }
            () = &mut cancelled => break,
        }
        // Read no more than the framer needs, so an endless line costs at
        // most `max_line_bytes` of memory.
        let room = framer.room();
        let mut buffer = framer.buffer().limit(room);
        // Tokio's own read notices a short read and forgets the readiness,
        // which saves the WouldBlock read the next turn would make; polled
        // once, since the socket was just reported readable.
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut buffer) => read,
            () = std::future::ready(()) => continue,
        };
        match read {
            Ok(0) => {
                // EOF: answer what is left, then close.
                if let Some(frame) = framer.finish() {
                    let mut log = MessageLines::start();
                    answer(server, frame, received, &address_text, &mut out, &mut log).await;
                    drop(log);
                    reply(server, &mut stream, &mut out, idle).await?;
                }
                break;
            }
            Ok(_) => received = now_nanos(),
            Err(error) => return Err(error),
        }
    }
    debug!(%address, "client disconnected");
    stream.shutdown().await
}

/// Writes the replies in `out`, once the updates they acknowledge are as
/// durable as the storage setting promises.
async fn reply(
    server: &Server,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    patience: Duration,
) -> std::io::Result<()> {
    // Handed to every neighbour link before the replies are written
    // (SPEC §3).
    server.flood.announce();
    if let Some(storage) = &server.storage {
        storage.commit().await?;
    }
    tokio::time::timeout(patience, stream.write_all(out))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
        })??;
    out.clear();
    Ok(())
}

/// Appends the reply to one framed line, whose bytes were read at
/// `received` (nanoseconds since the epoch), to `out`, and logs both.
async fn answer(
    server: &Server,
    frame: Frame,
    received: i128,
    address: &str,
    out: &mut Vec<u8>,
    log: &mut MessageLines,
) {
    let start = out.len();
    // WHATSAT answers are logged from their pre-escaped JSON; other replies
    // are one line.
    let mut answered_with = None;
    match &frame {
        Frame::Line(line) => {
            log.line(&["address=", address, " received: "], line);
            match protocol::parse_request(line) {
                Ok(Request::Iamat(iamat)) => {
                    let at_line = protocol::write_at(&server.name, received, &iamat, out);
                    // Stored, and handed to every neighbour link before the
                    // reply is written (SPEC §3; see `reply`).
                    server.accept(&out[at_line], iamat.client_time, Source::Client);
                    out.push(b'\n');
                }
                Ok(Request::Whatsat(whatsat)) => match server.store.get(whatsat.client_id) {
                    Some(report) => {
                        // The places may take a while: earlier reports of
                        // this batch are not held back meanwhile.
                        server.flood.announce();
                        let query = NearbyQuery {
                            lat: report.location.lat,
                            lng: report.location.lng,
                            radius_m: whatsat.radius.metres,
                            radius_m_text: whatsat.radius.metres_text.clone(),
                            limit: whatsat.bound,
                        };
                        let rendered = places_json(server, &query).await;
                        if rendered.number == 0 {
                            // A remote provider's answer, maybe seconds later.
                            log.restamp();
                        }
                        protocol::whatsat_reply(&report.at_line, &rendered.json, out);
                        answered_with = Some((report.at_line, rendered));
                    }
                    None => protocol::invalid_reply(line, out),
                },
                Err(reason) => {
                    debug!(address, %reason, "invalid line");
                    protocol::invalid_reply(line, out);
                }
            }
        }
        Frame::TooLong(head) => {
            log.line(
                &[
                    "address=",
                    address,
                    " received an over-long line starting: ",
                ],
                &head[..head.len().min(80)],
            );
            protocol::invalid_reply(head, out);
        }
    }
    match answered_with {
        // An answer from the cache is written out in full the first time
        // only, numbered; later sends of the same answer refer to it. For a
        // server answering many WHATSATs about the same places, this keeps
        // the log (and the disk writes behind it) to a few lines per answer.
        Some((at_line, rendered)) if rendered.number != 0 => {
            let number = rendered.number.to_string();
            let head = ["address=", address, " places=", &number, " sent: "];
            if rendered.logged_before() {
                log.line_with_tail(
                    &head,
                    &at_line,
                    &["\\n(places answer ", &number, " as first sent)\\n"],
                );
            } else {
                log.line_with_tail(&head, &at_line, &["\\n", &rendered.logged, "\\n"]);
            }
        }
        Some((at_line, rendered)) => {
            log.line_with_tail(
                &["address=", address, " sent: "],
                &at_line,
                &["\\n", &rendered.logged, "\\n"],
            );
        }
        None => {
            let reply = &out[start..];
            log.line(
                &["address=", address, " sent: "],
                reply.strip_suffix(b"\n").unwrap_or(reply),
            );
        }
    }
}

/// A WHATSAT answer's JSON, ready to send and to log.
pub struct RenderedPlaces {
    /// Google's layout, runs of newlines collapsed, no trailing newline.
    pub json: String,
    /// The same, escaped for a one-line log entry.
    pub logged: String,
    /// For an answer kept in the answer cache, its number in this run's log
    /// (from 1); 0 for an answer used once.
    pub number: u64,
    /// Whether the answer has been written to the log in full.
    logged_once: AtomicBool,
}

impl RenderedPlaces {
    fn new(value: &Value, number: u64) -> Self {
        let mut json = to_styled_string(value);
        while json.contains("\n\n") {
            json = json.replace("\n\n", "\n");
        }
        json.truncate(json.trim_end_matches('\n').len());
        let logged = Show(json.as_bytes()).to_string();
        Self {
            json,
            logged,
            number,
            logged_once: AtomicBool::new(false),
        }
    }

    /// True if the answer was logged in full before; marks it logged.
    fn logged_before(&self) -> bool {
        self.logged_once.swap(true, Ordering::Relaxed)
    }
}

/// The rendered places JSON for a query, from the answer cache when the
/// provider's answers are fixed.
async fn places_json(server: &Server, query: &NearbyQuery) -> Arc<RenderedPlaces> {
    let key = AnswerKey {
        lat: query.lat.to_bits(),
        lng: query.lng.to_bits(),
        radius_m: query.radius_m_text.clone(),
        limit: query.limit,
    };
    let cacheable = server.places.answers_are_fixed();
    if cacheable && let Some(json) = server.answers.lock().expect("answer cache lock").get(&key) {
        return json.clone();
    }
    let places = server.places.nearby(query).await;
    let number = if cacheable {
        server.answers_numbered.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        0
    };
    let json = Arc::new(RenderedPlaces::new(
        &places_answer(places, query.limit),
        number,
    ));
    if cacheable {
        let mut answers = server.answers.lock().expect("answer cache lock");
        // Bounded: start over when full rather than track recency.
        if answers.len() >= ANSWER_CACHE_ENTRIES {
            answers.clear();
        }
        answers.insert(key, json.clone());
    }
    json
}

/// Rendered answers kept for providers whose answers are fixed.
const ANSWER_CACHE_ENTRIES: usize = 4096;

/// A query, exactly: the location's bits, the radius text and the bound.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    lat: u64,
    lng: u64,
    radius_m: String,
    limit: usize,
}

/// The JSON of a WHATSAT answer: the provider's, with `results` cut to the
/// bound, or an empty answer carrying the failure's status (SPEC §4).
pub fn places_answer(places: Result<Value, PlacesError>, bound: usize) -> Value {
    match places {
        Ok(mut value) => {
            if let Some(results) = value.get_mut("results").and_then(Value::as_array_mut) {
                results.truncate(bound);
            }
            value
        }
        Err(error) => {
            let status = match &error {
                PlacesError::Status(status) => status.as_str(),
                PlacesError::Unavailable(_) => "UNKNOWN_ERROR",
            };
            warn!(%error, "places provider failed");
            json!({ "html_attributions": [], "results": [], "status": status })
        }
    }
}

/// Wall-clock nanoseconds since the epoch (negative before it).
fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_providers_give_an_empty_answer_with_their_status() {
        let answer = places_answer(Err(PlacesError::Status("OVER_QUERY_LIMIT".into())), 5);
        assert_eq!(
            answer,
            json!({"html_attributions": [], "results": [], "status": "OVER_QUERY_LIMIT"})
        );
        let answer = places_answer(Err(PlacesError::Unavailable("timed out".into())), 5);
        assert_eq!(answer["status"], "UNKNOWN_ERROR");
        let many = json!({"html_attributions": [], "results": [1, 2, 3, 4], "status": "OK"});
        assert_eq!(places_answer(Ok(many), 2)["results"], json!([1, 2]));
    }
}

//! The fault campaign (issue 4): the five-server herd as real processes,
//! under a continuous IAMAT load on every server, through a seeded random
//! schedule of faults — SIGKILL and restart of a server, SIGSTOP/SIGCONT
//! pauses, SIGKILL of the whole herd at once and restart, and cuts of single
//! links (by a proxy in front of each peer port, see `common/chaos.rs`).
//! Then everything is healed, the load stops, and every server must hold,
//! for every client, the newest report any server acknowledged (or a newer
//! one that client sent), all servers alike, within `CONVERGENCE_LIMIT`.
//!
//! `HERD_CAMPAIGN_SEED` (default 1) and `HERD_CAMPAIGN_SECONDS` (default 15)
//! choose the campaign; the fault schedule is a function of the two alone.
//! `HERD_CAMPAIGN_KEEP=1` keeps the herd's folder (configs, logs, data and
//! `campaign.txt`, the schedule as run), which a failure always keeps.
//! A long campaign:
//!
//! ```text
//! HERD_CAMPAIGN_SECONDS=600 HERD_CAMPAIGN_SEED=7 cargo test --release --test fault_campaign -- --nocapture
//! ```

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chaos::LinkProxies;
use common::process::ProcessHerd;
use common::{DEFAULT_TOPOLOGY, env_number, eventually, now_text};
use nix::sys::signal::Signal;

/// How long the herd may take to agree once everything is healed.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(20);
/// Client threads of the load, and client ids each one reports at a time.
const LOAD_THREADS: usize = 4;
const IDS_PER_THREAD: usize = 6;
/// How long (in milliseconds, from, to) a client id reports before it
/// retires for good and a new id takes its place.
const ID_LIFETIME: (u64, u64) = (2_000, 10_000);
/// Pause between two requests of one load thread (pacing, so that a long
/// campaign's logs stay reasonable: about 250 requests a second per thread).
const LOAD_PACE: Duration = Duration::from_millis(3);
/// A load request unanswered this long is given up (its server is paused,
/// say): it is then unacknowledged, and its connection is dropped.
const REPLY_TIME: Duration = Duration::from_millis(250);
/// How long a load thread leaves alone a server that failed to answer:
/// doubling from the first to the most while it keeps failing.
const AVOID_FIRST: Duration = Duration::from_millis(200);
const AVOID_MAX: Duration = Duration::from_millis(3200);
/// WHATSAT requests the final survey pipelines at a time.
const SURVEY_BATCH: usize = 64;
/// At most this many servers are down or paused at once, herd kills apart.
const MAX_SERVERS_FAULTED: usize = 3;

// ------------------------------------------------------------ settings, RNG

struct Settings {
    seed: u64,
    duration: Duration,
    keep: bool,
}

fn settings() -> Settings {
    Settings {
        seed: env_number("HERD_CAMPAIGN_SEED", 1),
        duration: Duration::from_secs(env_number("HERD_CAMPAIGN_SECONDS", 15)),
        keep: std::env::var("HERD_CAMPAIGN_KEEP").is_ok_and(|v| !v.is_empty() && v != "0"),
    }
}

/// SplitMix64: tiny, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x005e_ed0f_c4a0_5eed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration in `[low, high]` milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

// ------------------------------------------------------------ the schedule

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Kill(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    HerdKill,
    Cut(usize, usize),
    Heal(usize, usize),
}

#[derive(Clone, Debug)]
struct Event {
    at: Duration,
    action: Action,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Up,
    Paused,
    Down,
}

#[derive(Debug, Default)]
struct FaultCounts {
    kill: usize,
    pause: usize,
    herd_kill: usize,
    cut: usize,
}

impl FaultCounts {
    fn total(&self) -> usize {
        self.kill + self.pause + self.herd_kill + self.cut
    }
}

/// The links of the topology, as pairs of server indices.
fn links(names: &[&str]) -> Vec<(usize, usize)> {
    let index = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let mut links = Vec::new();
    for (name, neighbours) in DEFAULT_TOPOLOGY {
        for neighbour in *neighbours {
            let (a, b) = (index(name), index(neighbour));
            if !links.contains(&(a.min(b), a.max(b))) {
                links.push((a.min(b), a.max(b)));
            }
        }
    }
    links
}

/// The whole fault schedule, worked out in virtual time from the seed alone,
/// so that a seed always means the same faults in the same order. Faults
/// still in force at `duration` are left to the final heal.
fn plan(seed: u64, duration: Duration, servers: usize, links: &[(usize, usize)]) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    let mut events = Vec::new();
    let mut condition = vec![Condition::Up; servers];
    // When each server's fault ends, and each cut link heals.
    let mut until = vec![Duration::ZERO; servers];
    let mut cut_until: Vec<Option<Duration>> = vec![None; links.len()];
    let mut now = Duration::ZERO;
    loop {
        now += rng.millis(150, 800);
        if now >= duration {
            break;
        }
        // Recoveries due by now, in time order.
        let mut due: Vec<Event> = Vec::new();
        for s in 0..servers {
            if condition[s] != Condition::Up && until[s] <= now {
                let action = match condition[s] {
                    Condition::Down => Action::Restart(s),
                    _ => Action::Resume(s),
                };
                due.push(Event {
                    at: until[s],
                    action,
                });
                condition[s] = Condition::Up;
            }
        }
        for (l, &(a, b)) in links.iter().enumerate() {
            if let Some(end) = cut_until[l].filter(|end| *end <= now) {
                due.push(Event {
                    at: end,
                    action: Action::Heal(a, b),
                });
                cut_until[l] = None;
            }
        }
        due.sort_by_key(|e| e.at);
        events.extend(due);

        let faulted = condition.iter().filter(|c| **c != Condition::Up).count();
        let roll = rng.below(100);
        let pick = |rng: &mut Rng, candidates: Vec<usize>| {
            (!candidates.is_empty())
                .then(|| candidates[rng.below(candidates.len() as u64) as usize])
        };
        if roll < 6 {
            // Every server at once, paused ones too; all start again together.
            let end = now + rng.millis(0, 1500);
            events.push(Event {
                at: now,
                action: Action::HerdKill,
            });
            condition.fill(Condition::Down);
            until.fill(end);
        } else if roll < 35 {
            // A paused server may be killed even when the most are faulted.
            let candidates = (0..servers)
                .filter(|&s| match condition[s] {
                    Condition::Up => faulted < MAX_SERVERS_FAULTED,
                    Condition::Paused => true,
                    Condition::Down => false,
                })
                .collect();
            if let Some(s) = pick(&mut rng, candidates) {
                events.push(Event {
                    at: now,
                    action: Action::Kill(s),
                });
                condition[s] = Condition::Down;
                until[s] = now + rng.millis(0, 2000);
            }
        } else if roll < 60 {
            let candidates = (0..servers)
                .filter(|&s| condition[s] == Condition::Up)
                .collect();
            if faulted < MAX_SERVERS_FAULTED
                && let Some(s) = pick(&mut rng, candidates)
            {
                events.push(Event {
                    at: now,
                    action: Action::Pause(s),
                });
                condition[s] = Condition::Paused;
                until[s] = now + rng.millis(100, 5000);
            }
        } else {
            let candidates = (0..links.len())
                .filter(|&l| cut_until[l].is_none())
                .collect();
            if let Some(l) = pick(&mut rng, candidates) {
                let (a, b) = links[l];
                events.push(Event {
                    at: now,
                    action: Action::Cut(a, b),
                });
                cut_until[l] = Some(now + rng.millis(100, 4000));
            }
        }
    }
    events
}

fn count_faults(events: &[Event]) -> FaultCounts {
    let mut counts = FaultCounts::default();
    for event in events {
        match event.action {
            Action::Kill(_) => counts.kill += 1,
            Action::Pause(_) => counts.pause += 1,
            Action::HerdKill => counts.herd_kill += 1,
            Action::Cut(..) => counts.cut += 1,
            _ => {}
        }
    }
    counts
}

// ------------------------------------------------------------ the load

/// A report a load thread sent: its client time (nanoseconds), text, the
/// server it went to, and its location.
#[derive(Clone, Debug)]
struct Sent {
    time: u128,
    time_text: String,
    server: String,
    location: String,
}

/// What one client id's reports came to.
#[derive(Clone, Debug, Default)]
struct ClientRecord {
    /// The acknowledged report with the greatest client time: (time, AT line).
    newest_ack: Option<(u128, String)>,
    /// Reports sent after `newest_ack` without an answer. A server may have
    /// stored one (it was paused, or died after storing it), so each is a
    /// report the herd may rightly end up holding.
    unanswered: Vec<Sent>,
}

#[derive(Debug, Default)]
struct LoadOutcome {
    clients: HashMap<String, ClientRecord>,
    acknowledged: u64,
    unanswered: u64,
    /// Reports not sent: no connection (their server was down).
    refused: u64,
    /// Replies that are wrong in themselves (not an AT line for the report).
    anomalies: Vec<String>,
}

/// A client time `secs.nnnnnnnnn` in nanoseconds.
fn nanos(text: &str) -> Option<u128> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u128 = format!("{frac:0<9}").parse().ok()?;
    Some(secs.parse::<u128>().ok()? * 1_000_000_000 + frac)
}

/// A blocking line connection that never panics: every failure is an `Err`.
struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(address: SocketAddr, reply_time: Duration) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(reply_time))?;
        stream.set_write_timeout(Some(reply_time))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Connection { stream, reader })
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            return Err(std::io::Error::other("connection closed mid-reply"));
        }
        String::from_utf8(line).map_err(std::io::Error::other)
    }

    fn request(&mut self, line: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        self.read_line()
    }

    /// The AT line the server holds for each of `client_ids`, `None` where
    /// it answers `?` (it does not know the client); pipelined.
    fn at_lines_of(&mut self, client_ids: &[String]) -> std::io::Result<Vec<Option<String>>> {
        let mut requests = String::new();
        for client_id in client_ids {
            let _ = writeln!(requests, "WHATSAT {client_id} 1 1");
        }
        self.stream.write_all(requests.as_bytes())?;
        let mut answers = Vec::with_capacity(client_ids.len());
        for _ in client_ids {
            let at = self.read_line()?;
            if at.starts_with("? ") {
                answers.push(None);
                continue;
            }
            // The places JSON, then the blank line that ends the answer.
            while !self.read_line()?.is_empty() {}
            answers.push(Some(at));
        }
        Ok(answers)
    }
}

/// One load thread: reports its client ids, in turn, to random servers,
/// with strictly increasing client times, until `stop`.
fn load_thread(
    thread: usize,
    seed: u64,
    servers: Vec<(String, SocketAddr)>,
    stop: Arc<AtomicBool>,
) -> LoadOutcome {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(thread as u64 + 1));
    // Each id reports for a while, then retires for good and a new one
    // takes its place: a retired id's last acknowledged report must then
    // outlive every fault that follows, to the end of the campaign.
    let mut serial = 0;
    let mut fresh_id = |rng: &mut Rng| {
        serial += 1;
        let lifetime = rng.millis(ID_LIFETIME.0, ID_LIFETIME.1);
        (
            format!("campaign-{thread}-{serial}"),
            Instant::now() + lifetime,
        )
    };
    let mut ids: Vec<(String, Instant)> = (0..IDS_PER_THREAD).map(|_| fresh_id(&mut rng)).collect();
    let mut outcome = LoadOutcome::default();
    let mut connections: Vec<Option<Connection>> = servers.iter().map(|_| None).collect();
    let mut avoid_until: Vec<Instant> = servers.iter().map(|_| Instant::now()).collect();
    let mut avoid_for: Vec<Duration> = servers.iter().map(|_| Duration::ZERO).collect();
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        let slot = turn % ids.len();
        turn += 1;
        if ids[slot].1 <= Instant::now() {
            ids[slot] = fresh_id(&mut rng);
        }
        let id = &ids[slot].0;
        // A server that just failed to answer is left alone for a moment
        // (it is paused or down), unless every one of them is.
        let now = Instant::now();
        let ready: Vec<usize> = (0..servers.len())
            .filter(|&s| avoid_until[s] <= now)
            .collect();
        if ready.is_empty() {
            // All down (a herd kill): wait for the first to be worth a try.
            let first = avoid_until.iter().min().copied().unwrap_or(now);
            std::thread::sleep(first.saturating_duration_since(now));
            continue;
        }
        let s = ready[rng.below(ready.len() as u64) as usize];
        let (name, address) = &servers[s];
        let location = format!(
            "{:+}.{:06}{:+}.{:06}",
            rng.below(179) as i64 - 89,
            rng.below(1_000_000),
            rng.below(359) as i64 - 179,
            rng.below(1_000_000)
        );
        let time_text = now_text();
        let sent = Sent {
            time: nanos(&time_text).expect("now_text is a client time"),
            time_text: time_text.clone(),
            server: name.clone(),
            location: location.clone(),
        };
        let line = format!("IAMAT {id} {location} {time_text}");
        let connection = match connections[s].take() {
            Some(connection) => Ok(connection),
            None => Connection::open(*address, REPLY_TIME),
        };
        let reply = connection.map(|mut connection| {
            let reply = connection.request(&line);
            if reply.is_ok() {
                connections[s] = Some(connection);
            }
            reply
        });
        let record = outcome.clients.entry(id.clone()).or_default();
        match reply {
            Err(_) => {
                // Not connected, so not sent: the server is down.
                outcome.refused += 1;
                avoid_for[s] = (avoid_for[s] * 2).clamp(AVOID_FIRST, AVOID_MAX);
                avoid_until[s] = Instant::now() + avoid_for[s];
            }
            Ok(Ok(at)) => {
                let fields: Vec<&str> = at.split(' ').collect();
                let good = matches!(fields[..], ["AT", server, _skew, client, loc, time]
                    if server == name && client == id && loc == location && time == time_text);
                avoid_for[s] = Duration::ZERO;
                if good {
                    outcome.acknowledged += 1;
                    record.newest_ack = Some((sent.time, at));
                    record.unanswered.clear();
                } else {
                    outcome
                        .anomalies
                        .push(format!("{name} answered {line:?} with {at:?}"));
                }
            }
            Ok(Err(_)) => {
                // Nothing was promised, but the server may have stored it.
                outcome.unanswered += 1;
                record.unanswered.push(sent);
                avoid_for[s] = (avoid_for[s] * 2).clamp(AVOID_FIRST, AVOID_MAX);
                avoid_until[s] = Instant::now() + avoid_for[s];
            }
        }
        std::thread::sleep(LOAD_PACE);
    }
    outcome
}

// ------------------------------------------------------------ the check

/// What the herd holds, per client, per server (`None`: does not know it;
/// `Err`: did not answer).
type Survey = HashMap<String, Vec<Result<Option<String>, String>>>;

fn survey(servers: &[(String, SocketAddr)], clients: &[String]) -> Survey {
    let mut held: Survey = clients
        .iter()
        .map(|c| (c.clone(), Vec::with_capacity(servers.len())))
        .collect();
    for (name, address) in servers {
        let mut connection = None;
        // Pipelined, a batch at a time, so that neither side's buffers fill.
        for batch in clients.chunks(SURVEY_BATCH) {
            let answers = match connection.take() {
                Some(connection) => Ok(connection),
                None => Connection::open(*address, Duration::from_secs(5)),
            }
            .and_then(|mut open| {
                let answers = open.at_lines_of(batch)?;
                connection = Some(open);
                Ok(answers)
            });
            match answers {
                Ok(answers) => {
                    for (client, answer) in batch.iter().zip(answers) {
                        held.get_mut(client).unwrap().push(Ok(answer));
                    }
                }
                Err(error) => {
                    for client in batch {
                        held.get_mut(client)
                            .unwrap()
                            .push(Err(format!("{name}: {error}")));
                    }
                }
            }
        }
    }
    held
}

#[derive(Debug, Default)]
struct Verdict {
    /// Clients whose newest acknowledged report some server does not hold
    /// (nor a newer report of that client).
    lost: Vec<String>,
    /// Clients the servers do not agree on.
    disagreements: Vec<String>,
    /// Servers holding a report that no client sent, or that did not answer.
    other: Vec<String>,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.lost.is_empty() && self.disagreements.is_empty() && self.other.is_empty()
    }
}

fn judge(names: &[String], clients: &HashMap<String, ClientRecord>, held: &Survey) -> Verdict {
    let mut verdict = Verdict::default();
    let mut ids: Vec<&String> = clients.keys().collect();
    ids.sort();
    for id in ids {
        let record = &clients[id];
        let lines = &held[id];
        let mut lost_at: Vec<(&str, String)> = Vec::new();
        for (name, line) in names.iter().zip(lines) {
            let line = match line {
                Err(error) => {
                    verdict.other.push(format!("no answer about {id}: {error}"));
                    continue;
                }
                Ok(None) => {
                    if record.newest_ack.is_some() {
                        lost_at.push((name, "nothing (`?`)".to_owned()));
                    }
                    continue;
                }
                Ok(Some(line)) => line,
            };
            let fields: Vec<&str> = line.split(' ').collect();
            let ["AT", server, _skew, client, location, time] = fields[..] else {
                verdict
                    .other
                    .push(format!("{name} holds {line:?} for {id}"));
                continue;
            };
            let time_nanos = nanos(time).unwrap_or(0);
            match &record.newest_ack {
                Some((acked, _)) if time_nanos < *acked => {
                    lost_at.push((name, format!("the older {line:?}")))
                }
                Some((acked, acked_line)) if time_nanos == *acked && line != acked_line => {
                    lost_at.push((name, format!("another line {line:?}")))
                }
                Some((acked, _)) if time_nanos == *acked => {}
                _ => {
                    // Newer than anything acknowledged: it must be a report
                    // this client sent and got no answer for.
                    let sent = record.unanswered.iter().any(|s| {
                        s.time_text == time
                            && s.server == server
                            && s.location == location
                            && client == id
                    });
                    if !sent {
                        verdict
                            .other
                            .push(format!("{name} holds {line:?}, which no client sent"));
                    }
                }
            }
        }
        if let (false, Some((_, acked_line))) = (lost_at.is_empty(), &record.newest_ack) {
            // Grouped by what is held instead, since it is often the same.
            let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
            for (name, holding) in lost_at {
                match groups.iter_mut().find(|(h, _)| *h == holding) {
                    Some((_, names)) => names.push(name),
                    None => groups.push((holding, vec![name])),
                }
            }
            let groups: Vec<String> = groups
                .into_iter()
                .map(|(holding, names)| format!("{} hold {holding}", names.join(", ")))
                .collect();
            verdict.lost.push(format!(
                "{id}: acknowledged {acked_line:?}, but {}",
                groups.join("; ")
            ));
        }
        let answers: Vec<&Option<String>> = lines.iter().filter_map(|l| l.as_ref().ok()).collect();
        if answers.windows(2).any(|w| w[0] != w[1]) {
            let shown: Vec<String> = names
                .iter()
                .zip(lines)
                .map(|(name, line)| format!("{name}={line:?}"))
                .collect();
            verdict
                .disagreements
                .push(format!("{id}: {}", shown.join(", ")));
        }
    }
    verdict
}

// ------------------------------------------------------------ the campaign

/// The wall-clock time of day, UTC, as the servers' logs show it.
fn clock() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// The schedule as run, to stdout and to `campaign.txt` in the herd folder.
struct Journal {
    file: std::fs::File,
    start: Instant,
}

impl Journal {
    fn note(&mut self, text: &str) {
        let line = format!(
            "[{:8.3}s {}] {text}",
            self.start.elapsed().as_secs_f64(),
            clock()
        );
        println!("{line}");
        let _ = writeln!(self.file, "{line}");
    }
}

/// The herd under test, its per-server configs and its link proxies.
struct Campaign {
    herd: ProcessHerd,
    names: Vec<String>,
    configs: Vec<PathBuf>,
    proxies: LinkProxies,
    condition: Vec<Condition>,
    journal: Journal,
    /// Servers that exited without being killed: each a crash.
    crashes: Vec<String>,
}

impl Campaign {
    /// Starts the five-server herd, every server with its own config in
    /// which the other servers' peer addresses are their proxies.
    fn start() -> Campaign {
        Self::start_with("")
    }

    /// As [`Campaign::start`], with `extra` added to every config.
    fn start_with(extra: &str) -> Campaign {
        for _ in 0..5 {
            let herd = ProcessHerd::configure(DEFAULT_TOPOLOGY, extra);
            let names: Vec<String> = herd.servers.iter().map(|s| s.name.clone()).collect();
            let targets: Vec<(String, SocketAddr)> = herd
                .servers
                .iter()
                .map(|s| (s.name.clone(), s.peer))
                .collect();
            let proxies = LinkProxies::start(&targets);
            let shared = std::fs::read_to_string(&herd.config_path).expect("the herd config");
            let configs: Vec<PathBuf> = names
                .iter()
                .map(|me| {
                    let mut config = shared.clone();
                    for server in herd.servers.iter().filter(|s| &s.name != me) {
                        config = config.replace(
                            &format!("peer = \"{}\"", server.peer),
                            &format!("peer = \"{}\"", proxies.address(&server.name)),
                        );
                    }
                    let path = herd.dir.path().join(format!("{me}.toml"));
                    std::fs::write(&path, config).expect("writing a server's config");
                    path
                })
                .collect();
            let file = std::fs::File::create(herd.dir.path().join("campaign.txt"))
                .expect("creating campaign.txt");
            let mut campaign = Campaign {
                condition: vec![Condition::Up; names.len()],
                herd,
                names,
                configs,
                proxies,
                journal: Journal {
                    file,
                    start: Instant::now(),
                },
                crashes: Vec::new(),
            };
            let launched = (0..campaign.names.len()).all(|s| {
                let (name, config) = (campaign.names[s].clone(), campaign.configs[s].clone());
                campaign.herd.launch_with_config(&name, &config)
            });
            if launched {
                return campaign;
            }
        }
        panic!("could not start the campaign's herd on free ports five times in a row");
    }

    fn servers(&self) -> Vec<(String, SocketAddr)> {
        self.herd
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.client))
            .collect()
    }

    /// Starts a killed server again on its ports (again, should one be taken
    /// for a moment by some other socket).
    fn restart(&mut self, s: usize) {
        let (name, config) = (self.names[s].clone(), self.configs[s].clone());
        for _ in 0..5 {
            if self.herd.launch_with_config(&name, &config) {
                self.condition[s] = Condition::Up;
                return;
            }
        }
        panic!("{name} could not start again on its ports");
    }

    /// Notes servers that exited on their own, and starts them again.
    fn look_for_crashes(&mut self) {
        for s in 0..self.names.len() {
            if self.condition[s] == Condition::Down {
                continue;
            }
            let name = self.names[s].clone();
            if let Some(status) = self.herd.exited(&name) {
                let crash = format!("{name} exited on its own ({status})");
                self.journal.note(&format!("CRASH: {crash}"));
                self.crashes.push(crash);
                self.herd.kill(&name);
                self.restart(s);
            }
        }
    }

    fn perform(&mut self, action: &Action) {
        let name = |s: &usize| self.names[*s].clone();
        match action {
            Action::Kill(s) => {
                self.herd.kill(&name(s));
                self.condition[*s] = Condition::Down;
            }
            Action::Restart(s) => self.restart(*s),
            Action::Pause(s) => {
                self.herd.signal(&name(s), Signal::SIGSTOP);
                self.condition[*s] = Condition::Paused;
            }
            Action::Resume(s) => {
                self.herd.signal(&name(s), Signal::SIGCONT);
                self.condition[*s] = Condition::Up;
            }
            Action::HerdKill => {
                // All at once: signal every server, then reap them.
                let running: Vec<usize> = (0..self.names.len())
                    .filter(|&s| self.condition[s] != Condition::Down)
                    .collect();
                for s in &running {
                    self.herd.signal(&name(s), Signal::SIGKILL);
                }
                for s in &running {
                    self.herd.kill(&name(s));
                    self.condition[*s] = Condition::Down;
                }
            }
            Action::Cut(a, b) => self.proxies.cut(&name(a), &name(b)),
            Action::Heal(a, b) => self.proxies.heal(&name(a), &name(b)),
        }
    }

    fn describe(&self, action: &Action) -> String {
        let name = |s: &usize| self.names[*s].as_str();
        match action {
            Action::Kill(s) => format!("kill {}", name(s)),
            Action::Restart(s) => format!("restart {}", name(s)),
            Action::Pause(s) => format!("pause {}", name(s)),
            Action::Resume(s) => format!("resume {}", name(s)),
            Action::HerdKill => "kill the whole herd".to_owned(),
            Action::Cut(a, b) => format!("cut {}-{}", name(a), name(b)),
            Action::Heal(a, b) => format!("heal {}-{}", name(a), name(b)),
        }
    }

    /// Ends every fault: restarts the dead, resumes the paused, heals cuts.
    fn heal_everything(&mut self) {
        self.proxies.heal_all();
        for s in 0..self.names.len() {
            match self.condition[s] {
                Condition::Up => {}
                Condition::Paused => self.perform(&Action::Resume(s)),
                Condition::Down => self.restart(s),
            }
        }
        self.look_for_crashes();
        self.journal.note("healed everything");
    }
}

#[test]
fn the_herd_survives_a_seeded_fault_campaign() {
    let settings = settings();
    let mut campaign = Campaign::start();
    // Until the check passes, the herd's folder is kept for a post-mortem.
    campaign.herd.dir.disable_cleanup(true);
    let names = campaign.names.clone();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let events = plan(
        settings.seed,
        settings.duration,
        names.len(),
        &links(&name_refs),
    );
    let faults = count_faults(&events);
    campaign.journal.note(&format!(
        "campaign seed={} duration={}s: {} events planned; herd folder {}",
        settings.seed,
        settings.duration.as_secs(),
        events.len(),
        campaign.herd.dir.path().display()
    ));

    // The load: every thread reports to every server, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..LOAD_THREADS)
        .map(|t| {
            let (servers, stop) = (campaign.servers(), stop.clone());
            let seed = settings.seed;
            std::thread::spawn(move || load_thread(t, seed, servers, stop))
        })
        .collect();

    // The faults, each at its planned time (sleeping until then is the
    // schedule itself).
    let start = Instant::now();
    for event in &events {
        if let Some(wait) = event.at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        campaign.look_for_crashes();
        let text = campaign.describe(&event.action);
        campaign.journal.note(&text);
        campaign.perform(&event.action);
    }
    if let Some(wait) = settings.duration.checked_sub(start.elapsed()) {
        std::thread::sleep(wait);
    }

    // Heal, stop the load, and wait for the herd to agree.
    campaign.heal_everything();
    let healed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut outcome = LoadOutcome::default();
    for thread in load {
        let part = thread.join().expect("a load thread panicked");
        outcome.clients.extend(part.clients);
        outcome.acknowledged += part.acknowledged;
        outcome.unanswered += part.unanswered;
        outcome.refused += part.refused;
        outcome.anomalies.extend(part.anomalies);
    }
    campaign.journal.note(&format!(
        "load stopped: {} acknowledged, {} unanswered, {} not sent (server down)",
        outcome.acknowledged, outcome.unanswered, outcome.refused
    ));
    let servers = campaign.servers();
    let mut clients: Vec<String> = outcome.clients.keys().cloned().collect();
    clients.sort();
    let mut pause = Duration::from_millis(1);
    let (verdict, convergence) = loop {
        let verdict = judge(&names, &outcome.clients, &survey(&servers, &clients));
        if verdict.clean() {
            break (verdict, Some(healed.elapsed()));
        }
        if healed.elapsed() > CONVERGENCE_LIMIT {
            break (verdict, None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    campaign.look_for_crashes();

    let stats = campaign.proxies.stats();
    let summary = format!(
        "campaign seed={} duration={}s faults={} (kill {}, pause {}, herd-kill {}, cut {}) \
         clients={} acknowledged={} unanswered={} lost={} disagreements={} crashes={} \
         convergence={}",
        settings.seed,
        settings.duration.as_secs(),
        faults.total(),
        faults.kill,
        faults.pause,
        faults.herd_kill,
        faults.cut,
        clients.len(),
        outcome.acknowledged,
        outcome.unanswered,
        verdict.lost.len(),
        verdict.disagreements.len(),
        campaign.crashes.len(),
        convergence.map_or(
            format!("none within {}s", CONVERGENCE_LIMIT.as_secs()),
            |took| format!("{:.2}s", took.as_secs_f64())
        ),
    );
    campaign.journal.note(&format!(
        "proxies: {} link connections relayed, {} refused while cut, {} severed by cuts",
        stats.relayed, stats.refused, stats.severed
    ));
    campaign.journal.note(&summary);

    let failed = !verdict.clean()
        || convergence.is_none()
        || !campaign.crashes.is_empty()
        || !outcome.anomalies.is_empty();
    let mut report = String::new();
    if failed {
        for (what, items) in [
            ("lost", &verdict.lost),
            ("disagreement", &verdict.disagreements),
            ("other", &verdict.other),
            ("crash", &campaign.crashes),
            ("bad reply", &outcome.anomalies),
        ] {
            for item in items.iter().take(20) {
                let _ = writeln!(report, "{what}: {item}");
            }
        }
    }
    if failed || settings.keep {
        let _ = writeln!(
            report,
            "kept the herd folder (configs, logs/, data/, campaign.txt): {}",
            campaign.herd.dir.path().display()
        );
    }
    // Kept unless all went well (a panic on the way keeps it too).
    campaign.herd.dir.disable_cleanup(failed || settings.keep);
    println!("{summary}");
    if !report.is_empty() {
        println!("{report}");
    }
    assert!(!failed, "{summary}\n{report}");
}

/// The proxies themselves: a cut link carries nothing (updates go around
/// it), and a healed one comes back.
#[test]
fn a_cut_link_carries_nothing_until_healed() {
    let campaign = Campaign::start();
    let (herd, proxies) = (&campaign.herd, &campaign.proxies);
    let all: Vec<&str> = campaign.names.iter().map(String::as_str).collect();
    let at = herd.client("Jaquez").iamat("before", "+1+1");
    herd.await_everywhere(&all, "before", &at);
    // Both directions of all six links, each through a proxy; and Hill's
    // with Jaquez up now, not only relayed once (a connection made while a
    // server was still starting may have failed since).
    eventually("every link to come up", || proxies.stats().relayed >= 12);
    let with_jaquez = |state: &str| {
        let log = herd.log("Hill");
        ["sending to", "receiving from"].map(|direction| {
            log.matches(&format!("link {state}: {direction} Jaquez"))
                .count()
        })
    };
    eventually("Hill's link with Jaquez to be up both ways", || {
        let (up, down) = (with_jaquez("up"), with_jaquez("down"));
        up[0] > down[0] && up[1] > down[1]
    });
    let down_before = with_jaquez("down");

    proxies.cut("Hill", "Jaquez");
    eventually(
        "Hill to lose both directions of its link with Jaquez",
        || {
            let down = with_jaquez("down");
            down[0] > down_before[0] && down[1] > down_before[1]
        },
    );
    assert!(proxies.stats().severed >= 2, "{:?}", proxies.stats());
    let mark = herd.log("Hill").len();
    let around = herd.client("Jaquez").iamat("around", "+2+2");
    herd.await_everywhere(&["Hill"], "around", &around);
    eventually("Hill to log where it came from", || {
        herd.log("Hill")[mark..].contains(&format!("received from Smith: {around}"))
    });
    let since = herd.log("Hill")[mark..].to_owned();
    assert!(!since.contains("received from Jaquez"), "{since}");

    proxies.heal("Hill", "Jaquez");
    eventually("the link to come back", || {
        herd.log("Hill")[mark..].contains("link up: sending to Jaquez")
    });
    let after = herd.client("Hill").iamat("after", "+3+3");
    herd.await_everywhere(&all, "after", &after);
}

/// A tree link that fails silently (the proxy drops its bytes, its
/// connections stay open) is routed around by a lazy link after one hold,
/// long before the silence would be noticed.
#[test]
fn a_silently_failed_tree_link_is_routed_around_before_it_is_noticed() {
    // A silence noticed only after a minute: what arrives meanwhile came
    // around the dead link, not after it was dropped.
    let campaign = Campaign::start_with("[limits]\nlink_silence_ms = 60000\n");
    let (herd, proxies) = (&campaign.herd, &campaign.proxies);
    let all: Vec<&str> = campaign.names.iter().map(String::as_str).collect();
    let at = herd.client("Hill").iamat("before", "+1+1");
    herd.await_everywhere(&all, "before", &at);
    eventually("every link to come up", || proxies.stats().relayed >= 12);
    // Hill's reports reach Smith, and through it Campbell, over Hill-Smith;
    // Smith's reach Hill over it too.
    proxies.swallow("Hill", "Smith");
    for (i, origin) in ["Hill", "Smith", "Hill", "Campbell"].iter().enumerate() {
        let client = format!("quiet{i}");
        let at = herd.client(origin).iamat(&client, "+2+2");
        herd.await_everywhere(&all, &client, &at);
    }
    for name in ["Hill", "Smith"] {
        let log = herd.log(name);
        assert!(
            !log.contains("link down"),
            "{name} noticed the silence:\n{log}"
        );
    }
    proxies.heal_all();
}

#[test]
fn the_schedule_is_a_function_of_the_seed_and_duration() {
    let names: Vec<&str> = DEFAULT_TOPOLOGY.iter().map(|(name, _)| *name).collect();
    let links = links(&names);
    assert_eq!(links.len(), 6);
    let duration = Duration::from_secs(60);
    let first = plan(7, duration, names.len(), &links);
    let again = plan(7, duration, names.len(), &links);
    assert_eq!(
        first
            .iter()
            .map(|e| (e.at, e.action.clone()))
            .collect::<Vec<_>>(),
        again
            .iter()
            .map(|e| (e.at, e.action.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        first.windows(2).all(|w| w[0].at <= w[1].at),
        "in time order"
    );
    let other = plan(8, duration, names.len(), &links);
    assert_ne!(
        first.iter().map(|e| e.action.clone()).collect::<Vec<_>>(),
        other.iter().map(|e| e.action.clone()).collect::<Vec<_>>()
    );
    // Every kind of fault turns up in a minute.
    let counts = count_faults(&first);
    assert!(
        counts.kill > 0 && counts.pause > 0 && counts.cut > 0,
        "{counts:?}"
    );
    // The default campaign, as CI runs it, has every kind.
    let counts = count_faults(&plan(1, Duration::from_secs(15), names.len(), &links));
    assert!(
        counts.kill > 0 && counts.pause > 0 && counts.cut > 0 && counts.herd_kill > 0,
        "{counts:?}"
    );
}

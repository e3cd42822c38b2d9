//! IAMAT or WHATSAT load over many pipelined connections, closed-loop
//! (`--depth` requests in flight per connection) or at a fixed rate.
//!
//! Each connection is one task that owns its socket and does its own
//! reading and writing through readiness (`try_read`/`try_write`): no
//! channels, no locks on the hot path, and every reply read in a batch is
//! answered by new requests written in one `write`. Replies are matched to
//! requests by count (SPEC §2) and each is checked against what was sent.

use std::collections::{BTreeMap, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::line::{LineConn, run_id, unix_nanos, wall_clock};
use crate::reply::{self, Client, ClientTime, Clock, Kind};
use crate::stats::{Batch, Shards, Summary};

/// What each connection asks.
#[derive(Clone, Debug)]
pub enum Request {
    /// IAMAT, each connection reporting `clients` distinct client ids in
    /// turn (1: one client per connection).
    Iamat {
        clients: usize,
    },
    Whatsat {
        radius_km: String,
        bound: u32,
    },
}

impl Request {
    fn kind(&self) -> Kind {
        match self {
            Request::Iamat { .. } => Kind::Iamat,
            Request::Whatsat { .. } => Kind::Whatsat,
        }
    }
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub conns: usize,
    pub depth: usize,
    /// Requests per second across all connections (open loop), or `None`
    /// for a closed loop of `depth` requests in flight per connection.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub request: Request,
    pub threads: usize,
    /// Keep the runtime's thread polling instead of sleeping (see
    /// `busy_poll`).
    pub busy_poll: bool,
    /// IAMAT: servers to ask, after the load, until they hold every
    /// connection's last acknowledged report (the herd has flooded it).
    pub flooded_to: Vec<SocketAddr>,
    /// How long to wait for that.
    pub flood_timeout: Duration,
}

/// Times and limits every connection task shares.
struct Plan {
    begin: Instant,
    measure_from: Instant,
    end: Instant,
    drain_deadline: Instant,
    depth: usize,
    /// Time between two sends of one connection in the open loop.
    interval: Option<Duration>,
    /// Most requests one connection keeps queued or in flight in the open
    /// loop; beyond it, due requests wait (with their intended send time).
    open_loop_cap: usize,
    conns: usize,
    /// Requests per second across all connections (open loop).
    rate: f64,
    /// One per connection: the signal that a request of that connection
    /// is due (open loop), given by `dispatch`.
    due: Vec<Notify>,
    request: Request,
    latency: Shards,
    service: Shards,
}

/// What one connection saw.
#[derive(Debug, Default)]
struct ConnStats {
    sent: u64,
    replies: u64,
    measured: u64,
    invalid: u64,
    invalid_samples: Vec<String>,
    errors: Vec<String>,
    unanswered: u64,
    not_sent: u64,
    statuses: BTreeMap<String, u64>,
    /// Each connection's last acknowledged IAMAT: client id and time.
    last_acked: Vec<(String, ClientTime)>,
}

impl ConnStats {
    fn invalid(&mut self, why: &str, reply: &[u8]) {
        self.invalid += 1;
        if self.invalid_samples.len() < 3 {
            self.invalid_samples
                .push(format!("{why}: {}", reply::sample(reply)));
        }
    }

    fn add(&mut self, other: ConnStats) {
        self.sent += other.sent;
        self.replies += other.replies;
        self.measured += other.measured;
        self.invalid += other.invalid;
        for sample in other.invalid_samples {
            if self.invalid_samples.len() < 5 {
                self.invalid_samples.push(sample);
            }
        }
        for error in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(error);
            }
        }
        self.unanswered += other.unanswered;
        self.not_sent += other.not_sent;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.last_acked.extend(other.last_acked);
    }
}

/// The outcome of a load run.
#[derive(Debug)]
pub struct LoadReport {
    config: LoadConfig,
    stats: ConnStats,
    error_count: u64,
    throughput: f64,
    latency: Summary,
    service: Option<Summary>,
    /// IAMAT with `flooded_to`: how long the herd took to spread the
    /// load, or why the servers asked never held it all.
    flood: Option<Result<Flooded, String>>,
    /// With `busy_poll`: how many times the polling task went round.
    busy_polls: Option<u64>,
}

#[derive(Debug)]
struct Flooded {
    /// From the last reply until every server asked held every
    /// connection's last report.
    after_load: Duration,
    /// Every reply of the run over the time from the first request until
    /// then: what the herd as a whole kept up with.
    throughput: f64,
}

impl LoadReport {
    /// Whether every request got a valid reply and no connection failed.
    pub fn ok(&self) -> bool {
        self.stats.invalid == 0
            && self.error_count == 0
            && self.stats.unanswered == 0
            && self.flood.as_ref().is_none_or(Result::is_ok)
    }

    pub fn to_json(&self) -> Value {
        let config = &self.config;
        let flooded = self.flood.as_ref().and_then(|f| f.as_ref().ok());
        let (command, radius, bound) = match &config.request {
            Request::Iamat { .. } => ("iamat", None, None),
            Request::Whatsat { radius_km, bound } => {
                ("whatsat", Some(radius_km.clone()), Some(*bound))
            }
        };
        json!({
            "command": command,
            "addr": config.addr.to_string(),
            "conns": config.conns,
            "depth": if config.rate.is_some() { None } else { Some(config.depth) },
            "rate": config.rate,
            "clients_per_conn": match config.request {
                Request::Iamat { clients } => Some(clients),
                Request::Whatsat { .. } => None,
            },
            "radius_km": radius,
            "bound": bound,
            "threads": config.threads,
            "busy_polls": self.busy_polls,
            "warmup_s": config.warmup.as_secs_f64(),
            "duration_s": config.duration.as_secs_f64(),
            "sent": self.stats.sent,
            "replies": self.stats.replies,
            "measured": self.stats.measured,
            "throughput_rps": (self.throughput * 10.0).round() / 10.0,
            "latency_us": self.latency.to_json(),
            "service_latency_us": self.service.as_ref().map(Summary::to_json),
            "invalid": self.stats.invalid,
            "invalid_samples": self.stats.invalid_samples,
            "errors": self.error_count,
            "error_samples": self.stats.errors,
            "unanswered": self.stats.unanswered,
            "not_sent": self.stats.not_sent,
            "statuses": self.stats.statuses,
            "flooded_to": config.flooded_to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "flooded_after_load_s": flooded.map(|f| f.after_load.as_secs_f64()),
            "flooded_throughput_rps": flooded.map(|f| (f.throughput * 10.0).round() / 10.0),
            "flood_error": self.flood.as_ref().and_then(|f| f.as_ref().err()),
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let config = &self.config;
        let mut out = String::new();
        let what = match &config.request {
            Request::Iamat { clients: 1 } => "IAMAT".to_string(),
            Request::Iamat { clients } => format!("IAMAT from {clients} clients per connection"),
            Request::Whatsat { radius_km, bound } => {
                format!("WHATSAT radius {radius_km} km, bound {bound}")
            }
        };
        let shape = match config.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => format!("closed loop, depth {}", config.depth),
        };
        out.push_str(&format!(
            "{what} -> {}: {} connections, {shape}, {} thread(s)\n",
            config.addr, config.conns, config.threads
        ));
        if let Some(turns) = self.busy_polls {
            out.push_str(&format!(
                "  busy-polling ({turns} polls without sleeping)\n"
            ));
        }
        out.push_str(&format!(
            "  measured     {:.1} s after {:.1} s warmup\n",
            config.duration.as_secs_f64(),
            config.warmup.as_secs_f64()
        ));
        out.push_str(&format!(
            "  throughput   {:.0} replies/s ({} in the window, {} sent in all)\n",
            self.throughput, self.stats.measured, self.stats.sent
        ));
        let label = if self.service.is_some() {
            "latency (from intended send)"
        } else {
            "latency"
        };
        out.push_str(&format!("  {label:<12} {}\n", self.latency.row()));
        if let Some(service) = &self.service {
            out.push_str(&format!(
                "  latency (from actual send)   {}\n",
                service.row()
            ));
        }
        if !self.stats.statuses.is_empty() {
            let statuses: Vec<String> = self
                .stats
                .statuses
                .iter()
                .map(|(status, count)| format!("{status} {count}"))
                .collect();
            out.push_str(&format!("  statuses     {}\n", statuses.join(", ")));
        }
        match &self.flood {
            Some(Ok(flooded)) => out.push_str(&format!(
                "  flooded      {:.0} reports/s (held by all {} servers asked {:.3} s after the last reply)\n",
                flooded.throughput,
                config.flooded_to.len(),
                flooded.after_load.as_secs_f64()
            )),
            Some(Err(error)) => out.push_str(&format!("  flooded      not seen: {error}\n")),
            None => {}
        }
        out.push_str(&format!(
            "  invalid {}  errors {}  unanswered {}",
            self.stats.invalid, self.error_count, self.stats.unanswered
        ));
        if self.stats.not_sent > 0 {
            out.push_str(&format!(
                "  not sent (behind schedule at the end) {}",
                self.stats.not_sent
            ));
        }
        out.push('\n');
        for sample in &self.stats.invalid_samples {
            out.push_str(&format!("  invalid reply: {sample}\n"));
        }
        for error in &self.stats.errors {
            out.push_str(&format!("  error: {error}\n"));
        }
        out.push_str(&format!("  {}\n", if self.ok() { "OK" } else { "FAILED" }));
        out
    }
}

/// Connects every connection (seeding locations for WHATSAT), runs the
/// load and gathers the results.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    if config.conns == 0 || config.depth == 0 {
        bail!("--conns and --depth must be at least 1");
    }
    let interval = match config.rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => Some(
            Duration::try_from_secs_f64(config.conns as f64 / rate).with_context(|| {
                format!(
                    "--rate is too low: each of the {} connections would wait longer than a \
                     duration can say between two requests",
                    config.conns
                )
            })?,
        ),
        Some(_) => bail!("--rate must be a positive number of requests per second"),
        None => None,
    };
    if config.busy_poll && config.threads != 1 {
        bail!("--busy-poll needs --threads 1: it keeps one runtime thread polling, not several");
    }
    let run = run_id();
    let connections = open_all(&config, &run).await?;
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = config
        .busy_poll
        .then(|| tokio::spawn(busy_poll(Arc::clone(&stop_polling))));

    let begin = Instant::now();
    let measure_from = begin + config.warmup;
    let end = measure_from + config.duration;
    let shard_count = config.threads.max(1) * 4;
    let plan = Arc::new(Plan {
        begin,
        measure_from,
        end,
        drain_deadline: end + config.drain_timeout,
        depth: config.depth,
        interval,
        open_loop_cap: (1_000_000 / config.conns).max(1024),
        conns: config.conns,
        rate: config.rate.unwrap_or(0.0),
        due: (0..config.conns).map(|_| Notify::new()).collect(),
        request: config.request.clone(),
        latency: Shards::new(shard_count),
        service: Shards::new(shard_count),
    });

    let dispatcher = match plan.interval {
        Some(_) => {
            let pacer = Pacer::new(&plan).context("setting up the open loop's timer")?;
            Some(tokio::spawn(dispatch(Arc::clone(&plan), pacer)))
        }
        None => None,
    };
    let mut tasks = JoinSet::new();
    for connection in connections {
        tasks.spawn(drive(connection, Arc::clone(&plan)));
    }
    let mut stats = ConnStats::default();
    let mut error_count = 0;
    while let Some(done) = tasks.join_next().await {
        let conn_stats = done.context("a connection task panicked")?;
        error_count += conn_stats.errors.len() as u64;
        stats.add(conn_stats);
    }
    if let Some(dispatcher) = dispatcher {
        dispatcher
            .await
            .context("the dispatcher task panicked")?
            .context("the open loop's timer failed")?;
    }
    let load_done = Instant::now();
    let flood = if config.flooded_to.is_empty() {
        None
    } else {
        let flooded = await_flooded(&config, &stats.last_acked).await;
        let at = Instant::now();
        Some(
            flooded
                .map(|()| Flooded {
                    after_load: at - load_done,
                    throughput: stats.replies as f64 / (at - begin).as_secs_f64(),
                })
                .map_err(|error| format!("{error:#}")),
        )
    };
    stop_polling.store(true, Ordering::Relaxed);
    let busy_polls = match poller {
        Some(poller) => Some(poller.await.context("the polling task panicked")?),
        None => None,
    };
    let latency = Summary::of(&plan.latency.merged());
    let service = config.rate.map(|_| Summary::of(&plan.service.merged()));
    Ok(LoadReport {
        busy_polls,
        throughput: stats.measured as f64 / config.duration.as_secs_f64(),
        config,
        stats,
        error_count,
        latency,
        service,
        flood,
    })
}

/// Keeps the current-thread runtime from ever sleeping until `stop`:
/// `yield_now` has the runtime look at its sockets and timers without
/// waiting (an `epoll_wait` with no timeout) before coming back here, so
/// the thread is always running when a reply arrives and the server's
/// send never has to wake it. Returns how many times it went round.
async fn busy_poll(stop: Arc<AtomicBool>) -> u64 {
    let mut turns = 0;
    while !stop.load(Ordering::Relaxed) {
        turns += 1;
        tokio::task::yield_now().await;
    }
    turns
}

/// Waits until every server of `flooded_to` holds each of `last`: asks
/// them all with pipelined WHATSATs (tiny radius, bound 1), again every
/// millisecond for those still missing. A herd floods a link's updates in
/// the order it accepted them, so the last report of every connection
/// stands for the ones before it.
async fn await_flooded(config: &LoadConfig, last: &[(String, ClientTime)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + config.flood_timeout;
    let mut targets = JoinSet::new();
    for &addr in &config.flooded_to {
        let mut waiting: Vec<(String, String)> = last
            .iter()
            .map(|(id, time)| (id.clone(), time.text()))
            .collect();
        let connect_timeout = config.connect_timeout;
        targets.spawn(async move {
            let mut conn = LineConn::connect(addr, connect_timeout)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            while !waiting.is_empty() {
                let mut asks = String::new();
                for (id, _) in &waiting {
                    asks.push_str(&format!("WHATSAT {id} 0.001 1\n"));
                }
                conn.send(asks.as_bytes()).await?;
                let mut still = Vec::new();
                for (id, time) in waiting {
                    let answer = conn
                        .reply(Kind::Whatsat, deadline)
                        .await
                        .with_context(|| format!("{addr} never held {id} at {time}"))?;
                    if reply::answer_time(&answer, id.as_bytes()) != Some(time.as_bytes()) {
                        still.push((id, time));
                    }
                }
                waiting = still;
                if !waiting.is_empty() {
                    if Instant::now() >= deadline {
                        bail!("{addr} lacks {} of the last reports", waiting.len());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = targets.join_next().await {
        done.context("a flood watcher panicked")??;
    }
    Ok(())
}

/// Counts the open-loop requests as they come due, for `dispatch`.
///
/// tokio's timer has a granularity of a millisecond, which would add up to
/// a millisecond or two to every latency counted from the intended send
/// time. The pacer is a kernel timer instead (a `timerfd`), ticking every
/// `1 / rate` or every `PACER_TICK`, whichever is longer, and registered
/// with the runtime like a socket: while the runtime is busy with replies
/// its ticks are picked up by the poll it makes anyway, and only an idle
/// runtime is woken, with no second thread to wake first. (A pacer thread
/// sleeping between requests took a quarter of a CPU at 50,000 requests/s
/// here, woken ~10,000 times a second, each wake-up then waking the
/// runtime's thread in turn.) Request `g` of the run is due at
/// `begin + g / rate` and belongs to connection `g % conns`, which is the
/// schedule `drive` keeps.
struct Pacer {
    timer: AsyncFd<std::os::fd::OwnedFd>,
    begin: std::time::Instant,
    rate: f64,
    /// The run's requests in all: those due before its end.
    requests: u64,
}

/// The shortest time between two of the pacer's ticks: a request may be
/// sent up to this much after its intended time (and the latency counted
/// from that time includes the wait), for at most `1 / PACER_TICK` wake-ups
/// a second.
const PACER_TICK: Duration = Duration::from_micros(50);

impl Pacer {
    fn new(plan: &Plan) -> anyhow::Result<Self> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // `run` checked that a connection's interval, `conns` times this,
        // is a duration.
        let period = Duration::from_secs_f64(1.0 / plan.rate).max(PACER_TICK);
        // A microsecond late rather than a nanosecond early (see `due_by`);
        // a first expiry of zero would disarm the timer.
        let first = (plan.begin + Duration::from_micros(1))
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        timer.set(
            Expiration::IntervalDelayed(
                TimeSpec::from_duration(first),
                TimeSpec::from_duration(period),
            ),
            TimerSetTimeFlags::empty(),
        )?;
        let span = plan.end.saturating_duration_since(plan.begin).as_secs_f64();
        let timer = std::os::fd::OwnedFd::from(timer);
        // `AsyncFd::new` is deprecated in favour of an `unsafe` constructor
        // (this crate forbids `unsafe`) because an `AsRawFd` type may close
        // or change its descriptor while registered; an `OwnedFd` cannot.
        #[allow(deprecated)]
        let timer = AsyncFd::with_interest(timer, Interest::READABLE)?;
        Ok(Pacer {
            timer,
            begin: plan.begin.into_std(),
            rate: plan.rate,
            requests: (span * plan.rate).ceil() as u64,
        })
    }

    /// How many of the run's requests are due at `now`. A request counts
    /// as due a microsecond after its time: a connection woken before its
    /// request is due would wait for its coarse timer instead.
    fn due_by(&self, now: std::time::Instant) -> u64 {
        let Some(since) = now.checked_duration_since(self.begin) else {
            return 0;
        };
        let Some(since) = since.checked_sub(Duration::from_micros(1)) else {
            return 0;
        };
        ((since.as_secs_f64() * self.rate).floor() as u64 + 1).min(self.requests)
    }

    /// Waits for the next tick; how many of the run's requests are due
    /// then, or `None` once all of them have been.
    async fn next(&mut self, released: u64) -> std::io::Result<Option<u64>> {
        if released >= self.requests {
            return Ok(None);
        }
        loop {
            let mut ready = self.timer.readable().await?;
            // The timer's count of expiries: read only to rearm readiness.
            let mut expiries = [0u8; 8];
            match ready.try_io(|fd| Ok(nix::unistd::read(fd.get_ref(), &mut expiries)?)) {
                Ok(read) => {
                    read?;
                    return Ok(Some(self.due_by(std::time::Instant::now())));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// What `dispatch` waits on: the pacer, or in tests a script of releases.
trait Ticks {
    /// How many of the run's requests are due at the next tick (at least
    /// `released`, those already handed out), or `None` at the end.
    async fn next(&mut self, released: u64) -> std::io::Result<Option<u64>>;
}

impl Ticks for Pacer {
    async fn next(&mut self, released: u64) -> std::io::Result<Option<u64>> {
        Pacer::next(self, released).await
    }
}

/// Wakes, on the runtime's own thread, each connection with a request
/// newly due (see `Pacer`); ends with the schedule.
async fn dispatch(plan: Arc<Plan>, mut ticks: impl Ticks) -> std::io::Result<()> {
    let conns = plan.conns as u64;
    let mut handed: u64 = 0;
    while let Some(released) = ticks.next(handed).await? {
        // Connections `handed % conns`, `(handed + 1) % conns`, … up to
        // `released`: every connection once at most.
        for request in handed..released.min(handed + conns) {
            let connection = usize::try_from(request % conns)
                .expect("a remainder of division by a usize fits in usize");
            plan.due[connection].notify_one();
        }
        handed = handed.max(released);
    }
    Ok(())
}

/// One connection ready for load.
struct Connection {
    index: usize,
    stream: TcpStream,
    client: Client,
    /// How many clients this connection reports in turn (IAMAT with
    /// `--clients`): `client` and the further ones named after it.
    clients: usize,
    /// The further client named last (see `reporting`).
    named: Client,
    /// Which of the clients reports next.
    turn: usize,
    /// The last IAMAT acknowledged: which client, and its time.
    last_acked: Option<(usize, ClientTime)>,
    clock: Clock,
    /// What the AT line of every WHATSAT answer echoes: the client's
    /// fields as seeded (WHATSAT).
    seeded: Option<Vec<u8>>,
    /// The last places JSON checked on this connection, and its status.
    checked: reply::CheckedJson,
}

impl Connection {
    /// The `k`th of the clients this connection reports.
    fn reporting(&mut self, k: usize) -> &Client {
        match k {
            0 => &self.client,
            k => {
                self.client.name_another(k, &mut self.named);
                &self.named
            }
        }
    }
}

/// Opens all connections, a few hundred at a time, and for WHATSAT seeds
/// each connection's client location with an IAMAT first.
async fn open_all(config: &LoadConfig, run: &str) -> anyhow::Result<Vec<Connection>> {
    const AT_ONCE: usize = 256;
    let mut connections = Vec::with_capacity(config.conns);
    let mut tasks = JoinSet::new();
    let mut next = 0;
    while connections.len() < config.conns {
        while next < config.conns && tasks.len() < AT_ONCE {
            let client = Client::new(run, next);
            let clients = match config.request {
                Request::Iamat { clients } => clients,
                Request::Whatsat { .. } => 1,
            };
            tasks.spawn(open_one(
                next,
                client,
                clients,
                config.addr,
                config.connect_timeout,
                matches!(config.request, Request::Whatsat { .. }),
            ));
            next += 1;
        }
        let opened = tasks
            .join_next()
            .await
            .expect("a task was spawned above")
            .context("a connecting task panicked")??;
        connections.push(opened);
    }
    Ok(connections)
}

async fn open_one(
    index: usize,
    client: Client,
    clients: usize,
    addr: SocketAddr,
    timeout: Duration,
    seed: bool,
) -> anyhow::Result<Connection> {
    let mut clock = Clock::default();
    let mut line = LineConn::connect(addr, timeout)
        .await
        .with_context(|| format!("connection {index}"))?;
    let mut seeded = None;
    if seed {
        let time = clock.next(unix_nanos());
        let mut request = String::new();
        client.write_iamat(time, &mut request);
        let reply = line
            .round_trip(request.as_bytes(), Kind::Iamat, timeout)
            .await
            .with_context(|| format!("seeding the location of {}", client.id))?;
        let reply_line = reply.strip_suffix(b"\n").unwrap_or(&reply);
        if let Err(why) = reply::check_iamat_reply(reply_line, &client, time) {
            bail!(
                "seeding {}: invalid IAMAT reply ({why}): {}",
                client.id,
                reply::sample(&reply)
            );
        }
        seeded = Some(client.echo(time).into_bytes());
    }
    Ok(Connection {
        index,
        stream: line.into_stream()?,
        named: client.clone(),
        client,
        clients,
        turn: 0,
        last_acked: None,
        clock,
        seeded,
        checked: reply::CheckedJson::default(),
    })
}

/// A request sent and not yet answered.
struct Pending {
    /// When it was meant to be sent (the open loop's schedule); latency is
    /// measured from here so that a stalled server cannot hide its stall.
    intended: Instant,
    /// When it was put in the send buffer.
    queued: Instant,
    time: ClientTime,
    /// Which of the connection's clients it reported (IAMAT).
    client: usize,
    /// The length of its fields in `Sent::echoes` (IAMAT).
    echo_len: usize,
}

/// The requests of one connection sent and not yet answered, in order.
#[derive(Default)]
struct Sent {
    pending: VecDeque<Pending>,
    /// The fields each pending IAMAT sent, one after another from
    /// `echo_start`: what its AT reply must end with.
    echoes: Vec<u8>,
    echo_start: usize,
}

impl Sent {
    /// Appends the next request to `out` and remembers it as pending.
    /// `wall` is the wall clock, read once for the whole batch.
    fn queue(
        &mut self,
        connection: &mut Connection,
        request: &Request,
        out: &mut String,
        wall: ClientTime,
        intended: Instant,
        now: Instant,
    ) {
        let time = connection.clock.next_at(wall);
        let client = connection.turn;
        let mut echo_len = 0;
        match request {
            Request::Iamat { .. } => {
                connection.turn = (client + 1) % connection.clients;
                let start = out.len();
                connection.reporting(client).write_iamat(time, out);
                // Its fields: the line less "IAMAT " and the newline.
                let fields = &out.as_bytes()[start + "IAMAT ".len()..out.len() - 1];
                self.echoes.extend_from_slice(fields);
                echo_len = fields.len();
            }
            Request::Whatsat { radius_km, bound } => {
                connection.client.write_whatsat(radius_km, *bound, out)
            }
        }
        self.pending.push_back(Pending {
            intended,
            queued: now,
            time,
            client,
            echo_len,
        });
    }

    /// The oldest pending request, taken, and the fields its reply echoes.
    fn answered(&mut self) -> Option<(Pending, &[u8])> {
        let sent = self.pending.pop_front()?;
        let echo = self.echo_start..self.echo_start + sent.echo_len;
        self.echo_start = echo.end;
        Some((sent, &self.echoes[echo]))
    }

    /// Lets go of the fields of answered requests (after a batch of them).
    fn forget_answered(&mut self) {
        if self.pending.is_empty() {
            self.echoes.clear();
            self.echo_start = 0;
        } else if self.echo_start > 16 * 1024 {
            self.echoes.drain(..self.echo_start);
            self.echo_start = 0;
        }
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Reads what `stream` holds into the spare capacity of `input`.
///
/// A read that leaves room in the buffer has emptied the socket, so its
/// readiness is cleared there and then, as tokio's own `poll_read` does:
/// the next wait is for new bytes. (`try_read` clears it only when a read
/// would block, which cost a second `recvfrom` that found nothing after
/// every batch of replies.) The readiness cleared is the one the read
/// started from: bytes that arrive meanwhile set it again.
fn read_available(stream: &TcpStream, input: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut drained = None;
    let read = stream.try_io(Interest::READABLE, || {
        let room = input.capacity() - input.len();
        let read = stream.try_read_buf(input)?;
        if read > 0 && read < room {
            drained = Some(read);
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match drained {
        Some(read) => Ok(read),
        None => read,
    }
}

/// Drives one connection until the end of the run, then waits for the
/// replies still due (until the drain deadline).
async fn drive(mut connection: Connection, plan: Arc<Plan>) -> ConnStats {
    let mut stats = ConnStats::default();
    if let Err(error) = drive_inner(&mut connection, &plan, &mut stats).await {
        stats
            .errors
            .push(format!("connection {}: {error:#}", connection.index));
    }
    if let Some((client, time)) = connection.last_acked {
        let id = connection.reporting(client).id.clone();
        stats.last_acked.push((id, time));
    }
    stats
}

async fn drive_inner(
    connection: &mut Connection,
    plan: &Plan,
    stats: &mut ConnStats,
) -> anyhow::Result<()> {
    let kind = plan.request.kind();
    let mut out = String::with_capacity(16 * 1024);
    let mut out_start = 0;
    let mut input: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut in_start = 0;
    let mut scanned = 0;
    let mut pending = Sent::default();
    let mut latency = Batch::new(connection.index, &plan.latency);
    let mut service = Batch::new(connection.index, &plan.service);
    // Request `k` of this connection is request `k * conns + index` of the
    // run, due at `begin + (k * conns + index) / rate` (see `pace`).
    let mut sent_here: u64 = 0;
    let index = connection.index as u64;
    let intended_at = |sent_here: u64| {
        let request = sent_here * plan.conns as u64 + index;
        plan.begin + Duration::from_secs_f64(request as f64 / plan.rate.max(f64::MIN_POSITIVE))
    };
    let mut next_intended = match plan.interval {
        Some(_) => intended_at(0),
        None => plan.begin,
    };
    let mut timer = pin!(sleep_until(plan.end));

    let result = 'run: loop {
        let now = Instant::now();
        let sending = now < plan.end;
        if sending {
            match plan.interval {
                None if pending.len() < plan.depth => {
                    let wall = wall_clock();
                    while pending.len() < plan.depth {
                        pending.queue(connection, &plan.request, &mut out, wall, now, now);
                        stats.sent += 1;
                    }
                }
                None => {}
                Some(_) if next_intended <= now && pending.len() < plan.open_loop_cap => {
                    let wall = wall_clock();
                    while next_intended <= now && pending.len() < plan.open_loop_cap {
                        pending.queue(
                            connection,
                            &plan.request,
                            &mut out,
                            wall,
                            next_intended,
                            now,
                        );
                        stats.sent += 1;
                        sent_here += 1;
                        next_intended = intended_at(sent_here);
                    }
                }
                Some(_) => {}
            }
        } else if pending.is_empty() {
            break Ok(());
        } else if now >= plan.drain_deadline {
            break Err(anyhow::anyhow!(
                "{} replies still missing {:.1} s after the end",
                pending.len(),
                (now - plan.end).as_secs_f64()
            ));
        }

        while out_start < out.len() {
            match connection.stream.try_write(&out.as_bytes()[out_start..]) {
                Ok(written) => out_start += written,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => break 'run Err(error).context("writing"),
            }
        }
        if out_start == out.len() {
            out.clear();
            out_start = 0;
        }

        let wake = match (sending, plan.interval) {
            (true, None) => plan.end,
            // At the cap, wait for replies rather than for a send time
            // that has already passed.
            (true, Some(_)) if pending.len() < plan.open_loop_cap => next_intended.min(plan.end),
            (true, Some(_)) => plan.end,
            (false, _) => plan.drain_deadline,
        };
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        let interest = if out_start < out.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };

        let paced = sending && plan.interval.is_some();
        tokio::select! {
            biased;
            ready = connection.stream.ready(interest) => match ready {
                Ok(ready) if ready.is_readable() => {}
                Ok(_) => continue,
                Err(error) => break Err(error).context("waiting for the socket"),
            },
            () = plan.due[connection.index].notified(), if paced => continue,
            () = &mut timer => continue,
        }

        if input.capacity() - input.len() < 16 * 1024 {
            input.reserve(64 * 1024);
        }
        let closed = match read_available(&connection.stream, &mut input) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
            Err(error) => break Err(error).context("reading"),
        };

        let now = Instant::now();
        let measured = now >= plan.measure_from && now < plan.end;
        while let Some(len) = reply::reply_end(&input[in_start..], kind, &mut scanned) {
            let reply = &input[in_start..in_start + len];
            in_start += len;
            stats.replies += 1;
            let Some((sent, echoed)) = pending.answered() else {
                stats.invalid("a reply to no request", reply);
                continue;
            };
            let checked = match &plan.request {
                Request::Iamat { .. } => {
                    let line = &reply[..reply.len() - 1];
                    let checked = reply::check_at_line(line, echoed);
                    if checked.is_ok() {
                        connection.last_acked = Some((sent.client, sent.time));
                    }
                    checked
                }
                Request::Whatsat { bound, .. } => {
                    let seeded = connection
                        .seeded
                        .as_deref()
                        .expect("WHATSAT connections are seeded when opened");
                    reply::check_whatsat_answer_with(reply, seeded, *bound, &mut connection.checked)
                        .map(|status| {
                            *stats.statuses.entry(status).or_default() += 1;
                        })
                }
            };
            if let Err(why) = checked {
                stats.invalid(why, reply);
            }
            if measured {
                stats.measured += 1;
                latency.record(now - sent.intended, &plan.latency);
                if plan.interval.is_some() {
                    service.record(now - sent.queued, &plan.service);
                }
            }
        }
        pending.forget_answered();
        if in_start == input.len() {
            input.clear();
            in_start = 0;
        } else if in_start > 32 * 1024 {
            input.drain(..in_start);
            in_start = 0;
        }

        if closed {
            if pending.is_empty() && Instant::now() >= plan.end {
                break Ok(());
            }
            break Err(anyhow::anyhow!(
                "the server closed the connection with {} replies due",
                pending.len()
            ));
        }
    };

    latency.flush(&plan.latency);
    service.flush(&plan.service);
    stats.unanswered += pending.len() as u64;
    if let Some(interval) = plan.interval
        && next_intended < plan.end
    {
        let behind = (plan.end - next_intended).as_nanos() / interval.as_nanos().max(1);
        stats.not_sent += u64::try_from(behind).unwrap_or(u64::MAX) + 1;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conns: usize) -> Plan {
        let now = Instant::now();
        Plan {
            begin: now,
            measure_from: now,
            end: now,
            drain_deadline: now,
            depth: 1,
            interval: Some(Duration::from_millis(1)),
            open_loop_cap: 1024,
            conns,
            rate: 1000.0,
            due: (0..conns).map(|_| Notify::new()).collect(),
            request: Request::Iamat { clients: 1 },
            latency: Shards::new(1),
            service: Shards::new(1),
        }
    }

    /// Whether a connection has been woken (takes the wake-up).
    fn woken(plan: &Plan, connection: usize) -> bool {
        use std::task::{Context, Waker};
        let notified = pin!(plan.due[connection].notified());
        notified
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    /// Lets the dispatcher run until it waits for the pacer again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A script of releases for `dispatch`: each value sent is one tick.
    impl Ticks for tokio::sync::mpsc::UnboundedReceiver<u64> {
        async fn next(&mut self, _released: u64) -> std::io::Result<Option<u64>> {
            Ok(self.recv().await)
        }
    }

    #[tokio::test]
    async fn each_request_that_comes_due_wakes_its_connection_once() {
        let plan = Arc::new(plan(3));
        let (release, script) = tokio::sync::mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch(Arc::clone(&plan), script));

        release.send(2).unwrap();
        settle().await;
        assert_eq!(
            (0..3).map(|c| woken(&plan, c)).collect::<Vec<_>>(),
            [true, true, false]
        );
        // Requests 2, 3 and 4 belong to connections 2, 0 and 1.
        release.send(5).unwrap();
        settle().await;
        assert_eq!(
            (0..3).map(|c| woken(&plan, c)).collect::<Vec<_>>(),
            [true, true, true]
        );
        // Nothing new: nobody is woken.
        release.send(5).unwrap();
        settle().await;
        assert!((0..3).all(|c| !woken(&plan, c)));
        // Many at once: each connection once.
        release.send(1_000).unwrap();
        settle().await;
        assert!((0..3).all(|c| woken(&plan, c)));
        assert!((0..3).all(|c| !woken(&plan, c)));

        drop(release);
        tokio::time::timeout(Duration::from_secs(10), dispatcher)
            .await
            .expect("the dispatcher ends with its ticks")
            .expect("the dispatcher does not panic")
            .expect("a script of ticks does not fail");
    }

    #[tokio::test]
    async fn the_pacer_releases_each_request_once_its_time_has_come_and_then_ends() {
        let mut plan = plan(1);
        // 25 requests at 1,000/s, the first due a little after now.
        plan.begin = Instant::now() + Duration::from_millis(5);
        plan.end = plan.begin + Duration::from_millis(25);
        plan.rate = 1000.0;
        let mut pacer = Pacer::new(&plan).unwrap();
        assert_eq!(pacer.requests, 25);
        let mut released = 0;
        let mut ticks = 0;
        while let Some(due) = tokio::time::timeout(Duration::from_secs(10), pacer.next(released))
            .await
            .expect("the pacer ticks")
            .unwrap()
        {
            let now = std::time::Instant::now();
            assert!(due >= released, "released {released}, then {due}");
            // Every request counted as due is due: request `due - 1` was
            // due at `begin + (due - 1) ms`.
            if due > 0 {
                let last = plan.begin.into_std() + Duration::from_millis(due - 1);
                assert!(now >= last, "request {} released early", due - 1);
            }
            released = due;
            ticks += 1;
        }
        assert_eq!(released, 25);
        assert!(
            ticks >= 2,
            "a tick per request at this rate, not one for all"
        );
        assert!(Instant::now() >= plan.begin + Duration::from_millis(24));
    }
}

//! Counters: the one home for what the wings count, so that they can be
//! logged when a server stops and read by the admin wing while it runs.
//!
//! A [`Counter`] is sharded: each thread adds to a slot of its own, on a
//! cache line of its own, and a reader sums the slots. Bumping is one
//! uncontended relaxed atomic add, with no lock, no allocation and no cache
//! line passed between CPUs, so the hot paths can afford it. A [`Gauge`] is
//! a value set by one writer; a [`Histogram`] is a fixed set of counters,
//! one per bucket.
//!
//! Each server owns its [`ServerStats`] (tests run several servers in one
//! process), with a [`NeighbourStats`] per neighbour; its storage owns a
//! [`StorageStats`]; a remote places provider owns its [`PlacesStats`]. The
//! message log is one per process, so its counters are a static,
//! [`MESSAGE_LOG`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Slots per counter: more than the threads that bump a server's counters
/// (its runtime's workers, the sync and log threads).
const SHARDS: usize = 8;

/// One shard's count, alone on its cache line so that two threads bumping
/// the same counter do not pass the line back and forth.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// This thread's slot, handed out in turn as threads first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        let mine = shard.get();
        if mine != usize::MAX {
            return mine;
        }
        let mine = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        shard.set(mine);
        mine
    })
}

/// A count that only grows.
#[derive(Debug)]
pub struct Counter([Slot; SHARDS]);

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl Counter {
    pub const fn new() -> Self {
        Self([const { Slot(AtomicU64::new(0)) }; SHARDS])
    }

    pub fn bump(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count: the sum of every thread's slot.
    pub fn get(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, slot| {
            sum.wrapping_add(slot.0.load(Ordering::Relaxed))
        })
    }
}

/// A value that goes up and down, set by one writer at a time.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The upper bounds of every histogram's buckets, in nanoseconds: 50 µs to
/// 10 s, roughly three per decade. Above the last is `+Inf`.
pub const BUCKET_BOUNDS_NANOS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// How long things took, counted into the buckets of
/// [`BUCKET_BOUNDS_NANOS`]: a counter per bucket and one for the sum.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [Counter; BUCKET_BOUNDS_NANOS.len() + 1],
    sum_nanos: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        Self {
            buckets: [const { Counter::new() }; BUCKET_BOUNDS_NANOS.len() + 1],
            sum_nanos: Counter::new(),
        }
    }

    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        self.observe_many(took, 1);
    }

    /// Counts `n` observations that each took `took` (the requests of one
    /// batch, answered together).
    pub fn observe_many(&self, took: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].add(n);
        self.sum_nanos.add(nanos.saturating_mul(n));
    }

    /// The histogram as read now.
    pub fn snapshot(&self) -> HistogramCounts {
        let buckets = self.buckets.iter().map(Counter::get).collect();
        HistogramCounts {
            buckets,
            sum_seconds: self.sum_nanos.get() as f64 / 1e9,
        }
    }
}

/// A [`Histogram`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramCounts {
    /// Observations in each bucket: up to the first bound of
    /// [`BUCKET_BOUNDS_NANOS`], then above one bound up to the next, then
    /// above the last.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramCounts {
    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// (upper bound in seconds, count in the bucket) per bucket, `+Inf`
    /// last, as the encoders take them (they add them up).
    pub fn bounded(&self) -> Vec<(f64, u64)> {
        BUCKET_BOUNDS_NANOS
            .iter()
            .map(|&nanos| nanos as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().copied())
            .collect()
    }
}

/// Milliseconds since the Unix epoch, for "since when" gauges.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// What a server's client requests can be, as counted and timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Iamat,
    Whatsat,
    /// A line that is neither (answered `?`).
    Other,
}

impl Command {
    pub const ALL: [Command; 3] = [Command::Iamat, Command::Whatsat, Command::Other];

    /// The label value: `iamat`, `whatsat`, `other`.
    pub fn label(self) -> &'static str {
        match self {
            Command::Iamat => "iamat",
            Command::Whatsat => "whatsat",
            Command::Other => "other",
        }
    }
}

/// What one server has done since it started.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Client connections accepted, refused for their address's limit, and
    /// closed (accepted less closed are open).
    pub connections: Counter,
    pub connections_refused: Counter,
    pub connections_closed: Counter,
    /// Connections to the TLS client port closed before their handshake
    /// was done: refused, broken, not TLS at all, or too slow.
    pub tls_handshakes_failed: Counter,
    /// IAMAT lines that stored a report, and those that were not newer.
    pub iamat_stored: Counter,
    pub iamat_not_newer: Counter,
    /// IAMAT lines about a client the server does not hold, refused
    /// (answered `?`) because the store is at `max_clients`.
    pub iamat_refused: Counter,
    /// WHATSAT lines answered with places.
    pub whatsat: Counter,
    /// WHATSAT lines about a client this server does not know (answered
    /// `?`, and counted in `invalid` too).
    pub whatsat_unknown: Counter,
    /// Lines answered `?`.
    pub invalid: Counter,
    /// From reading a batch of lines to writing its replies, per line, by
    /// command (indexed as [`Command::ALL`]).
    pub latency: [Histogram; 3],
    /// Frames and their update lines sent to neighbours, heartbeats
    /// included in the frames.
    pub frames_sent: Counter,
    pub updates_sent: Counter,
    /// Watermark lines (`W`) sent to neighbours, and their bytes.
    pub watermarks_sent: Counter,
    pub watermark_bytes_sent: Counter,
    /// Frames and update lines received, and the updates that were stored.
    pub frames_received: Counter,
    pub updates_received: Counter,
    pub updates_stored: Counter,
    /// Updates received already expired, and updates about a client not
    /// held refused because the store was at its ceiling for neighbours'
    /// reports (which a herd whose servers share their bounds never
    /// reaches).
    pub updates_expired: Counter,
    pub updates_refused: Counter,
    /// Times a sending link came up, and went down.
    pub links_up: Counter,
    pub links_down: Counter,
    /// Reports written to the core database, and rounds of the archiver
    /// that failed (the database unreachable, locked or refusing).
    pub reports_archived: Counter,
    pub archive_failures: Counter,
    /// Per neighbour, in the order the links number them.
    pub neighbours: Vec<NeighbourStats>,
}

impl ServerStats {
    /// The counters of a server with `neighbours` neighbours.
    pub fn new(neighbours: usize) -> Self {
        Self {
            neighbours: (0..neighbours).map(|_| NeighbourStats::default()).collect(),
            ..Self::default()
        }
    }

    /// The latency histogram of `command`.
    pub fn latency(&self, command: Command) -> &Histogram {
        &self.latency[command as usize]
    }

    /// Neighbour `index`'s counters (none for a server set up without).
    pub fn neighbour(&self, index: usize) -> Option<&NeighbourStats> {
        self.neighbours.get(index)
    }
}

/// One neighbour's link, each way: state, and what went over it.
#[derive(Debug, Default)]
pub struct NeighbourStats {
    /// 1 while the sending link is up, and since when (Unix ms; 0 never).
    pub sending_up: Gauge,
    pub sending_since: Gauge,
    /// 1 while a receiving link is up, and since when.
    pub receiving_up: Gauge,
    pub receiving_since: Gauge,
    /// When a frame last came from the neighbour (Unix ms; 0 never).
    pub last_heard: Gauge,
    /// Times the sending link went down.
    pub flaps: Counter,
    /// Update lines and frame bytes sent and received.
    pub updates_sent: Counter,
    pub updates_received: Counter,
    pub bytes_sent: Counter,
    pub bytes_received: Counter,
    /// How far the sending link has looked through this server's sequence
    /// (the number it will send after), and when it last had nothing
    /// left to look at (Unix ms).
    pub sent_up_to: Gauge,
    pub caught_up_at: Gauge,
}

impl NeighbourStats {
    /// Sets the sending link's state.
    pub fn set_sending(&self, up: bool) {
        self.sending_up.set(i64::from(up));
        self.sending_since.set(unix_millis());
        if !up {
            self.flaps.bump();
        }
    }

    /// Sets the receiving link's state.
    pub fn set_receiving(&self, up: bool) {
        self.receiving_up.set(i64::from(up));
        self.receiving_since.set(unix_millis());
    }

    /// Notes how far the sending link got through a sequence whose head is
    /// `head`.
    pub fn sent(&self, up_to: u64, head: u64) {
        self.sent_up_to
            .set(i64::try_from(up_to).unwrap_or(i64::MAX));
        if up_to >= head {
            self.caught_up_at.set(unix_millis());
        }
    }

    /// Reports numbered by this server that the sending link has not
    /// looked at yet, for a sequence whose head is `head`. An upper bound
    /// of what is still to send: superseded reports count until swept.
    pub fn backlog(&self, head: u64) -> u64 {
        head.saturating_sub(u64::try_from(self.sent_up_to.get()).unwrap_or(0))
    }

    /// How long the link has been behind (0 when it is not), at `now`
    /// (Unix ms).
    pub fn lag_seconds(&self, head: u64, now: i64) -> f64 {
        if self.backlog(head) == 0 {
            return 0.0;
        }
        let since = self.caught_up_at.get().max(self.sending_since.get());
        (now.saturating_sub(since)).max(0) as f64 / 1000.0
    }
}

/// What a server's store log has done since it was opened.
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Records appended (reports, cursors, reservations).
    pub records: Counter,
    /// Bytes written to the log files (snapshots included).
    pub bytes_written: Counter,
    /// fsyncs of the log, and how long each took.
    pub fsyncs: Counter,
    pub fsync_latency: Histogram,
    /// Times the log was rewritten into a snapshot.
    pub compactions: Counter,
    /// Report records read back when the server started.
    pub replayed_records: Gauge,
}

/// What the message log (the per-process log file) has written.
#[derive(Debug)]
pub struct MessageLogStats {
    pub bytes_written: Counter,
    /// Writes (each the lines of one turn of the writer) and their time.
    pub writes: Counter,
    pub write_latency: Histogram,
}

/// The message log's counters: one log file per process.
pub static MESSAGE_LOG: MessageLogStats = MessageLogStats {
    bytes_written: Counter::new(),
    writes: Counter::new(),
    write_latency: Histogram::new(),
};

/// What a remote places provider has done since the server started.
#[derive(Debug, Default)]
pub struct PlacesStats {
    /// WHATSAT queries asked of the provider.
    pub queries: Counter,
    /// Queries answered from the cache.
    pub cache_hits: Counter,
    /// Queries that shared an identical query's call in flight.
    pub coalesced: Counter,
    /// Requests sent to the API, retries included: what the API bills.
    pub upstream_calls: Counter,
    /// Requests that failed (each attempt counts).
    pub upstream_failures: Counter,
    /// The same, by the status they were answered (a rare path: a lock).
    pub failures_by_status: Mutex<BTreeMap<String, u64>>,
    /// Queries answered with an error status.
    pub failed_answers: Counter,
    /// Queries answered `UNKNOWN_ERROR` at once by the open breaker.
    pub breaker_rejections: Counter,
    /// Times the breaker opened.
    pub breaker_opened: Counter,
    /// 1 while the breaker is open or trying one call, else 0.
    pub breaker_open: Gauge,
}

impl PlacesStats {
    /// Counts a failed request answered `status`.
    pub fn failed(&self, status: &str) {
        self.upstream_failures.bump();
        let mut by_status = self
            .failures_by_status
            .lock()
            .expect("places stats lock is never poisoned");
        *by_status.entry(status.to_owned()).or_default() += 1;
    }

    /// The counts as they are now.
    pub fn snapshot(&self) -> PlacesCounts {
        PlacesCounts {
            queries: self.queries.get(),
            cache_hits: self.cache_hits.get(),
            coalesced: self.coalesced.get(),
            upstream_calls: self.upstream_calls.get(),
            upstream_failures: self.upstream_failures.get(),
            failed_answers: self.failed_answers.get(),
            breaker_rejections: self.breaker_rejections.get(),
            breaker_opened: self.breaker_opened.get(),
        }
    }

    /// Failed requests by status, as now.
    pub fn failures_by_status(&self) -> Vec<(String, u64)> {
        self.failures_by_status
            .lock()
            .expect("places stats lock is never poisoned")
            .iter()
            .map(|(status, count)| (status.clone(), *count))
            .collect()
    }
}

/// [`PlacesStats`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlacesCounts {
    pub queries: u64,
    pub cache_hits: u64,
    pub coalesced: u64,
    pub upstream_calls: u64,
    pub upstream_failures: u64,
    pub failed_answers: u64,
    pub breaker_rejections: u64,
    pub breaker_opened: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_across_threads() {
        let stats = std::sync::Arc::new(ServerStats::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.iamat_stored.bump();
                    }
                    stats.updates_sent.add(5);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(stats.iamat_stored.get(), 12_000);
        assert_eq!(stats.updates_sent.get(), 60);
    }

    #[test]
    fn a_places_snapshot_reads_every_counter() {
        let stats = PlacesStats::default();
        stats.queries.add(3);
        stats.breaker_opened.bump();
        stats.failed("OVER_QUERY_LIMIT");
        stats.failed("OVER_QUERY_LIMIT");
        let counts = stats.snapshot();
        assert_eq!(
            (counts.queries, counts.breaker_opened, counts.cache_hits),
            (3, 1, 0)
        );
        assert_eq!(counts.upstream_failures, 2);
        assert_eq!(
            stats.failures_by_status(),
            [("OVER_QUERY_LIMIT".to_owned(), 2)]
        );
    }

    #[test]
    fn a_histogram_counts_into_cumulative_buckets() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(50)); // on the first bound
        histogram.observe(Duration::from_micros(51));
        histogram.observe_many(Duration::from_millis(3), 2);
        histogram.observe(Duration::from_secs(60));
        let counts = histogram.snapshot();
        let bounded = counts.bounded();
        assert_eq!(bounded[0], (0.00005, 1));
        assert_eq!(bounded[1], (0.0001, 1));
        assert_eq!(bounded[6], (0.005, 2), "3 ms is under 5 ms");
        assert_eq!(bounded[16].1, 0, "60 s is above 10 s");
        assert_eq!(bounded[17], (f64::INFINITY, 1));
        assert_eq!(counts.count(), 5);
        assert!((counts.sum_seconds - 60.006101).abs() < 1e-9);
    }

    #[test]
    fn a_link_behind_has_a_backlog_and_a_lag() {
        let link = NeighbourStats::default();
        link.set_sending(true);
        link.sent(10, 10);
        assert_eq!(
            (link.backlog(10), link.lag_seconds(10, unix_millis())),
            (0, 0.0)
        );
        let caught_up = link.caught_up_at.get();
        link.sent(12, 20);
        assert_eq!(link.backlog(20), 8);
        assert_eq!(link.lag_seconds(20, caught_up + 1500), 1.5);
        link.set_sending(false);
        assert_eq!(link.flaps.get(), 1);
    }
}

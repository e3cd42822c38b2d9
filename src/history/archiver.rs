//! The archiver: one thread per server that reads the server's store log
//! behind the writer and writes its own clients' reports to the core
//! database, in batches, each in one transaction with its cursor.
//!
//! The log is the queue: nothing on the client's path waits for the
//! database or even knows of it. While the database cannot be reached the
//! archiver holds one batch, stops reading, and tries again every interval;
//! the log keeps everything after it (compaction keeps the segments the
//! archive has not passed, see `Replica`'s `archived`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{CoreDatabase, HistoryError, Report};
use crate::config::HistoryConfig;
use crate::replica::Cursor;
use crate::replica::storage::LogTail;
use crate::stats::ServerStats;

/// How often old reports are looked for, when `retention_days` is set.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// The archive thread's nice value: the lowest priority there is.
const ARCHIVE_NICENESS: i32 = 19;
/// Reports deleted per transaction by retention.
const RETENTION_BATCH: usize = 1_000;

/// What the archiver of one server needs.
pub struct ArchiverSetup {
    /// The server's name: the AT lines whose origin it is are its own.
    pub server: String,
    /// The server's run id, which numbers its log.
    pub run: u64,
    /// The server's store log folder.
    pub log_dir: PathBuf,
    pub config: HistoryConfig,
    /// Set to how far the archive has read the log for good.
    pub archived: Arc<AtomicU64>,
    pub stats: Arc<ServerStats>,
}

/// Starts the archiver's thread; it stops soon after `shutdown`.
pub fn start(setup: ArchiverSetup, shutdown: CancellationToken) -> std::io::Result<()> {
    let stop = shutdown.clone();
    // Its events go where the server's go (a process may run several
    // servers, each logging to its own subscriber).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let thread = std::thread::Builder::new()
        .name("herd-archive".into())
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                // The lowest priority: where the CPUs are busy, the server's
                // own threads come first and the archive waits (the log
                // holds what it has not written); where they are not, it
                // keeps up. Linux gives each thread its own niceness.
                let me = rustix::thread::gettid();
                if let Err(error) = rustix::process::setpriority_process(Some(me), ARCHIVE_NICENESS)
                {
                    warn!(%error, "the archive thread runs at normal priority");
                }
                Archiver::new(setup, super::open).run(&stop);
            });
        })?;
    // Wake the thread from its wait as soon as the server stops.
    let waker = thread.thread().clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        waker.unpark();
    });
    Ok(())
}

/// Opens the core database a config names: `history::open`, or a
/// stand-in in the tests.
type Open = fn(&HistoryConfig) -> Result<Box<dyn CoreDatabase>, HistoryError>;

struct Archiver {
    setup: ArchiverSetup,
    open: Open,
    database: Option<Box<dyn CoreDatabase>>,
    /// What the database holds as this server's cursor.
    committed: Option<Cursor>,
    tail: Option<LogTail>,
    /// The number of the last record read, and the own reports read since
    /// `committed` and not yet written.
    read_to: u64,
    pending: Vec<Report>,
    /// Set while the database fails, so that an outage is logged once.
    failing: bool,
    next_retention: Instant,
}

impl Archiver {
    fn new(setup: ArchiverSetup, open: Open) -> Self {
        Self {
            setup,
            open,
            database: None,
            committed: None,
            tail: None,
            read_to: 0,
            pending: Vec::new(),
            failing: false,
            next_retention: Instant::now(),
        }
    }

    fn run(mut self, stop: &CancellationToken) {
        let interval = Duration::from_millis(self.setup.config.interval_ms);
        while !stop.is_cancelled() {
            match self.round() {
                // A full batch: there may be more at once (catching up).
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => self.failed(&error),
            }
            std::thread::park_timeout(interval);
        }
    }

    /// Connects if needed, reads on, writes a batch; whether the batch
    /// was full.
    fn round(&mut self) -> Result<bool, HistoryError> {
        if self
            .database
            .as_ref()
            .is_some_and(|database| database.broken())
        {
            self.database = None;
        }
        if self.database.is_none() {
            let mut database = (self.open)(&self.setup.config)?;
            let committed = database.cursor(&self.setup.server)?;
            self.database = Some(database);
            // Back after an outage where it left off: go on with the batch
            // in hand. Otherwise (a start, or a commit whose answer was
            // lost, or another writer) read the log again from its start,
            // skipping what is archived; a cursor of another run (a new
            // data folder) counts as none.
            if self.tail.is_none() || committed != self.committed {
                self.committed = committed;
                self.read_to = match committed {
                    Some(cursor) if cursor.run == self.setup.run => cursor.seq,
                    _ => 0,
                };
                self.setup.archived.store(self.read_to, Ordering::Release);
                self.tail = Some(LogTail::new(&self.setup.log_dir));
                self.pending.clear();
            }
        }
        let batch_size = self.setup.config.batch_size;
        let tail = self.tail.as_mut().expect("set with the database");
        while self.pending.len() < batch_size {
            let Some((seq, at_line)) = tail.next_report().unwrap_or_else(|error| {
                warn!(%error, "reading the store log for the archive failed");
                None
            }) else {
                break;
            };
            if seq <= self.read_to {
                continue;
            }
            self.read_to = seq;
            let own = at_line
                .split(|&b| b == b' ')
                .nth(1)
                .is_some_and(|origin| origin == self.setup.server.as_bytes());
            if own && let Some(report) = Report::from_at_line(at_line) {
                self.pending.push(report);
            }
        }
        let full = self.pending.len() >= batch_size;
        let to = Cursor {
            run: self.setup.run,
            seq: self.read_to,
        };
        if self.committed != Some(to) {
            let database = self.database.as_mut().expect("connected above");
            match database.archive(&self.setup.server, self.committed, to, &self.pending) {
                Ok(()) => {}
                Err(error @ HistoryError::CursorMoved { .. }) => {
                    // Start again from what the database holds.
                    self.database = None;
                    self.tail = None;
                    return Err(error);
                }
                Err(error) => return Err(error),
            }
            self.committed = Some(to);
            self.setup.archived.store(to.seq, Ordering::Release);
            self.setup
                .stats
                .reports_archived
                .add(self.pending.len() as u64);
            self.pending.clear();
            if self.failing {
                self.failing = false;
                info!(
                    archived_to = to.seq,
                    "core database reachable again; archiving"
                );
            }
        }
        self.expire_old()?;
        Ok(full)
    }

    fn expire_old(&mut self) -> Result<(), HistoryError> {
        let days = self.setup.config.retention_days;
        if days == 0 || Instant::now() < self.next_retention {
            return Ok(());
        }
        let database = self.database.as_mut().expect("connected");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let before = now.saturating_sub(
            i64::try_from(days.saturating_mul(86_400_000_000_000)).unwrap_or(i64::MAX),
        );
        let mut expired = 0;
        loop {
            let gone = database.expire(before, RETENTION_BATCH)?;
            expired += gone;
            if gone < RETENTION_BATCH as u64 {
                break;
            }
        }
        if expired > 0 {
            info!(expired, days, "old reports deleted from the core database");
        }
        self.next_retention = Instant::now() + RETENTION_EVERY;
        Ok(())
    }

    fn failed(&mut self, error: &HistoryError) {
        self.setup.stats.archive_failures.add(1);
        if !self.failing {
            self.failing = true;
            warn!(%error, "archiving to the core database failed; the store log keeps the reports until it is back");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::history::{Circle, Window};

    /// What the stand-in database was asked to expire: each call's cutoff.
    static EXPIRED: Mutex<Vec<i64>> = Mutex::new(Vec::new());
    /// Rows the stand-in holds that are old enough to go.
    static OLD_ROWS: Mutex<u64> = Mutex::new(0);

    /// A database that holds only old rows and the cursor.
    struct Stand;

    impl CoreDatabase for Stand {
        fn cursor(&mut self, _server: &str) -> Result<Option<Cursor>, HistoryError> {
            Ok(None)
        }
        fn archive(
            &mut self,
            _server: &str,
            _from: Option<Cursor>,
            _to: Cursor,
            _reports: &[Report],
        ) -> Result<(), HistoryError> {
            Ok(())
        }
        fn client_history(
            &mut self,
            _client_id: &[u8],
            _window: Window,
            _limit: usize,
        ) -> Result<Vec<Report>, HistoryError> {
            Ok(Vec::new())
        }
        fn near(
            &mut self,
            _circle: Circle,
            _window: Window,
            _limit: usize,
        ) -> Result<Vec<Report>, HistoryError> {
            Ok(Vec::new())
        }
        fn forget(&mut self, _client_id: &[u8]) -> Result<u64, HistoryError> {
            Ok(0)
        }
        fn expire(&mut self, before_nanos: i64, batch: usize) -> Result<u64, HistoryError> {
            EXPIRED.lock().unwrap().push(before_nanos);
            let mut old = OLD_ROWS.lock().unwrap();
            let gone = (*old).min(batch as u64);
            *old -= gone;
            Ok(gone)
        }
    }

    fn now_nanos() -> i64 {
        i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        )
        .unwrap()
    }

    #[test]
    fn retention_deletes_in_batches_until_none_is_old_then_waits_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let setup = ArchiverSetup {
            server: "Hill".into(),
            run: 1,
            log_dir: dir.path().to_owned(),
            config: HistoryConfig {
                retention_days: 30,
                ..HistoryConfig::default()
            },
            archived: Arc::new(AtomicU64::new(0)),
            stats: Arc::new(ServerStats::new(0)),
        };
        *OLD_ROWS.lock().unwrap() = 2 * RETENTION_BATCH as u64 + 1;
        let mut archiver = Archiver::new(setup, |_| Ok(Box::new(Stand)));
        let before = now_nanos();
        archiver.round().unwrap();
        let after = now_nanos();
        let calls = std::mem::take(&mut *EXPIRED.lock().unwrap());
        // Two full batches, a short one, and no call past it.
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(*OLD_ROWS.lock().unwrap(), 0);
        let thirty_days = 30 * 86_400 * 1_000_000_000_i64;
        for cutoff in calls {
            assert!(
                (before - thirty_days..=after - thirty_days).contains(&cutoff),
                "a cutoff other than 30 days ago: {cutoff}"
            );
        }
        // Not again until RETENTION_EVERY has passed.
        *OLD_ROWS.lock().unwrap() = 5;
        archiver.round().unwrap();
        assert!(EXPIRED.lock().unwrap().is_empty());
        archiver.next_retention = Instant::now();
        archiver.round().unwrap();
        assert_eq!(EXPIRED.lock().unwrap().len(), 1);
        assert_eq!(*OLD_ROWS.lock().unwrap(), 0);
    }
}

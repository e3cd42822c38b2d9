//! The replica: every client's newest report, in memory and on disk, and
//! the one door through which a report enters a server.
//!
//! A report from a client (`Replica::accept`) and one from a neighbour
//! (`Replica::apply`) take the same path: the store decides whether it is
//! newer and numbers it, the storage appends it to the log, and the links
//! are told there is something new (`Replica::announce`). The replica also
//! keeps, per neighbour, the *cursor* of that neighbour's stream (how far
//! this server holds everything the neighbour accepted; see
//! `docs/flooding.md`), because cursors are logged with the reports they
//! stand for.
//!
//! This wing knows neither clients nor peer links: both use it.

pub mod storage;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::protocol::{self, time::Timestamp};
use crate::stats::Counter;
use storage::{Durability, Storage, StorageError};
use store::{Applied, Batch, Bounds, Source, Store};

/// Where and how a server keeps its store on disk.
#[derive(Clone, Debug)]
pub struct StorageSetup {
    pub dir: PathBuf,
    pub durability: Durability,
    pub sync_interval: Duration,
    /// Set when an archive reads the log (see `src/history/`): how far it
    /// has read for good. Reports are then logged in the order of their
    /// numbers, and compaction keeps the segments it has not passed.
    pub archived: Option<Arc<AtomicU64>>,
}

/// What one neighbour has sent us: its run id and the sequence number up to
/// which we hold everything it accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub run: u64,
    pub seq: u64,
}

/// One server's data: its store, its log, its neighbours' cursors.
pub struct Replica {
    store: Store,
    storage: Option<Arc<Storage>>,
    run: u64,
    /// Neighbour names, in the order links number them.
    neighbours: Vec<String>,
    cursors: Mutex<Vec<Cursor>>,
    /// Bumped after accepted updates; link senders wait on it.
    accepted: watch::Sender<u64>,
    /// Updates were accepted since the links were last told (see
    /// [`Replica::announce`]).
    unannounced: AtomicBool,
    /// How far an archive has read the log for good, if one does.
    archived: Option<Arc<AtomicU64>>,
    /// Held from numbering a report to logging it while an archive reads
    /// the log, so that the log holds reports in the order of their
    /// numbers and a number is a position an archive can resume from.
    in_order: Option<Mutex<()>>,
    /// The last receive time given to a client's report (nanoseconds since
    /// the epoch), held from giving the next to storing its report.
    last_received: Mutex<i128>,
    /// Clients forgotten by the sweep because their time was up.
    expired: Counter,
}

impl Replica {
    /// A replica kept in memory only, with run id `run` and no cursors.
    pub fn in_memory(neighbours: Vec<String>, run: u64) -> Self {
        Self::with(Store::new(), None, run, neighbours, &HashMap::new())
    }

    /// Opens the replica kept in `setup`'s folder (replaying its log), or an
    /// empty one in memory for `None`, its store held to `bounds`. A replay
    /// leaves out the reports already expired.
    pub async fn open(
        setup: Option<StorageSetup>,
        neighbours: Vec<String>,
        bounds: Bounds,
    ) -> Result<Self, StorageError> {
        let store = Store::with_bounds(bounds);
        store.set_now(unix_secs());
        let Some(setup) = setup else {
            let run = rand::random::<u64>() | 1;
            return Ok(Self::with(store, None, run, neighbours, &HashMap::new()));
        };
        let archived = setup.archived.clone();
        let (store, storage, recovered) = tokio::task::spawn_blocking(move || {
            // Each report goes into the store as it is read from disk.
            let (storage, recovered) = Storage::open(
                &setup.dir,
                setup.durability,
                setup.sync_interval,
                &mut |seq, at_line| match protocol::parse_at_line(at_line) {
                    Some(at) => store.restore(at_line, at.client_time, seq),
                    None => warn!("skipped an unreadable report in the store log"),
                },
            )?;
            Ok::<_, StorageError>((store, storage, recovered))
        })
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        store.continue_from(recovered.next_seq);
        storage.start_syncer();
        let mut replica = Self::with(
            store,
            Some(storage),
            recovered.run,
            neighbours,
            &recovered.cursors,
        );
        if archived.is_some() {
            replica.in_order = Some(Mutex::new(()));
        }
        replica.archived = archived;
        Ok(replica)
    }

    /// A replica over `store` that continues run `run` with the cursors
    /// recovered from its log: how a restarted server comes back.
    pub fn with(
        store: Store,
        storage: Option<Arc<Storage>>,
        run: u64,
        neighbours: Vec<String>,
        cursors: &HashMap<String, (u64, u64)>,
    ) -> Self {
        let cursors = neighbours
            .iter()
            .map(|name| {
                cursors
                    .get(name)
                    .map_or(Cursor::default(), |&(run, seq)| Cursor { run, seq })
            })
            .collect();
        Self {
            store,
            storage,
            run,
            neighbours,
            cursors: Mutex::new(cursors),
            accepted: watch::Sender::new(0),
            unannounced: AtomicBool::new(false),
            archived: None,
            in_order: None,
            last_received: Mutex::new(0),
            expired: Counter::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the store log has done, for a replica kept on disk.
    pub fn storage_stats(&self) -> Option<&crate::stats::StorageStats> {
        self.storage.as_deref().map(|storage| &storage.stats)
    }

    /// This server's run id: kept across restarts with the log, new for a
    /// server that starts with none.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// The neighbours' names, in the order links number them.
    pub fn neighbours(&self) -> &[String] {
        &self.neighbours
    }

    /// Stores the report of `at_line` (an AT line whose client time is
    /// `client_time`) if it is newer (and, for a new client, the store has
    /// room), logs it and marks it for the links. Says what it did.
    pub fn accept(&self, at_line: &[u8], client_time: Timestamp, source: Source) -> Applied {
        let _in_order = self.lock_in_order();
        let applied = self.store.update(at_line, client_time, source);
        if let Applied::Stored(seq) = applied {
            self.stored(seq, at_line);
        }
        applied
    }

    /// Accepts a client's report as [`Replica::accept`] does, its AT line
    /// written by `write` into `out` for a receive time of `received`
    /// (nanoseconds since the epoch) or, if the clock has not moved past
    /// the last report's, a nanosecond after that one. So this server's
    /// reports are stamped (see `store::stamp`) in the order they are
    /// numbered, each later than the one before, even from several
    /// threads or with the clock set back: a watermark at one of them
    /// stands for all before it. Returns where `write` put the line.
    pub fn accept_client(
        &self,
        received: i128,
        client_time: Timestamp,
        out: &mut Vec<u8>,
        write: impl FnOnce(i128, &mut Vec<u8>) -> std::ops::Range<usize>,
    ) -> (std::ops::Range<usize>, Applied) {
        let mut last = self
            .last_received
            .lock()
            .expect("receive time lock is never poisoned");
        let received = received.max(*last + 1);
        *last = received;
        let at_line = write(received, out);
        let applied = self.accept(&out[at_line.clone()], client_time, Source::Client);
        (at_line, applied)
    }

    /// Applies a neighbour's report with one lookup of its client (see
    /// [`Store::apply`]), logging it and marking it for the links if it was
    /// stored.
    pub fn apply(
        &self,
        at_line: &[u8],
        source: Source,
        client_time: impl FnOnce() -> Option<Timestamp>,
    ) -> Applied {
        let _in_order = self.lock_in_order();
        let applied = self.store.apply(at_line, source, client_time);
        if let Applied::Stored(seq) = applied {
            self.stored(seq, at_line);
        }
        applied
    }

    fn lock_in_order(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.in_order
            .as_ref()
            .map(|lock| lock.lock().expect("order lock is never poisoned"))
    }

    /// The folder of the store log, for an archive to read it; `None` for
    /// a replica in memory.
    pub fn log_dir(&self) -> Option<&std::path::Path> {
        self.storage.as_deref().map(Storage::dir)
    }

    fn stored(&self, seq: u64, at_line: &[u8]) {
        if let Some(storage) = &self.storage {
            storage.append_report(seq, at_line);
        }
        // The links are woken once the batch this report came in is done.
        self.unannounced.store(true, Ordering::Release);
    }

    /// Tells every link that the store has something new, if it has since
    /// the last time: a batch of updates (a client's lines read together, a
    /// neighbour's frame) wakes the links once, not once per update (each
    /// wake-up locks every waiter list of the channel).
    pub fn announce(&self) {
        if !self.unannounced.swap(false, Ordering::AcqRel) {
            return;
        }
        // No link listening (none up, or no neighbours at all): a link that
        // comes up scans the store from its cursor anyway.
        if self.accepted.receiver_count() == 0 {
            return;
        }
        self.accepted
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A signal that changes whenever new reports are announced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.accepted.subscribe()
    }

    /// The cursor to offer neighbour `index` whose run id is `run`, as its
    /// link comes up: what we hold of that run, or nothing of a new run.
    pub fn cursor_for(&self, index: usize, run: u64) -> Cursor {
        let mut cursors = self.lock_cursors();
        if cursors[index].run != run {
            cursors[index] = Cursor { run, seq: 0 };
        }
        cursors[index]
    }

    /// Notes that we hold everything of neighbour `index`'s run `run` up to
    /// `seq`, if that is further than we knew; returns whether it was.
    /// Logged after the reports of the frame that advanced it, so a replay
    /// never has a cursor ahead of the data it stands for.
    pub fn advance_cursor(&self, index: usize, run: u64, seq: u64) -> bool {
        let advanced = {
            let mut cursors = self.lock_cursors();
            let advanced = cursors[index].run == run && seq > cursors[index].seq;
            if advanced {
                cursors[index].seq = seq;
            }
            advanced
        };
        if advanced && let Some(storage) = &self.storage {
            storage.append_cursor(&self.neighbours[index], run, seq);
        }
        advanced
    }

    /// Every neighbour's cursor, by index.
    pub fn cursors(&self) -> Vec<Cursor> {
        self.lock_cursors().clone()
    }

    /// Every known neighbour cursor: (name, its run id, seq), for a snapshot.
    pub fn cursor_list(&self) -> Vec<(String, u64, u64)> {
        let cursors = self.lock_cursors();
        self.neighbours
            .iter()
            .zip(cursors.iter())
            .filter(|(_, cursor)| cursor.run != 0)
            .map(|(name, c)| (name.clone(), c.run, c.seq))
            .collect()
    }

    fn lock_cursors(&self) -> std::sync::MutexGuard<'_, Vec<Cursor>> {
        self.cursors.lock().expect("cursor lock is never poisoned")
    }

    /// Waits until what was accepted so far is as durable as the storage
    /// setting promises a client's reply: call before replying.
    pub async fn commit(&self) -> std::io::Result<()> {
        match &self.storage {
            Some(storage) => storage.commit().await,
            None => Ok(()),
        }
    }

    /// Has what was accepted written out soon, without waiting for a sync:
    /// after a neighbour's frame.
    pub async fn flush_soon(&self) -> std::io::Result<()> {
        match &self.storage {
            Some(storage) => storage.flush_soon().await,
            None => Ok(()),
        }
    }

    /// Clients forgotten so far because their time was up.
    pub fn clients_expired(&self) -> u64 {
        self.expired.get()
    }

    /// Forgets clients not heard from for the store's `ttl_secs`, until
    /// `shutdown`: tells the store the time (`now`, whole seconds since
    /// the epoch) every second, which is when lookups and scans stop
    /// seeing an expired client, and now and then sweeps the store to
    /// free what expired clients held, a chunk of entries per lock.
    /// Nothing is logged: compaction leaves expired clients out, and a
    /// replay skips them. Returns at once for a store that keeps clients
    /// for ever.
    pub async fn expire_now_and_then(
        self: Arc<Self>,
        shutdown: CancellationToken,
        now: impl Fn() -> u64,
    ) {
        let ttl = self.store.bounds().ttl_secs;
        if ttl == 0 {
            return;
        }
        // A sweep reads every chunk that may hold an expired client, so it
        // runs a sixteenth of the time to live apart, within [1 s, 60 s]:
        // memory comes back at most that long after the time is up.
        let sweep_every = (ttl / 16).clamp(1, 60);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            self.store.set_now(now());
            ticks += 1;
            if !ticks.is_multiple_of(sweep_every) {
                continue;
            }
            let mut chunk = 0;
            while let Some(forgotten) = self.store.sweep(chunk) {
                self.expired.add(forgotten as u64);
                chunk += 1;
                // Other tasks run between chunks.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Rewrites the store log now and then, when superseded records pile
    /// up, until `shutdown`. Returns at once for a replica in memory.
    pub async fn compact_now_and_then(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(storage) = self.storage.clone() else {
            return;
        };
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let archived = self.archived.clone();
            if let Some(archived) = &archived
                && let Err(error) = storage.release_archived(archived.load(Ordering::Acquire))
            {
                warn!(%error, "deleting archived store log segments failed");
            }
            if !storage.wants_compaction(self.store.len()) {
                continue;
            }
            let (replica, storage) = (self.clone(), storage.clone());
            let archived_now = archived.map(|archived| move || archived.load(Ordering::Acquire));
            let outcome = tokio::task::spawn_blocking(move || {
                storage.compact(
                    || replica.cursor_list(),
                    |put| {
                        let mut next = 0;
                        let mut batch = Batch::new();
                        loop {
                            batch.clear();
                            let reached = replica.store.since(next, None, 4096, &mut batch).reached;
                            for (picked, at_line) in batch.iter() {
                                put(picked.seq, at_line);
                            }
                            if reached == next {
                                break;
                            }
                            next = reached;
                        }
                    },
                    archived_now.as_ref().map(|now| now as &dyn Fn() -> u64),
                )
            })
            .await;
            if let Ok(Err(error)) = outcome {
                warn!(%error, "compacting the store log failed");
            }
        }
    }

    /// Writes out and syncs what the log holds, and lets go of the data
    /// folder: at shutdown.
    pub fn close(&self) {
        if let Some(storage) = &self.storage {
            storage.close();
        }
    }
}

/// Whole seconds since the epoch, by the wall clock (receipt times are
/// wall-clock times).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Drop for Replica {
    /// A server that ends without `close` (an error after the store was
    /// opened) still stops its sync thread and lets go of its data folder,
    /// which a server started again in the same process needs.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(client: &str, time: &str) -> (String, Timestamp) {
        (
            format!("AT Hill +0.000000000 {client} +1+1 {time}"),
            Timestamp::parse(time.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn a_cursor_offered_to_a_new_run_starts_over_and_only_moves_forward() {
        let replica = Replica::in_memory(vec!["A".into(), "B".into()], 7);
        assert_eq!(replica.cursor_for(0, 5), Cursor { run: 5, seq: 0 });
        assert!(replica.advance_cursor(0, 5, 10));
        assert!(!replica.advance_cursor(0, 5, 9), "never backwards");
        assert!(!replica.advance_cursor(0, 4, 99), "another run's data");
        assert_eq!(replica.cursor_for(0, 5), Cursor { run: 5, seq: 10 });
        assert_eq!(replica.cursor_list(), vec![("A".to_owned(), 5, 10)]);
        // The neighbour restarted: what we held of its old run means nothing.
        assert_eq!(replica.cursor_for(0, 6), Cursor { run: 6, seq: 0 });
    }

    #[test]
    fn reports_from_both_doors_are_announced_once_per_batch() {
        let replica = Replica::in_memory(vec!["A".into()], 7);
        let mut signal = replica.subscribe();
        signal.borrow_and_update();
        let (first, time) = line("kiwi", "5");
        assert_eq!(
            replica.accept(first.as_bytes(), time, Source::Client),
            Applied::Stored(1)
        );
        assert_eq!(
            replica.accept(first.as_bytes(), time, Source::Client),
            Applied::NotNewer
        );
        let (second, _) = line("pear", "6");
        assert_eq!(
            replica.apply(
                second.as_bytes(),
                Source::Neighbour(0),
                || Timestamp::parse(b"6")
            ),
            Applied::Stored(2)
        );
        assert!(!signal.has_changed().unwrap());
        replica.announce();
        replica.announce();
        assert!(signal.has_changed().unwrap());
        assert_eq!(*signal.borrow_and_update(), 1, "one wake-up for the batch");
    }

    /// On tokio's paused clock, with a wall clock that follows it: a
    /// client is seen until its time is up, gone at once after, and its
    /// entry freed by the next sweep; a client heard from again stays.
    #[tokio::test(start_paused = true)]
    async fn clients_not_heard_from_for_their_time_are_forgotten() {
        const START: u64 = 1_700_000_000;
        let store = Store::with_bounds(Bounds {
            ttl_secs: 30,
            ..Bounds::default()
        });
        let replica = Arc::new(Replica::with(store, None, 7, vec![], &HashMap::new()));
        let began = tokio::time::Instant::now();
        let now = move || START + began.elapsed().as_secs();
        let report = |client: &str| {
            let secs = now();
            let line = format!("AT Hill +0.000000000 {client} +1+1 {secs}");
            let time = Timestamp::new(secs, 0).unwrap();
            replica.accept(line.as_bytes(), time, Source::Client)
        };
        assert_eq!(report("kiwi"), Applied::Stored(1));
        assert_eq!(report("emu"), Applied::Stored(2));
        let shutdown = CancellationToken::new();
        let expiry = tokio::spawn(replica.clone().expire_now_and_then(shutdown.clone(), now));
        tokio::time::sleep(Duration::from_secs(20)).await;
        // emu is heard from again at 20 s; kiwi is not.
        assert!(report("emu").stored().is_some());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(replica.store().get(b"kiwi").is_some(), "30 s: not yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(replica.store().get(b"kiwi").is_none(), "32 s: forgotten");
        assert!(replica.store().get(b"emu").is_some());
        assert_eq!(replica.clients_expired(), 1, "and swept");
        assert_eq!(replica.store().len(), 1);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(replica.store().get(b"emu").is_none());
        assert_eq!(replica.clients_expired(), 2);
        assert!(replica.store().is_empty());
        shutdown.cancel();
        expiry.await.unwrap();
    }
}

//! A server's store on disk: a log-structured file set, replayed on start.
//!
//! The store is small records, blind upserts, all of it in memory, and
//! newest-wins by client time: exactly the case for a Bitcask-style log
//! (append every accepted report; replay on start; rewrite the live records
//! now and then). Each record carries a CRC, so a torn or corrupt tail is
//! found and cut off at the first bad record; what is replayed is always a
//! prefix of what was written, which keeps cursors consistent with data.
//!
//! Files in `DIR`: `log-NNNNNN.herd` segments, appended to, and at most one
//! `snap-NNNNNN.herd`, the live state as of the start of segment NNNNNN.
//! Replay reads the snapshot, then every segment from NNNNNN on.
//!
//! Records: `u32 length | u32 crc32 | payload`, payload one of
//! - `R seq:u64 at_line` — an accepted report (its stored AT line);
//! - `C run:u64 seq:u64 neighbour` — how far we hold a neighbour's stream;
//! - `M run:u64 reserved:u64` — our run id, and a sequence number above any
//!   we have handed out (so numbering continues past it after a restart).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::log::page_cache::{self, PageCacheTrim};
use crate::stats::StorageStats;

const MAGIC: &[u8; 9] = b"HERDLOG1\n";
/// The largest record accepted on replay; AT lines are bounded by the
/// client line limit, well below this.
const MAX_RECORD: usize = 64 * 1024 * 1024;
/// How much of the store log is written between two requests to drop its
/// written pages from the page cache.
const TRIM_EVERY: u64 = 1 << 20;
/// Sequence numbers reserved at a time (one fsync per this many updates).
const RESERVE_STEP: u64 = 1 << 20;
/// Rewrite the live state once the logs since the last snapshot exceed this
/// and hold mostly superseded records.
const COMPACT_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// How hard a server works to keep acknowledged updates through a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every accepted update is fsynced before its AT reply (group commit:
    /// concurrent clients share one fsync). Survives power loss.
    Always,
    /// Every accepted update is written to the OS before its AT reply, and
    /// fsynced every `sync_interval_ms`. Survives a crash or SIGKILL of the
    /// server; a power loss may lose the last interval.
    #[default]
    Batched,
    /// Updates are written to the OS every `sync_interval_ms` and never
    /// fsynced. A crash may lose the last interval.
    None,
}

/// What a log replay found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Our run id, kept across restarts so that neighbours' cursors for us
    /// stay valid.
    pub run: u64,
    /// Where our numbering continues: above every number handed out before.
    pub next_seq: u64,
    /// How many report records were replayed (a client may have several).
    pub reports: usize,
    /// Per neighbour name: (its run id, how far we hold its stream).
    pub cursors: HashMap<String, (u64, u64)>,
}

/// A problem with the data folder that a person must look at.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a herd log (bad header); move it out of the data folder")]
    Foreign { path: PathBuf },
}

struct Inner {
    /// The segment being appended to.
    file: File,
    /// Its pages, dropped from the page cache once on disk: replay reads
    /// them back, and nothing else does.
    trim: PageCacheTrim,
    segment: u64,
    /// Records not yet written to the OS.
    buffer: Vec<u8>,
    /// Bytes written to the OS so far (all segments since open).
    written: u64,
    /// Bytes appended to logs since the last snapshot.
    since_snapshot: u64,
    reserved: u64,
    run: u64,
    compacting: bool,
    /// The highest sequence number appended, so that a compaction knows
    /// which numbers the segments it would delete hold.
    last_seq: u64,
    /// Segments below `.0`, kept after a compaction because an archive had
    /// not yet passed `.1`, the highest number they hold.
    held: Option<(u64, u64)>,
}

/// The open log of one server.
pub struct Storage {
    dir: PathBuf,
    durability: Durability,
    interval: Duration,
    inner: Mutex<Inner>,
    /// Bytes known to be fsynced, and a wake-up for the syncer.
    synced: Mutex<SyncState>,
    sync_wakeup: Condvar,
    synced_watch: tokio::sync::watch::Sender<u64>,
    /// What the log has done since it was opened.
    pub stats: StorageStats,
}

#[derive(Default)]
struct SyncState {
    requested: u64,
    stop: bool,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Storage {
    /// Opens (creating if needed) the data folder `dir`, replays it, and
    /// starts a fresh segment. A new folder gets a new random run id.
    ///
    /// Each report record is handed to `restore` (its sequence number and
    /// AT line, in the order logged) as it is read, so that a replay holds
    /// one record at a time rather than the whole log.
    pub fn open(
        dir: &Path,
        durability: Durability,
        interval: Duration,
        restore: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(Arc<Storage>, Recovered), StorageError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let (snapshot, segments) = list(dir)?;
        let mut replayed = Replayed {
            recovered: Recovered::default(),
            reserved: 0,
            highest: 0,
            restore,
        };
        let first_segment = snapshot.unwrap_or(0);
        if let Some(number) = snapshot {
            let path = dir.join(snapshot_name(number));
            replay(&path, &mut replayed, false)?;
        }
        for &number in segments.iter().filter(|&&n| n >= first_segment) {
            let path = dir.join(segment_name(number));
            replay(&path, &mut replayed, true)?;
        }
        let mut recovered = replayed.recovered;
        if recovered.run == 0 {
            recovered.run = rand::random::<u64>() | 1;
        }
        recovered.next_seq = replayed.reserved.max(replayed.highest) + 1;
        let segment = segments.last().copied().unwrap_or(0).max(first_segment) + 1;
        let path = dir.join(segment_name(segment));
        let file = create_segment(&path)?;
        let (synced_watch, _) = tokio::sync::watch::channel(0);
        let storage = Arc::new(Storage {
            dir: dir.to_owned(),
            durability,
            interval,
            inner: Mutex::new(Inner {
                trim: PageCacheTrim::new(&file, TRIM_EVERY),
                file,
                segment,
                buffer: Vec::with_capacity(64 * 1024),
                written: 0,
                since_snapshot: segments
                    .iter()
                    .filter(|&&n| n >= first_segment)
                    .map(|&n| std::fs::metadata(dir.join(segment_name(n))).map_or(0, |m| m.len()))
                    .sum(),
                reserved: recovered.next_seq,
                run: recovered.run,
                compacting: false,
                last_seq: 0,
                held: None,
            }),
            synced: Mutex::new(SyncState::default()),
            sync_wakeup: Condvar::new(),
            synced_watch,
            stats: StorageStats::default(),
        });
        storage
            .stats
            .replayed_records
            .set(i64::try_from(recovered.reports).unwrap_or(i64::MAX));
        // Reserve numbering before any is handed out, durably.
        storage
            .reserve(recovered.next_seq + RESERVE_STEP)
            .map_err(io_error(dir))?;
        info!(
            dir = %dir.display(),
            reports = recovered.reports,
            neighbours = recovered.cursors.len(),
            "store recovered"
        );
        Ok((storage, recovered))
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the background thread that writes and fsyncs on the interval.
    pub fn start_syncer(self: &Arc<Self>) {
        let storage = self.clone();
        std::thread::Builder::new()
            .name("herd-sync".into())
            .spawn(move || storage.sync_loop())
            .expect("spawning the sync thread");
    }

    /// Stops the syncer after a last write and fsync.
    pub fn close(&self) {
        let _ = self.write_out();
        if self.durability != Durability::None {
            let _ = self.fsync();
        }
        self.synced.lock().expect("sync lock").stop = true;
        self.sync_wakeup.notify_all();
    }

    fn sync_loop(&self) {
        loop {
            let mut state = self.synced.lock().expect("sync lock");
            if state.stop {
                return;
            }
            let requested = state.requested;
            if self.durability != Durability::Always || requested <= *self.synced_watch.borrow() {
                state = self
                    .sync_wakeup
                    .wait_timeout(state, self.interval)
                    .expect("sync lock")
                    .0;
            }
            if state.stop {
                return;
            }
            drop(state);
            if let Err(error) = self.write_out() {
                warn!(%error, "writing the store log failed");
            }
            if self.durability == Durability::None {
                if let Err(error) = self.trim() {
                    warn!(%error, "dropping written store log pages failed");
                }
            } else if let Err(error) = self.fsync() {
                warn!(%error, "fsync of the store log failed");
            }
        }
    }

    /// Appends an accepted report. `seq` is its number in our sequence.
    pub fn append_report(&self, seq: u64, at_line: &[u8]) {
        let mut inner = self.inner.lock().expect("storage lock");
        encode_report(&mut inner.buffer, seq, at_line);
        inner.last_seq = inner.last_seq.max(seq);
        self.stats.records.bump();
        if seq + RESERVE_STEP / 2 >= inner.reserved {
            // Once per half a million updates: extend the reservation,
            // durably, long before numbering can reach it.
            let reserved = seq + RESERVE_STEP;
            let run = inner.run;
            drop(inner);
            if let Err(error) = self.write_meta(run, reserved) {
                warn!(%error, "extending the sequence reservation failed");
            }
        }
    }

    /// Appends how far we hold neighbour `name`'s stream.
    pub fn append_cursor(&self, name: &str, run: u64, seq: u64) {
        let mut payload = Vec::with_capacity(17 + name.len());
        payload.push(b'C');
        payload.extend_from_slice(&run.to_le_bytes());
        payload.extend_from_slice(&seq.to_le_bytes());
        payload.extend_from_slice(name.as_bytes());
        encode(
            &mut self.inner.lock().expect("storage lock").buffer,
            &payload,
        );
        self.stats.records.bump();
    }

    /// Makes what was appended so far as durable as the setting promises,
    /// before the replies that acknowledge it are written.
    pub async fn commit(&self) -> io::Result<()> {
        match self.durability {
            Durability::None => Ok(()),
            Durability::Batched => {
                if self.inner.lock().expect("storage lock").buffer.is_empty() {
                    return Ok(());
                }
                // Group commit: let the other connections that are ready now
                // append their records first, so that one write covers all
                // of them; whichever task runs first afterwards does it, and
                // the others find nothing left to write.
                tokio::task::yield_now().await;
                self.write_out().map(|_| ())
            }
            Durability::Always => {
                let position = self.write_out()?;
                let mut synced = self.synced_watch.subscribe();
                if *synced.borrow_and_update() >= position {
                    return Ok(());
                }
                {
                    let mut state = self.synced.lock().expect("sync lock");
                    state.requested = state.requested.max(position);
                }
                self.sync_wakeup.notify_one();
                while *synced.borrow_and_update() < position {
                    if synced.changed().await.is_err() {
                        return Err(io::Error::other("storage closed"));
                    }
                }
                Ok(())
            }
        }
    }

    /// For updates no reply waits on (those from neighbours): hand them to
    /// the OS now unless the setting leaves that to the interval. It yields
    /// first, so that the links flooding these updates onwards (and other
    /// ready tasks) go before the write, which then covers their records too.
    pub async fn flush_soon(&self) -> io::Result<()> {
        match self.durability {
            Durability::None => Ok(()),
            Durability::Batched | Durability::Always => {
                tokio::task::yield_now().await;
                self.write_out().map(|_| ())
            }
        }
    }

    /// Writes buffered records to the OS; returns the bytes written so far.
    pub fn write_out(&self) -> io::Result<u64> {
        let mut inner = self.inner.lock().expect("storage lock");
        if !inner.buffer.is_empty() {
            let Inner {
                file, buffer, trim, ..
            } = &mut *inner;
            file.write_all(buffer)?;
            let length = buffer.len() as u64;
            // The advice to drop written pages is the syncer's (`fsync`,
            // `trim`): a system call, and for dirty pages the start of their
            // write-back, kept off the thread whose replies wait on this.
            trim.note(length);
            buffer.clear();
            inner.written += length;
            inner.since_snapshot += length;
            self.stats.bytes_written.add(length);
        }
        Ok(inner.written)
    }

    fn fsync(&self) -> io::Result<()> {
        let (file, position, due) = {
            let mut inner = self.inner.lock().expect("storage lock");
            (inner.file.try_clone()?, inner.written, inner.trim.due())
        };
        let started = std::time::Instant::now();
        file.sync_data()?;
        self.stats.fsyncs.bump();
        self.stats.fsync_latency.observe(started.elapsed());
        self.synced_watch
            .send_modify(|synced| *synced = (*synced).max(position));
        // Synced pages are clean: the advice drops them at once.
        if let Some(range) = due {
            page_cache::advise(&file, range);
        }
        Ok(())
    }

    /// Asks the kernel to drop written pages of the log (for a store that
    /// never fsyncs; `fsync` does it for the others).
    fn trim(&self) -> io::Result<()> {
        let (file, due) = {
            let mut inner = self.inner.lock().expect("storage lock");
            let Some(due) = inner.trim.due() else {
                return Ok(());
            };
            (inner.file.try_clone()?, due)
        };
        page_cache::advise(&file, due);
        Ok(())
    }

    fn reserve(&self, reserved: u64) -> io::Result<()> {
        let run = self.inner.lock().expect("storage lock").run;
        self.write_meta(run, reserved)
    }

    fn write_meta(&self, run: u64, reserved: u64) -> io::Result<()> {
        {
            let mut inner = self.inner.lock().expect("storage lock");
            if inner.reserved > reserved {
                return Ok(());
            }
            encode(&mut inner.buffer, &meta_payload(run, reserved));
            inner.reserved = reserved;
            self.stats.records.bump();
        }
        self.write_out()?;
        self.fsync()
    }

    /// Whether enough superseded records piled up to rewrite the log.
    pub fn wants_compaction(&self, live_reports: usize) -> bool {
        let inner = self.inner.lock().expect("storage lock");
        !inner.compacting
            && inner.since_snapshot > COMPACT_MIN_BYTES
            && inner.since_snapshot > 4 * 128 * live_reports as u64
    }

    /// Rewrites the live state into a snapshot and drops older files.
    ///
    /// `cursors` and `reports` are called after the switch to a new
    /// segment, so whatever they miss is in that segment, which is kept.
    /// With `archived` (how far an archive has read the log for good), the
    /// old segments are deleted only once it has passed every number they
    /// hold; until then they are kept, and [`Storage::release_archived`]
    /// deletes them later.
    pub fn compact(
        &self,
        cursors: impl FnOnce() -> Vec<(String, u64, u64)>,
        mut reports: impl FnMut(&mut ReportSink<'_>),
        archived: Option<&dyn Fn() -> u64>,
    ) -> Result<(), StorageError> {
        let (segment, run, reserved, last_seq) = {
            let mut inner = self.inner.lock().expect("storage lock");
            if inner.compacting {
                return Ok(());
            }
            inner.compacting = true;
            let Inner { file, buffer, .. } = &mut *inner;
            file.write_all(buffer).map_err(io_error(&self.dir))?;
            buffer.clear();
            let segment = inner.segment + 1;
            let path = self.dir.join(segment_name(segment));
            inner.file = create_segment(&path)?;
            inner.trim = PageCacheTrim::new(&inner.file, TRIM_EVERY);
            inner.segment = segment;
            inner.since_snapshot = 0;
            (segment, inner.run, inner.reserved, inner.last_seq)
        };
        let result = self.write_snapshot(segment, run, reserved, cursors(), &mut reports);
        self.inner.lock().expect("storage lock").compacting = false;
        result?;
        self.stats.compactions.bump();
        // The snapshot now covers everything before `segment`.
        let (snapshots, segments) = list_all(&self.dir)?;
        for old in snapshots.into_iter().filter(|&n| n < segment) {
            let _ = std::fs::remove_file(self.dir.join(snapshot_name(old)));
        }
        // Replay starts at the snapshot, so older segments matter only to
        // an archive that has not read them yet.
        if archived.is_none_or(|archived| archived() >= last_seq) {
            self.remove_segments_below(segment, segments);
        } else {
            self.inner.lock().expect("storage lock").held = Some((segment, last_seq));
        }
        info!(segment, "store log compacted");
        Ok(())
    }

    /// Deletes the segments a compaction kept for an archive, once it has
    /// read past `archived`.
    pub fn release_archived(&self, archived: u64) -> Result<(), StorageError> {
        let held = {
            let mut inner = self.inner.lock().expect("storage lock");
            match inner.held {
                Some((_, last_seq)) if archived >= last_seq => inner.held.take(),
                _ => None,
            }
        };
        if let Some((segment, _)) = held {
            let (_, segments) = list_all(&self.dir)?;
            self.remove_segments_below(segment, segments);
            info!(segment, "archived store log segments deleted");
        }
        Ok(())
    }

    fn remove_segments_below(&self, segment: u64, segments: Vec<u64>) {
        for old in segments.into_iter().filter(|&n| n < segment) {
            let _ = std::fs::remove_file(self.dir.join(segment_name(old)));
        }
    }

    fn write_snapshot(
        &self,
        segment: u64,
        run: u64,
        reserved: u64,
        cursors: Vec<(String, u64, u64)>,
        reports: &mut dyn FnMut(&mut ReportSink<'_>),
    ) -> Result<(), StorageError> {
        let temporary = self.dir.join(format!("{}.tmp", snapshot_name(segment)));
        let file = File::create(&temporary).map_err(io_error(&temporary))?;
        let mut writer = BufWriter::new(file);
        let mut failed = None;
        let mut record = Vec::new();
        let mut put = |payload: &[u8], writer: &mut BufWriter<File>| {
            record.clear();
            encode(&mut record, payload);
            if failed.is_none()
                && let Err(error) = writer.write_all(&record)
            {
                failed = Some(error);
            }
        };
        writer.write_all(MAGIC).map_err(io_error(&temporary))?;
        put(&meta_payload(run, reserved), &mut writer);
        for (name, cursor_run, seq) in cursors {
            let mut payload = vec![b'C'];
            payload.extend_from_slice(&cursor_run.to_le_bytes());
            payload.extend_from_slice(&seq.to_le_bytes());
            payload.extend_from_slice(name.as_bytes());
            put(&payload, &mut writer);
        }
        reports(&mut |seq, at_line| {
            record.clear();
            encode_report(&mut record, seq, at_line);
            if failed.is_none()
                && let Err(error) = writer.write_all(&record)
            {
                failed = Some(error);
            }
        });
        if let Some(error) = failed {
            return Err(io_error(&temporary)(error));
        }
        let file = writer
            .into_inner()
            .map_err(|e| io_error(&temporary)(e.into_error()))?;
        file.sync_all().map_err(io_error(&temporary))?;
        let path = self.dir.join(snapshot_name(segment));
        std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.dir))?;
        Ok(())
    }
}

/// Reads the report records of a data folder's segments, oldest first, as
/// they are written: an archive's view of the log. It reads only what was
/// handed to the OS, and stops at a record not yet wholly written, to try
/// it again on the next call.
pub struct LogTail {
    dir: PathBuf,
    segment: Option<u64>,
    reader: Option<io::BufReader<File>>,
    /// Where the next record starts in the current segment.
    offset: u64,
    /// The segment's length as last read, and whether the reader is at
    /// `offset`.
    length: u64,
    positioned: bool,
    payload: Vec<u8>,
}

impl LogTail {
    /// A reader from the oldest segment of `dir` on.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            segment: None,
            reader: None,
            offset: 0,
            length: 0,
            positioned: false,
            payload: Vec::new(),
        }
    }

    /// The next report record, its number and AT line; `None` when every
    /// record written so far has been read.
    pub fn next_report(&mut self) -> Result<Option<(u64, &[u8])>, StorageError> {
        loop {
            if self.reader.is_none() && !self.open_next()? {
                return Ok(None);
            }
            if self.read_one()? {
                if self.is_report() {
                    break;
                }
                continue;
            }
            // At the end of what is written. The writer finishes a segment
            // before it creates the next one, so once a newer one is seen,
            // one more read gets everything this one will ever hold.
            let newer = self.newer_segment()?;
            if self.read_one()? {
                if self.is_report() {
                    break;
                }
                continue;
            }
            match newer {
                Some(_) => self.reader = None,
                None => return Ok(None),
            }
        }
        let seq = u64::from_le_bytes(self.payload[1..9].try_into().expect("8 bytes"));
        Ok(Some((seq, &self.payload[9..])))
    }

    fn is_report(&self) -> bool {
        self.payload.first() == Some(&b'R') && self.payload.len() >= 9
    }

    fn newer_segment(&self) -> Result<Option<u64>, StorageError> {
        let (_, segments) = list_all(&self.dir)?;
        Ok(segments
            .into_iter()
            .find(|&n| self.segment.is_none_or(|current| n > current)))
    }

    /// Opens the segment after the current one; whether there is one.
    fn open_next(&mut self) -> Result<bool, StorageError> {
        let Some(next) = self.newer_segment()? else {
            return Ok(false);
        };
        let path = self.dir.join(segment_name(next));
        self.segment = Some(next);
        match File::open(&path) {
            Ok(file) => {
                self.reader = Some(io::BufReader::with_capacity(1 << 16, file));
                self.offset = 0;
                self.length = 0;
                self.positioned = false;
                Ok(true)
            }
            // Deleted since it was listed: an archive had read it already.
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    /// Reads the record at `offset` into `payload`; `false` if it is not
    /// wholly there (yet), leaving `offset` where it was.
    fn read_one(&mut self) -> Result<bool, StorageError> {
        let path = self.dir.join(segment_name(self.segment.unwrap_or(0)));
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        // The file's length is read again only when what was known of it
        // is used up, and the reader seeks only after a failed read.
        for fresh in [false, true] {
            if fresh {
                let length = reader.get_ref().metadata().map_err(io_error(&path))?.len();
                if length == self.length {
                    return Ok(false);
                }
                self.length = length;
            }
            if self.offset == 0 {
                if self.length < MAGIC.len() as u64 {
                    continue;
                }
                self.offset = MAGIC.len() as u64;
                self.positioned = false;
            }
            if !self.positioned {
                io::Seek::seek(reader, io::SeekFrom::Start(self.offset))
                    .map_err(io_error(&path))?;
                self.positioned = true;
            }
            let left = self.length.saturating_sub(self.offset);
            if left == 0 {
                continue;
            }
            if read_record(reader, left, &mut self.payload).map_err(io_error(&path))? {
                self.offset += 8 + self.payload.len() as u64;
                return Ok(true);
            }
            self.positioned = false;
        }
        Ok(false)
    }
}

/// Where a snapshot's reports are handed: (sequence number, AT line).
type ReportSink<'a> = dyn FnMut(u64, &[u8]) + 'a;

fn meta_payload(run: u64, reserved: u64) -> Vec<u8> {
    let mut payload = vec![b'M'];
    payload.extend_from_slice(&run.to_le_bytes());
    payload.extend_from_slice(&reserved.to_le_bytes());
    payload
}

/// An `R` record, encoded in place: this runs for every accepted update.
fn encode_report(out: &mut Vec<u8>, seq: u64, at_line: &[u8]) {
    let length = u32::try_from(9 + at_line.len()).expect("records are far below 4 GiB");
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"R");
    crc.update(&seq.to_le_bytes());
    crc.update(at_line);
    out.reserve(8 + length as usize);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(b'R');
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(at_line);
}

fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn segment_name(number: u64) -> String {
    format!("log-{number:06}.herd")
}

fn snapshot_name(number: u64) -> String {
    format!("snap-{number:06}.herd")
}

fn create_segment(path: &Path) -> Result<File, StorageError> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(MAGIC).map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        // The new name must survive a crash too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(file)
}

/// The newest snapshot and all segments, by number.
fn list(dir: &Path) -> Result<(Option<u64>, Vec<u64>), StorageError> {
    let (snapshots, segments) = list_all(dir)?;
    Ok((snapshots.last().copied(), segments))
}

fn list_all(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), StorageError> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let number = |prefix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(".herd")?
                .parse::<u64>()
                .ok()
        };
        if let Some(n) = number("log-") {
            segments.push(n);
        } else if let Some(n) = number("snap-") {
            snapshots.push(n);
        }
    }
    snapshots.sort_unstable();
    segments.sort_unstable();
    Ok((snapshots, segments))
}

/// A replay in progress.
struct Replayed<'a> {
    recovered: Recovered,
    /// The highest sequence number reserved, and the highest seen.
    reserved: u64,
    highest: u64,
    restore: &'a mut dyn FnMut(u64, &[u8]),
}

/// Replays one file, a record at a time. A bad record ends the replay of
/// this file: if `repair`, the file is cut there and the rest kept aside as
/// `NAME.corrupt` for a person to look at.
fn replay(path: &Path, replayed: &mut Replayed<'_>, repair: bool) -> Result<(), StorageError> {
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut magic = Vec::with_capacity(MAGIC.len());
    (&mut reader)
        .take(MAGIC.len() as u64)
        .read_to_end(&mut magic)
        .map_err(io_error(path))?;
    if magic.len() < MAGIC.len() {
        // A segment created but cut before its header: nothing in it.
        if repair && MAGIC.starts_with(&magic) {
            return Ok(());
        }
        return Err(StorageError::Foreign {
            path: path.to_owned(),
        });
    }
    if magic != MAGIC {
        return Err(StorageError::Foreign {
            path: path.to_owned(),
        });
    }
    let mut offset = MAGIC.len() as u64;
    let mut payload = Vec::new();
    while offset < length {
        if !read_record(&mut reader, length - offset, &mut payload).map_err(io_error(path))? {
            warn!(
                file = %path.display(),
                offset,
                dropped = length - offset,
                "torn or corrupt record: replay stops here; the rest comes back from neighbours"
            );
            if repair {
                set_aside(path, offset).map_err(io_error(path))?;
            }
            break;
        }
        offset += 8 + payload.len() as u64;
        apply(&payload, replayed);
    }
    Ok(())
}

/// Reads the record at the reader's position (at most `left` bytes of the
/// file remain: a `u32` length, a CRC-32 of the payload, the payload) and
/// leaves its payload in `payload`; `false` if it is torn or its checksum
/// does not match.
fn read_record(reader: &mut impl Read, left: u64, payload: &mut Vec<u8>) -> io::Result<bool> {
    if left < 8 {
        return Ok(false);
    }
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let [length, crc] = [&header[..4], &header[4..]]
        .map(|field| u32::from_le_bytes(field.try_into().expect("4 bytes")));
    let length = length as usize;
    if length > MAX_RECORD || 8 + length as u64 > left {
        return Ok(false);
    }
    payload.resize(length, 0);
    reader.read_exact(payload)?;
    Ok(crc32fast::hash(payload) == crc)
}

/// Cuts a log file at `offset`, keeping what followed as `NAME.corrupt`.
fn set_aside(path: &Path, offset: u64) -> io::Result<()> {
    let mut rest = File::open(path)?;
    io::Seek::seek(&mut rest, io::SeekFrom::Start(offset))?;
    io::copy(
        &mut rest,
        &mut File::create(path.with_extension("corrupt"))?,
    )?;
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(offset)?;
    file.sync_all()
}

fn apply(payload: &[u8], replayed: &mut Replayed<'_>) {
    let (recovered, reserved) = (&mut replayed.recovered, &mut replayed.reserved);
    let number = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    match payload.first() {
        Some(b'R') => {
            if let Some(seq) = number(1) {
                recovered.reports += 1;
                replayed.highest = replayed.highest.max(seq);
                (replayed.restore)(seq, &payload[9..]);
            }
        }
        Some(b'C') => {
            if let (Some(run), Some(seq), Some(name)) = (number(1), number(9), payload.get(17..)) {
                recovered
                    .cursors
                    .insert(String::from_utf8_lossy(name).into_owned(), (run, seq));
            }
        }
        Some(b'M') => {
            if let (Some(run), Some(mark)) = (number(1), number(9)) {
                recovered.run = run;
                *reserved = (*reserved).max(mark);
            }
        }
        _ => warn!("unknown record kind in the store log; skipped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Report records as a replay hands them over: number and AT line.
    type Records = Vec<(u64, Vec<u8>)>;

    /// The storage of `dir`, what its replay recovered, and the report
    /// records it handed over, in order.
    fn open(dir: &Path) -> (Arc<Storage>, Recovered, Records) {
        let mut reports = Vec::new();
        let (storage, recovered) = Storage::open(
            dir,
            Durability::Batched,
            Duration::from_millis(10),
            &mut |seq, line| reports.push((seq, line.to_vec())),
        )
        .unwrap();
        assert_eq!(recovered.reports, reports.len());
        (storage, recovered, reports)
    }

    #[tokio::test]
    async fn reports_cursors_and_run_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, first, reports) = open(dir.path());
        assert!(reports.is_empty());
        assert_eq!(first.next_seq, 1);
        storage.append_report(1, b"AT Hill +0.1 a +1+1 1");
        storage.append_report(2, b"AT Hill +0.1 b +1+1 1");
        storage.append_cursor("Smith", 77, 12);
        storage.commit().await.unwrap();
        drop(storage); // as a SIGKILL would: no close()

        let (storage, second, reports) = open(dir.path());
        assert_eq!(second.run, first.run);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1], (2, b"AT Hill +0.1 b +1+1 1".to_vec()));
        assert_eq!(second.cursors["Smith"], (77, 12));
        // Numbering continues above everything reserved before.
        assert!(second.next_seq > RESERVE_STEP, "{}", second.next_seq);
        storage.close();
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _, _) = open(dir.path());
        storage.append_report(1, b"AT Hill +0.1 a +1+1 1");
        storage.append_report(2, b"AT Hill +0.1 b +1+1 2");
        storage.commit().await.unwrap();
        drop(storage);
        let segment = dir.path().join(segment_name(1));
        let length = std::fs::metadata(&segment).unwrap().len();
        // Cut the last record in half, as a crash mid-write would.
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(length - 5)
            .unwrap();
        let (storage, recovered, reports) = open(dir.path());
        assert_eq!(reports.len(), 1);
        assert!(segment.with_extension("corrupt").exists());
        // And appending after the repair works.
        storage.append_report(recovered.next_seq, b"AT Hill +0.1 c +1+1 3");
        storage.commit().await.unwrap();
        drop(storage);
        assert_eq!(open(dir.path()).2.len(), 2);
    }

    #[tokio::test]
    async fn a_flipped_bit_stops_replay_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _, _) = open(dir.path());
        for seq in 1..=3 {
            storage.append_report(seq, format!("AT Hill +0.1 c{seq} +1+1 1").as_bytes());
        }
        storage.commit().await.unwrap();
        drop(storage);
        let segment = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&segment).unwrap();
        let second_record = bytes.len() - 2 * (8 + 9 + 21) + 20;
        bytes[second_record] ^= 0x40;
        std::fs::write(&segment, bytes).unwrap();
        let (_, _, reports) = open(dir.path());
        assert_eq!(reports.len(), 1);
    }

    #[test]
    fn a_foreign_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment_name(1)), b"hello, I am a text file").unwrap();
        let error = Storage::open(
            dir.path(),
            Durability::None,
            Duration::from_millis(10),
            &mut |_, _| {},
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("not a herd log"), "{error}");
    }

    #[tokio::test]
    async fn always_waits_for_an_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) = Storage::open(
            dir.path(),
            Durability::Always,
            Duration::from_secs(60),
            &mut |_, _| {},
        )
        .unwrap();
        storage.start_syncer();
        storage.append_report(1, b"AT Hill +0.1 a +1+1 1");
        // With a 60 s interval, only the group-commit request can make this
        // return promptly.
        tokio::time::timeout(Duration::from_secs(10), storage.commit())
            .await
            .unwrap()
            .unwrap();
        assert!(*storage.synced_watch.borrow() > 0);
        storage.close();
    }

    #[tokio::test]
    async fn compaction_keeps_the_live_state_and_drops_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, recovered, _) = open(dir.path());
        for seq in 1..=100 {
            storage.append_report(
                seq,
                format!("AT Hill +0.1 c{} +1+1 {seq}", seq % 10).as_bytes(),
            );
        }
        storage.commit().await.unwrap();
        let live: Vec<(u64, Vec<u8>)> = (91..=100)
            .map(|seq| {
                (
                    seq,
                    format!("AT Hill +0.1 c{} +1+1 {seq}", seq % 10).into_bytes(),
                )
            })
            .collect();
        storage
            .compact(
                || vec![("Smith".to_owned(), 5, 6)],
                |put| {
                    for (seq, line) in &live {
                        put(*seq, line);
                    }
                },
                None,
            )
            .unwrap();
        storage.append_report(101, b"AT Hill +0.1 new +1+1 1");
        storage.commit().await.unwrap();
        drop(storage);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.contains(&segment_name(1)), "{names:?}");
        let (_, again, reports) = open(dir.path());
        assert_eq!(again.run, recovered.run);
        assert_eq!(reports.len(), 11);
        assert_eq!(again.cursors["Smith"], (5, 6));
    }

    #[tokio::test]
    async fn the_tail_reads_every_report_in_order_across_segments_and_waits_for_more() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _, _) = open(dir.path());
        let mut tail = LogTail::new(dir.path());
        let read = |tail: &mut LogTail| {
            let mut seqs = Vec::new();
            while let Some((seq, line)) = tail.next_report().unwrap() {
                assert!(line.starts_with(b"AT Hill"));
                seqs.push(seq);
            }
            seqs
        };
        assert_eq!(read(&mut tail), Vec::<u64>::new());
        for seq in 1..=5 {
            storage.append_report(seq, format!("AT Hill +0.1 c +1+1 {seq}").as_bytes());
        }
        assert_eq!(read(&mut tail), Vec::<u64>::new(), "not yet written out");
        storage.commit().await.unwrap();
        assert_eq!(read(&mut tail), vec![1, 2, 3, 4, 5]);
        // A compaction with an archive behind keeps the old segment for it.
        storage.append_report(6, b"AT Hill +0.1 c +1+1 6");
        storage
            .compact(
                Vec::new,
                |put| put(6, b"AT Hill +0.1 c +1+1 6"),
                Some(&|| 5),
            )
            .unwrap();
        storage.append_report(7, b"AT Hill +0.1 c +1+1 7");
        storage.commit().await.unwrap();
        assert_eq!(read(&mut tail), vec![6, 7], "the old segment, then the new");
        let segments = || list_all(dir.path()).unwrap().1.len();
        assert_eq!(segments(), 2);
        storage.release_archived(5).unwrap();
        assert_eq!(segments(), 2, "the archive has not passed 6 yet");
        storage.release_archived(7).unwrap();
        assert_eq!(segments(), 1);
        let mut again = LogTail::new(dir.path());
        assert_eq!(read(&mut again), vec![7]);
    }
}

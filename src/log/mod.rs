//! The per-server log file: every `tracing` event as one timestamped line.
//!
//! SPEC §7 asks for every message in and out, so logging is on the hot path
//! of every request. This layer keeps its cost to formatting the line into
//! a thread-local buffer and one short lock to append it to a shared
//! buffer; a background thread writes the shared buffer out in large
//! chunks. Nothing is dropped: if the disk falls behind by more than
//! `MAX_PENDING` bytes, events wait for the writer instead. The thread also
//! rotates the file by size (`file`); `terminal` shows the operator's
//! events on a terminal as well.

use std::cell::RefCell;
use std::error::Error;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub mod direct_append;
pub mod file;
pub(crate) mod page_cache;
pub mod terminal;

use crate::log::file::{LogFile, Sink};
pub use crate::log::file::{Rotation, rotated_files};

/// The target of the events an operator must see: a neighbour that cannot
/// be linked, or links again, or a config that looks wrong. A server
/// running in a terminal also writes them to its standard error
/// ([`terminal::TerminalLayer`]), with every warning.
pub const OPERATOR: &str = "herd::operator";

/// Says when a repeated event is worth a log line again: at most once
/// per `every_secs`, with how many happened meanwhile.
#[derive(Debug)]
pub struct Throttle {
    every_secs: u64,
    /// When the last line was allowed (whole seconds; 0: never).
    last: AtomicU64,
    /// Events since the last line.
    since: AtomicU64,
}

impl Throttle {
    pub const fn new(every_secs: u64) -> Self {
        Self {
            every_secs,
            last: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one event at `now` (whole seconds); returns how many events
    /// the log line due now stands for, or `None` if none is due.
    pub fn event(&self, now: u64) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.every_secs) {
            return None;
        }
        // One caller wins the line; the others count into the next one.
        self.last
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.since.swap(0, Ordering::Relaxed))
    }
}

/// How far the writer may fall behind before events wait for it.
const MAX_PENDING: usize = 32 * 1024 * 1024;
/// How often the writer thread writes out what is pending.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);

struct Shared {
    pending: Mutex<Pending>,
    /// How far the writer may fall behind (`MAX_PENDING` but in tests).
    max_pending: usize,
    /// Writes to the file so far (each the pieces of one turn).
    writes: AtomicU64,
    /// Wakes the writer (enough pending, or closing) and waiting events
    /// (room again).
    changed: Condvar,
}

#[derive(Default)]
struct Pending {
    /// What is to be written, in order: buffers handed over whole by
    /// `MessageLines` (no copy) and lines copied in after them.
    pieces: Vec<Vec<u8>>,
    /// The bytes in `pieces`.
    bytes: usize,
    /// Written buffers, emptied, for `MessageLines` to fill again.
    spare: Vec<Vec<u8>>,
    closing: bool,
    /// Events waiting for room (the writer writes at once while any do).
    waiting: usize,
}

/// A `tracing` layer writing events to a file through a background thread.
pub struct FileLayer {
    shared: Arc<Shared>,
}

/// The log that `MessageLines` write to, once a layer is installed as the
/// process's log (`FileLayer::take_message_lines`).
static MESSAGE_LOG: OnceLock<Arc<Shared>> = OnceLock::new();

/// Flushes and stops the writer thread when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl FileLayer {
    /// A layer writing to `file`, and the guard that flushes it at exit.
    pub fn new(file: File) -> (Self, FlushGuard) {
        Self::with_limit(file, MAX_PENDING)
    }

    /// A layer writing to `file` (opened to read and append), whole blocks
    /// through `direct`, the same file opened with `O_DIRECT`
    /// (`direct_append::open_direct`), and the guard that flushes it at
    /// exit. The page cache is the fallback if direct writes fail.
    pub fn new_direct(file: File, direct: File) -> (Self, FlushGuard) {
        Self::with_file(LogFile::fixed(Sink::direct(file, direct)), MAX_PENDING)
    }

    /// A layer appending to the file at `path`, created if need be, whole
    /// blocks written directly where the file system allows it (see
    /// [`crate::log::direct_append`]), through the page cache otherwise,
    /// and rotated as `rotation` says (see [`crate::log::file`]); and the
    /// guard that flushes it at exit.
    pub fn open(path: &Path, rotation: Option<Rotation>) -> std::io::Result<(Self, FlushGuard)> {
        Ok(Self::with_file(LogFile::open(path, rotation)?, MAX_PENDING))
    }

    fn with_limit(file: File, max_pending: usize) -> (Self, FlushGuard) {
        Self::with_file(LogFile::fixed(Sink::buffered(file)), max_pending)
    }

    fn with_file(file: LogFile, max_pending: usize) -> (Self, FlushGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            max_pending,
            writes: AtomicU64::new(0),
            changed: Condvar::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("herd-log".into())
                .spawn(move || write_loop(&shared, file))
                .expect("spawning the log writer thread")
        };
        (
            Self {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                writer: Some(writer),
            },
        )
    }
}

impl FileLayer {
    /// Makes this layer's file the destination of `MessageLines` too. The
    /// process's log calls this once; a later call changes nothing.
    pub fn take_message_lines(&self) {
        let _ = MESSAGE_LOG.set(self.shared.clone());
    }
}

/// A `MessageLines` buffer at least this long is handed to the writer
/// whole, in exchange for an empty one; a shorter one is copied (cheaper
/// than a piece of its own in the writer's write).
const HAND_OVER: usize = 4096;
/// Emptied buffers kept for reuse.
const MAX_SPARE: usize = 64;

impl Shared {
    /// Appends formatted lines, waiting if the writer is far behind.
    fn append(&self, lines: &[u8]) {
        let mut pending = self.room();
        pending.copy_in(lines);
    }

    /// Appends `buffer`'s lines, leaving it empty: a long buffer is taken
    /// whole and replaced with an empty one, so its lines are not copied.
    fn append_buffer(&self, buffer: &mut Vec<u8>) {
        let mut pending = self.room();
        if buffer.len() < HAND_OVER {
            pending.copy_in(buffer);
            buffer.clear();
            return;
        }
        let empty = pending.spare.pop().unwrap_or_default();
        pending.bytes += buffer.len();
        let full = std::mem::replace(buffer, empty);
        pending.pieces.push(full);
    }

    /// The pending lines, once they are below the limit.
    fn room(&self) -> std::sync::MutexGuard<'_, Pending> {
        let mut pending = self.pending.lock().expect("log lock");
        if pending.bytes > self.max_pending && !pending.closing {
            pending.waiting += 1;
            self.changed.notify_all();
            while pending.bytes > self.max_pending && !pending.closing {
                pending = self.changed.wait(pending).expect("log lock");
            }
            pending.waiting -= 1;
        }
        pending
    }
}

impl Pending {
    fn copy_in(&mut self, lines: &[u8]) {
        if self.pieces.is_empty() {
            let piece = self.spare.pop().unwrap_or_default();
            self.pieces.push(piece);
        }
        self.pieces
            .last_mut()
            .expect("a piece was just made")
            .extend_from_slice(lines);
        self.bytes += lines.len();
    }
}

thread_local! {
    /// The buffer `MessageLines` fill, kept between batches.
    static MESSAGE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Log lines for the messages of one batch (the lines of one read from a
/// client, the updates of one peer frame), written at INFO level in the
/// same format as `tracing` events, with one clock reading and one lock for
/// the whole batch instead of one each per line. The clock is read at the
/// first line; the lines reach the log when this is dropped.
pub struct MessageLines {
    buffer: Vec<u8>,
    /// Timestamp and level for the batch's lines; empty until the first.
    stamp: String,
    log: Option<&'static Shared>,
}

impl MessageLines {
    /// Starts a batch; its lines go nowhere if no log takes message lines.
    /// They do not depend on the events' filter (`HERD_LOG`): every
    /// message in and out is logged, whatever the verbosity.
    pub fn start() -> Self {
        let log = MESSAGE_LOG.get().map(|shared| &**shared);
        Self {
            buffer: MESSAGE_BUFFER.with(|buffer| std::mem::take(&mut *buffer.borrow_mut())),
            stamp: String::new(),
            log,
        }
    }

    /// Adds the line `<head...><message>`, the message's bytes shown as
    /// every logged message is (control bytes escaped, non-UTF-8 as `\xNN`).
    pub fn line(&mut self, head: &[&str], message: &[u8]) {
        self.line_with_tail(head, message, &[]);
    }

    /// Adds the line `<head...><message><tail...>`; the tail is written as
    /// it is (text already escaped for the log).
    pub fn line_with_tail(&mut self, head: &[&str], message: &[u8], tail: &[&str]) {
        if self.log.is_none() {
            return;
        }
        if self.stamp.is_empty() {
            write_timestamp(&mut self.stamp, SystemTime::now());
            self.stamp.push_str(level_name(Level::INFO));
            self.stamp.push(' ');
        }
        self.buffer.extend_from_slice(self.stamp.as_bytes());
        for part in head {
            self.buffer.extend_from_slice(part.as_bytes());
        }
        if plain(message) {
            self.buffer.extend_from_slice(message);
        } else {
            let _ = write!(self.buffer, "{}", Show(message));
        }
        for part in tail {
            self.buffer.extend_from_slice(part.as_bytes());
        }
        self.buffer.push(b'\n');
    }

    /// Writes the lines so far to the log; later lines take the time anew.
    /// For a batch that waited (on a remote places provider, on a client).
    pub fn restamp(&mut self) {
        if let Some(log) = self.log
            && !self.buffer.is_empty()
        {
            log.append_buffer(&mut self.buffer);
        }
        self.buffer.clear();
        self.stamp.clear();
    }
}

impl Drop for MessageLines {
    fn drop(&mut self) {
        self.restamp();
        let buffer = std::mem::take(&mut self.buffer);
        MESSAGE_BUFFER.with(|kept| *kept.borrow_mut() = buffer);
    }
}

fn write_loop(shared: &Shared, mut file: LogFile) {
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut last_write = Instant::now();
    loop {
        let closing = {
            let mut pending = shared.pending.lock().expect("log lock");
            // One write per interval, however busy the server: a writer
            // that wrote whatever was pending as soon as it could would,
            // under load, write small pieces without pause, taking the lock
            // from the server's threads and the CPU from everything else.
            // Only a server far ahead of the disk (events waiting for room)
            // or closing makes it write sooner.
            loop {
                if pending.closing || (pending.waiting > 0 && pending.bytes > 0) {
                    break;
                }
                let due = last_write + WRITE_INTERVAL;
                let now = Instant::now();
                if now >= due && pending.bytes > 0 {
                    break;
                }
                let wait = if now >= due {
                    WRITE_INTERVAL
                } else {
                    due - now
                };
                pending = shared
                    .changed
                    .wait_timeout(pending, wait)
                    .expect("log lock")
                    .0;
            }
            std::mem::swap(&mut pieces, &mut pending.pieces);
            pending.bytes = 0;
            if pending.waiting > 0 {
                shared.changed.notify_all();
            }
            pending.closing
        };
        last_write = Instant::now();
        if !pieces.is_empty() {
            // A log that cannot be written is not worth stopping a server
            // for; the error goes to stderr once per write.
            let started = Instant::now();
            match file.write(&pieces) {
                Ok(bytes) => crate::stats::MESSAGE_LOG.bytes_written.add(bytes),
                Err(error) => eprintln!("herd: writing the log failed: {error}"),
            }
            crate::stats::MESSAGE_LOG.writes.bump();
            crate::stats::MESSAGE_LOG
                .write_latency
                .observe(started.elapsed());
            shared.writes.fetch_add(1, Ordering::Relaxed);
            let mut pending = shared.pending.lock().expect("log lock");
            for mut piece in pieces.drain(..) {
                if pending.spare.len() < MAX_SPARE {
                    piece.clear();
                    pending.spare.push(piece);
                }
            }
        }
        if closing {
            let pending = shared.pending.lock().expect("log lock");
            if pending.bytes == 0 {
                file.flush();
                return;
            }
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.pending.lock().expect("log lock").closing = true;
        self.shared.changed.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

thread_local! {
    /// The line being formatted, and its fields (which go after the
    /// message).
    static LINE: RefCell<(String, String)> = RefCell::new((String::with_capacity(512), String::with_capacity(512)));
}

impl<S: Subscriber> Layer<S> for FileLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        LINE.with(|buffers| {
            let (line, fields) = &mut *buffers.borrow_mut();
            format_event(event, "", line, fields);
            self.shared.append(line.as_bytes());
        });
    }
}

/// Formats `event` into `line` as the log writes it: the timestamp, the
/// level, `prefix`, the message, then the fields as ` name=value`, and a
/// `\n`. The message comes first so that a person reads what happened
/// before the details. `fields` is scratch space.
pub(crate) fn format_event(
    event: &Event<'_>,
    prefix: &str,
    line: &mut String,
    fields: &mut String,
) {
    line.clear();
    fields.clear();
    write_timestamp(line, SystemTime::now());
    line.push_str(level_name(*event.metadata().level()));
    line.push(' ');
    line.push_str(prefix);
    event.record(&mut LineVisitor { line, fields });
    line.push_str(fields);
    line.push('\n');
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => " ERROR",
        Level::WARN => "  WARN",
        Level::INFO => "  INFO",
        Level::DEBUG => " DEBUG",
        Level::TRACE => " TRACE",
    }
}

/// Writes the message into the line, and the fields as ` name=value`
/// apart, for the end.
struct LineVisitor<'a> {
    line: &'a mut String,
    fields: &'a mut String,
}

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.line.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.line, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

/// Whether `bytes` are all printable ASCII, which a log shows as they are.
/// Nearly every message logged is.
fn plain(bytes: &[u8]) -> bool {
    // A fold without an early exit, so that it runs a vector at a time.
    !bytes
        .iter()
        .fold(false, |seen, &b| seen | !(0x20..0x7f).contains(&b))
}

/// `text`, then each error of the chain from `source` on, joined by
/// `: `: one line that says what kind of failure it was and what in the
/// end happened (connection refused, ...), as the log shows errors.
pub fn with_causes(text: impl Into<String>, source: Option<&(dyn Error + 'static)>) -> String {
    let mut text = text.into();
    let mut source = source;
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Bytes for a log line: UTF-8 as is, anything else as `\xNN`.
pub struct Show<'a>(pub &'a [u8]);

impl std::fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if plain(self.0) {
            return f.write_str(std::str::from_utf8(self.0).expect("ASCII is UTF-8"));
        }
        for chunk in self.0.utf8_chunks() {
            // Printable runs go out whole; control bytes (a WHATSAT answer's
            // newlines, say) are escaped one by one. Control characters are
            // all ASCII or C1 (U+0080..U+009F), whose UTF-8 starts with 0xC2.
            let mut rest = chunk.valid();
            while let Some(at) = rest
                .bytes()
                .position(|b| b < 0x20 || b == 0x7f || b == 0xc2)
            {
                f.write_str(&rest[..at])?;
                let c = rest[at..].chars().next().expect("a character starts here");
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    f.write_char(c)?;
                }
                rest = &rest[at + c.len_utf8()..];
            }
            f.write_str(rest)?;
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// `now` as the log writes its times: `2026-11-22T00:31:02.114528Z`.
pub fn timestamp(now: SystemTime) -> String {
    let mut out = String::with_capacity(27);
    write_timestamp(&mut out, now);
    out
}

/// `2026-11-22T00:31:02.114528Z`: RFC 3339 in UTC with microseconds.
///
/// The part up to the seconds is formatted once per second per thread.
fn write_timestamp(out: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cache| {
        let (cached_secs, prefix) = &mut *cache.borrow_mut();
        if *cached_secs != secs {
            prefix.clear();
            let (year, month, day) = civil_from_days((secs / 86_400) as i64);
            let of_day = secs % 86_400;
            let _ = write!(
                prefix,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            );
            *cached_secs = secs;
        }
        out.push_str(prefix);
    });
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
    out.push('Z');
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01),
/// after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_allows_one_line_per_period_counting_the_rest() {
        let throttle = Throttle::new(60);
        assert_eq!(throttle.event(1000), Some(1));
        assert_eq!(throttle.event(1001), None);
        assert_eq!(throttle.event(1059), None);
        assert_eq!(throttle.event(1060), Some(3), "the two held back and this");
        assert_eq!(throttle.event(1061), None);
    }

    #[test]
    fn show_escapes_only_what_a_log_line_cannot_hold() {
        let show = |bytes: &[u8]| Show(bytes).to_string();
        assert_eq!(show(b"IAMAT kiwi +1+1 1"), "IAMAT kiwi +1+1 1");
        assert_eq!(
            show(b"AT x\n{\n   \"a\" : 1\n}\n\n"),
            "AT x\\n{\\n   \"a\" : 1\\n}\\n\\n"
        );
        assert_eq!(
            show(b"caf\xc3\xa9 \xff\xfe\t\x7f"),
            "café \\xff\\xfe\\t\\u{7f}"
        );
        assert_eq!(show("a\u{85}b\u{a9}".as_bytes()), "a\\u{85}b\u{a9}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = String::new();
        write_timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, "1970-01-01T00:00:00.000000Z");
        out.clear();
        // 2024-02-29T23:59:59.123456Z, a leap day.
        write_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::new(1_709_251_199, 123_456_789),
        );
        assert_eq!(out, "2024-02-29T23:59:59.123456Z");
        out.clear();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(1_621_464_827));
        assert_eq!(out, "2021-05-19T22:53:47.000000Z");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }

    #[test]
    fn message_lines_look_like_events_and_arrive_together() {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let (layer, guard) = FileLayer::new(File::create(&path).unwrap());
        layer.take_message_lines();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            let mut lines = MessageLines::start();
            lines.line(&["sent to ", "Smith", ": "], b"AT Hill +0.1 a +1+1 1");
            lines.line(&["sent to ", "Smith", ": "], b"odd\n\xff");
            drop(lines);
            tracing::info!("sent to Smith: AT Hill +0.1 b +1+1 1");
        });
        // With INFO events filtered out, messages are still logged.
        let quiet =
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::WARN);
        tracing::subscriber::with_default(quiet, || {
            tracing::info!("filtered");
            MessageLines::start().line(&["sent to ", "Smith", ": "], b"not filtered");
        });
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[4].ends_with("  INFO sent to Smith: not filtered"));
        assert!(lines[0].ends_with("  INFO before"));
        assert!(
            lines[1].ends_with("  INFO sent to Smith: AT Hill +0.1 a +1+1 1"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(r"  INFO sent to Smith: odd\n\xff"),
            "{}",
            lines[2]
        );
        // The same layout as an event's line: timestamp, two spaces, level.
        assert_eq!(
            lines[1].len() - lines[1].find("  INFO").unwrap(),
            "  INFO sent to Smith: AT Hill +0.1 a +1+1 1".len()
        );
        assert_eq!(lines[1].find("  INFO"), lines[3].find("  INFO"));
        assert!(lines[1].starts_with("20") && lines[1].as_bytes()[10] == b'T');
    }

    #[test]
    fn events_reach_the_file_in_order_with_fields() {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (layer, guard) = FileLayer::new(File::create(&path).unwrap());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::info!(neighbour = "Smith", "sent {i}");
            }
            tracing::warn!("last");
        });
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1001);
        assert!(
            lines[0].ends_with("  INFO sent 0 neighbour=Smith"),
            "{}",
            lines[0]
        );
        assert!(lines[999].ends_with(" sent 999 neighbour=Smith"));
        assert!(lines[1000].ends_with("  WARN last"));
        assert!(lines[0].starts_with("20") && lines[0].as_bytes()[10] == b'T');
    }

    #[test]
    fn a_log_written_directly_holds_every_line_in_order() {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("direct.log");
        std::fs::write(&path, "an earlier run's last line\n").unwrap();
        // (Where the file system has no O_DIRECT, the fallback's path.)
        let (layer, guard) = FileLayer::open(&path, None).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..50_000 {
                tracing::info!("line {i}");
            }
        });
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 50_001);
        assert_eq!(lines[0], "an earlier run's last line");
        for (i, line) in lines[1..].iter().enumerate() {
            assert!(line.ends_with(&format!("  INFO line {i}")), "{line}");
        }
    }

    /// Writes `lines` numbered lines from each of `writers` threads, of
    /// uneven lengths, some one by one and some in long buffers handed over
    /// whole (as `MessageLines` hands them), to a log rotated as `rotation`
    /// says; returns the files left, oldest first, the current one last.
    fn write_rotated(
        dir: &Path,
        writers: usize,
        lines: usize,
        rotation: Rotation,
    ) -> Vec<std::path::PathBuf> {
        let path = dir.join("Hill.log");
        let (layer, guard) = FileLayer::open(&path, Some(rotation)).unwrap();
        let shared = layer.shared.clone();
        std::thread::scope(|scope| {
            for writer in 0..writers {
                let shared = &shared;
                scope.spawn(move || {
                    let mut buffer = Vec::new();
                    for i in 0..lines {
                        let line = format!("w{writer} {i:06} {}\n", "x".repeat(i % 151));
                        if (writer + i / 1000) % 2 == 0 {
                            shared.append_buffer(&mut buffer);
                            shared.append(line.as_bytes());
                        } else {
                            buffer.extend_from_slice(line.as_bytes());
                            if buffer.len() >= 3 * HAND_OVER {
                                shared.append_buffer(&mut buffer);
                            }
                        }
                    }
                    shared.append_buffer(&mut buffer);
                });
            }
        });
        drop(guard);
        let mut files = rotated_files(&path).unwrap();
        files.push(path);
        files
    }

    /// Every file of a rotated log holds whole lines and stays within the
    /// limit; together they hold every line once, in each writer's order.
    #[test]
    fn a_rotated_log_loses_and_tears_no_line_and_keeps_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 64 * 1024;
        let rotation = Rotation {
            max_bytes,
            keep_files: 1000,
        };
        let files = write_rotated(dir.path(), 4, 20_000, rotation);
        let mut next = [0usize; 4];
        let mut total = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            total += text.len();
            assert!(text.len() as u64 <= max_bytes, "{file:?}: {}", text.len());
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{file:?} ends mid-line"
            );
            for line in text.lines() {
                let (writer, rest) = line.split_once(' ').expect("a whole line");
                let writer: usize = writer[1..].parse().expect("a whole line");
                let (number, padding) = rest.split_once(' ').expect("a whole line");
                let number: usize = number.parse().unwrap();
                assert_eq!(number, next[writer], "{file:?}: {line}");
                assert_eq!(padding, "x".repeat(number % 151), "{file:?}: torn");
                next[writer] += 1;
            }
        }
        assert_eq!(next, [20_000; 4]);
        // Rotated files are full to within a line of the limit.
        let full = total as u64 / max_bytes;
        assert!(files.len() as u64 > full, "{} files", files.len());
        for file in &files[..files.len() - 1] {
            let size = std::fs::metadata(file).unwrap().len();
            assert!(size > max_bytes - 200, "{file:?}: {size}");
        }
    }

    /// Only the newest rotated files are kept; they and the current file
    /// end the log with no gap.
    #[test]
    fn a_rotated_log_keeps_only_its_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_bytes: 32 * 1024,
            keep_files: 3,
        };
        let files = write_rotated(dir.path(), 1, 10_000, rotation);
        assert_eq!(files.len(), 4, "{files:?}");
        let mut seen: Option<usize> = None;
        for file in &files {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                let number: usize = line.split(' ').nth(1).unwrap().parse().unwrap();
                if let Some(last) = seen {
                    assert_eq!(number, last + 1, "a gap in {file:?}");
                }
                seen = Some(number);
            }
        }
        // The last line is there: what was removed is the oldest.
        assert_eq!(seen, Some(9_999));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    /// Under a steady stream of lines the writer still writes one piece
    /// per interval, not one per line or per wake-up; the lines reach the
    /// file while the stream goes on, and all of them in order.
    #[test]
    fn a_busy_log_is_written_in_one_piece_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.log");
        let (layer, guard) = FileLayer::new(File::create(&path).unwrap());
        let shared = layer.shared.clone();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut seen_while_running = false;
        while started.elapsed() < Duration::from_millis(300) {
            shared.append(format!("line {sent}\n").as_bytes());
            sent += 1;
            if sent.is_multiple_of(1000) && !seen_while_running {
                seen_while_running = std::fs::metadata(&path).unwrap().len() > 0;
            }
        }
        let elapsed = started.elapsed();
        let pieces = shared.writes.load(Ordering::Relaxed);
        drop(guard);
        assert!(seen_while_running, "nothing written in 300 ms");
        let allowed = (elapsed.as_millis() / WRITE_INTERVAL.as_millis()) as u64 + 2;
        assert!(
            pieces <= allowed,
            "{pieces} pieces for {sent} lines in {elapsed:?} (at most {allowed})"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count() as u64, sent);
        assert!(
            text.lines()
                .enumerate()
                .all(|(i, line)| line == format!("line {i}"))
        );
    }

    /// Lines that come faster than the limit allows wait for the writer,
    /// which then writes at once instead of at its interval; none is lost.
    #[test]
    fn lines_beyond_the_limit_wait_for_the_writer_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.log");
        let (layer, guard) = FileLayer::with_limit(File::create(&path).unwrap(), 4096);
        let shared = layer.shared.clone();
        let line = [b'x'; 1023];
        let started = Instant::now();
        for _ in 0..2000 {
            shared.append(&line);
            shared.append(b"\n");
        }
        let elapsed = started.elapsed();
        let pieces = shared.writes.load(Ordering::Relaxed);
        drop(guard);
        // 2 MB through a 4 kB window: hundreds of pieces, far more than one
        // per interval would allow in the time taken.
        assert!(
            pieces as u128 > elapsed.as_millis() / WRITE_INTERVAL.as_millis() + 2,
            "{pieces} pieces in {elapsed:?}"
        );
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 2000 * 1024);
        assert!(
            text.chunks(1024)
                .all(|l| l[..1023] == line && l[1023] == b'\n')
        );
    }

    /// Long batches are handed over whole and short ones copied, and the
    /// file still has every line in the order appended.
    #[test]
    fn handed_over_and_copied_lines_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.log");
        let (layer, guard) = FileLayer::new(File::create(&path).unwrap());
        let shared = layer.shared.clone();
        let mut expected = Vec::new();
        let mut buffer = Vec::new();
        // Enough batches to span several writes.
        for round in 0..2200 {
            // Alternately long (handed over) and short (copied) batches,
            // with single copied lines in between.
            let lines = if round % 2 == 0 { 60 } else { 3 };
            for i in 0..lines {
                let _ = writeln!(buffer, "batch {round} line {i:0>80}");
            }
            let handed_over = buffer.len() >= HAND_OVER;
            assert_eq!(handed_over, round % 2 == 0);
            expected.extend_from_slice(&buffer);
            shared.append_buffer(&mut buffer);
            assert!(buffer.is_empty());
            let single = format!("single {round}\n");
            shared.append(single.as_bytes());
            expected.extend_from_slice(single.as_bytes());
        }
        drop(guard);
        assert!(std::fs::read(&path).unwrap() == expected);
    }
}

//! The log file on disk: where the writer thread's pieces go, whole blocks
//! directly or all through the page cache, and its rotation by size.
//!
//! Rotation happens in the writer thread, between two of its writes, and
//! splits what it writes at a line's end: a line is never torn across two
//! files, and nothing is written while the files change names. The file
//! that is full is renamed `NAME.log.<UTC time>` (`Hill.log.20261122T003102.114528Z`,
//! so the names sort in time order and match neither `*.log` nor
//! logrotate's own `NAME.log.1`), a new `NAME.log` is started, and the
//! oldest rotated files beyond `keep_files` are removed. An outside
//! logrotate with `copytruncate` still works on `NAME.log`: each write
//! starts from the file's length as it is then.

use std::fs::File;
use std::io::{self, IoSlice, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::log::direct_append::{self, DirectAppend};
use crate::log::page_cache::PageCacheTrim;

/// How much of the log is written between two requests to drop its written
/// pages from the page cache.
const TRIM_EVERY: u64 = 1 << 20;
/// After a rotation fails (a full or read-only disk, say), how long the
/// log goes on in its current file before it tries again.
const RETRY_ROTATION: Duration = Duration::from_secs(60);

/// When to start a new log file, and how many old ones to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated before it would grow past this (a single line
    /// longer than this gets a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept; older ones are removed.
    pub keep_files: usize,
}

/// Where the writer's pieces go.
pub(crate) enum Sink {
    /// Whole blocks straight to the disk, the rest through the page cache
    /// (see `direct_append`).
    Direct(DirectAppend),
    /// All through the page cache, whose written pages are dropped as they
    /// reach the disk.
    Buffered { file: File, cache: PageCacheTrim },
}

impl Sink {
    pub(crate) fn buffered(file: File) -> Self {
        // Once a MiB, as the store log: under load that is every piece or
        // two; a quiet server's pieces are a few lines each, and advising
        // each would start the write-back of the same last page again and
        // again.
        let cache = PageCacheTrim::new(&file, TRIM_EVERY);
        Sink::Buffered { file, cache }
    }

    pub(crate) fn direct(file: File, direct: File) -> Self {
        match DirectAppend::new(file, direct) {
            Ok(direct) => Sink::Direct(direct),
            Err((file, error)) => {
                eprintln!("herd: writing the log through the page cache: {error}");
                Sink::buffered(file)
            }
        }
    }

    /// The file at `path`, created if need be, appended to: directly if
    /// `try_direct` and the file system allows it, else through the page
    /// cache. Also says whether direct writes were set up.
    fn open(path: &Path, try_direct: bool) -> io::Result<(Self, bool)> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        if try_direct && let Ok(direct) = direct_append::open_direct(path) {
            let sink = Sink::direct(file, direct);
            let is_direct = matches!(sink, Sink::Direct(_));
            return Ok((sink, is_direct));
        }
        Ok((Sink::buffered(file), false))
    }

    /// The file's length as it is now (someone may have truncated it).
    fn len(&self) -> io::Result<u64> {
        match self {
            Sink::Direct(direct) => direct.file_len(),
            Sink::Buffered { file, .. } => Ok(file.metadata()?.len()),
        }
    }

    /// Appends `pieces`; returns the bytes written.
    fn write<P: AsRef<[u8]>>(&mut self, pieces: &[P]) -> io::Result<u64> {
        match self {
            Sink::Direct(direct) => {
                let written = direct.append(pieces);
                // (Once direct writes fail, `DirectAppend` goes on through
                // the page cache, without trimming it: a file system that
                // opens files for direct writes and then refuses them is
                // rare enough.)
                if let Some(error) = direct.take_failure() {
                    eprintln!(
                        "herd: direct writes to the log failed ({error}); writing through the page cache from now on"
                    );
                }
                written
            }
            Sink::Buffered { file, cache } => {
                let written = write_pieces(file, pieces)?;
                cache.written(file, written);
                Ok(written)
            }
        }
    }

    fn flush(&mut self) {
        if let Sink::Buffered { file, .. } = self {
            let _ = file.flush();
        }
    }
}

/// Writes `pieces` in order, as few system calls as the kernel allows (one
/// `writev` for up to 1,024 of them); returns the bytes written.
fn write_pieces<P: AsRef<[u8]>>(file: &mut File, pieces: &[P]) -> io::Result<u64> {
    let mut written = 0u64;
    for group in pieces.chunks(1024) {
        let mut slices: Vec<IoSlice<'_>> = group
            .iter()
            .map(AsRef::as_ref)
            .filter(|piece| !piece.is_empty())
            .map(IoSlice::new)
            .collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let n = file.write_vectored(slices)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n as u64;
            IoSlice::advance_slices(&mut slices, n);
        }
    }
    Ok(written)
}

/// The log file the writer thread appends to, rotated as `rotation` says.
pub(crate) struct LogFile {
    sink: Sink,
    /// Where it is, and how to rotate it; `None`: never rotated.
    rotating: Option<(PathBuf, Rotation)>,
    /// Whether new files are written directly (the first one could be).
    direct: bool,
    /// A rotation failed then: not again before `RETRY_ROTATION`.
    failed_at: Option<Instant>,
}

impl LogFile {
    /// A log that is never rotated.
    pub(crate) fn fixed(sink: Sink) -> Self {
        Self {
            sink,
            rotating: None,
            direct: false,
            failed_at: None,
        }
    }

    /// The log at `path`, created if need be, rotated as `rotation` says.
    pub(crate) fn open(path: &Path, rotation: Option<Rotation>) -> io::Result<Self> {
        let (sink, direct) = Sink::open(path, true)?;
        Ok(Self {
            sink,
            rotating: rotation.map(|rotation| (path.to_owned(), rotation)),
            direct,
            failed_at: None,
        })
    }

    /// Appends `pieces` (whole lines); returns the bytes written.
    pub(crate) fn write(&mut self, pieces: &[Vec<u8>]) -> io::Result<u64> {
        let Some((_, rotation)) = self.rotating else {
            return self.sink.write(pieces);
        };
        if self
            .failed_at
            .is_some_and(|at| at.elapsed() < RETRY_ROTATION)
        {
            return self.sink.write(pieces);
        }
        let mut size = self.sink.len()?;
        let mut written = 0;
        let mut batch: Vec<&[u8]> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let room = rotation.max_bytes.saturating_sub(size);
                if rest.len() as u64 <= room {
                    batch.push(rest);
                    size += rest.len() as u64;
                    break;
                }
                // What fits of whole lines goes in this file; a line longer
                // than a whole file goes alone in one of its own.
                let fits = &rest[..usize::try_from(room).unwrap_or(usize::MAX)];
                let cut = match memchr::memrchr(b'\n', fits) {
                    Some(end) => end + 1,
                    None if size == 0 => memchr::memchr(b'\n', rest).map_or(rest.len(), |e| e + 1),
                    None => 0,
                };
                batch.push(&rest[..cut]);
                rest = &rest[cut..];
                written += self.sink.write(&batch)?;
                batch.clear();
                if let Err(error) = self.rotate(rotation) {
                    eprintln!("herd: rotating the log failed ({error}); it goes on in its file");
                    self.failed_at = Some(Instant::now());
                    // The rest of this write, unsplit, in the file as it is.
                    batch.push(rest);
                    batch.extend(pieces[i + 1..].iter().map(Vec::as_slice));
                    written += self.sink.write(&batch)?;
                    return Ok(written);
                }
                size = 0;
            }
        }
        written += self.sink.write(&batch)?;
        Ok(written)
    }

    /// Renames the full file aside, starts a new one where it was, and
    /// removes the oldest rotated files beyond what is kept.
    fn rotate(&mut self, rotation: Rotation) -> io::Result<()> {
        let (path, _) = self.rotating.as_ref().expect("only a rotating log rotates");
        let aside = free_rotated_path(path, SystemTime::now());
        std::fs::rename(path, &aside)?;
        let (sink, direct) = match Sink::open(path, self.direct) {
            Ok(opened) => opened,
            Err(error) => {
                // Back where it was, so that the next write finds its file.
                let _ = std::fs::rename(&aside, path);
                return Err(error);
            }
        };
        // The old file is complete: every write ends with its last partial
        // block appended through the page cache.
        self.sink = sink;
        self.direct = direct;
        remove_beyond(path, rotation.keep_files)?;
        Ok(())
    }

    pub(crate) fn flush(&mut self) {
        self.sink.flush();
    }
}

/// `NAME.log.20261122T003102.114528Z` for the log `NAME.log` rotated at
/// `now`, a microsecond later for each name already taken.
fn free_rotated_path(path: &Path, now: SystemTime) -> PathBuf {
    let mut at = now;
    loop {
        let candidate = rotated_path(path, at);
        if !candidate.exists() {
            return candidate;
        }
        at += Duration::from_micros(1);
    }
}

fn rotated_path(path: &Path, at: SystemTime) -> PathBuf {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = super::civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(
        ".{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    ));
    path.with_file_name(name)
}

/// Whether `suffix` (what follows `NAME.log.`) is a rotation's time.
fn is_rotation_time(suffix: &str) -> bool {
    let bytes = suffix.as_bytes();
    bytes.len() == 23
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 => b == b'T',
            15 => b == b'.',
            22 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// The rotated files of the log at `path`, oldest first.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let file_name = entry.file_name();
        if let Some(suffix) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix))
            && is_rotation_time(suffix)
        {
            found.push(entry.path());
        }
    }
    // The names are times of a fixed width: their order is time order.
    found.sort();
    Ok(found)
}

/// Removes the oldest rotated files of the log at `path` beyond `keep`.
fn remove_beyond(path: &Path, keep: usize) -> io::Result<()> {
    let rotated = rotated_files(path)?;
    let excess = rotated.len().saturating_sub(keep);
    for old in &rotated[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_in_time_order_and_are_recognised() {
        let path = Path::new("/var/log/herd/Hill.log");
        let at = UNIX_EPOCH + Duration::new(1_795_311_039, 489_223_042);
        let rotated = rotated_path(path, at);
        assert_eq!(
            rotated,
            Path::new("/var/log/herd/Hill.log.20261122T013039.489223Z")
        );
        let suffix = rotated
            .to_str()
            .unwrap()
            .strip_prefix("/var/log/herd/Hill.log.");
        assert!(is_rotation_time(suffix.unwrap()));
        let later = rotated_path(path, at + Duration::from_micros(1));
        assert!(later > rotated);
        for other in [
            "1",
            "1.gz",
            "20261122",
            "20261122T213039.489223",
            "20261122X213039.489223Z",
        ] {
            assert!(!is_rotation_time(other), "{other}");
        }
    }

    #[test]
    fn only_the_newest_rotated_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Hill.log");
        let start = UNIX_EPOCH + Duration::from_secs(1_795_311_039);
        let mut made = Vec::new();
        for i in 0..5 {
            let rotated = free_rotated_path(&path, start + Duration::from_secs(i));
            std::fs::write(&rotated, "x\n").unwrap();
            made.push(rotated);
        }
        // Files that are not ours are left alone.
        for other in [
            "Hill.log",
            "Hill.log.1",
            "Hill.log.2.gz",
            "Jaquez.log.20261122T213039.000000Z",
        ] {
            std::fs::write(dir.path().join(other), "y\n").unwrap();
        }
        assert_eq!(rotated_files(&path).unwrap(), made);
        remove_beyond(&path, 2).unwrap();
        assert_eq!(rotated_files(&path).unwrap(), made[3..]);
        remove_beyond(&path, 0).unwrap();
        assert!(rotated_files(&path).unwrap().is_empty());
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 4);
        // A name already taken is not overwritten.
        let first = free_rotated_path(&path, start);
        std::fs::write(&first, "z\n").unwrap();
        assert_ne!(free_rotated_path(&path, start), first);
    }
}

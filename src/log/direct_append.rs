//! Appending to a file without going through the page cache.
//!
//! A busy server's message log takes tens of megabytes a second. Written
//! through the page cache, every page of it is a page the kernel allocates,
//! fills, writes back and frees again; on the virtual machines herd is
//! measured on, that costs several times the copy itself (BENCHMARKS.md,
//! "Logs and the disk"). So the whole
//! blocks of what is appended go to the disk directly, from an aligned
//! buffer, and only the last, partial block goes through the page cache (an
//! ordinary append, so that readers see every line at once); the next
//! direct write covers that block again, whole, with the same bytes.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;

/// The unit of a direct write: its offset, its length and the address of
/// the memory written from are multiples of it. 4 KiB is a multiple of
/// every common device's logical block size.
const BLOCK: usize = 4096;
/// How much is staged for one direct write at most.
const STAGING: usize = 1 << 20;

/// An append-only file written in whole blocks with `O_DIRECT`, its last
/// partial block appended through the page cache.
pub struct DirectAppend {
    /// The file opened with `O_DIRECT`, written at block offsets.
    direct: File,
    /// The same file opened to read and append.
    append: File,
    /// `STAGING` bytes from `window` on are the aligned window.
    staging: Vec<u8>,
    window: usize,
    /// The file offset of the window's first byte (a multiple of `BLOCK`).
    start: u64,
    /// Bytes in the window: the file's last partial block, then what is
    /// still to be written.
    len: usize,
    /// The file's end as written so far, one way or the other.
    end: u64,
    direct_writes: u64,
    /// Direct writes failed: everything goes through the page cache.
    failed: bool,
    /// Why, until asked.
    failure: Option<io::Error>,
}

impl DirectAppend {
    /// Appends to the file `append` (opened to read and append) through
    /// `direct`, the same file opened to write with `O_DIRECT`. Gives
    /// `append` back when that cannot be set up.
    pub fn new(append: File, direct: File) -> Result<Self, (File, io::Error)> {
        let end = match append.metadata() {
            Ok(metadata) => metadata.len(),
            Err(error) => return Err((append, error)),
        };
        let staging = vec![0u8; STAGING + BLOCK];
        // (`align_offset` may in principle decline: then there is no
        // aligned window, and the caller appends as usual.)
        let window = staging.as_ptr().align_offset(BLOCK);
        if window > BLOCK {
            let error = io::Error::other("no aligned buffer for direct writes");
            return Err((append, error));
        }
        let mut this = Self {
            direct,
            append,
            staging,
            window,
            start: 0,
            len: 0,
            end: 0,
            direct_writes: 0,
            failed: false,
            failure: None,
        };
        if let Err(error) = this.resume_at(end) {
            return Err((this.append, error));
        }
        Ok(this)
    }

    /// Appends `pieces` in order; returns the bytes appended. If a direct
    /// write fails, this and every later append go through the page cache
    /// instead (see [`DirectAppend::take_failure`]); nothing is lost.
    pub fn append<P: AsRef<[u8]>>(&mut self, pieces: &[P]) -> io::Result<u64> {
        let total = pieces.iter().map(|piece| piece.as_ref().len() as u64).sum();
        if self.failed {
            for piece in pieces {
                (&self.append).write_all(piece.as_ref())?;
            }
            return Ok(total);
        }
        // Someone else changed the file since the last append (truncated it,
        // as `logrotate`'s copytruncate does, or appended to it): go on from
        // its end as it is now, as an appending writer would, not from
        // where the last append left it (after a truncation that would
        // leave a hole the length of the old log).
        let actual = self.append.metadata()?.len();
        if actual != self.end {
            self.resume_at(actual)?;
        }
        for (i, piece) in pieces.iter().enumerate() {
            let mut rest = piece.as_ref();
            while !rest.is_empty() {
                let n = (STAGING - self.len).min(rest.len());
                let at = self.window + self.len;
                self.staging[at..at + n].copy_from_slice(&rest[..n]);
                self.len += n;
                rest = &rest[n..];
                if self.len == STAGING
                    && let Err(error) = self.write_blocks()
                {
                    self.fall_back(error, rest, &pieces[i + 1..])?;
                    return Ok(total);
                }
            }
        }
        if let Err(error) = self.write_blocks() {
            self.fall_back::<&[u8]>(error, &[], &[])?;
            return Ok(total);
        }
        self.write_tail()?;
        Ok(total)
    }

    /// Goes on from a file `length` bytes long: the window starts at its
    /// last partial block, read back, since the next direct write covers
    /// that block again, whole.
    fn resume_at(&mut self, length: u64) -> io::Result<()> {
        self.start = length - length % BLOCK as u64;
        self.len = (length - self.start) as usize;
        self.end = length;
        let tail = &mut self.staging[self.window..self.window + self.len];
        self.append.read_exact_at(tail, self.start)
    }

    /// Why direct writes stopped, the first time it is asked after they
    /// did.
    pub fn take_failure(&mut self) -> Option<io::Error> {
        self.failure.take()
    }

    /// Writes the window's whole blocks directly; the partial one stays.
    fn write_blocks(&mut self) -> io::Result<()> {
        let full = self.len - self.len % BLOCK;
        if full == 0 {
            return Ok(());
        }
        let window = self.window;
        self.direct
            .write_all_at(&self.staging[window..window + full], self.start)?;
        self.direct_writes += 1;
        self.start += full as u64;
        self.end = self.end.max(self.start);
        self.staging
            .copy_within(window + full..window + self.len, window);
        self.len -= full;
        Ok(())
    }

    /// Appends the part of the window past the file's end (within the last
    /// partial block) through the page cache.
    fn write_tail(&mut self) -> io::Result<()> {
        let written = (self.end - self.start) as usize;
        if written < self.len {
            let window = self.window;
            (&self.append).write_all(&self.staging[window + written..window + self.len])?;
            self.end = self.start + self.len as u64;
        }
        Ok(())
    }

    /// After a direct write failed: appends through the page cache what
    /// the window holds past the file's actual end (a direct write that
    /// failed may have written part of its blocks), then `rest` and
    /// `later`; every later append goes that way too.
    fn fall_back<P: AsRef<[u8]>>(
        &mut self,
        error: io::Error,
        rest: &[u8],
        later: &[P],
    ) -> io::Result<()> {
        self.failed = true;
        self.failure = Some(error);
        let end = self.append.metadata()?.len();
        let window_end = self.start + self.len as u64;
        if end >= self.start && end < window_end {
            let from = self.window + (end - self.start) as usize;
            (&self.append).write_all(&self.staging[from..self.window + self.len])?;
        }
        (&self.append).write_all(rest)?;
        for piece in later {
            (&self.append).write_all(piece.as_ref())?;
        }
        self.len = 0;
        Ok(())
    }

    /// The file's length as it is now, whoever changed it last.
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.append.metadata()?.len())
    }

    /// Direct writes made so far.
    pub fn direct_writes(&self) -> u64 {
        self.direct_writes
    }
}

/// Opens `path`, which exists, to write with `O_DIRECT`.
pub fn open_direct(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_append(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    /// `path` appended to directly, or `None` (and a note why) where the
    /// file system refuses `O_DIRECT`, as tmpfs does; the fallback has a
    /// test of its own.
    fn direct_log(path: &std::path::Path) -> Option<DirectAppend> {
        let direct = match open_direct(path) {
            Ok(direct) => direct,
            Err(error) => {
                eprintln!("no O_DIRECT here ({error}): nothing to test");
                return None;
            }
        };
        let Ok(log) = DirectAppend::new(open_append(path), direct) else {
            panic!("setting up");
        };
        Some(log)
    }

    /// Pieces of awkward sizes: lines, a piece larger than the staging
    /// window, empty ones.
    fn pieces(round: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..round * 37 % 200 {
            out.push(format!("round {round} line {i} {}\n", "x".repeat(i % 97)).into_bytes());
        }
        out.push(Vec::new());
        if round == 3 {
            out.push(vec![b'y'; STAGING + 3 * BLOCK + 5]);
        }
        out
    }

    #[test]
    fn appends_exactly_the_bytes_given_whole_blocks_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("direct.log");
        // An earlier run's content, not a whole number of blocks.
        let mut expected = b"earlier\n".repeat(1000);
        std::fs::write(&path, &expected).unwrap();
        let Some(mut log) = direct_log(&path) else {
            return;
        };
        for round in 0..8 {
            let pieces = pieces(round);
            let length: usize = pieces.iter().map(Vec::len).sum();
            assert_eq!(log.append(&pieces).unwrap(), length as u64);
            pieces.iter().for_each(|piece| expected.extend(piece));
            // Every byte readable at once, the partial block included.
            assert_eq!(std::fs::read(&path).unwrap(), expected, "round {round}");
        }
        assert!(log.direct_writes() >= 3, "{}", log.direct_writes());
    }

    #[test]
    fn a_log_truncated_or_appended_to_meanwhile_goes_on_from_its_new_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rotated.log");
        std::fs::write(&path, b"").unwrap();
        let Some(mut log) = direct_log(&path) else {
            return;
        };
        log.append(&[vec![b'a'; 3 * BLOCK + 100]]).unwrap();
        // Emptied, as `logrotate` with copytruncate does: no hole after it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut expected = format!("after rotation {}\n", "b".repeat(2 * BLOCK)).into_bytes();
        log.append(&[expected.clone()]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Another writer appends: its bytes stay, ours follow them.
        open_append(&path).write_all(b"someone else\n").unwrap();
        expected.extend(b"someone else\n");
        let ours = vec![b'c'; BLOCK + 7];
        log.append(std::slice::from_ref(&ours)).unwrap();
        expected.extend(&ours);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert!(log.direct_writes() >= 3, "{}", log.direct_writes());
    }

    #[test]
    fn a_direct_write_that_fails_leaves_the_rest_to_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fallback.log");
        std::fs::write(&path, b"before\n").unwrap();
        // A handle that cannot write stands for a file system that refuses
        // direct writes.
        let read_only = File::open(&path).unwrap();
        let Ok(mut log) = DirectAppend::new(open_append(&path), read_only) else {
            panic!("setting up");
        };
        let mut expected = b"before\n".to_vec();
        // Whole blocks, and more than the window holds, so that the
        // failure comes in the middle of a piece.
        let first = vec![vec![b'a'; STAGING + 3 * BLOCK + 10], b"end of a\n".to_vec()];
        first.iter().for_each(|piece| expected.extend(piece));
        let length = (STAGING + 3 * BLOCK + 10 + 9) as u64;
        assert_eq!(log.append(&first).unwrap(), length);
        assert!(log.take_failure().is_some());
        assert!(log.take_failure().is_none(), "told once");
        assert_eq!(log.direct_writes(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Later appends go through the page cache too.
        let second = vec![b"later\n".to_vec(), vec![b'b'; 2 * BLOCK]];
        log.append(&second).unwrap();
        second.iter().for_each(|piece| expected.extend(piece));
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}

//! Handing the pages of append-only files back to the kernel once they are
//! on disk.

use std::fs::File;

/// Drops a file's written pages from the page cache as they reach the disk.
///
/// A busy server appends to its message log and its store log at tens of
/// megabytes a second, and nobody reads them back soon. Left in the page
/// cache, every byte occupies a page taken from free memory, which costs
/// more than the write itself (on a virtual machine whose free memory is
/// returned to the host, each new page is a fault there). Dropping written
/// pages lets the kernel reuse the same few, still-warm pages for the next
/// writes. `POSIX_FADV_DONTNEED` drops only clean pages and starts the
/// write-back of dirty ones, so each piece is asked about twice: when it is
/// written, and again with the next piece.
pub struct PageCacheTrim {
    /// Advise after at least this many bytes (one system call per write
    /// would double the calls of a writer of small pieces); 0: after
    /// every write.
    every: u64,
    /// Where the range not yet dropped starts, where the last advice ended,
    /// and the file's end.
    from: u64,
    advised: u64,
    end: u64,
}

impl PageCacheTrim {
    /// For `file`, appended to from its current end on, advising once
    /// `every` bytes have been written since the last advice.
    pub fn new(file: &File, every: u64) -> Self {
        let end = file.metadata().map_or(0, |m| m.len());
        Self {
            every,
            from: end,
            advised: end,
            end,
        }
    }

    /// Notes that `length` more bytes were appended to `file`, and advises
    /// the kernel about them once enough have been.
    pub fn written(&mut self, file: &File, length: u64) {
        self.note(length);
        if let Some(range) = self.due() {
            advise(file, range);
        }
    }

    /// Notes that `length` more bytes were appended, without a system call:
    /// for a writer on a hot path that leaves the advice (`due`) to another
    /// thread.
    pub fn note(&mut self, length: u64) {
        self.end += length;
    }

    /// The range to advise about now, if enough was written since the last
    /// advice; from then on it counts as advised.
    pub fn due(&mut self) -> Option<DueRange> {
        if self.end - self.advised < self.every.max(1) {
            return None;
        }
        let range = DueRange {
            offset: self.from,
            length: self.end - self.from,
        };
        // What was just written is likely still being written back; ask
        // again about it next time.
        self.from = self.advised;
        self.advised = self.end;
        Some(range)
    }
}

/// A range of a file whose pages may be dropped from the page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueRange {
    offset: u64,
    length: u64,
}

/// Asks the kernel to drop `range` of `file` from the page cache (the clean
/// pages go at once; dirty ones start their write-back).
pub fn advise(file: &File, range: DueRange) {
    let (Ok(offset), Ok(length)) = (i64::try_from(range.offset), i64::try_from(range.length))
    else {
        return;
    };
    // Advice only: a file system that ignores it loses nothing.
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        length,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Which ranges are advised, and when. (Whether the kernel then drops
    /// the pages would take `mincore`, which needs `unsafe`.)
    #[test]
    fn each_piece_is_advised_when_written_and_again_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("log")).unwrap();
        file.write_all(b"header").unwrap();
        let mut trim = PageCacheTrim::new(&file, 100);
        assert_eq!((trim.from, trim.advised, trim.end), (6, 6, 6));
        file.write_all(&[0; 60]).unwrap();
        trim.written(&file, 60);
        // Below `every`: nothing advised yet.
        assert_eq!((trim.from, trim.advised, trim.end), (6, 6, 66));
        file.write_all(&[0; 60]).unwrap();
        trim.written(&file, 60);
        // [6, 126) advised; it is asked about again next time.
        assert_eq!((trim.from, trim.advised, trim.end), (6, 126, 126));
        file.write_all(&[0; 150]).unwrap();
        trim.written(&file, 150);
        // [6, 276) advised; from now on [126, ...).
        assert_eq!((trim.from, trim.advised, trim.end), (126, 276, 276));
    }

    /// `note` and `due` split `written` for a writer that leaves the
    /// advice to another thread: the same ranges come due.
    #[test]
    fn noting_and_advising_later_advises_the_same_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("log")).unwrap();
        let mut trim = PageCacheTrim::new(&file, 100);
        trim.note(60);
        assert_eq!(trim.due(), None);
        trim.note(60);
        assert_eq!(
            trim.due(),
            Some(DueRange {
                offset: 0,
                length: 120
            })
        );
        // Nothing new: nothing due, however often asked.
        assert_eq!(trim.due(), None);
        trim.note(150);
        assert_eq!(
            trim.due(),
            Some(DueRange {
                offset: 0,
                length: 270
            })
        );
        trim.note(100);
        assert_eq!(
            trim.due(),
            Some(DueRange {
                offset: 120,
                length: 250
            })
        );
    }
}

//! Bytes into lines (SPEC §2), apart from parsing.
//!
//! A line ends at `\n`, and a `\r` just before it belongs to the ending.
//! Bytes after the last `\n`, ended by EOF, are a line too. A line longer
//! than the maximum is never held whole: its first `max` bytes are kept for
//! the `? ` answer and the rest is skipped as it arrives.

use std::cell::RefCell;

use bytes::{Buf, BytesMut};

/// How much to read at a time. Small enough that the buffers of busy
/// connections, given back whenever they empty, stay below the point where
/// the allocator returns heap to the system (and asks for it again: a
/// `brk` system call pair per read otherwise), large enough for dozens of
/// pipelined lines per read.
const READ_SIZE: usize = 4 * 1024;

/// Read buffers kept for reuse per thread, at most: a busy connection gives
/// its buffer back whenever it has answered everything it read, and takes
/// one again for its next read a moment later. Taken from the allocator
/// each time, a buffer this size goes past its per-thread cache (which
/// holds small blocks only), and a busy server would spend a good part of
/// its time in `malloc` and `free`. Bounded, so that many connections
/// going idle at once still give their memory back.
const SPARE_BUFFERS: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// One framed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole line, without its line ending.
    Line(BytesMut),
    /// The first `max` bytes of a line that was longer than `max`.
    TooLong(BytesMut),
}

/// Cuts a byte stream into lines with a bounded memory footprint.
///
/// Feed it with [`LineFramer::buffer`] and take frames with
/// [`LineFramer::next_frame`]; at EOF call [`LineFramer::finish`].
#[derive(Debug)]
pub struct LineFramer {
    max: usize,
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for `\n`.
    scanned: usize,
    /// Skipping the tail of an over-long line up to its `\n`.
    discarding: bool,
}

impl LineFramer {
    /// A framer for lines of at most `max` bytes (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            buffer: BytesMut::new(),
            scanned: 0,
            discarding: false,
        }
    }

    /// The buffer to read more bytes into, with some room to read into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buffer.capacity() == 0
            && let Some(spare) = SPARE.with(|spare| spare.borrow_mut().pop())
        {
            self.buffer = spare;
        }
        if self.buffer.capacity() - self.buffer.len() < 1024 {
            self.buffer.reserve(READ_SIZE.min(self.room()));
        }
        &mut self.buffer
    }

    /// Gives back a buffer that holds nothing, so that a connection waiting
    /// for its next request costs no buffer memory. The buffer goes to this
    /// thread's spares if it can be reused whole, that is once no line cut
    /// from it is still held.
    pub fn release_if_empty(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            let read_size = READ_SIZE.min(self.room());
            let mut spare = std::mem::take(&mut self.buffer);
            self.scanned = 0;
            // Room for a whole read again (back at the start of its
            // allocation), without allocating.
            if spare.try_reclaim(read_size) {
                SPARE.with(|spares| {
                    let mut spares = spares.borrow_mut();
                    if spares.len() < SPARE_BUFFERS {
                        spares.push(spare);
                    }
                });
            }
        }
    }

    /// The next complete frame, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(offset) = memchr(&self.buffer[self.scanned..]) {
                let end = self.scanned + offset;
                self.scanned = 0;
                if self.discarding {
                    self.buffer.advance(end + 1);
                    self.discarding = false;
                    continue;
                }
                let mut line = self.buffer.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                // A long line can arrive whole in one read, ending included.
                if line.len() > self.max {
                    line.truncate(self.max);
                    return Some(Frame::TooLong(line));
                }
                return Some(Frame::Line(line));
            }
            if self.discarding {
                self.buffer.clear();
                self.scanned = 0;
                return None;
            }
            // `max` bytes of content and a `\r\n` ending fit in `max + 2`; with
            // that many bytes and no `\n`, the line is surely too long.
            if self.buffer.len() >= self.max + 2 {
                let head = self.buffer.split_to(self.max);
                self.buffer.clear();
                self.scanned = 0;
                self.discarding = true;
                return Some(Frame::TooLong(head));
            }
            self.scanned = self.buffer.len();
            return None;
        }
    }

    /// The last frame at EOF: the bytes after the last `\n`, if any.
    pub fn finish(&mut self) -> Option<Frame> {
        if self.discarding || self.buffer.is_empty() {
            return None;
        }
        self.scanned = 0;
        let mut rest = self.buffer.split();
        if rest.len() > self.max {
            rest.truncate(self.max);
            return Some(Frame::TooLong(rest));
        }
        Some(Frame::Line(rest))
    }

    /// Whether a read should be capped to keep memory bounded: the buffer
    /// never needs more than `max + 2` bytes to decide.
    pub fn room(&self) -> usize {
        (self.max + 2).saturating_sub(self.buffer.len()).max(1)
    }
}

/// Where the next `\n` is: the `memchr` crate's search takes a word or a
/// vector register at a time, which matters on long pipelined buffers.
fn memchr(haystack: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', haystack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut framer = LineFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.buffer().extend_from_slice(chunk);
            while let Some(frame) = framer.next_frame() {
                out.push(frame);
            }
        }
        out.extend(framer.finish());
        out
    }

    fn line(text: &[u8]) -> Frame {
        Frame::Line(BytesMut::from(text))
    }

    fn too_long(text: &[u8]) -> Frame {
        Frame::TooLong(BytesMut::from(text))
    }

    #[test]
    fn lines_and_endings() {
        assert_eq!(
            frames(100, &[b"a\nb\r\nc\r\r\n\nlast"]),
            vec![
                line(b"a"),
                line(b"b"),
                line(b"c\r"),
                line(b""),
                line(b"last")
            ]
        );
        assert_eq!(frames(100, &[b"a\n"]), vec![line(b"a")]);
        assert_eq!(frames(100, &[b""]), vec![]);
    }

    /// Reads `text` into `framer` and takes its first line.
    fn read_line(framer: &mut LineFramer, text: &[u8]) -> BytesMut {
        framer.buffer().extend_from_slice(text);
        match framer.next_frame() {
            Some(Frame::Line(line)) => line,
            other => panic!("expected a line, got {other:?}"),
        }
    }

    #[test]
    fn a_released_buffer_is_reused_once_no_line_holds_it() {
        // (Each test runs on a thread of its own: no spares to begin with.)
        let spares = || SPARE.with(|spare| spare.borrow().len());
        let mut first = LineFramer::new(100);
        let kept = read_line(&mut first, b"first\n");
        first.release_if_empty();
        // A line still holds the first buffer: it is not kept, and the next
        // connection's bytes go elsewhere.
        assert_eq!(spares(), 0);
        let mut second = LineFramer::new(100);
        let line = read_line(&mut second, b"second\n");
        assert_eq!(&kept[..], b"first");
        assert_ne!(line.as_ptr(), kept.as_ptr());
        let second_buffer = line.as_ptr();
        drop(line);
        second.release_if_empty();
        // Nothing holds the second buffer now: it is kept, and the next
        // read takes it.
        assert_eq!(spares(), 1);
        let mut third = LineFramer::new(100);
        let line = read_line(&mut third, b"third\n");
        assert_eq!(spares(), 0);
        assert_eq!(&line[..], b"third");
        assert_eq!(line.as_ptr(), second_buffer);
        assert_eq!(&kept[..], b"first");
        // Never more than a bounded number of spares.
        let mut many: Vec<LineFramer> = (0..SPARE_BUFFERS + 10)
            .map(|_| {
                let mut framer = LineFramer::new(100);
                framer.buffer();
                framer
            })
            .collect();
        many.iter_mut().for_each(LineFramer::release_if_empty);
        assert_eq!(spares(), SPARE_BUFFERS);
    }

    #[test]
    fn one_byte_at_a_time() {
        let input = b"IAMAT a +1+1 1\r\nWHATSAT a 1 1\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            frames(100, &chunks),
            vec![line(b"IAMAT a +1+1 1"), line(b"WHATSAT a 1 1")]
        );
    }

    #[test]
    fn too_long_lines_are_cut_and_the_rest_skipped() {
        assert_eq!(
            frames(4, &[b"abcd\nabcde\nxy\n"]),
            vec![line(b"abcd"), too_long(b"abcd"), line(b"xy")]
        );
        assert_eq!(frames(4, &[b"abcd\r\n"]), vec![line(b"abcd")]);
        let chunks: Vec<&[u8]> = vec![b"abc", b"defgh", b"ijk", b"\nok\n"];
        assert_eq!(frames(4, &chunks), vec![too_long(b"abcd"), line(b"ok")]);
        assert_eq!(frames(4, &[b"abcdefg"]), vec![too_long(b"abcd")]);
        assert_eq!(frames(4, &[b"abcde"]), vec![too_long(b"abcd")]);
    }

    #[test]
    fn memory_stays_bounded_while_skipping() {
        let mut framer = LineFramer::new(10);
        for _ in 0..1000 {
            framer.buffer().extend_from_slice(&[b'x'; 1000]);
            while framer.next_frame().is_some() {}
            assert!(framer.buffer().len() <= 12);
        }
        framer.buffer().extend_from_slice(b"\nfine\n");
        assert_eq!(framer.next_frame(), Some(line(b"fine")));
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_the_frames(
            input in proptest::collection::vec(prop::sample::select(vec![b'a', b'\r', b'\n', b' ']), 0..200),
            cut in 1usize..17, max in 1usize..12,
        ) {
            let whole = frames(max, &[&input]);
            let chunks: Vec<&[u8]> = input.chunks(cut).collect();
            prop_assert_eq!(frames(max, &chunks), whole);
        }
    }
}

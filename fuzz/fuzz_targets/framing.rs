//! Fuzz target: `herd::protocol::framing::LineFramer` (SPEC §2) against a reference
//! model, for any byte stream cut into any chunks.
//!
//! Input: byte 0 chooses the maximum line length (1 to 256), byte 1 seeds
//! how the rest is cut into chunks and whether reads are capped to
//! `room()` as the server caps them; the rest is the byte stream a client
//! sends before closing its side. See `fuzz/README.md`.

#![no_main]

use bytes::BytesMut;
use herd::protocol::framing::{Frame, LineFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max_byte, seed, stream @ ..] = data else {
        return;
    };
    let max = 1 + usize::from(*max_byte);
    let expected = reference(max, stream);

    // The whole stream in one read.
    let whole = run(max, stream, &mut Chunks::whole());
    assert_eq!(whole, expected, "whole stream, max {max}");

    // The stream cut into chunks chosen by the seed.
    let chunked = run(max, stream, &mut Chunks::new(*seed, max));
    assert_eq!(chunked, expected, "chunked stream, max {max}, seed {seed}");
});

/// What SPEC §2 says the frames of `stream` are, computed on the whole
/// stream at once: split at `\n`; a terminated line loses one `\r` before
/// its `\n`; bytes after the last `\n` are a line (with any `\r`); a line
/// longer than `max` is answered with its first `max` bytes.
fn reference(max: usize, stream: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut pieces: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let last = pieces.pop().expect("split yields at least one piece");
    let mut push = |content: &[u8]| {
        frames.push(if content.len() > max {
            Frame::TooLong(BytesMut::from(&content[..max]))
        } else {
            Frame::Line(BytesMut::from(content))
        })
    };
    for piece in pieces {
        push(piece.strip_suffix(b"\r").unwrap_or(piece));
    }
    if !last.is_empty() {
        push(last);
    }
    frames
}

/// How to cut the stream: a tiny deterministic generator, so that a crash
/// input reproduces exactly.
struct Chunks {
    state: u32,
    max: usize,
    /// Cap each read to `room()`, as the server does.
    capped: bool,
    /// Call `release_if_empty` whenever the framer is drained, as the
    /// server does before waiting for the next read.
    release: bool,
    whole: bool,
}

impl Chunks {
    fn whole() -> Self {
        Self {
            state: 1,
            max: 1,
            capped: false,
            release: false,
            whole: true,
        }
    }

    fn new(seed: u8, max: usize) -> Self {
        Self {
            state: u32::from(seed).wrapping_mul(2_654_435_761) | 1,
            max,
            capped: seed & 1 == 1,
            release: seed & 2 == 2,
            whole: false,
        }
    }

    fn next_len(&mut self, left: usize) -> usize {
        if self.whole {
            return left;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        // Mostly small reads, sometimes about a line, sometimes several.
        let len = match self.state % 4 {
            0 => 1 + (self.state >> 8) as usize % 3,
            1 => 1 + (self.state >> 8) as usize % (self.max + 3),
            2 => 1 + (self.state >> 8) as usize % (4 * self.max + 8),
            _ => 1 + (self.state >> 8) as usize % 16,
        };
        len.min(left)
    }
}

fn run(max: usize, mut stream: &[u8], chunks: &mut Chunks) -> Vec<Frame> {
    let mut framer = LineFramer::new(max);
    let mut frames = Vec::new();
    let take = |frame: Frame, frames: &mut Vec<Frame>| {
        match &frame {
            Frame::Line(line) => assert!(line.len() <= max, "line over max"),
            Frame::TooLong(head) => assert_eq!(head.len(), max, "TooLong is not max bytes"),
        }
        frames.push(frame);
    };
    while !stream.is_empty() {
        let mut len = chunks.next_len(stream.len());
        if chunks.capped {
            let room = framer.room();
            assert!(room >= 1);
            len = len.min(room);
        }
        let (chunk, rest) = stream.split_at(len);
        stream = rest;
        framer.buffer().extend_from_slice(chunk);
        if chunks.capped {
            // Reads capped to `room()` keep memory within `max + 2` bytes.
            assert!(
                framer.buffer().len() <= max + 2,
                "buffer grew to {} with max {max}",
                framer.buffer().len()
            );
        }
        while let Some(frame) = framer.next_frame() {
            take(frame, &mut frames);
        }
        // Drained: what is left is a part line that cannot be decided yet,
        // never more than `max + 1` bytes.
        assert!(
            framer.buffer().len() <= max + 1,
            "undecided bytes over max + 1"
        );
        if chunks.release {
            framer.release_if_empty();
        }
    }
    if let Some(frame) = framer.finish() {
        take(frame, &mut frames);
    }
    // Nothing more after EOF.
    assert_eq!(framer.next_frame(), None);
    assert_eq!(framer.finish(), None);
    frames
}

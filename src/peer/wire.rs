//! The peer wire format: handshake lines, frames and their payload lines.
//! Pure: no IO, no clock, no tasks.
//!
//! A frame is a `u32` big-endian length, the payload, and a 32-byte tag
//! (see `auth::FrameKey`). Payload lines are `U <seq> <AT line>` for an
//! update, `C <seq>` for "complete up to", `H <client> <time>` for "I hold
//! this client's report of that time" (an announcement over a lazy link),
//! and `L <server> <version> <neighbour>...` for a server's live links;
//! `docs/protocol.md` has the whole exchange.

use crate::protocol::time::{Timestamp, parse_digits_u64};
use crate::protocol::{Location, parse_at_line};
use crate::replica::store::client_id_range;

/// The largest frame payload a receiver accepts.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// The length of a frame's tag.
pub const TAG_BYTES: usize = 32;

/// One line of a frame's payload.
#[derive(Debug, PartialEq)]
pub enum PayloadLine<'a> {
    /// `U <seq> <AT line>`: a report, numbered in the sender's sequence,
    /// with the time and location read from its AT line (parsed once).
    Update {
        seq: u64,
        at_line: &'a [u8],
        client_time: Timestamp,
        location: Location,
    },
    /// `C <seq>`: the sender has sent everything up to `seq`.
    Complete { seq: u64 },
}

/// Parses one payload line (without its `\n`); `None` if it is malformed,
/// including an AT line that does not parse.
pub fn parse_payload_line(line: &[u8]) -> Option<PayloadLine<'_>> {
    // Exactly as the sender writes them: single spaces, none at the end.
    if line.last() == Some(&b' ') {
        return None;
    }
    let (kind, rest) = split_word(line)?;
    let (seq, rest) = split_word(rest)?;
    let seq = parse_digits_u64(seq)?;
    match kind {
        b"C" if rest.is_empty() => Some(PayloadLine::Complete { seq }),
        b"U" => {
            let at = parse_at_line(rest)?;
            Some(PayloadLine::Update {
                seq,
                at_line: rest,
                client_time: at.client_time,
                location: at.location,
            })
        }
        _ => None,
    }
}

/// The fields of a `HERD-HELLO` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The sender's run id, as sent (the MAC covers this text).
    pub run_text: &'a str,
    pub run: u64,
    pub nonce: Vec<u8>,
    pub tag: Vec<u8>,
}

/// Parses a `HERD-HELLO` line; `None` if it is malformed.
pub fn parse_hello(line: &str) -> Option<Hello<'_>> {
    let ["HERD-HELLO", from, to, run_text, nonce, tag] = line.split(' ').collect::<Vec<_>>()[..]
    else {
        return None;
    };
    Some(Hello {
        from,
        to,
        run_text,
        run: parse_digits_u64(run_text.as_bytes())?,
        nonce: decode_hex(nonce).filter(|n| n.len() == 16)?,
        tag: decode_hex(tag).filter(|t| t.len() == 32)?,
    })
}

/// The number and AT line of an update line (`U <seq> <AT line>`), the AT
/// line unchecked; `None` for other lines.
pub(crate) fn update_parts(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(b"U ")?;
    let space = memchr::memchr(b' ', rest)?;
    let seq = parse_digits_u64(&rest[..space])?;
    Some((seq, &rest[space + 1..]))
}

/// The client id of an update line (`U <seq> <AT line>`), found without
/// checking the rest; `None` for other lines.
pub(crate) fn update_client_id(line: &[u8]) -> Option<&[u8]> {
    let (_, at_line) = update_parts(line)?;
    at_line.get(client_id_range(at_line))
}

pub(crate) fn split_word(line: &[u8]) -> Option<(&[u8], &[u8])> {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => Some((&line[..space], &line[space + 1..])),
        None => Some((line, &[])),
    }
}

/// The server an AT line names: where its report was made.
pub fn origin(at_line: &[u8]) -> &[u8] {
    let rest = at_line.get(3..).unwrap_or_default();
    rest.split(|&b| b == b' ').next().unwrap_or_default()
}

/// Empties a frame buffer, leaving room for the length.
pub fn start_frame(frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(&[0; 4]);
}

/// Appends an update line to a frame being built.
pub fn push_update(frame: &mut Vec<u8>, seq: u64, at_line: &[u8]) {
    frame.extend_from_slice(b"U ");
    frame.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    frame.push(b' ');
    frame.extend_from_slice(at_line);
    frame.push(b'\n');
}

/// Appends an announcement that this server holds the report of `at_line`
/// (`H <client> <time>`), or nothing for a line that is not an AT line.
pub fn push_have(frame: &mut Vec<u8>, at_line: &[u8]) {
    let mut fields = at_line.split(|&b| b == b' ');
    let (Some(client), Some(time)) = (fields.nth(3), fields.nth(1)) else {
        return;
    };
    frame.extend_from_slice(b"H ");
    frame.extend_from_slice(client);
    frame.push(b' ');
    frame.extend_from_slice(time);
    frame.push(b'\n');
}

/// The client and time of an announcement line (`H <client> <time>`).
pub fn parse_have(line: &[u8]) -> Option<(&[u8], Timestamp)> {
    let rest = line.strip_prefix(b"H ")?;
    let (client, time) = split_word(rest)?;
    if client.is_empty() || memchr::memchr(b' ', time).is_some() {
        return None;
    }
    Some((client, Timestamp::parse(time)?))
}

/// Appends a line as it is (a link-state line), with its `\n`.
pub fn push_line(frame: &mut Vec<u8>, line: &[u8]) {
    frame.extend_from_slice(line);
    frame.push(b'\n');
}

/// Appends a "complete up to" line to a frame being built.
pub fn push_complete(frame: &mut Vec<u8>, seq: u64) {
    frame.extend_from_slice(b"C ");
    frame.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    frame.push(b'\n');
}

/// The payload of a frame built by [`start_frame`] and the `push_*`
/// functions.
pub fn payload(frame: &[u8]) -> &[u8] {
    &frame[4..]
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex::encode(bytes), "0001abff");
        assert_eq!(decode_hex("0001abff"), Some(bytes.to_vec()));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("é1"), None);
        assert_eq!(decode_hex("+a"), None);
    }

    #[test]
    fn payload_lines() {
        assert_eq!(
            parse_payload_line(b"C 12"),
            Some(PayloadLine::Complete { seq: 12 })
        );
        assert_eq!(
            parse_payload_line(b"U 3 AT Hill +0.000000001 k +1+1 5"),
            Some(PayloadLine::Update {
                seq: 3,
                at_line: b"AT Hill +0.000000001 k +1+1 5",
                client_time: Timestamp::parse(b"5").unwrap(),
                location: Location { lat: 1.0, lng: 1.0 },
            })
        );
        for bad in [
            &b"C"[..],
            b"C x",
            b"C 1 2",
            b"U 3",
            b"U 3 AT Hill",
            b"X 1",
            b"",
            b"U -1 AT Hill +0.000000001 k +1+1 5",
            b"C +12",
            b"C 12 ",
        ] {
            assert_eq!(
                parse_payload_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn update_lines_name_their_client() {
        assert_eq!(
            update_client_id(b"U 3 AT Hill +0.000000001 kiwi +1+1 5"),
            Some(&b"kiwi"[..])
        );
        // Only updates; a malformed one may name anything or nothing, as
        // it is only warmed for, not believed.
        assert_eq!(update_client_id(b"C 12"), None);
        assert_eq!(update_client_id(b"U"), None);
        assert_eq!(update_client_id(b"U 3"), None);
        let _ = update_client_id(b"U 3 AT Hill");
    }

    #[test]
    fn hello_lines() {
        let line = format!("HERD-HELLO A B 42 {} {}", "ab".repeat(16), "cd".repeat(32));
        let hello = parse_hello(&line).unwrap();
        assert_eq!((hello.from, hello.to, hello.run), ("A", "B", 42));
        assert!(parse_hello("HERD-HELLO A B 42 00 00").is_none());
        assert!(parse_hello(&line.replace("42", "x")).is_none());
        assert!(parse_hello(&format!("{line} extra")).is_none());
    }

    proptest::proptest! {
        #[test]
        fn peer_parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_payload_line(&bytes);
            let _ = parse_hello(&String::from_utf8_lossy(&bytes));
        }
    }
}

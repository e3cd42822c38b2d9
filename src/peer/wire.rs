//! The peer wire format: handshake lines, frames and their payload lines.
//! Pure: no IO, no clock, no tasks.
//!
//! After two plaintext opening lines a link carries only Noise messages
//! (see `auth`): the rest of the handshake, then frames, each sent as one
//! or more encrypted records. Payload lines are `U <seq> <AT line>` for an
//! update, `C <seq>` for "complete up to", `W <origin> <held> <vouched>`
//! for how far the sender holds the reports made at a server and has sent
//! them to the receiver (a watermark), and `L <server> <version>
//! <neighbour>...` for a server's live links;
//! `docs/protocol.md` has the whole exchange.

use crate::protocol::time::{Timestamp, parse_digits_u64};
use crate::protocol::{Location, parse_at_line};
use crate::replica::store::{Mark, client_id_range};

/// A short, non-secret name for a herd secret (see `auth::Key`): the
/// first 4 bytes of a BLAKE3 key derivation of it, written as 8 hex digits. A dialler names
/// the key it uses, so that a listener with several knows which to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 4]);

impl KeyId {
    /// The key id of these bytes.
    pub fn from_bytes(bytes: [u8; 4]) -> KeyId {
        KeyId(bytes)
    }

    /// The key id a `HERD-HELLO` line gives, if it is 8 hex digits.
    pub fn parse(text: &str) -> Option<KeyId> {
        let bytes = hex::decode(text).ok()?;
        Some(KeyId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The largest frame payload a receiver accepts.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

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

/// The version of the peer protocol this server speaks. A link comes up
/// only between servers of the same version: each side of a handshake
/// names its version second on its first line, a word every version keeps,
/// so that servers of any two versions can tell each other what they speak.
/// Version 2 added the version to the hello, and announcement (`H`) and
/// link-state (`L`) lines to frames; version 3 encrypts links with Noise;
/// version 4 replaces announcements with watermarks (`W`).
pub const PROTOCOL_VERSION: &str = "4";

/// A listener's `HERD-CHALLENGE <version> <nonce>` line.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge<'a> {
    /// Our version, with the listener's nonce.
    Ours { nonce: Vec<u8> },
    /// Another version, whose other fields mean nothing to us.
    Other { version: &'a str },
}

/// Parses a challenge line; `None` if it is not one.
pub fn parse_challenge(line: &str) -> Option<Challenge<'_>> {
    let mut fields = line.split(' ');
    if fields.next()? != "HERD-CHALLENGE" {
        return None;
    }
    let version = fields.next().filter(|v| is_version(v))?;
    if version != PROTOCOL_VERSION {
        return Some(Challenge::Other { version });
    }
    let nonce = decode_hex(fields.next()?).filter(|n| n.len() == 16)?;
    fields.next().is_none().then_some(Challenge::Ours { nonce })
}

/// The challenge a listener of our version sends.
pub fn challenge_line(nonce: &[u8]) -> String {
    format!("HERD-CHALLENGE {PROTOCOL_VERSION} {}\n", hex::encode(nonce))
}

/// The version a `HERD-HELLO` line is in, and the server it claims to come
/// from when it names one; `None` if it is no hello at all.
pub fn hello_version(line: &str) -> Option<(&str, Option<&str>)> {
    let mut fields = line.split(' ');
    if fields.next()? != "HERD-HELLO" {
        return None;
    }
    let version = fields.next().filter(|v| is_version(v))?;
    Some((version, fields.next()))
}

/// The hello a dialler sends a listener of another version before it
/// closes: its version and both names, so that the listener can say whom
/// it could not link with and why.
pub fn other_version_hello(from: &str, to: &str) -> String {
    format!("HERD-HELLO {PROTOCOL_VERSION} {from} {to}\n")
}

fn is_version(text: &str) -> bool {
    !text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The fields of a `HERD-HELLO <version> <from> <to> <key id>` line of
/// our version: sent in the clear, so that the listener knows which key to
/// try, and bound into the Noise handshake (as its prologue), which
/// repeats the names inside.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub key_id: KeyId,
}

/// Parses a `HERD-HELLO` line of our version; `None` if it is malformed
/// or of another version.
pub fn parse_hello(line: &str) -> Option<Hello<'_>> {
    let ["HERD-HELLO", version, from, to, key_id] = line.split(' ').collect::<Vec<_>>()[..] else {
        return None;
    };
    if version != PROTOCOL_VERSION || from.is_empty() || to.is_empty() {
        return None;
    }
    Some(Hello {
        from,
        to,
        key_id: KeyId::parse(key_id)?,
    })
}

/// The hello line a dialler sends, with its `\n`.
pub fn hello_line(from: &str, to: &str, key_id: KeyId) -> String {
    format!("HERD-HELLO {PROTOCOL_VERSION} {from} {to} {key_id}\n")
}

/// The line a listener sends before its handshake message when it takes
/// the hello, with its `\n`.
pub const WELCOME_LINE: &str = "HERD-WELCOME\n";

/// The payload of the dialler's handshake message: `<from> <to> <run>`,
/// its name, the listener's and its run id.
pub fn hello_payload(from: &str, to: &str, run: u64) -> Vec<u8> {
    format!("{from} {to} {run}").into_bytes()
}

/// Parses a hello payload into its names and run id.
pub fn parse_hello_payload(payload: &[u8]) -> Option<(&str, &str, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let [from, to, run] = text.split(' ').collect::<Vec<_>>()[..] else {
        return None;
    };
    Some((from, to, parse_digits_u64(run.as_bytes())?))
}

/// The payload of the listener's handshake message: its cursor for the
/// dialler, `<run> <seq>`.
pub fn welcome_payload(run: u64, seq: u64) -> Vec<u8> {
    format!("{run} {seq}").into_bytes()
}

/// Parses a welcome payload into the cursor it gives.
pub fn parse_welcome_payload(payload: &[u8]) -> Option<(u64, u64)> {
    let (run, seq) = split_word(payload)?;
    Some((parse_digits_u64(run)?, parse_digits_u64(seq)?))
}

/// Why a listener refused a hello, as it tells the dialler in a
/// `HERD-REFUSED <reason>` line before it closes. The line is not
/// authenticated: it only lets the dialler say what went wrong, and
/// nothing is believed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hello names a key the listener does not hold, or its handshake
    /// message did not decrypt: the dialler's herd secret is not the
    /// listener's.
    Secret,
    /// The dialler is not one of the listener's neighbours, or the hello
    /// was meant for another server.
    Neighbour,
}

impl Refusal {
    /// The line that says so, with its `\n`.
    pub fn line(self) -> &'static str {
        match self {
            Refusal::Secret => "HERD-REFUSED secret\n",
            Refusal::Neighbour => "HERD-REFUSED neighbour\n",
        }
    }

    /// The refusal a `HERD-REFUSED` line gives, if it is one we know.
    pub fn parse(line: &str) -> Option<Refusal> {
        match line {
            "HERD-REFUSED secret" => Some(Refusal::Secret),
            "HERD-REFUSED neighbour" => Some(Refusal::Neighbour),
            _ => None,
        }
    }
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

/// The client an update line is about, if it is one: what applying the
/// line will look up. Not checked beyond that.
pub(crate) fn frame_client_id(line: &[u8]) -> Option<&[u8]> {
    update_client_id(line)
}

pub(crate) fn split_word(line: &[u8]) -> Option<(&[u8], &[u8])> {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => Some((&line[..space], &line[space + 1..])),
        None => Some((line, &[])),
    }
}

pub use crate::replica::store::origin;

/// Empties a frame buffer.
pub fn start_frame(frame: &mut Vec<u8>) {
    frame.clear();
}

/// Appends an update line to a frame being built.
pub fn push_update(frame: &mut Vec<u8>, seq: u64, at_line: &[u8]) {
    frame.extend_from_slice(b"U ");
    frame.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    frame.push(b' ');
    frame.extend_from_slice(at_line);
    frame.push(b'\n');
}

/// Appends a watermark line (`W <origin> <from> <held> <vouched>`): the
/// sender holds every report made at `origin` stamped above `from` up to
/// `held`, and the receiver, once it has what came before this line, every
/// one above `from` up to `vouched`.
pub fn push_mark(frame: &mut Vec<u8>, origin: &[u8], held: Mark, vouched: u64) {
    frame.extend_from_slice(b"W ");
    frame.extend_from_slice(origin);
    for number in [held.from, held.to, vouched] {
        frame.push(b' ');
        frame.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
    }
    frame.push(b'\n');
}

/// The origin and ranges of a watermark line: what the sender holds, and
/// what it vouches the receiver holds.
pub fn parse_mark(line: &[u8]) -> Option<(&[u8], Mark, Mark)> {
    let rest = line.strip_prefix(b"W ")?;
    let (origin, rest) = split_word(rest)?;
    let (from, rest) = split_word(rest)?;
    let (held, vouched) = split_word(rest)?;
    if origin.is_empty() {
        return None;
    }
    let from = parse_digits_u64(from)?;
    let held = Mark {
        from,
        to: parse_digits_u64(held)?,
    };
    let vouched = Mark {
        from,
        to: parse_digits_u64(vouched)?,
    };
    Some((origin, held, vouched))
}

/// The first whole record (or handshake message) of `bytes`, each a
/// 2-byte big-endian length and that many bytes, and what follows it;
/// `None` until it is all there.
pub fn split_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = bytes.split_first_chunk::<2>()?;
    let length = usize::from(u16::from_be_bytes(*length));
    (rest.len() >= length).then(|| rest.split_at(length))
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
    frame
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
        // Other lines name none.
        assert_eq!(frame_client_id(b"W Hill 0 1700000000500000000 17"), None);
        assert_eq!(
            frame_client_id(b"U 3 AT Hill +0.000000001 kiwi +1+1 5"),
            Some(&b"kiwi"[..])
        );
        assert_eq!(frame_client_id(b"C 12"), None);
        assert_eq!(frame_client_id(b"L Hill 3 Smith"), None);
    }

    #[test]
    fn watermark_lines_round_trip() {
        let mut frame = Vec::new();
        let held = Mark {
            from: 1_700_000_000_000_000_000,
            to: 1_700_000_000_500_000_000,
        };
        push_mark(&mut frame, b"Hill", held, 1_700_000_000_400_000_000);
        assert_eq!(
            frame,
            b"W Hill 1700000000000000000 1700000000500000000 1700000000400000000\n"
        );
        let vouched = Mark {
            from: held.from,
            to: 1_700_000_000_400_000_000,
        };
        assert_eq!(
            parse_mark(&frame[..frame.len() - 1]),
            Some((&b"Hill"[..], held, vouched))
        );
        for bad in [
            &b"W Hill 1 17"[..],
            b"W Hill 1 17 x",
            b"W  0 1 2",
            b"W Hill 0 -1 2",
            b"W Hill 0 1 2 3",
            b"W Hill 0 99999999999999999999 1",
        ] {
            assert_eq!(parse_mark(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hello_lines() {
        let line = "HERD-HELLO 4 A B 0a1b2c3d";
        let hello = parse_hello(line).unwrap();
        assert_eq!((hello.from, hello.to), ("A", "B"));
        assert_eq!(hello.key_id.to_string(), "0a1b2c3d");
        assert_eq!(hello_line("A", "B", hello.key_id).trim_end(), line);
        assert_eq!(hello_version(line), Some(("4", Some("A"))));
        assert!(parse_hello("HERD-HELLO 4 A B 0a1b2c").is_none());
        assert!(parse_hello("HERD-HELLO 4 A B 0a1b2c3x").is_none());
        assert!(parse_hello(&format!("{line} extra")).is_none());
        assert!(parse_hello("HERD-HELLO 4  B 0a1b2c3d").is_none());
        // A hello of version 2 had a run, nonce and MAC in the clear; one
        // of another version is not ours, but says what it is.
        let two = format!(
            "HERD-HELLO 2 A B 42 {} {}",
            "ab".repeat(16),
            "cd".repeat(32)
        );
        assert!(parse_hello(&two).is_none());
        assert_eq!(hello_version(&two), Some(("2", Some("A"))));
        assert_eq!(
            hello_version(other_version_hello("A", "B").trim_end()),
            Some(("4", Some("A")))
        );
        assert_eq!(hello_version("HERD-HELLO 7"), Some(("7", None)));
        assert_eq!(hello_version("HERD-HELLO A B"), None);
        assert_eq!(hello_version("HERD-PEER 2 A"), None);
    }

    #[test]
    fn records_split_when_whole() {
        assert_eq!(split_record(b"\x00\x02abc"), Some((&b"ab"[..], &b"c"[..])));
        assert_eq!(split_record(b"\x00\x03ab"), None);
        assert_eq!(split_record(b"\x00"), None);
        assert_eq!(split_record(b"\x00\x00"), Some((&b""[..], &b""[..])));
    }

    #[test]
    fn handshake_payloads_round_trip() {
        assert_eq!(
            parse_hello_payload(&hello_payload("A", "B", 42)),
            Some(("A", "B", 42))
        );
        assert_eq!(
            parse_welcome_payload(&welcome_payload(42, 7)),
            Some((42, 7))
        );
        assert_eq!(parse_hello_payload(b"A B"), None);
        assert_eq!(parse_hello_payload(b"A B x"), None);
        assert_eq!(parse_welcome_payload(b"1 2 3"), None);
        assert_eq!(parse_welcome_payload(b"1"), None);
    }

    #[test]
    fn challenge_lines() {
        let nonce = [0xab; 16];
        let line = challenge_line(&nonce);
        assert!(line.starts_with("HERD-CHALLENGE 4 ") && line.ends_with('\n'));
        assert_eq!(
            parse_challenge(line.trim_end()),
            Some(Challenge::Ours {
                nonce: nonce.to_vec()
            })
        );
        assert_eq!(
            parse_challenge(&format!("HERD-CHALLENGE 2 {}", "00".repeat(16))),
            Some(Challenge::Other { version: "2" })
        );
        assert_eq!(
            parse_challenge("HERD-CHALLENGE 12 anything at all"),
            Some(Challenge::Other { version: "12" })
        );
        for bad in [
            "HERD-CHALLENGE",
            "HERD-CHALLENGE 4",
            "HERD-CHALLENGE 4 00",
            "HERD-CHALLENGE x 00",
            "HERD-CHALLENGE -2 00",
            "SSH-2.0-OpenSSH_9.6",
        ] {
            assert_eq!(parse_challenge(bad), None, "{bad}");
        }
        assert_eq!(parse_challenge(&format!("{} extra", line.trim_end())), None);
    }

    #[test]
    fn refusals_round_trip() {
        for refusal in [Refusal::Secret, Refusal::Neighbour] {
            assert_eq!(Refusal::parse(refusal.line().trim_end()), Some(refusal));
        }
        assert_eq!(Refusal::parse("HERD-REFUSED mood"), None);
    }

    proptest::proptest! {
        #[test]
        fn peer_parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_payload_line(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_hello(&text);
            let _ = hello_version(&text);
            let _ = parse_challenge(&text);
            let _ = parse_hello_payload(&bytes);
            let _ = parse_welcome_payload(&bytes);
        }
    }
}

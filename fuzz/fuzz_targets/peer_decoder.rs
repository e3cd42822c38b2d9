//! Fuzz target: the peer protocol decoders (SPEC §6, `herd::peer`).
//!
//! The input is treated as a frame payload as `receive_frames` treats it:
//! split at `\n`, empty lines skipped, each line a payload line
//! (`U <seq> <AT line>` or `C <seq>`). Each line also goes through the
//! handshake parsers (`HERD-HELLO ...`, `HERD-CHALLENGE ...`) and the
//! AT-line checker on its own.
//! Besides "never panics", it checks that whatever is accepted is
//! well-formed and means what its text says. See `fuzz/README.md`.

#![no_main]

use herd::peer::{PayloadLine, parse_hello, parse_payload_line};
use herd::protocol::{Request, is_separator, parse_at_line, parse_request};
use herd::replica::store::{Applied, Source, Store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        check_payload_line(line);
        check_at_line(line);
        match std::str::from_utf8(line) {
            Ok(text) => check_hello(text),
            Err(_) => check_hello(&String::from_utf8_lossy(line)),
        }
    }
    // The whole input as one line too (it may hold `\n`s, which a payload
    // line never does: they must be refused, never stored).
    check_at_line(data);
    let _ = parse_payload_line(data);
});

fn is_sub_slice(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= start + whole.len()
}

fn check_payload_line(line: &[u8]) {
    let Some(parsed) = parse_payload_line(line) else {
        return;
    };
    let (kind, rest) = line.split_at(2);
    let space = rest.iter().position(|&b| b == b' ');
    let seq_text = &rest[..space.unwrap_or(rest.len())];
    let seq_value: Option<u64> = std::str::from_utf8(seq_text)
        .ok()
        .and_then(|s| s.parse().ok());
    match parsed {
        PayloadLine::Complete { seq } => {
            assert_eq!(kind, b"C ");
            // Nothing after the number. (herd also takes one trailing
            // space, `C 12 `, which its sender never writes: harmless.)
            assert!(
                space.is_none_or(|i| i + 1 == rest.len()),
                "C line with more than a number"
            );
            assert_eq!(seq_value, Some(seq));
            // What the sender writes parses back the same.
            let again = format!("C {seq}");
            assert_eq!(
                parse_payload_line(again.as_bytes()),
                Some(PayloadLine::Complete { seq })
            );
        }
        PayloadLine::Update {
            seq,
            at_line,
            client_time,
            location,
        } => {
            assert_eq!(kind, b"U ");
            assert_eq!(seq_value, Some(seq));
            // The AT line is the rest of the input, kept as is.
            assert!(is_sub_slice(line, at_line));
            assert_eq!(at_line, &rest[space.expect("U line has an AT line") + 1..]);
            // Time and location are the AT line's own.
            let at = parse_at_line(at_line).expect("an update's AT line parses");
            assert_eq!((at.client_time, at.location), (client_time, location));
            let mut again = format!("U {seq} ").into_bytes();
            again.extend_from_slice(at_line);
            assert_eq!(
                parse_payload_line(&again),
                Some(PayloadLine::Update {
                    seq,
                    at_line,
                    client_time,
                    location
                })
            );
            // And the store keeps it, and gives it back whole, with the
            // same time and location, under its client id.
            let store = Store::new();
            assert_eq!(
                store.update(at_line, client_time, Source::Neighbour(0)),
                Applied::Stored(1)
            );
            let report = store.get(at.client_id).expect("a stored update is found");
            assert_eq!(&report.at_line[..], at_line);
            assert_eq!(
                (report.client_time, report.location),
                (client_time, location)
            );
        }
    }
}

/// An AT line accepted from a neighbour is one that a client's valid IAMAT
/// could have produced: same client id, location and time.
fn check_at_line(line: &[u8]) {
    let Some(at) = parse_at_line(line) else {
        return;
    };
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    assert_eq!(parts.len(), 6);
    assert_eq!(parts[0], b"AT");
    assert!(is_sub_slice(line, at.server) && at.server == parts[1]);
    assert!(is_sub_slice(line, at.client_id) && at.client_id == parts[3]);
    for field in [at.server, at.client_id] {
        assert!(!field.is_empty());
        assert!(!field.iter().any(|&b| is_separator(b) || b == b'\n'));
    }
    assert!(
        !line.contains(&b'\n'),
        "an AT line holding a newline was accepted"
    );
    assert!((-90.0..=90.0).contains(&at.location.lat));
    assert!((-180.0..=180.0).contains(&at.location.lng));

    let mut iamat = b"IAMAT ".to_vec();
    iamat.extend_from_slice(parts[3]);
    iamat.push(b' ');
    iamat.extend_from_slice(parts[4]);
    iamat.push(b' ');
    iamat.extend_from_slice(parts[5]);
    let Ok(Request::Iamat(client)) = parse_request(&iamat) else {
        panic!("an AT line no IAMAT could produce was accepted: {line:?}");
    };
    assert_eq!(client.client_id, at.client_id);
    assert_eq!(client.location, at.location);
    assert_eq!(client.client_time, at.client_time);
}

fn check_hello(line: &str) {
    let _ = herd::peer::wire::parse_challenge(line);
    if let Some((version, _)) = herd::peer::wire::hello_version(line) {
        assert!(version.bytes().all(|b| b.is_ascii_digit()), "{line:?}");
    }
    let Some(hello) = parse_hello(line) else {
        return;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 5);
    assert_eq!((parts[0], parts[1]), ("HERD-HELLO", herd::peer::PROTOCOL_VERSION));
    assert_eq!((hello.from, hello.to), (parts[2], parts[3]));
    // What the dialler writes (the key id in lowercase hex) parses back to
    // the same hello.
    let again = herd::peer::wire::hello_line(hello.from, hello.to, hello.key_id);
    let back = parse_hello(again.trim_end()).expect("a re-encoded hello parses");
    assert_eq!(back, hello);
    let _ = herd::peer::wire::parse_hello_payload(line.as_bytes());
    let _ = herd::peer::wire::parse_welcome_payload(line.as_bytes());
}

//! One real server process, talked to over TCP like a client (SPEC §2–§5, §8).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::process::ProcessHerd;
use common::{LineClient, eventually, now_text};

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];

fn solo() -> ProcessHerd {
    ProcessHerd::start(SOLO)
}

#[test]
fn iamat_is_answered_with_an_at_line_echoing_the_fields() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let time = now_text();
    let reply = client.request(&format!(
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {time}"
    ));
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(fields.len(), 6, "{reply}");
    assert_eq!(fields[0], "AT");
    assert_eq!(fields[1], "Solo");
    assert_eq!(
        &fields[3..],
        ["kiwi.cs.ucla.edu", "+34.068930-118.445127", time.as_str()]
    );
    // The skew: explicit sign, whole seconds, exactly nine digits; and small,
    // since the client time was just now.
    let skew = fields[2];
    assert!(skew.starts_with('+') || skew.starts_with('-'), "{skew}");
    let (whole, fraction) = skew[1..].split_once('.').expect("a point");
    assert_eq!(fraction.len(), 9, "{skew}");
    assert!(whole.chars().all(|c| c.is_ascii_digit()) && (whole == "0" || !whole.starts_with('0')));
    assert!(whole.parse::<u64>().unwrap() < 5, "{skew}");
}

#[test]
fn odd_bytes_are_echoed_byte_for_byte() {
    let herd = solo();
    let mut client = herd.client("Solo");
    client.send(b"IAMAT \xff\xfecaf\xc3\xa9\x01 +00.000-000.0 0001.10\r\n");
    let reply = client.read_line_bytes();
    assert!(reply.starts_with(b"AT Solo +"), "{reply:?}");
    assert!(
        reply.ends_with(b" \xff\xfecaf\xc3\xa9\x01 +00.000-000.0 0001.10"),
        "{reply:?}"
    );
    // Fields may be separated by any run of SPEC whitespace.
    client.send(b" \t IAMAT\x0bk2\x0c+1+1\t\t5 \r\n");
    assert!(client.read_line().ends_with(" k2 +1+1 5"));
}

#[test]
fn whatsat_answers_with_the_stored_at_line_and_google_shaped_json() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let at = client.iamat("kiwi", "+34.068930-118.445127");
    for bound in [1, 3, 20] {
        client.send_line(&format!("WHATSAT kiwi 10 {bound}"));
        let (answer_at, json) = client.read_answer();
        assert_eq!(answer_at, at);
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(value["status"], "OK", "{json}");
        let results = value["results"].as_array().expect("results");
        assert!(
            !results.is_empty() && results.len() <= bound,
            "{bound}: {}",
            results.len()
        );
        for result in results {
            for key in ["name", "place_id", "vicinity", "types"] {
                assert!(result.get(key).is_some(), "{key} missing in {result}");
            }
            assert!(result["geometry"]["location"]["lat"].is_f64());
        }
        assert!(json.starts_with("{\n   \""), "three-space layout: {json}");
    }
    // The answer ends with exactly one blank line and nothing more.
    client.send(b"WHATSAT kiwi 10 2\n");
    client.finish_sending();
    let rest = client.read_to_end();
    assert!(
        rest.ends_with(b"}\n\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(!rest.windows(3).any(|w| w == b"\n\n\n"));
}

#[test]
fn older_or_equal_reports_are_answered_but_change_nothing() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let newer = client.request("IAMAT kiwi +10+10 1621464827.9");
    let older = client.request("IAMAT kiwi +20+20 1621464827.10");
    let equal = client.request("IAMAT kiwi +30+30 1621464827.900000000");
    assert!(older.ends_with(" kiwi +20+20 1621464827.10"), "{older}");
    assert!(
        equal.ends_with(" kiwi +30+30 1621464827.900000000"),
        "{equal}"
    );
    assert_eq!(client.at_line_of("kiwi").as_deref(), Some(newer.as_str()));
}

#[test]
fn invalid_lines_get_a_question_mark_and_the_connection_stays_usable() {
    let herd = solo();
    let mut client = herd.client("Solo");
    client.iamat("known", "+1+1");
    let invalid: &[&[u8]] = &[
        b"",
        b"   \t ",
        b"iamat kiwi +34-118 1",
        b"IAMAT kiwi +34-118",
        b"IAMAT kiwi +34-118 1 extra",
        b"IAMAT kiwi 34-118 1",
        b"IAMAT kiwi +90.0000000001+0 1",
        b"IAMAT kiwi +34-180.5 1",
        b"IAMAT kiwi +34-118 -1",
        b"IAMAT kiwi +34-118 1e9",
        b"IAMAT kiwi +34-118 1.1234567890",
        b"IAMAT kiwi +inf-118 1",
        b"WHATSAT nobody 10 5",
        b"WHATSAT known 0 5",
        b"WHATSAT known 51 5",
        b"WHATSAT known 50.01 5",
        b"WHATSAT known 10 0",
        b"WHATSAT known 10 21",
        b"WHATSAT known -1 5",
        b"WHATSAT known 1e1 5",
        b"WHATSAT known 10",
        b"AT Hill +0.263873386 kiwi +34-118 1621464827.959498503",
        b"HERD-HELLO Hill Solo 1 00 00",
        b"HERD-PEER Hill",
        b"U 1 AT Hill +0.1 kiwi +34-118 1",
        b"\xff\xfe garbage \x00\x01",
        b"   leading and trailing   ",
    ];
    for line in invalid {
        client.send(line);
        client.send(b"\n");
        let mut expected = b"? ".to_vec();
        expected.extend_from_slice(line);
        assert_eq!(
            client.read_line_bytes(),
            expected,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    // Still usable after all that.
    assert!(client.iamat("known", "+2+2").starts_with("AT Solo "));
    // A peer-looking line changed nothing.
    assert!(client.at_line_of("kiwi").is_none());
}

#[test]
fn a_crlf_ending_is_not_part_of_the_echo() {
    let herd = solo();
    let mut client = herd.client("Solo");
    client.send(b"nonsense\r\n");
    assert_eq!(client.read_line_bytes(), b"? nonsense");
    // A lone \r elsewhere is whitespace inside the line, echoed as is.
    client.send(b"non\rsense\r\r\n");
    assert_eq!(client.read_line_bytes(), b"? non\rsense\r");
}

#[test]
fn pipelined_lines_are_answered_in_order() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let mut batch = String::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        if i % 7 == 3 {
            batch.push_str(&format!("bogus {i}\n"));
            expected.push(format!("? bogus {i}"));
        } else {
            let line = format!("IAMAT c{i} +1+1 {i}.5");
            batch.push_str(&line);
            batch.push('\n');
            expected.push(format!(" c{i} +1+1 {i}.5"));
        }
    }
    client.send(batch.as_bytes());
    for want in expected {
        let got = client.read_line();
        assert!(got.ends_with(&want), "{got:?} should end with {want:?}");
    }
}

#[test]
fn one_byte_per_write_is_framed_the_same() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let line = format!(
        "IAMAT slow +12.5-7.25 {}\r\nWHATSAT nobody 1 1\n",
        now_text()
    );
    for byte in line.as_bytes() {
        client.send(&[*byte]);
    }
    let reply = client.read_line();
    assert!(
        reply.starts_with("AT Solo ") && reply.contains(" slow +12.5-7.25 "),
        "{reply}"
    );
    assert_eq!(client.read_line(), "? WHATSAT nobody 1 1");
}

#[test]
fn eof_answers_the_last_unterminated_line_then_closes() {
    let herd = solo();
    let mut client = herd.client("Solo");
    client.send(b"first\nIAMAT eof +1+1 7");
    client.finish_sending();
    let rest = String::from_utf8(client.read_to_end()).unwrap();
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines.len(), 2, "{rest:?}");
    assert_eq!(lines[0], "? first");
    assert!(
        lines[1].starts_with("AT Solo ") && lines[1].ends_with(" eof +1+1 7"),
        "{rest:?}"
    );
}

#[test]
fn over_long_lines_are_cut_answered_and_skipped() {
    let herd = ProcessHerd::start_with(SOLO, "[limits]\nmax_line_bytes = 64\n");
    let mut client = herd.client("Solo");
    let long = "x".repeat(10_000);
    client.send(format!("{long}\nIAMAT after +1+1 1\n").as_bytes());
    assert_eq!(client.read_line(), format!("? {}", &long[..64]));
    assert!(client.read_line().ends_with(" after +1+1 1"));
    // Exactly the limit is fine, with either line ending.
    let exact = format!("IAMAT {} +1+1 2", "y".repeat(64 - 13));
    assert_eq!(exact.len(), 64);
    client.send(format!("{exact}\r\n").as_bytes());
    assert!(client.read_line().starts_with("AT Solo "));
}

#[test]
fn an_endless_line_does_not_grow_memory() {
    let herd = ProcessHerd::start_with(SOLO, "[limits]\nmax_line_bytes = 1024\n");
    let mut client = herd.client("Solo");
    let chunk = vec![b'z'; 64 * 1024];
    // 64 MiB with no newline; a server buffering it would be noticed below.
    for _ in 0..1024 {
        client.send(&chunk);
    }
    client.send(b"\nIAMAT still +1+1 1\n");
    assert_eq!(client.read_line().len(), 2 + 1024);
    assert!(client.read_line().ends_with(" still +1+1 1"));
    let pid = herd.pid("Solo");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    assert!(
        rss_kb < 48 * 1024,
        "peak RSS {rss_kb} kB after a 64 MiB line"
    );
}

#[test]
fn two_hundred_concurrent_clients_are_all_answered() {
    let herd = solo();
    let address = herd.server("Solo").client;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = LineClient::connect(address);
                for round in 0..5 {
                    let reply = client.request(&format!("IAMAT many{i} +{}+1 {round}", i % 90));
                    assert!(
                        reply.ends_with(&format!(" many{i} +{}+1 {round}", i % 90)),
                        "{reply}"
                    );
                }
                client
                    .at_line_of(&format!("many{i}"))
                    .expect("own report known")
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().expect("client thread").ends_with(" 4"));
    }
}

#[test]
fn sigterm_stops_within_a_second_and_the_ports_are_free_at_once() {
    let mut herd = solo();
    let mut client = herd.client("Solo");
    client.iamat("x", "+1+1");
    let took = herd.terminate("Solo");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The old connection is closed.
    let mut rest = Vec::new();
    let _ = client.stream.read_to_end(&mut rest);
    let started = Instant::now();
    herd.restart("Solo");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut client = herd.client("Solo");
    assert!(client.iamat("y", "+1+1").starts_with("AT Solo "));
}

#[test]
fn every_message_is_logged_with_a_timestamp() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let reply = client.iamat("logged-client", "+1+1");
    client.request("nonsense-line");
    eventually("the log to show the messages", || {
        let log = herd.log("Solo");
        log.contains("received: IAMAT logged-client")
            && log.contains(&format!("sent: {reply}"))
            && log.contains("sent: ? nonsense-line")
    });
    let log = herd.log("Solo");
    let line = log.lines().find(|l| l.contains("logged-client")).unwrap();
    // tracing's default format starts with an RFC 3339 timestamp.
    assert!(
        line.starts_with("20") && line.as_bytes()[4] == b'-' && line.contains('T'),
        "{line}"
    );
}

#[test]
fn a_repeated_places_answer_is_logged_in_full_once_then_by_number() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let at = client.iamat("repeat", "+34.068930-118.445127");
    let mut answers = Vec::new();
    for _ in 0..3 {
        client.send_line("WHATSAT repeat 10 2");
        answers.push(client.read_answer());
    }
    assert!(answers.iter().all(|answer| *answer == answers[0]));
    assert_eq!(answers[0].0, at);
    let first_name = serde_json::from_str::<serde_json::Value>(&answers[0].1).unwrap()["results"]
        [0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the three answers to be logged", || {
        herd.log("Solo")
            .lines()
            .filter(|l| l.contains(&format!("sent: {at}\\n")))
            .count()
            == 3
    });
    let log = herd.log("Solo");
    let sent: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("sent: {at}\\n")))
        .collect();
    // The first carries the whole JSON, escaped onto one line, and a number;
    // the others carry the same number and refer to it.
    assert!(sent[0].contains("places=1 "), "{}", sent[0]);
    assert!(sent[0].contains(&first_name), "{}", sent[0]);
    assert!(
        sent[0].contains(r#"\n   "status" : "OK"\n}\n"#),
        "{}",
        sent[0]
    );
    for line in &sent[1..] {
        assert!(
            line.contains("places=1 ") && line.ends_with(r"\n(places answer 1 as first sent)\n"),
            "{line}"
        );
        assert!(!line.contains(&first_name), "{line}");
    }
}

#[test]
fn a_write_of_everything_at_once_gets_every_reply() {
    let herd = solo();
    let mut stream = std::net::TcpStream::connect(herd.server("Solo").client).unwrap();
    let lines: String = (0..2000)
        .map(|i| format!("IAMAT bulk{i} +1+1 {i}\n"))
        .collect();
    stream.write_all(lines.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = String::new();
    stream.read_to_string(&mut replies).unwrap();
    assert_eq!(replies.lines().count(), 2000);
    assert!(replies.lines().all(|l| l.starts_with("AT Solo ")));
}

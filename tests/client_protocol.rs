//! One server, talked to over TCP like a client (SPEC §2–§5, §8).
//!
//! The server runs in this process; the tests of the log file and of a
//! server's own memory and signals run it as a process of its own
//! (`common::process`), since those are a process's.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herd::places::{NearbyQuery, Places, PlacesError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use common::process::ProcessHerd;
use common::{Herd, LineClient, eventually, now_text, with_clock_held};

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];

fn solo() -> Herd {
    Herd::start(SOLO)
}

/// Nanoseconds since the epoch of a client time or a clock reading.
fn nanos(text: &str) -> i128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = format!("{fraction:0<9}");
    whole.parse::<i128>().unwrap() * 1_000_000_000 + fraction.parse::<i128>().unwrap()
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

#[test]
fn iamat_is_answered_with_an_at_line_echoing_the_fields() {
    let herd = solo();
    let mut client = herd.client("Solo");
    let time = now_text();
    let reply = client.request(&format!(
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {time}"
    ));
    let replied = now_nanos();
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(fields.len(), 6, "{reply}");
    assert_eq!(fields[0], "AT");
    assert_eq!(fields[1], "Solo");
    assert_eq!(
        &fields[3..],
        ["kiwi.cs.ucla.edu", "+34.068930-118.445127", time.as_str()]
    );
    // The skew: explicit sign, whole seconds, exactly nine digits; and no
    // more than the time from the client time (just now) to the reply.
    let skew = fields[2];
    assert!(skew.starts_with('+') || skew.starts_with('-'), "{skew}");
    let (whole, fraction) = skew[1..].split_once('.').expect("a point");
    assert_eq!(fraction.len(), 9, "{skew}");
    assert!(whole.chars().all(|c| c.is_ascii_digit()) && (whole == "0" || !whole.starts_with('0')));
    assert!(
        skew.starts_with('+'),
        "the server got the line after it was made: {skew}"
    );
    assert!(nanos(&skew[1..]) <= replied - nanos(&time), "{skew}");
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
    let herd = Herd::start_with(SOLO, "[limits]\nmax_line_bytes = 64\n");
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
    // A process of its own, whose peak memory is the server's alone.
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
fn sigterm_stops_the_server_and_the_ports_are_free_at_once() {
    let mut herd = ProcessHerd::start(SOLO);
    let mut client = herd.client("Solo");
    client.iamat("x", "+1+1");
    herd.terminate("Solo");
    // The old connection is closed.
    let mut rest = Vec::new();
    let _ = client.stream.read_to_end(&mut rest);
    // A server that cannot bind its ports exits at once, and `restart`
    // says so.
    herd.restart("Solo");
    let mut client = herd.client("Solo");
    assert!(client.iamat("y", "+1+1").starts_with("AT Solo "));
}

/// Answers WHATSATs for 1 km after 300 ms (of tokio's clock) and never any
/// other; counts the queries asked.
#[derive(Default)]
struct SlowPlaces {
    asked: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Places for SlowPlaces {
    async fn nearby(&self, query: &NearbyQuery) -> Result<serde_json::Value, PlacesError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if query.radius_m_text != "1000" {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(serde_json::json!({ "html_attributions": [], "results": [], "status": "ZERO_RESULTS" }))
    }
}

#[tokio::test(start_paused = true)]
async fn stopping_finishes_the_replies_in_flight_and_takes_under_a_second() {
    // SPEC §8 on tokio's paused clock: a stopped server finishes the
    // replies it has begun, and does not wait more than a second for one
    // that cannot finish.
    let places = Arc::new(SlowPlaces::default());
    let (setup, mut ports) = common::setup(SOLO, "Solo", Some(places.clone()));
    let (client, peer) = ports.pop().unwrap();
    let address = client.address();
    let client = tokio::net::TcpListener::from_std(client.listen()).unwrap();
    let peer = tokio::net::TcpListener::from_std(peer.listen()).unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(herd::server::run(setup, client, peer, shutdown.clone()));

    let connect = || async {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        tokio::io::BufReader::new(stream)
    };
    let (mut quick, mut hung) = with_clock_held("two WHATSATs to reach the provider", async {
        let mut quick = connect().await;
        quick
            .get_mut()
            .write_all(format!("IAMAT kiwi +1+1 {}\n", now_text()).as_bytes())
            .await
            .unwrap();
        let mut at = String::new();
        quick.read_line(&mut at).await.unwrap();
        assert!(at.starts_with("AT Solo "), "{at}");
        let mut hung = connect().await;
        quick
            .get_mut()
            .write_all(b"WHATSAT kiwi 1 5\n")
            .await
            .unwrap();
        hung.get_mut()
            .write_all(b"WHATSAT kiwi 2 5\n")
            .await
            .unwrap();
        while places.asked.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        (quick, hung)
    })
    .await;

    let stopped = tokio::time::Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("the server stopped within a second")
        .unwrap()
        .unwrap();
    assert!(stopped.elapsed() >= Duration::from_millis(300));
    // The reply that could finish did, and the connection was closed.
    let mut rest = String::new();
    quick.read_to_string(&mut rest).await.unwrap();
    assert!(rest.starts_with("AT Solo "), "{rest:?}");
    assert!(
        rest.ends_with("\"status\" : \"ZERO_RESULTS\"\n}\n\n"),
        "{rest:?}"
    );
    // The one that could not has had nothing.
    let mut byte = [0u8; 1];
    let nothing = tokio::time::timeout(Duration::ZERO, hung.read(&mut byte)).await;
    assert!(nothing.is_err(), "{nothing:?}");
}

#[test]
fn every_message_is_logged_with_a_timestamp() {
    // The log file is the process's, set up by `main.rs`.
    let herd = ProcessHerd::start(SOLO);
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
    // The log file is the process's, set up by `main.rs`.
    let mut herd = ProcessHerd::start(SOLO);
    let at = herd.client("Solo").iamat("repeat", "+34.068930-118.445127");
    let ask_three_times = |herd: &ProcessHerd| {
        let mut client = herd.client("Solo");
        let answers: Vec<(String, String)> = (0..3)
            .map(|_| {
                client.send_line("WHATSAT repeat 10 2");
                client.read_answer()
            })
            .collect();
        assert!(answers.iter().all(|answer| *answer == answers[0]));
        assert_eq!(answers[0].0, at);
        answers
    };
    let answers = ask_three_times(&herd);
    let first_name = serde_json::from_str::<serde_json::Value>(&answers[0].1).unwrap()["results"]
        [0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent_lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(&format!("sent: {at}\\n")))
            .map(str::to_owned)
            .collect()
    };
    eventually("the three answers to be logged", || {
        sent_lines(&herd.log("Solo")).len() == 3
    });
    // A second run of the server numbers its answers from 1 again, in the
    // same log file.
    herd.terminate("Solo");
    herd.restart("Solo");
    ask_three_times(&herd);
    eventually("the second run's answers to be logged", || {
        sent_lines(&herd.log("Solo")).len() == 6
    });
    let log = herd.log("Solo");
    let runs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" listening"))
        .map(|l| {
            let run = l
                .split(" run=")
                .nth(1)
                .expect("the listening line names its run");
            run.split(' ').next().unwrap()
        })
        .collect();
    assert_eq!(runs.len(), 2, "{log}");
    assert_ne!(runs[0], runs[1]);
    let sent = sent_lines(&log);
    for (run, sent) in runs.iter().zip(sent.chunks(3)) {
        // The first carries the whole JSON, escaped onto one line, with its
        // number and run; the others refer to it by both.
        let name = format!("places=1 run={run} ");
        assert!(sent[0].contains(&name), "{}", sent[0]);
        assert!(sent[0].contains(&first_name), "{}", sent[0]);
        assert!(
            sent[0].contains(r#"\n   "status" : "OK"\n}\n"#),
            "{}",
            sent[0]
        );
        for line in &sent[1..] {
            assert!(
                line.contains(&name)
                    && line.ends_with(&format!(
                        r"\n(places answer 1 of run {run} as first sent)\n"
                    )),
                "{line}"
            );
            assert!(!line.contains(&first_name), "{line}");
        }
    }
    // Each reference names exactly one answer written in full in the file.
    for reference in sent.iter().filter(|l| l.contains("as first sent")) {
        let (_, tail) = reference.rsplit_once("(places answer ").unwrap();
        let (number, rest) = tail.split_once(" of run ").unwrap();
        let run = rest.split(' ').next().unwrap();
        let full = sent
            .iter()
            .filter(|l| {
                l.contains(&format!("places={number} run={run} ")) && !l.contains("as first sent")
            })
            .count();
        assert_eq!(full, 1, "{reference}");
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

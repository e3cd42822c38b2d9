//! Hostile clients: many connections, slow writers, non-readers and noise,
//! each while an honest client keeps getting answers and the server's
//! memory stays bounded.
//!
//! The tests that measure the server's memory run it as a process of its
//! own (`common::process`), whose memory is the server's alone; the others
//! run it in the test's own process.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::ProcessHerd;
use common::{Herd, LineClient, PATIENCE, eventually, now_text};
use socket2::{Domain, Socket, Type};

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];

/// A client connected from 127.0.0.2, so that limits on 127.0.0.1 (where
/// the attacker is) do not apply to it.
fn honest_client(server: SocketAddr) -> LineClient {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    LineClient::from_stream(stream)
}

/// A few IAMAT round trips, each answered while the attack goes on (a
/// server busy with the attacker would leave them unanswered until the
/// client's read timeout).
#[track_caller]
fn honest_round_trips(client: &mut LineClient) {
    for _ in 0..5 {
        let reply = client.iamat("honest", "+1+1");
        assert!(reply.starts_with("AT Solo "), "{reply}");
    }
}

fn resident_kb(herd: &ProcessHerd) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", herd.pid("Solo"))).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn ten_thousand_connections_from_one_address_leave_room_for_others() {
    let herd = ProcessHerd::start_with(SOLO, "[limits]\nmax_connections_per_ip = 500\n");
    let address = herd.server("Solo").client;
    let mut honest = honest_client(address);
    let mut flood = Vec::new();
    for _ in 0..10_000 {
        match TcpStream::connect(address) {
            Ok(stream) => flood.push(stream),
            Err(error) => panic!("connect failed after {}: {error}", flood.len()),
        }
    }
    honest_round_trips(&mut honest);
    // Past the per-address limit, connections are closed at once.
    for stream in &flood {
        stream.set_nonblocking(true).unwrap();
    }
    let count_closed = |flood: &[TcpStream]| {
        flood
            .iter()
            .filter(|stream| {
                let mut byte = [0u8; 1];
                let mut reader: &TcpStream = stream;
                match reader.read(&mut byte) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(error) => error.kind() != ErrorKind::WouldBlock,
                }
            })
            .count()
    };
    common::eventually("the connections past the limit to be closed", || {
        count_closed(&flood) >= 10_000 - 500
    });
    assert!(resident_kb(&herd) < 150 * 1024, "{} kB", resident_kb(&herd));
    honest_round_trips(&mut honest);
}

#[test]
fn a_client_that_never_reads_cannot_grow_memory() {
    let herd = ProcessHerd::start_with(SOLO, "[limits]\nidle_timeout_secs = 3\n");
    let address = herd.server("Solo").client;
    let mut honest = honest_client(address);
    honest.iamat("target", "+34.068930-118.445127");
    let before = resident_kb(&herd);
    let mut greedy = TcpStream::connect(address).unwrap();
    greedy
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Thousands of WHATSATs with big answers, never reading one.
    let request = "WHATSAT target 50 20\n".repeat(1000);
    let mut sent = 0;
    for _ in 0..50 {
        match greedy.write_all(request.as_bytes()) {
            Ok(()) => sent += 1000,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break;
            }
            Err(error) => panic!("{error}"),
        }
    }
    assert!(sent >= 1000, "sent {sent}");
    honest_round_trips(&mut honest);
    let grown = resident_kb(&herd).saturating_sub(before);
    assert!(grown < 32 * 1024, "grew {grown} kB for a non-reader");
    // Keep asking without ever reading: once the server's replies have
    // waited the idle timeout, it gives up and resets the connection, which
    // a write then reports.
    let started = Instant::now();
    eventually(
        "the server to give up on the client that never reads",
        || {
            let gave_up = matches!(
                greedy.write_all(b"WHATSAT target 50 20\n"),
                Err(error) if matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
            );
            honest.iamat("honest", "+1+1");
            gave_up
        },
    );
    let gave_up = started.elapsed();
    assert!(
        gave_up >= Duration::from_secs(1),
        "gave up after {gave_up:?}"
    );
    assert!(resident_kb(&herd).saturating_sub(before) < 32 * 1024);
    honest_round_trips(&mut honest);
}

#[test]
fn a_slowloris_is_cut_off_at_the_idle_timeout() {
    let herd = Herd::start_with(SOLO, "[limits]\nidle_timeout_secs = 2\n");
    let address = herd.server("Solo").client;
    let mut honest = honest_client(address);
    // Meanwhile, a connection that keeps completing lines is not idle, for
    // all that it lasts longer than the timeout.
    let busy = std::thread::spawn(move || {
        let mut busy = TcpStream::connect(address).unwrap();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100)); // its pace: 3 s in all
            busy.write_all(format!("IAMAT busy +1+1 {}\n", now_text()).as_bytes())
                .expect("an active client is kept");
        }
    });
    let mut slow = TcpStream::connect(address).unwrap();
    let started = Instant::now();
    // One byte at a time, never a whole line: cut off after 2 s even
    // though bytes keep coming.
    let cut = loop {
        std::thread::sleep(Duration::from_millis(100)); // the slow writer's pace
        if slow.write_all(b"I").is_err() {
            break started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "never cut off");
        honest_round_trips(&mut honest);
    };
    assert!(cut >= Duration::from_secs(2), "cut after {cut:?}");
    busy.join().expect("the busy client was kept");
}

#[test]
fn random_bytes_get_answers_and_do_no_harm() {
    let herd = Herd::start(SOLO);
    let address = herd.server("Solo").client;
    let mut honest = honest_client(address);
    let mut noise = TcpStream::connect(address).unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut bytes = vec![0u8; 1 << 20];
    for byte in &mut bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    noise.write_all(&bytes).unwrap();
    noise.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = Vec::new();
    noise
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    noise.read_to_end(&mut replies).unwrap();
    // One `?` reply per line, plus the unterminated tail.
    let answered = replies
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"? "))
        .count();
    assert!(
        answered == lines || answered == lines + 1,
        "{answered} for {lines} lines"
    );
    honest_round_trips(&mut honest);
}

/// The size of the files under `dir`, in bytes.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// One connection reports three million client ids never seen before, as fast
/// as it can, against a ceiling of 10,000 clients: the first take the
/// room left, every later one is answered `?` with its line, the honest
/// client keeps its answers throughout, and the server's memory and data
/// folder stay within what 10,000 clients need.
#[test]
fn three_million_invented_client_ids_stop_at_the_ceiling() {
    const IDS: usize = 3_000_000;
    const CEILING: usize = 10_000;
    let herd = ProcessHerd::start_with(
        SOLO,
        &format!(
            "[limits]\nmax_clients = {CEILING}\n\
             [logging]\nmax_file_mb = 16\nkeep_files = 1\n"
        ),
    );
    let address = herd.server("Solo").client;
    let mut honest = honest_client(address);
    honest_round_trips(&mut honest);
    let before = resident_kb(&herd);
    let attacker = TcpStream::connect(address).unwrap();
    let mut writer = attacker.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let time = now_text();
        let mut batch = String::new();
        for id in 0..IDS {
            batch.push_str(&format!("IAMAT x{id} +1+1 {time}\n"));
            if batch.len() > 64 * 1024 {
                writer.write_all(batch.as_bytes()).unwrap();
                batch.clear();
            }
        }
        writer.write_all(batch.as_bytes()).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let reading = std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(attacker);
        let (mut stored, mut refused, mut line) = (0usize, 0usize, String::new());
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0 {
            if line.starts_with("AT Solo ") {
                stored += 1;
            } else if line.starts_with("? IAMAT x") {
                refused += 1;
            } else {
                panic!("unexpected reply {line:?}");
            }
            line.clear();
        }
        (stored, refused)
    });
    // The honest client is answered while the attack goes on; once the
    // store is full a newcomer is told so, line and all.
    let mut honest_reports = 5;
    while !reading.is_finished() {
        honest_round_trips(&mut honest);
        honest_reports += 5;
    }
    sending.join().unwrap();
    let (stored, refused) = reading.join().unwrap();
    assert_eq!(stored, CEILING - 1, "the room the honest client left");
    assert_eq!(refused, IDS - stored);
    let newcomer = format!("IAMAT newcomer +1+1 {}", now_text());
    assert_eq!(honest.request(&newcomer), format!("? {newcomer}"));
    honest_round_trips(&mut honest);
    honest_reports += 5;
    // Bounds: 10,000 clients take a few MiB of memory (three million held
    // would take several hundred MiB); the rest of the growth allowed is the
    // server's own buffers.
    let grown = resident_kb(&herd).saturating_sub(before);
    assert!(grown < 48 * 1024, "memory grew {grown} kB");
    let folder = herd.log_dir().join("data").join("Solo");
    let data = disk_bytes(&folder);
    let files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| (entry.file_name(), entry.metadata().map(|m| m.len())))
        .collect();
    // The log holds the reports stored (each under 128 bytes) and a few
    // bookkeeping records: nothing of the ids refused.
    let bound = (stored + honest_reports) as u64 * 128 + 64 * 1024;
    assert!(
        data < bound,
        "data folder of {data} bytes > {bound}: {files:?}"
    );
}

//! A server's message log is rotated by size and only the newest files are
//! kept (`[logging] max_file_mb`, `keep_files`), with no line lost or torn
//! on the way: a real `herd serve` process, whose log writer `main.rs`
//! wires, under a stream of IAMATs.

mod common;

use std::io::Write;

use common::process::ProcessHerd;
use common::{LineClient, now_text};

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];
/// Enough IAMATs for about nine megabytes of log: nine rotations.
const REPORTS: usize = 12_000;

/// The client id of report `i`: long, so that the log grows fast.
fn client_id(i: usize) -> String {
    format!("c{i:06}-{}", "x".repeat(300))
}

#[test]
fn a_log_past_its_size_is_rotated_and_only_the_newest_files_are_kept() {
    let mut herd = ProcessHerd::start_with(SOLO, "[logging]\nmax_file_mb = 1\nkeep_files = 2\n");
    let mut client = herd.client("Solo");
    let mut writer = client.stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut batch = String::new();
        for i in 0..REPORTS {
            batch.push_str(&format!("IAMAT {} +1+1 {}\n", client_id(i), now_text()));
            if batch.len() > 64 * 1024 {
                writer.write_all(batch.as_bytes()).unwrap();
                batch.clear();
            }
        }
        writer.write_all(batch.as_bytes()).unwrap();
    });
    for _ in 0..REPORTS {
        let reply = client.read_line();
        assert!(reply.starts_with("AT Solo "), "{reply}");
    }
    sending.join().unwrap();
    drop(client);
    // A clean stop writes out everything logged.
    herd.terminate("Solo");

    let current = herd.dir.path().join("logs").join("Solo.log");
    let mut files = herd::log::rotated_files(&current).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    files.push(current);
    // Every file within the limit, of whole lines; the IAMATs logged in
    // them a run that ends with the last, each received and answered.
    let mut numbers = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.len() <= 1 << 20, "{file:?}: {} bytes", text.len());
        assert!(text.is_empty() || text.ends_with('\n'), "{file:?}");
        for line in text.lines() {
            assert!(
                line.starts_with("20") && line.as_bytes()[10] == b'T',
                "{file:?}: {line}"
            );
            let Some((id, number)) = line.split(' ').find_map(|field| {
                let number = field.strip_prefix('c')?.get(..6)?.parse::<usize>().ok()?;
                Some((field, number))
            }) else {
                continue;
            };
            assert_eq!(id, client_id(number), "torn: {line}");
            numbers.push(number);
        }
    }
    assert!(numbers.len() > 1000, "{} lines kept", numbers.len());
    // Received, then sent: each number twice in a row, but the very first,
    // whose received line may have gone with an older file.
    let first = usize::from(numbers[0] != numbers[1]);
    for (pair, number) in numbers[first..].chunks(2).zip(numbers[first]..) {
        assert_eq!(pair, [number, number], "lost or out of order");
    }
    assert_eq!(*numbers.last().unwrap(), REPORTS - 1);
}

#[test]
fn a_log_with_rotation_off_is_never_rotated() {
    let mut herd = ProcessHerd::start_with(SOLO, "[logging]\nmax_file_mb = 0\n");
    let mut client: LineClient = herd.client("Solo");
    for i in 0..4000 {
        client.send_line(&format!("IAMAT {} +1+1 {}", client_id(i), now_text()));
        client.read_line();
    }
    drop(client);
    herd.terminate("Solo");
    let current = herd.dir.path().join("logs").join("Solo.log");
    assert!(std::fs::metadata(&current).unwrap().len() > 1 << 20);
    assert!(herd::log::rotated_files(&current).unwrap().is_empty());
}

//! The store on disk: restarts lose nothing acknowledged, catch-up after a
//! restart costs what was missed, and damaged files are survived.
//!
//! The servers are processes (`common::process`): what is tested is what
//! survives SIGKILL, which ends a process with no chance to close its files,
//! and the log file `main.rs` writes.

mod common;

use common::eventually;
use common::process::ProcessHerd;

const ALL: &[&str] = &["Hill", "Jaquez", "Smith", "Campbell", "Singleton"];

#[test]
fn a_full_herd_sigkill_loses_nothing_acknowledged() {
    let mut herd = ProcessHerd::start_default();
    let mut acknowledged = Vec::new();
    for (i, name) in ALL.iter().cycle().take(100).enumerate() {
        let mut client = herd.client(name);
        let id = format!("d{}", i % 40);
        acknowledged.push((id.clone(), client.iamat(&id, "+7+7")));
    }
    // Kill every server at once, the moment the last reply arrived.
    herd.stop_all();
    for name in ALL {
        herd.restart(name);
    }
    herd.await_newest(ALL, &acknowledged);
}

#[test]
fn a_lone_server_keeps_its_store_across_sigkill() {
    let mut herd = ProcessHerd::start(&[("Solo", &[])]);
    let at = herd.client("Solo").iamat("kept", "+1+1");
    herd.kill("Solo");
    herd.restart("Solo");
    assert_eq!(
        herd.client("Solo").at_line_of("kept").as_deref(),
        Some(at.as_str())
    );
}

#[test]
fn catching_up_after_a_restart_sends_only_what_was_missed() {
    let mut herd = ProcessHerd::start_default();
    for i in 0..300 {
        herd.client("Hill").iamat(&format!("bulk{i}"), "+1+1");
    }
    let last = herd.client("Hill").iamat("bulk-last", "+1+1");
    herd.await_everywhere(ALL, "bulk-last", &last);
    // Let both of Campbell's incoming links drain, so its cursors cover
    // the bulk: reports made at each neighbour after it has arrived over
    // that neighbour's link. A link's frames are handled one after another
    // and a frame's cursor is written before the next frame is read, so
    // once the second fence is logged the first fence's cursor is on disk;
    // only the second fence may be sent again.
    for round in 0..2 {
        let fence_smith = herd
            .client("Smith")
            .iamat(&format!("fence-smith{round}"), "+1+1");
        let fence_singleton = herd
            .client("Singleton")
            .iamat(&format!("fence-singleton{round}"), "+1+1");
        eventually("the fences to reach Campbell over both links", || {
            let log = herd.log("Campbell");
            log.contains(&format!("received from Smith: {fence_smith}"))
                && log.contains(&format!("received from Singleton: {fence_singleton}"))
        });
    }
    herd.kill("Campbell");
    let missed: Vec<String> = (0..3)
        .map(|i| herd.client("Hill").iamat(&format!("missed{i}"), "+2+2"))
        .collect();
    herd.await_everywhere(&["Smith", "Singleton"], "missed2", &missed[2]);
    let sent = |herd: &ProcessHerd, name: &str| -> Vec<String> {
        herd.log(name)
            .lines()
            .filter(|line| line.contains("sent to Campbell:"))
            .map(str::to_owned)
            .collect()
    };
    let (smith_before, singleton_before) =
        (sent(&herd, "Smith").len(), sent(&herd, "Singleton").len());
    herd.restart("Campbell");
    for (i, at) in missed.iter().enumerate() {
        herd.await_everywhere(&["Campbell"], &format!("missed{i}"), at);
    }
    // Campbell kept its store and its cursors: each neighbour sent it what
    // it missed and the fences that may have followed its own first one
    // over that link, never the 300 it had. (What a neighbour wrote into
    // Campbell's dead socket before it noticed, or logged late, may fall
    // after the count taken above: those are missed reports too.)
    for (name, before) in [("Smith", smith_before), ("Singleton", singleton_before)] {
        let lines = sent(&herd, name);
        let again: Vec<&String> = lines[before..]
            .iter()
            .filter(|l| l.contains(" bulk"))
            .collect();
        assert!(
            again.is_empty(),
            "{name} sent Campbell what it had: {again:?}"
        );
        eprintln!(
            "{name} sent Campbell {} updates after its restart",
            lines.len() - before
        );
    }
    assert!(herd.client("Campbell").at_line_of("bulk7").is_some());
}

fn segments(herd: &ProcessHerd, name: &str) -> Vec<std::path::PathBuf> {
    let dir = herd.log_dir().join("data").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "herd"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_truncated_log_is_recovered_and_the_rest_caught_up() {
    let mut herd = ProcessHerd::start_default();
    let ats: Vec<String> = (0..20)
        .map(|i| herd.client("Campbell").iamat(&format!("t{i}"), "+3+3"))
        .collect();
    herd.await_everywhere(ALL, "t19", &ats[19]);
    herd.kill("Campbell");
    // Cut Campbell's newest log in the middle of the record two thirds of
    // the way in (records: u32 length, u32 CRC, payload, after a 9-byte
    // header), so that the damage is a torn record wherever the records
    // happen to fall.
    let newest = segments(&herd, "Campbell").pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    let mut start = 9;
    loop {
        let length = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
        let end = start + 8 + length;
        if end >= bytes.len() * 2 / 3 {
            break;
        }
        start = end;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(start as u64 + 6)
        .unwrap();
    herd.restart("Campbell");
    for (i, at) in ats.iter().enumerate() {
        herd.await_everywhere(&["Campbell"], &format!("t{i}"), at);
    }
    eventually("the damage to be logged", || {
        herd.log("Campbell").contains("torn or corrupt record")
    });
}

#[test]
fn a_garbled_log_is_survived() {
    let mut herd = ProcessHerd::start_default();
    let ats: Vec<String> = (0..20)
        .map(|i| herd.client("Smith").iamat(&format!("g{i}"), "+3+3"))
        .collect();
    herd.await_everywhere(ALL, "g19", &ats[19]);
    herd.kill("Smith");
    for file in segments(&herd, "Smith") {
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        let end = (middle + 16).min(bytes.len());
        for byte in &mut bytes[middle..end] {
            *byte ^= 0x5a;
        }
        std::fs::write(&file, bytes).unwrap();
    }
    herd.restart("Smith");
    for (i, at) in ats.iter().enumerate() {
        herd.await_everywhere(&["Smith"], &format!("g{i}"), at);
    }
}

#[test]
fn a_foreign_file_in_the_data_folder_is_a_clear_error() {
    let mut herd = ProcessHerd::start(&[("Solo", &[])]);
    herd.kill("Solo");
    let dir = herd.log_dir().join("data").join("Solo");
    // The server may not have made its folder yet: it listens first.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("log-999999.herd"), "not a log").unwrap();
    let output = herd.command("Solo").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("log-999999.herd is not a herd log"),
        "{stderr}"
    );
}

//! The core database: every report a server accepts from its own clients
//! is archived once, whatever happens to the server or the database, and
//! `herd history` answers from it.

mod common;

use std::path::Path;
use std::process::Command;

use common::process::ProcessHerd;
use common::{Herd, eventually, herd_binary};

/// Every archived report of `server`: (client id, client time).
fn archived(database: &Path, server: &str) -> Vec<(String, String)> {
    let Ok(connection) = rusqlite::Connection::open(database) else {
        return Vec::new();
    };
    let Ok(mut statement) = connection.prepare(
        "SELECT CAST(client_id AS TEXT), client_time FROM reports WHERE server = ?1 ORDER BY id",
    ) else {
        return Vec::new();
    };
    statement
        .query_map([server], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(|rows| rows.collect())
        .unwrap_or_default()
}

/// (client id, client time) of an AT reply.
fn sent(reply: &str) -> (String, String) {
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(fields.len(), 6, "not an AT line: {reply:?}");
    (fields[3].to_owned(), fields[5].to_owned())
}

/// Waits until `server`'s archive holds exactly `expected`, in any order,
/// and checks that nothing in it is there twice.
#[track_caller]
fn await_archive(database: &Path, server: &str, expected: &[(String, String)]) {
    let mut want = expected.to_vec();
    want.sort();
    let mut got = Vec::new();
    eventually(
        &format!("{server}'s {} reports archived", want.len()),
        || {
            got = archived(database, server);
            got.len() >= want.len()
        },
    );
    got.sort();
    assert_eq!(got, want, "every report once, none twice, none lost");
}

const TWO: &[(&str, &[&str])] = &[("Hill", &["Smith"]), ("Smith", &[])];

#[test]
fn a_sigkill_mid_archive_and_a_restart_lose_nothing_and_write_nothing_twice() {
    let mut herd = ProcessHerd::start_with(TWO, "[history]\nbatch_size = 3\ninterval_ms = 5\n");
    let database = herd.dir.path().join("data/history.sqlite");
    let mut hill = Vec::new();
    let mut smith = Vec::new();
    {
        let (mut to_hill, mut to_smith) = (herd.client("Hill"), herd.client("Smith"));
        for i in 0..300 {
            // Clients report again and again: superseded reports are
            // history too.
            hill.push(sent(&to_hill.iamat(&format!("h{}", i % 7), "+10+10")));
            if i % 5 == 0 {
                smith.push(sent(&to_smith.iamat(&format!("s{}", i % 3), "+20+20")));
            }
        }
    }
    eventually("Hill's archive to start", || {
        !archived(&database, "Hill").is_empty()
    });
    herd.kill("Hill");
    let at_kill = archived(&database, "Hill").len();
    herd.restart("Hill");
    let mut to_hill = herd.client("Hill");
    for i in 0..30 {
        hill.push(sent(&to_hill.iamat(&format!("h{}", i % 7), "+10+10")));
    }
    await_archive(&database, "Hill", &hill);
    // Smith archives its own clients' reports; Hill never archives them.
    await_archive(&database, "Smith", &smith);
    eprintln!("Hill had archived {at_kill} of 300 reports when killed");
}

#[test]
fn replies_flow_while_the_database_is_locked_and_the_archive_catches_up() {
    let mut herd = Herd::start_with(
        &[("Hill", &[])],
        "[history]\nbatch_size = 50\ninterval_ms = 5\n",
    );
    let database = herd.dir.path().join("data/history.sqlite");
    let mut client = herd.client("Hill");
    let mut reports = vec![sent(&client.iamat("first", "+1+1"))];
    await_archive(&database, "Hill", &reports);

    // Another writer holds the database: the archiver cannot write.
    let locker = rusqlite::Connection::open(&database).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..500 {
        let reply = client.iamat(&format!("c{}", i % 50), "+2+2");
        assert!(reply.starts_with("AT Hill "), "{reply}");
        reports.push(sent(&reply));
    }
    let held: i64 = locker
        .query_row("SELECT COUNT(*) FROM reports", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        held, 1,
        "nothing was archived while the database was locked"
    );
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    await_archive(&database, "Hill", &reports);

    // And after a restart, nothing is archived again.
    herd.stop("Hill");
    herd.restart("Hill");
    let mut client = herd.client("Hill");
    reports.push(sent(&client.iamat("last", "+3+3")));
    await_archive(&database, "Hill", &reports);
}

fn history(config: &Path, arguments: &[&str]) -> String {
    let output = Command::new(herd_binary())
        .arg("history")
        .args(arguments)
        .arg("--config")
        .arg(config)
        .output()
        .expect("running herd history");
    assert!(
        output.status.success(),
        "herd history {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(text).unwrap()
}

#[test]
fn history_and_near_answer_from_the_reports_sent_and_forget_erases_a_client() {
    let herd = Herd::start_with(TWO, "[history]\ninterval_ms = 5\n");
    let database = herd.dir.path().join("data/history.sqlite");
    let (mut hill, mut smith) = (herd.client("Hill"), herd.client("Smith"));
    let kiwi: Vec<String> = (1..=4)
        .map(|i| {
            let line = format!("IAMAT kiwi +34.068930-118.445127 {i}00.5");
            let client = if i % 2 == 0 { &mut hill } else { &mut smith };
            client.request(&line)
        })
        .collect();
    // UCLA and Westwood are within 5 km of each other; downtown is not.
    let westwood = hill.request("IAMAT pear +34.056120-118.430630 250");
    hill.request("IAMAT plum +34.052200-118.243700 250");
    eventually("all six archived", || {
        archived(&database, "Hill").len() + archived(&database, "Smith").len() == 6
    });
    let config = &herd.config_path;

    let all = json(&history(config, &["kiwi", "--json"]));
    let times: Vec<&str> = all
        .iter()
        .map(|r| r["client_time"].as_str().unwrap())
        .collect();
    assert_eq!(times, ["400.5", "300.5", "200.5", "100.5"], "newest first");
    for report in &all {
        let time = report["client_time"].as_str().unwrap();
        let reply = kiwi.iter().find(|at| at.ends_with(time)).unwrap();
        let fields: Vec<&str> = reply.split(' ').collect();
        assert_eq!(report["server"], fields[1], "the receiving server");
        assert_eq!(report["skew"], fields[2]);
        assert_eq!(report["location"], "+34.068930-118.445127");
    }
    let window = json(&history(
        config,
        &["kiwi", "--since", "200", "--until", "300.5", "--json"],
    ));
    assert_eq!(window.len(), 2);
    assert_eq!(
        json(&history(config, &["kiwi", "--limit", "1", "--json"])).len(),
        1
    );
    let text = history(config, &["kiwi", "--limit", "1"]);
    assert!(
        text.starts_with("400.5  kiwi  +34.068930-118.445127  Hill  skew "),
        "{text}"
    );

    let near = json(&history(
        config,
        &[
            "--near",
            "34.07,-118.44",
            "--radius",
            "5",
            "--since",
            "200",
            "--json",
        ],
    ));
    let clients: Vec<&str> = near
        .iter()
        .map(|r| r["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(clients, ["kiwi", "kiwi", "pear", "kiwi"], "{near:?}");
    assert!(westwood.contains(" pear "));

    let forgot = history(config, &["--forget", "kiwi"]);
    assert!(forgot.contains("4 reports deleted"), "{forgot}");
    assert!(json(&history(config, &["kiwi", "--json"])).is_empty());
    assert_eq!(json(&history(config, &["pear", "--json"])).len(), 1);
}

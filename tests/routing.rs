//! Routing around failure: with any one server of the default herd dead,
//! a report made at any live server reaches every other live server. How
//! fast is measured by the load tool (BENCHMARKS.md); here, that it arrives
//! while the server stays dead, and that the server catches up once back.
//! Separate processes: a server dies by SIGKILL, and the per-message log
//! lines are each process's own.

mod common;

use common::process::ProcessHerd as Herd;

#[test]
fn with_any_one_server_dead_every_report_reaches_every_live_server() {
    let mut herd = Herd::start_default();
    let names: Vec<String> = herd.servers.iter().map(|s| s.name.clone()).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let at = herd.client("Hill").iamat("warm", "+1+1");
    herd.await_everywhere(&all, "warm", &at);
    for dead in &all {
        herd.kill(dead);
        let live: Vec<&str> = all.iter().copied().filter(|n| n != dead).collect();
        let mut made = Vec::new();
        for origin in &live {
            let client = format!("without-{dead}-from-{origin}");
            let at = herd.client(origin).iamat(&client, "+2+2");
            herd.await_everywhere(&live, &client, &at);
            made.push((client, at));
        }
        herd.restart(dead);
        for (client, at) in &made {
            herd.await_everywhere(&[dead], client, at);
        }
    }
}

/// A server says at shutdown what it did: in a healthy herd, a report made
/// at Hill goes as a payload to its two children in Hill's tree, with
/// watermarks, and only watermarks go over the links outside the tree.
#[test]
fn a_stopping_server_logs_its_counts() {
    let mut herd = Herd::start_default();
    let names: Vec<String> = herd.servers.iter().map(|s| s.name.clone()).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    // Once every server routes over all six links, Hill's tree is settled
    // everywhere (routes are worked out when a link sends next).
    let at = herd.client("Hill").iamat("warm", "+1+1");
    herd.await_everywhere(&all, "warm", &at);
    for name in &all {
        common::eventually("every server to know all six links", || {
            herd.log(name)
                .contains("routes worked out again: 6 links of the herd up")
        });
    }
    let at = herd.client("Hill").iamat("counted", "+1+1");
    herd.await_everywhere(&all, "counted", &at);
    for name in &all {
        herd.terminate(name);
    }
    let stopped = |name: &str| {
        let log = herd.log(name);
        log.lines()
            .find(|line| line.contains("stopped"))
            .unwrap_or_else(|| panic!("{name} logged no counts:\n{log}"))
            .to_owned()
    };
    let field = |line: &str, key: &str| -> u64 {
        let start = line
            .find(&format!("{key}="))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        line[start + key.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let hill = stopped("Hill");
    assert_eq!(field(&hill, "iamat_stored"), 2, "{hill}");
    let stored: u64 = all
        .iter()
        .map(|n| field(&stopped(n), "updates_stored"))
        .sum();
    assert_eq!(stored, 8, "each other server stored each report once");
    // The settled report went down Hill's tree: Hill to Jaquez and Smith,
    // Jaquez to Singleton, Smith to Campbell. (A hold that runs out on a
    // busy machine may add a payload over a link outside the tree; the
    // simulator checks the exact count.)
    for (from, to) in [
        ("Hill", "Jaquez"),
        ("Hill", "Smith"),
        ("Jaquez", "Singleton"),
        ("Smith", "Campbell"),
    ] {
        let line = format!("sent to {to}: {at}");
        assert!(
            herd.log(from).contains(&line),
            "{from} did not send it to {to}"
        );
    }
    let sent: usize = all
        .iter()
        .map(|n| {
            let log = herd.log(n);
            log.lines()
                .filter(|l| l.contains("sent to ") && l.contains(&at))
                .count()
        })
        .sum();
    assert!(sent <= 6, "{sent} payloads of one report over six links");
    let payloads: u64 = all.iter().map(|n| field(&stopped(n), "updates_sent")).sum();
    assert!(payloads >= 8, "{payloads} payloads counted for two reports");
    let marks: u64 = all
        .iter()
        .map(|n| field(&stopped(n), "watermarks_sent"))
        .sum();
    assert!(marks >= 4, "{marks} watermark lines for two reports");
}

//! `herd-bench iamat` against real herd servers: waiting for the herd to
//! hold its reports, the open loop's schedule, and busy polling.

mod common;

use common::{Herd, bench, report};

#[test]
fn the_load_tool_waits_for_the_herd_to_hold_its_reports() {
    let herd = Herd::start_default();
    let run = |extra: &[&str]| {
        let hill = herd.address("Hill");
        let mut args = vec!["--json", "iamat", "--addr", &hill];
        args.extend(["--conns", "2", "--depth", "4", "--clients", "20"]);
        args.extend(["--warmup", "0", "--duration", "0.5"]);
        args.extend(extra);
        let output = bench(&args);
        (output.status.success(), report(&output))
    };
    let (ok, report) = run(&[
        "--flooded-to",
        &herd.address("Campbell"),
        "--flooded-to",
        &herd.address("Singleton"),
    ]);
    assert!(ok, "{report}");
    assert_eq!(report["clients_per_conn"], 20);
    let after = report["flooded_after_load_s"].as_f64().expect("a time");
    assert!((0.0..10.0).contains(&after), "{report}");
    let flooded = report["flooded_throughput_rps"].as_f64().expect("a rate");
    let replies = report["replies"].as_f64().expect("a count");
    assert!(flooded > 0.0 && flooded <= replies / 0.5, "{report}");
    // A server outside the herd never holds them: the run fails, and says so.
    let lone = Herd::start(&[("Lone", &[])]);
    let (ok, report) = run(&[
        "--flooded-to",
        &lone.address("Lone"),
        "--flood-timeout",
        "0.5",
    ]);
    assert!(!ok, "{report}");
    assert!(
        report["flood_error"]
            .as_str()
            .is_some_and(|error| error.contains(&lone.address("Lone"))),
        "{report}"
    );
}

#[test]
fn the_load_tool_at_a_fixed_rate_sends_its_schedule_and_checks_every_reply() {
    // The open loop: request g of the run is due at g / rate; every one due
    // before the end is sent (or counted as not sent), and each reply is
    // checked. 2,000/s over 0.5 s is 1,000 requests across 4 connections.
    let herd = Herd::start(&[("Lone", &[])]);
    let lone = herd.address("Lone");
    let output = bench(&[
        "--json",
        "iamat",
        "--addr",
        &lone,
        "--conns",
        "4",
        "--rate",
        "2000",
        "--clients",
        "3",
        "--warmup",
        "0",
        "--duration",
        "0.5",
    ]);
    let report = report(&output);
    assert!(output.status.success(), "{report}");
    let count = |key: &str| report[key].as_u64().expect("a count");
    // (Each connection counts what it had left by its own interval, so
    // the sum may be off by one per connection.)
    let scheduled = count("sent") + count("not_sent");
    assert!((996..=1_004).contains(&scheduled), "{report}");
    // A busy machine may leave the last few unsent, not a tenth.
    assert!(count("sent") >= 900, "{report}");
    assert_eq!(count("replies"), count("sent"), "{report}");
    assert_eq!(count("invalid") + count("unanswered"), 0, "{report}");

    // A rate whose interval no duration can hold is refused, before any
    // connection, with a reason.
    let output = bench(&[
        "iamat",
        "--addr",
        &lone,
        "--rate",
        "1e-300",
        "--duration",
        "0.5",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rate is too low"), "{stderr}");
}

#[test]
fn the_load_tool_can_poll_its_sockets_instead_of_sleeping() {
    let herd = Herd::start(&[("Lone", &[])]);
    let lone = herd.address("Lone");
    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "iamat", "--addr", &lone];
        args.extend([
            "--conns",
            "2",
            "--depth",
            "2",
            "--warmup",
            "0",
            "--duration",
            "0.3",
        ]);
        args.extend(extra);
        bench(&args)
    };
    let polling = run(&["--busy-poll"]);
    let polled = report(&polling);
    assert!(polling.status.success(), "{polled}");
    assert!(polled["replies"].as_u64().expect("a count") > 0, "{polled}");
    assert_eq!(polled["invalid"], 0, "{polled}");
    // The poller went round all through the run (a few microseconds a
    // turn), not once or twice.
    let turns = polled["busy_polls"].as_u64().expect("a count of polls");
    assert!(turns > 100, "{polled}");
    let sleeping = run(&[]);
    let slept = report(&sleeping);
    assert!(sleeping.status.success(), "{slept}");
    assert!(slept["busy_polls"].is_null(), "{slept}");
    // Polling keeps one thread busy; with several it is refused, with a
    // reason, before any connection.
    let refused = run(&["--busy-poll", "--threads", "2"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--busy-poll needs --threads 1"), "{stderr}");
}

#[test]
fn the_load_tool_checks_every_whatsat_answer_against_the_seeded_location() {
    let herd = Herd::start(&[("Lone", &[])]);
    let lone = herd.address("Lone");
    let output = bench(&[
        "--json",
        "whatsat",
        "--addr",
        &lone,
        "--conns",
        "2",
        "--depth",
        "2",
        "--radius",
        "10",
        "--bound",
        "3",
        "--warmup",
        "0",
        "--duration",
        "0.3",
    ]);
    let report = report(&output);
    assert!(output.status.success(), "{report}");
    let replies = report["replies"].as_u64().expect("a count");
    assert!(replies > 0, "{report}");
    assert_eq!(report["invalid"], 0, "{report}");
    // Every answer carried a places status, and each was counted.
    let statuses = report["statuses"].as_object().expect("statuses");
    let counted: u64 = statuses
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(counted, replies, "{report}");
}

//! A server says when its links fail, and why: a neighbour that is down,
//! a neighbour with another herd's secret, a config that leaves a server
//! alone. At the first failure and then at a falling rate, not at every
//! try; in the log, and on the terminal when the server runs in one.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::process::ProcessHerd;
use common::{Herd, Log, eventually};
use tracing_subscriber::layer::SubscriberExt;

const PAIR: &[(&str, &[&str])] = &[("Hill", &["Smith"]), ("Smith", &["Hill"])];

#[test]
fn a_neighbour_that_is_down_is_warned_about_and_its_link_coming_up_is_told() {
    let mut herd = Herd::configure(PAIR, "");
    herd.launch("Hill");
    // Smith's port is bound but not listening: refused, again and again.
    // Once Smith has had time to start, Hill warns, with the count so far.
    let expected = format!(
        "WARN cannot link to Smith at {}: connection refused failed_tries=",
        herd.server("Smith").peer
    );
    eventually("Hill to warn that Smith is down", || {
        herd.log("Hill").contains(&expected)
    });
    herd.launch("Smith");
    eventually("Hill to say its link to Smith is up", || {
        herd.log("Hill")
            .contains("INFO link up: sending to Smith, after failing failed_tries=")
    });
    eventually("Hill to say all its links are up", || {
        herd.log("Hill")
            .contains("INFO all links up: sending to Smith")
    });
    // Smith came up after Hill: it never failed, and only says it is up.
    let smith = herd.log("Smith");
    assert!(!smith.contains("WARN"), "{smith}");
    assert!(
        smith.contains("INFO all links up: sending to Hill"),
        "{smith}"
    );
}

#[test]
fn servers_with_different_secrets_both_say_the_other_does_not_share_it() {
    let mut herd = Herd::configure(PAIR, "");
    herd.launch("Hill");
    herd.launch_with_secret("Smith", "another herd's secret");
    for (me, other) in [("Hill", "Smith"), ("Smith", "Hill")] {
        // Dialling, it is told so by the other side...
        let dialling = format!(
            "WARN cannot link to {other} at {}: authentication failed: {other} does not share this herd's secret",
            herd.server(other).peer
        );
        // ...and listening, it finds so itself.
        let listening = format!(
            "claiming to be {other}: authentication failed: it does not share this herd's secret"
        );
        eventually(&format!("{me} to say {other} has another secret"), || {
            let log = herd.log(me);
            log.contains(&dialling) && log.contains(&listening)
        });
    }
    for name in ["Hill", "Smith"] {
        assert!(!herd.log(name).contains("link up"), "{}", herd.log(name));
    }
}

/// The warnings of a dialler whose neighbour stays down: `(failed tries
/// so far, for how long, the line)` for each.
fn warnings_about(log: &str, neighbour: &str) -> Vec<(u64, Duration, String)> {
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|field| field.strip_prefix(name))
            .map(str::to_owned)
    };
    log.lines()
        .filter(|line| line.starts_with(&format!("WARN cannot link to {neighbour} ")))
        .map(|line| {
            let tries = field(line, "failed_tries=").map_or(1, |n| n.parse().unwrap());
            let lasted = field(line, "failing_for=").map_or(Duration::ZERO, |d| duration(&d));
            (tries, lasted, line.to_owned())
        })
        .collect()
}

/// A duration as the log writes it: `850ms`, `12.3s`, `4m05s`.
fn duration(text: &str) -> Duration {
    if let Some(millis) = text.strip_suffix("ms") {
        Duration::from_millis(millis.parse().unwrap())
    } else if let Some((minutes, seconds)) = text.split_once('m') {
        let seconds = seconds.trim_end_matches('s');
        Duration::from_secs(minutes.parse::<u64>().unwrap() * 60 + seconds.parse::<u64>().unwrap())
    } else {
        Duration::from_secs_f64(text.trim_end_matches('s').parse().unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn warnings_about_a_neighbour_that_stays_down_come_at_a_falling_rate() {
    // Ten minutes without Smith, on tokio's paused clock: Hill dials it
    // well over a thousand times, and warns at its first failure once
    // Smith has had time to start, then after gaps that double up to a
    // minute.
    let log = Log::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(log.clone()),
    );
    let (setup, mut ports) = common::setup(PAIR, "Hill", None);
    let (_smith, _) = ports.pop().unwrap();
    let (client, peer) = ports.pop().unwrap();
    let listen = |port: common::Port| tokio::net::TcpListener::from_std(port.listen()).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(herd::server::run(
        setup,
        listen(client),
        listen(peer),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(600)).await;
    shutdown.cancel();
    server.await.unwrap().unwrap();

    let warnings = warnings_about(&log.text(), "Smith");
    let tries: Vec<u64> = warnings.iter().map(|(tries, ..)| *tries).collect();
    let (_, first, _) = &warnings[0];
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(3)).contains(first),
        "{warnings:#?}"
    );
    let last = *tries.last().unwrap();
    assert!(last > 1000, "only {last} tries in ten minutes");
    // About 7 warnings in the first minute, then one a minute.
    assert!(
        (10..=20).contains(&warnings.len()),
        "{} warnings for {last} tries:\n{warnings:#?}",
        warnings.len()
    );
    // The gaps between warnings grow, from about a second to a minute,
    // and no further (a kind of failure first met later, such as a dial
    // timing out, would be told at once: none is met here).
    let gaps: Vec<Duration> = warnings.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(gaps[0] >= Duration::from_secs(1), "{warnings:#?}");
    assert!(
        gaps.windows(2)
            .all(|g| g[1] + Duration::from_millis(200) >= g[0]),
        "{warnings:#?}"
    );
    assert!(
        gaps.iter()
            .all(|gap| *gap <= Duration::from_secs(60) + Duration::from_millis(500)),
        "{warnings:#?}"
    );
    assert!(
        *gaps.last().unwrap() >= Duration::from_secs(59),
        "{warnings:#?}"
    );
}

/// Spins until `condition` holds, with tokio's paused clock held still
/// (see `common::with_clock_held`): for what real sockets bring about.
async fn until_held(what: &str, condition: impl Fn() -> bool) {
    common::with_clock_held(what, async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_neighbour_restarting_is_no_warning_but_one_that_stays_away_is() {
    // On tokio's paused clock: Smith stops and is back a second later, as
    // a restart is; Hill fails to reach it meanwhile, and says nothing but
    // that the link went down and came up. Then Smith stops for good, and
    // Hill warns once Smith has had two seconds to come back.
    let log = Log::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(log.clone()),
    );
    let (mut setups, ports) = common::setups(PAIR, &["Hill", "Smith", "Smith"], None);
    let (smith_again, smith, hill) = (
        setups.pop().unwrap(),
        setups.pop().unwrap(),
        setups.pop().unwrap(),
    );
    let mut ports = ports.into_iter();
    let (hill_client, hill_peer) = ports.next().unwrap();
    let (smith_client, smith_peer) = ports.next().unwrap();
    let smith_addresses = (smith_client.address(), smith_peer.address());
    let listen = |port: common::Port| tokio::net::TcpListener::from_std(port.listen()).unwrap();
    let start = |setup, (client, peer): (common::Port, common::Port)| {
        let stop = tokio_util::sync::CancellationToken::new();
        let run = herd::server::run(setup, listen(client), listen(peer), stop.clone());
        (stop, tokio::spawn(run))
    };
    let (hill_stop, hill_run) = start(hill, (hill_client, hill_peer));
    let (smith_stop, smith_run) = start(smith, (smith_client, smith_peer));
    until_held("both links up", || {
        let text = log.text();
        text.contains("all links up: sending to Smith")
            && text.contains("all links up: sending to Hill")
    })
    .await;

    smith_stop.cancel();
    smith_run.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = (
        common::Port::again(smith_addresses.0),
        common::Port::again(smith_addresses.1),
    );
    let (smith_stop, smith_run) = start(smith_again, again);
    until_held("Hill's link to Smith up again", || {
        log.text().matches("link up: sending to Smith").count() == 2
    })
    .await;
    let text = log.text();
    assert!(text.contains("link down: sending to Smith"), "{text}");
    assert!(!text.contains("WARN"), "{text}");
    assert!(!text.contains("after failing"), "{text}");

    smith_stop.cancel();
    smith_run.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let warnings = warnings_about(&log.text(), "Smith");
    let (tries, lasted, line) = warnings.first().expect("a warning");
    assert!(*tries > 1, "{line}");
    assert!(*lasted >= Duration::from_millis(1900), "{line}");
    hill_stop.cancel();
    hill_run.await.unwrap().unwrap();
}

/// A server process that is killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_server_in_a_terminal_shows_its_link_warnings_there() {
    use nix::pty::openpty;
    let herd = ProcessHerd::configure(PAIR, "");
    let pty = openpty(None, None).expect("a pseudo-terminal");
    let mut command = herd.command("Hill");
    command.stderr(Stdio::from(pty.slave));
    let _hill = Killed(command.spawn().expect("spawning herd serve"));
    drop(command);
    // Whatever the server writes to the terminal, as it comes.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let seen = seen.clone();
        let mut terminal = std::fs::File::from(pty.master);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends when the server has gone and the terminal with it.
            while let Ok(n @ 1..) = terminal.read(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]);
                seen.lock().unwrap().push_str(&text);
            }
        });
    }
    let expected = format!(
        "WARN [Hill] cannot link to Smith at {}: connection refused",
        herd.server("Smith").peer
    );
    eventually("the warning on Hill's terminal", || {
        seen.lock().unwrap().contains(&expected)
    });
    // Only what the operator must see: no message lines, no link chatter.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.contains("INFO"), "{seen}");
    // The log file has it too (written in the background).
    eventually("the warning in Hill's log", || {
        herd.log("Hill").contains(&expected.replace("[Hill] ", ""))
    });
}

#[test]
fn a_server_not_in_a_terminal_writes_warnings_to_its_log_only() {
    let herd = ProcessHerd::configure(PAIR, "");
    let mut hill = Killed(herd.command("Hill").spawn().expect("spawning herd serve"));
    eventually("the warning in Hill's log", || {
        herd.log("Hill").contains("WARN cannot link to Smith")
    });
    hill.0.kill().unwrap();
    let mut stderr = String::new();
    hill.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr, "", "a pipe gets nothing");
}

#[test]
fn a_server_with_no_neighbours_in_a_larger_herd_is_warned_about() {
    let topology: &[(&str, &[&str])] = &[
        ("Hill", &["Smith"]),
        ("Smith", &["Hill"]),
        ("Campbell", &[]),
    ];
    let herd = ProcessHerd::configure(topology, "");
    let mut campbell = Killed(
        herd.command("Campbell")
            .spawn()
            .expect("spawning herd serve"),
    );
    let warning = "Campbell has no neighbours";
    eventually("the warning in Campbell's log", || {
        herd.log("Campbell").contains(warning)
    });
    campbell.0.kill().unwrap();
    let mut stderr = String::new();
    campbell
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // On stderr at start whatever it is (the journal, under systemd),
    // naming the file and line.
    let config = herd.config_path.display().to_string();
    assert!(
        stderr.starts_with(&format!("herd: warning: {config}:")) && stderr.contains(warning),
        "{stderr}"
    );
    let log = herd.log("Campbell");
    let line = log.lines().find(|line| line.contains(warning)).unwrap();
    assert!(line.contains("  WARN "), "{line}");
}

//! `herd up` as a user runs it: servers ready when they say so, a server
//! that cannot start stops the herd, a dead server is started again until
//! it keeps dying, no server outlives `herd up`, and the secret it makes is
//! kept for servers run by hand.
//!
//! Each test runs `herd up` on a config whose ports were found free
//! (`common::process`), and stops only processes it started (by pid):
//! `herd up`, and the servers whose pids `herd up` prints.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use common::process::ProcessHerd;
use common::{DEFAULT_TOPOLOGY, PATIENCE, eventually, herd_binary};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PAIR: &[(&str, &[&str])] = &[("A", &["B"]), ("B", &[])];

/// A running `herd up`, its standard output line by line and its standard
/// error as a whole.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: String,
    stderr: Arc<Mutex<String>>,
}

impl Up {
    fn start(config: &Path) -> Up {
        Up::start_with_stderr(config, Stdio::piped())
    }

    /// `start`, with standard error going to `stderr` (a terminal, say);
    /// `Up::stderr` has only what went to a pipe.
    fn start_with_stderr(config: &Path, stderr: Stdio) -> Up {
        let mut child = Command::new(herd_binary())
            .args(["up", "--config"])
            .arg(config)
            .env_remove("HERD_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting herd up");
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            collect(pipe, stderr.clone());
        }
        Up {
            child,
            lines,
            printed: String::new(),
            stderr,
        }
    }

    /// Waits for a line of standard output holding `needle`; `None` if
    /// `herd up` ended first.
    fn await_line(&mut self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push_str(&line);
                    self.printed.push('\n');
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no line with {needle:?} from herd up; it printed:\n{}\n{}",
                    self.printed,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the herd to be up; returns each server's pid, by name.
    fn await_up(&mut self) -> HashMap<String, Pid> {
        assert!(
            self.await_line("is up").is_some(),
            "herd up ended: {}\n{}",
            self.printed,
            self.stderr()
        );
        self.printed
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?;
                (words.next()? == "pid").then_some(())?;
                let pid = words.next()?.parse().ok()?;
                Some((name.to_owned(), Pid::from_raw(pid)))
            })
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits for `herd up` to exit on its own.
    fn wait(&mut self) -> ExitStatus {
        let mut status = None;
        eventually("herd up to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        // Its standard output ends with it: take the rest.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.printed.push_str(&line);
            self.printed.push('\n');
        }
        status.unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Appends what `from` gives to `into`, as it comes, until it ends.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // Ends at the end of the pipe, or when a terminal's other side is gone.
        while let Ok(read @ 1..) = from.read(&mut buffer) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    });
}

/// Whether process `pid` is gone (or a zombie no one has reaped yet:
/// either way it holds no port or lock).
fn is_gone(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "PID (COMM) STATE ...": the state follows the last parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[track_caller]
fn await_port_free(address: SocketAddr) {
    eventually(&format!("{address} to be free"), || {
        TcpListener::bind(address).is_ok()
    });
}

#[test]
fn a_server_that_cannot_start_stops_the_herd_with_the_reason() {
    let herd = ProcessHerd::configure(DEFAULT_TOPOLOGY, "");
    // Something else listens on Campbell's client port: it accepts
    // connections there, but Campbell never says it is ready.
    let squatter = TcpListener::bind(herd.server("Campbell").client).unwrap();
    let mut up = Up::start(&herd.config_path);
    let status = up.wait();
    assert!(!status.success(), "{status}");
    assert!(!up.printed.contains("is up"), "{}", up.printed);
    let stderr = up.stderr();
    assert!(
        stderr.contains("Campbell did not start")
            && stderr.contains("cannot listen for clients on")
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    drop(squatter);
    // The others were stopped: their ports and data folders are free.
    for server in &herd.servers {
        await_port_free(server.client);
        await_port_free(server.peer);
    }
}

#[test]
fn a_server_that_dies_is_started_again_with_its_data() {
    let herd = ProcessHerd::configure(PAIR, "");
    let mut up = Up::start(&herd.config_path);
    let pids = up.await_up();
    let at = herd.client("A").iamat("survivor", "+1+1");
    kill(pids["A"], Signal::SIGKILL).unwrap();
    let again = up
        .await_line("up again (restart 1)")
        .unwrap_or_else(|| panic!("herd up ended: {}", up.stderr()));
    assert!(again.starts_with("A "), "{again}");
    assert!(
        up.stderr()
            .contains("A was killed by SIGKILL; starting it again in"),
        "{}",
        up.stderr()
    );
    // The new A kept its store, and its log says why it started again.
    assert_eq!(
        herd.client("A").at_line_of("survivor").as_deref(),
        Some(at.as_str())
    );
    eventually("A's log to note the restart", || {
        herd.log("A").contains("started again by herd up")
    });
    kill(up.pid(), Signal::SIGTERM).unwrap();
    let status = up.wait();
    assert!(status.success(), "{status}: {}", up.stderr());
}

#[test]
fn a_server_that_keeps_dying_stops_the_herd_and_up_exits_non_zero() {
    let herd = ProcessHerd::configure(PAIR, "");
    let mut up = Up::start(&herd.config_path);
    let pids = up.await_up();
    // From now on A cannot start: its data folder holds a file that is not
    // a herd log.
    std::fs::write(
        herd.dir.path().join("data/A/log-999999.herd"),
        b"not a herd log",
    )
    .unwrap();
    kill(pids["A"], Signal::SIGKILL).unwrap();
    let status = up.wait();
    assert!(!status.success(), "{status}");
    let stderr = up.stderr();
    assert!(stderr.contains("A keeps dying"), "{stderr}");
    assert!(stderr.contains("not a herd log"), "{stderr}");
    assert!(stderr.contains("restart 5;"), "{stderr}");
    assert!(!stderr.contains("restart 6;"), "{stderr}");
    // B was stopped with the herd.
    eventually("B to stop", || is_gone(pids["B"]));
    await_port_free(herd.server("B").client);
}

#[test]
fn killing_up_leaves_no_server_behind() {
    let herd = ProcessHerd::configure(PAIR, "");
    let mut up = Up::start(&herd.config_path);
    let pids = up.await_up();
    assert_eq!(pids.len(), 2);
    kill(up.pid(), Signal::SIGKILL).unwrap();
    up.wait();
    for (name, pid) in &pids {
        eventually(&format!("{name} to die with herd up"), || is_gone(*pid));
        await_port_free(herd.server(name).client);
        await_port_free(herd.server(name).peer);
    }
}

#[test]
fn the_secret_up_makes_is_kept_for_servers_run_by_hand() {
    use std::os::unix::fs::PermissionsExt;
    let mut herd = ProcessHerd::configure(PAIR, "");
    let secret_file = herd.dir.path().join("data/secret");
    // Before any herd up: a server run by hand has no secret, and says
    // where herd up would keep one.
    let output = Command::new(herd_binary())
        .args(["serve", "A", "--config"])
        .arg(&herd.config_path)
        .env_remove("HERD_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no herd secret") && stderr.contains("data/secret"),
        "{stderr}"
    );

    let mut up = Up::start(&herd.config_path);
    up.await_up();
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    kill(up.pid(), Signal::SIGTERM).unwrap();
    assert!(up.wait().success(), "{}", up.stderr());
    drop(up);

    // By hand, with no secret configured: both servers find the file, and
    // so share the herd's secret (a report floods).
    for name in ["A", "B"] {
        let mut command = herd.command(name);
        command.env_remove("HERD_SECRET");
        assert!(herd.launch_command(name, command), "{name} by hand");
    }
    let at = herd.client("A").iamat("by-hand", "+2+2");
    let mut b = herd.client("B");
    eventually("the report to reach B", || {
        b.at_line_of("by-hand").as_deref() == Some(at.as_str())
    });
    herd.terminate("A");
    herd.terminate("B");

    // A later herd up uses the same secret.
    let mut up = Up::start(&herd.config_path);
    up.await_up();
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
}

#[test]
fn the_quick_start_leaves_a_clone_clean() {
    // The README's `cargo run --release -- up` in a clone: the default
    // config, relative folders, the project's .gitignore. Here on free
    // ports, in a fresh repository holding only what the clone would.
    let git = |dir: &Path, args: &[&str]| {
        Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
    };
    let clone = tempfile::tempdir().unwrap();
    if !git(clone.path(), &["init", "-q"]).is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no git to check the status with");
        return;
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".gitignore"),
        clone.path().join(".gitignore"),
    )
    .unwrap();
    let mut config = herd::config::DEFAULT_CONFIG.to_owned();
    for port in (12000..=12004).chain(12010..=12014).chain(12020..=12024) {
        let free = common::process::free_address();
        config = config.replace(&format!("127.0.0.1:{port}\""), &format!("{free}\""));
    }
    std::fs::write(clone.path().join("herd.toml"), &config).unwrap();
    let committed = git(clone.path(), &["add", "."])
        .and_then(|_| git(clone.path(), &["commit", "-q", "-m", "clone"]))
        .unwrap();
    assert!(committed.status.success(), "{committed:?}");

    let mut up = Up::start(&clone.path().join("herd.toml"));
    up.await_up();
    let hill = herd::config::HerdConfig::parse(&config, "herd.toml", clone.path())
        .unwrap()
        .server("Hill")
        .unwrap()
        .client
        .as_deref()
        .expect("Hill has a plain client port")
        .parse()
        .unwrap();
    common::LineClient::connect(hill).iamat("clean", "+1+1");
    kill(up.pid(), Signal::SIGTERM).unwrap();
    assert!(up.wait().success(), "{}", up.stderr());
    // It did write its store, secret and logs...
    for written in ["data/Hill", "data/secret", "logs/Hill.log"] {
        assert!(clone.path().join(written).exists(), "{written}");
    }
    // ...and git sees none of it.
    let status = git(
        clone.path(),
        &["status", "--porcelain", "--untracked-files=all"],
    )
    .unwrap();
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout), "");
    // Nor does the .gitignore hide a source file of the project (such as
    // the places data build.rs reads), when the tests run in a checkout.
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Ok(ignored) = git(project, &["ls-files", "-i", "-c", "--exclude-standard"])
        && ignored.status.success()
    {
        assert_eq!(String::from_utf8_lossy(&ignored.stdout), "");
    }
}

#[test]
fn up_in_a_terminal_passes_on_what_its_servers_tell_the_operator() {
    use nix::pty::openpty;
    let herd = ProcessHerd::configure(PAIR, "");
    let pty = openpty(None, None).expect("a pseudo-terminal");
    let mut up = Up::start_with_stderr(&herd.config_path, Stdio::from(pty.slave));
    let terminal = Arc::new(Mutex::new(String::new()));
    collect(std::fs::File::from(pty.master), terminal.clone());
    let pids = up.await_up();
    // A restarted server warns that it was started again: a warning, so
    // the operator sees it, with the server's name, on herd up's terminal.
    kill(pids["A"], Signal::SIGKILL).unwrap();
    assert!(up.await_line("up again (restart 1)").is_some());
    eventually("A's warning on herd up's terminal", || {
        terminal
            .lock()
            .unwrap()
            .contains("WARN [A] started again by herd up")
    });
    // Only what the operator must see: not the message lines, nor the
    // servers' other events (the listening line).
    let seen = terminal.lock().unwrap().clone();
    assert!(
        !seen.contains("listening") && !seen.contains("received"),
        "{seen}"
    );
}

//! The five-server herd on five hosts: each server in a network namespace of
//! its own, with an address of its own on a private bridge, so that
//! flooding, catch-up and convergence run over real (virtual) links that can
//! be slowed, made lossy and cut (SPEC §6; issue 4, "Multi-host").
//!
//! These tests need root and iproute2 (`ip netns`). Anywhere else each test
//! says why it is skipped and passes. Under CI (`CI` set), as root with `ip`,
//! failing to create the namespaces is a failure, not a skip.
//!
//! Isolation and cleanup:
//! - every namespace is made by the test and named after its process id and
//!   a per-test number (`herdmh-PID-N-ROLE`), so concurrent runs never clash;
//! - the namespaces are linked only to one another, through a bridge that
//!   lives in a namespace of its own; none has a route anywhere else, so no
//!   packet from here can reach a real network (the private /24 is only ever
//!   configured inside them);
//! - the test process itself, in the root namespace, never opens a socket to
//!   those addresses: every client runs inside a namespace, as
//!   `ip netns exec NS herd send ADDR LINE...`;
//! - a `Lab` kills the servers it started (by process id) and deletes its
//!   namespaces, and with them every link in them, when dropped, pass or
//!   fail. Namespaces left behind by a run that was itself killed are swept
//!   at the next run.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{DEFAULT_TOPOLOGY, PATIENCE, env_number, herd_binary, now_text};

const ALL: &[&str] = &["Hill", "Jaquez", "Smith", "Campbell", "Singleton"];
/// Every host listens on the same ports, as real hosts would.
const CLIENT_PORT: u16 = 12000;
const PEER_PORT: u16 = 12010;
/// The namespace name prefix; `sweep_stale` relies on its shape.
const PREFIX: &str = "herdmh";
/// The host that plays the clients.
const CLIENT: &str = "client";

/// Writes a line to the test's real stderr, past the harness's capture, so
/// that a skip or an emulation note shows in a plain `cargo test` run.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Where `name` is installed: on PATH, or in the sbin folders that a
/// non-root PATH often lacks (Debian installs `tc` only in /usr/sbin).
fn program(name: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .map_or_else(
            || name.to_owned(),
            |found| found.to_string_lossy().into_owned(),
        )
}

/// Runs a command to completion; its stdout, or what went wrong.
fn run(program_name: &str, args: &[&str]) -> Result<String, String> {
    let program = program(program_name);
    let output = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("`{program_name}`: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program_name} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(drop)
}

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    const NEEDS: &str = "needs root and iproute2 (ip netns) to create network namespaces";
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("unknown");
    if euid != "0" {
        return Some(format!("{NEEDS}; running as uid {euid}"));
    }
    if run("ip", &["-V"]).is_err() {
        return Some(format!("{NEEDS}; `ip` is not installed"));
    }
    None
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces of earlier runs whose test process is gone (killed
/// before its cleanup could run), with the herd servers still in them. Runs
/// once per process, before this process makes any: so namespaces named
/// with our own process id are an earlier process's too.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sweep);
}

fn sweep() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && process_alive(pid) {
            continue;
        }
        for inside in run("ip", &["netns", "pids", name])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
        {
            let command = std::fs::read(format!("/proc/{inside}/cmdline")).unwrap_or_default();
            if command.starts_with(herd_binary().as_bytes()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(inside),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}

/// One host: a namespace with one veth link into the bridge.
struct Host {
    name: String,
    ns: String,
    ip: String,
    /// The link's end inside the host's namespace.
    link: String,
    /// The link's end in the bridge's namespace, a port of the bridge.
    port: String,
}

/// Five server hosts and a client host on one private bridge, and the herd
/// running on them.
struct Lab {
    bridge_ns: String,
    /// Every namespace made so far, for cleanup.
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
    secret: String,
    servers: HashMap<String, Child>,
    /// Hosts whose link is down: they are asked from inside.
    cut: HashSet<String>,
    /// Ask each server from inside its own host (when its links are slow).
    ask_locally: bool,
}

impl Lab {
    /// The namespaces and links for a test, or `None` (after saying why)
    /// where they cannot be made.
    fn start(test: &str) -> Option<Lab> {
        if let Some(why) = unavailable() {
            say(&format!("{test}: skipped: {why}"));
            return None;
        }
        sweep_stale();
        match Lab::build() {
            Ok(lab) => Some(lab),
            Err(error) if in_ci() => {
                panic!("{test}: running as root with `ip` under CI, but: {error}")
            }
            Err(error) => {
                say(&format!(
                    "{test}: skipped: cannot create network namespaces here: {error}"
                ));
                None
            }
        }
    }

    fn build() -> Result<Lab, String> {
        static TESTS: AtomicUsize = AtomicUsize::new(0);
        let number = TESTS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{PREFIX}-{pid}-{number}");
        // A /24 of its own per run and test, though the namespaces would
        // keep even equal ones apart.
        let subnet = (pid as usize * 7 + number * 61) % 250 + 3;
        let mut lab = Lab {
            bridge_ns: format!("{id}-bridge"),
            namespaces: Vec::new(),
            hosts: Vec::new(),
            dir: tempfile::tempdir().map_err(|error| error.to_string())?,
            secret: {
                let bytes: [u8; 16] = rand::random();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            },
            servers: HashMap::new(),
            cut: HashSet::new(),
            ask_locally: false,
        };
        let bridge = lab.bridge_ns.clone();
        lab.add_namespace(&bridge)?;
        ip(&[
            "-n", &bridge, "link", "add", "name", "br0", "type", "bridge",
        ])?;
        ip(&["-n", &bridge, "link", "set", "dev", "br0", "up"])?;
        let names = ALL.iter().copied().chain([CLIENT]);
        for (i, name) in names.enumerate() {
            let host_number = if name == CLIENT { 100 } else { i + 1 };
            // Interface names are at most 15 bytes; unique per run anyway.
            let tag = format!("m{pid:x}{}{i}", number % 10);
            let host = Host {
                name: name.to_owned(),
                ns: format!("{id}-{}", name.to_lowercase()),
                ip: format!("10.213.{subnet}.{host_number}"),
                link: format!("{tag}h"),
                port: format!("{tag}b"),
            };
            lab.add_namespace(&host.ns)?;
            ip(&[
                "link", "add", "name", &host.link, "netns", &host.ns, "type", "veth", "peer",
                "name", &host.port, "netns", &bridge,
            ])?;
            ip(&[
                "-n", &bridge, "link", "set", "dev", &host.port, "master", "br0",
            ])?;
            ip(&["-n", &bridge, "link", "set", "dev", &host.port, "up"])?;
            ip(&["-n", &host.ns, "link", "set", "dev", "lo", "up"])?;
            let address = format!("{}/24", host.ip);
            ip(&["-n", &host.ns, "addr", "add", &address, "dev", &host.link])?;
            ip(&["-n", &host.ns, "link", "set", "dev", &host.link, "up"])?;
            lab.hosts.push(host);
        }
        lab.write_config()?;
        Ok(lab)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    fn client_address(&self, name: &str) -> String {
        format!("{}:{CLIENT_PORT}", self.host(name).ip)
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("herd.toml")
    }

    fn write_config(&self) -> Result<(), String> {
        let mut config = String::from("log_dir = \"logs\"\n");
        for (name, neighbours) in DEFAULT_TOPOLOGY {
            let ip = &self.host(name).ip;
            let neighbours: Vec<String> = neighbours.iter().map(|n| format!("{n:?}")).collect();
            config.push_str(&format!(
                "\n[[servers]]\nname = {name:?}\nclient = \"{ip}:{CLIENT_PORT}\"\npeer = \"{ip}:{PEER_PORT}\"\nneighbours = [{}]\n",
                neighbours.join(", ")
            ));
        }
        std::fs::write(self.config_path(), config).map_err(|error| error.to_string())
    }

    /// Starts every server in its own namespace, and waits until each
    /// accepts clients.
    fn start_herd(&mut self) {
        for name in ALL {
            self.spawn_server(name);
        }
        for name in ALL {
            self.await_listening(name);
        }
    }

    fn spawn_server(&mut self, name: &str) {
        let stderr = std::fs::File::create(self.dir.path().join(format!("{name}.stderr")))
            .expect("creating a stderr file");
        let child = Command::new(program("ip"))
            .args([
                "netns",
                "exec",
                &self.host(name).ns,
                herd_binary(),
                "serve",
                name,
            ])
            .arg("--config")
            .arg(self.config_path())
            .env("HERD_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning ip netns exec herd serve");
        self.servers.insert(name.to_owned(), child);
    }

    fn await_listening(&mut self, name: &str) {
        let (ns, address) = (self.host(name).ns.clone(), self.client_address(name));
        let deadline = Instant::now() + PATIENCE;
        // `herd send` with no lines and no input connects, sends EOF and
        // reads to the end: a connection check from inside the host.
        while run_herd_send(&ns, &address, &[], 1).is_err() {
            let child = self.servers.get_mut(name).expect("a started server");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited at start ({status}): {}", self.stderr(name));
            }
            assert!(
                Instant::now() < deadline,
                "{name} never listened on {address}: {}",
                self.stderr(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.stderr"))).unwrap_or_default()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// The last lines of every server's log, for a failure message.
    fn log_tails(&self) -> String {
        let mut tails = String::new();
        for name in ALL {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            tails.push_str(&format!("\n--- {name}.log (last 15 lines)\n"));
            for line in &lines[lines.len().saturating_sub(15)..] {
                tails.push_str(line);
                tails.push('\n');
            }
        }
        tails
    }

    /// The namespace a client of `server` runs in: the client host, or the
    /// server's own host when that one is cut off, or for checks when the
    /// links are slow.
    fn asker(&self, server: &str, checking: bool) -> &str {
        if (checking && self.ask_locally) || self.cut.contains(server) {
            &self.host(server).ns
        } else {
            &self.host(CLIENT).ns
        }
    }

    /// Sends lines to `server` and returns everything it answered.
    fn send(&self, server: &str, lines: &[String]) -> String {
        self.send_as(server, lines, false)
    }

    fn send_as(&self, server: &str, lines: &[String], checking: bool) -> String {
        let asker = self.asker(server, checking);
        run_herd_send(asker, &self.client_address(server), lines, 10).unwrap_or_else(|error| {
            panic!(
                "talking to {server} from {asker}: {error}{}",
                self.log_tails()
            )
        })
    }

    /// Reports `id` at `location` to `server`, now; returns its AT line.
    fn iamat(&self, server: &str, id: &str, location: &str) -> String {
        let line = format!("IAMAT {id} {location} {}", now_text());
        let answer = self.send(server, &[line]);
        let at = answer.lines().next().unwrap_or_default().to_owned();
        assert!(
            at.starts_with(&format!("AT {server} ")),
            "{server} answered {answer:?}"
        );
        at
    }

    /// Reports `count` clients `PREFIX0`, `PREFIX1`, ... to `server`, in one
    /// pipelined connection; returns (client id, AT line) for each.
    fn report_many(&self, server: &str, prefix: &str, count: usize) -> Vec<(String, String)> {
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        let lines: Vec<String> = ids
            .iter()
            .map(|id| format!("IAMAT {id} +0.5-25.5 {}", now_text()))
            .collect();
        let answer = self.send(server, &lines);
        let ats: Vec<String> = answer.lines().map(str::to_owned).collect();
        assert_eq!(ats.len(), count, "{server} answered {answer:?}");
        for at in &ats {
            assert!(
                at.starts_with(&format!("AT {server} ")),
                "{server} answered {at:?}"
            );
        }
        ids.into_iter().zip(ats).collect()
    }

    /// The AT line `server` holds for each of `ids` (WHATSAT ID 1 1), or
    /// `None` where it answers `?`.
    fn held(&self, server: &str, ids: &[&str]) -> Vec<Option<String>> {
        let lines: Vec<String> = ids.iter().map(|id| format!("WHATSAT {id} 1 1")).collect();
        let answer = self.send_as(server, &lines, true);
        let mut lines = answer.lines();
        let mut held = Vec::new();
        while let Some(first) = lines.next() {
            if first.starts_with("? ") {
                held.push(None);
            } else {
                assert!(first.starts_with("AT "), "{server} answered {answer:?}");
                held.push(Some(first.to_owned()));
                // The places JSON, up to the blank line that ends an answer.
                for line in lines.by_ref() {
                    if line.is_empty() {
                        break;
                    }
                }
            }
        }
        assert_eq!(held.len(), ids.len(), "{server} answered {answer:?}");
        held
    }

    /// Waits until every listed server holds each expected AT line.
    #[track_caller]
    fn await_on(&self, servers: &[&str], expected: &[(&str, &str)]) {
        let ids: Vec<&str> = expected.iter().map(|(id, _)| *id).collect();
        let want: Vec<Option<String>> = expected
            .iter()
            .map(|(_, at)| Some((*at).to_owned()))
            .collect();
        let deadline = Instant::now() + PATIENCE;
        for server in servers {
            loop {
                let held = self.held(server, &ids);
                if held == want {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{server} never held the newest reports\nwanted {want:#?}\nheld {held:#?}{}",
                        self.log_tails()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    #[track_caller]
    fn await_everywhere(&self, expected: &[(&str, &str)]) {
        self.await_on(ALL, expected);
    }

    /// Waits until every server holds each (client id, AT line) reported.
    #[track_caller]
    fn await_reports(&self, reports: &[(String, String)]) {
        let expected: Vec<(&str, &str)> = reports
            .iter()
            .map(|(id, at)| (id.as_str(), at.as_str()))
            .collect();
        self.await_everywhere(&expected);
    }

    /// Takes `name`'s bridge port down: the cable is pulled at the switch.
    fn cut(&mut self, name: &str) {
        let port = self.host(name).port.clone();
        ip(&["-n", &self.bridge_ns, "link", "set", "dev", &port, "down"]).expect("cutting a link");
        self.cut.insert(name.to_owned());
    }

    fn heal(&mut self, name: &str) {
        let port = self.host(name).port.clone();
        ip(&["-n", &self.bridge_ns, "link", "set", "dev", &port, "up"]).expect("healing a link");
        self.cut.remove(name);
    }

    /// Makes every packet a server host sends late and sometimes lost:
    /// `netem delay 20ms loss 5%` where the kernel has netem. Where it has
    /// not (the sandbox CI kernel is built without CONFIG_NET_SCH_NETEM),
    /// the nearest the kernel offers: an HTB class limited to 100 kbit/s
    /// (a ~200-byte segment takes ~16 ms on the wire, and bursts queue) and
    /// a classic-BPF filter sending a random 5% of IP packets to a class
    /// whose queue holds nothing, so they are dropped. Returns which.
    fn impair_all(&self) -> String {
        let mut how = String::new();
        for name in ALL {
            let host = self.host(name);
            let (ns, dev) = (host.ns.as_str(), host.link.as_str());
            let netem = run(
                "tc",
                &[
                    "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", "delay", "20ms", "loss",
                    "5%",
                ],
            );
            how = match netem {
                Ok(_) => "netem delay 20ms loss 5%".to_owned(),
                Err(netem_error) => {
                    emulate_netem(ns, dev).unwrap_or_else(|error| {
                        panic!("cannot impair links: {netem_error}; and without netem: {error}")
                    });
                    format!(
                        "no netem in this kernel ({netem_error}); emulated with htb rate 100kbit \
                         and a BPF filter dropping 5% of packets"
                    )
                }
            };
        }
        how
    }
}

/// 5% random loss and a slow link without netem (see `Lab::impair_all`).
fn emulate_netem(ns: &str, dev: &str) -> Result<(), String> {
    let tc = |args: &[&str]| {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("tc", &all).map(drop)
    };
    tc(&[
        "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
    ])?;
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", "100kbit",
        "ceil", "100kbit",
    ])?;
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:2", "htb", "rate", "100mbit",
        "quantum", "1514",
    ])?;
    tc(&[
        "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0",
    ])?;
    // A = random u32 (the SKF_AD_RANDOM extension); if A >= 0.95 * 2^32
    // return class 1:2 (dropped), else 0 (the default class 1:1).
    let program = "4,32 0 0 4294963256,53 1 0 4080218931,6 0 0 0,6 0 0 65538";
    tc(&[
        "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "bpf",
        "bytecode", program,
    ])
}

/// `ip netns exec NS herd send ADDRESS LINE...`: everything the server
/// answered, or why not.
fn run_herd_send(
    ns: &str,
    address: &str,
    lines: &[String],
    timeout_secs: u32,
) -> Result<String, String> {
    let timeout = timeout_secs.to_string();
    let mut args = vec![
        "netns",
        "exec",
        ns,
        herd_binary(),
        "send",
        "--timeout",
        &timeout,
        address,
    ];
    args.extend(lines.iter().map(String::as_str));
    run("ip", &args)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The servers first: a namespace lives on while a process is in it.
        for child in self.servers.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(error) = ip(&["netns", "del", ns]) {
                say(&format!("multihost cleanup: {error}"));
            }
        }
    }
}

#[test]
fn updates_flood_between_hosts_over_real_addresses() {
    let Some(mut lab) = Lab::start("updates_flood_between_hosts_over_real_addresses") else {
        return;
    };
    lab.start_herd();
    let at = lab.iamat("Hill", "kiwi.cs.ucla.edu", "+34.068930-118.445127");
    lab.await_everywhere(&[("kiwi.cs.ucla.edu", &at)]);
    // And from the far end of the topology.
    let at = lab.iamat("Campbell", "kiwi.cs.ucla.edu", "+1+1");
    lab.await_everywhere(&[("kiwi.cs.ucla.edu", &at)]);

    // The client reached Hill from the client host's address ...
    let client_ip = &lab.host(CLIENT).ip;
    // The log is written in the background: wait for the line.
    common::eventually("Hill's log to show the client host", || {
        lab.log("Hill").contains(&format!("address={client_ip}:"))
    });
    // ... and Hill's peer links run to its neighbours' hosts, and only
    // theirs, on the peer port.
    let sockets = run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.host("Hill").ns,
            "ss",
            "-Htn",
            "state",
            "established",
        ],
    )
    .expect("ss in Hill's namespace");
    for neighbour in ["Jaquez", "Smith"] {
        let peer = format!("{}:{PEER_PORT}", lab.host(neighbour).ip);
        assert!(sockets.contains(&peer), "no link to {peer}:\n{sockets}");
    }
    for stranger in ["Campbell", "Singleton"] {
        let address = format!("{}:", lab.host(stranger).ip);
        assert!(!sockets.contains(&address), "{stranger}:\n{sockets}");
    }
}

#[test]
fn updates_converge_over_slow_lossy_links() {
    let Some(mut lab) = Lab::start("updates_converge_over_slow_lossy_links") else {
        return;
    };
    // Impaired from the start: the handshakes cross the lossy links too.
    // Clients report from the client host, across the impaired links; the
    // checks ask each server from inside its own host, which is quicker.
    let how = lab.impair_all();
    say(&format!("updates_converge_over_slow_lossy_links: {how}"));
    lab.ask_locally = true;
    let started = Instant::now();
    lab.start_herd();
    let mut newest: Vec<(String, String)> = Vec::new();
    // Reports at every server, each client moving between servers.
    for (i, server) in ALL.iter().cycle().take(15).enumerate() {
        let id = format!("m{}", i % 4);
        let at = lab.iamat(server, &id, "+0.5-25.5");
        newest.retain(|(known, _)| *known != id);
        newest.push((id, at));
    }
    // And a batch, pipelined on one connection.
    newest.extend(lab.report_many("Smith", "batch", 30));
    lab.await_reports(&newest);
    say(&format!(
        "updates_converge_over_slow_lossy_links: converged {:.1?} after the start",
        started.elapsed()
    ));
}

#[test]
fn a_host_cut_off_catches_up_when_its_link_comes_back() {
    let Some(mut lab) = Lab::start("a_host_cut_off_catches_up_when_its_link_comes_back") else {
        return;
    };
    lab.start_herd();
    let before = lab.iamat("Hill", "early", "+10+10");
    lab.await_everywhere(&[("early", &before)]);

    // Campbell's neighbours are Smith and Singleton; wait until both have
    // noticed the silence and dropped their links to it, so that what
    // follows travels by catch-up on new links, not by TCP retransmission.
    let drops = |lab: &Lab| {
        ["Smith", "Singleton"].map(|name| {
            lab.log(name)
                .matches("link down: sending to Campbell")
                .count()
        })
    };
    let drops_before = drops(&lab);
    lab.cut("Campbell");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = drops(&lab);
        if now[0] > drops_before[0] && now[1] > drops_before[1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Campbell's links never dropped{}",
            lab.log_tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Updates elsewhere, more than one catch-up batch (256) of them; and
    // Campbell still serves its own clients while cut off.
    let during = lab.iamat("Hill", "during", "+20+20");
    let moved = lab.iamat("Jaquez", "early", "+30+30");
    let bulk = lab.report_many("Hill", "bulk", 600);
    let island = lab.iamat("Campbell", "island", "+40+40");
    let island_bulk = lab.report_many("Campbell", "ibulk", 300);
    let rest = ["Hill", "Jaquez", "Smith", "Singleton"];
    lab.await_on(&rest, &[("during", &during), ("early", &moved)]);
    assert_eq!(
        lab.held("Campbell", &["during", "early", "bulk599", "island"]),
        [None, Some(before.clone()), None, Some(island.clone())]
    );
    for name in rest {
        assert_eq!(
            lab.held(name, &["island", "ibulk0"]),
            [None, None],
            "{name}"
        );
    }

    let healed = Instant::now();
    lab.heal("Campbell");
    let mut expected = vec![
        ("during", during.as_str()),
        ("early", &moved),
        ("island", &island),
    ];
    // A sample of the bulk, and its last reports.
    let sample = |reports: &[(String, String)], step: usize| {
        let last = reports.last().cloned();
        reports
            .iter()
            .step_by(step)
            .cloned()
            .chain(last)
            .collect::<Vec<_>>()
    };
    let (bulk, island_bulk) = (sample(&bulk, 47), sample(&island_bulk, 31));
    expected.extend(
        bulk.iter()
            .chain(&island_bulk)
            .map(|(id, at)| (id.as_str(), at.as_str())),
    );
    lab.await_everywhere(&expected);
    say(&format!(
        "a_host_cut_off_catches_up_when_its_link_comes_back: converged {:.1?} after the link came back",
        healed.elapsed()
    ));
}

/// A long run over the impaired links: round after round, every server
/// takes reports while one host after another is cut off and healed, and
/// each round moves every group of clients to another server. Once all
/// is healed, every server holds each client's newest report: nothing
/// acknowledged on either side of a cut is lost, and newer wins across
/// them. `HERD_MULTIHOST_SECONDS=N` keeps it going for N seconds (by
/// default, one round per host).
#[test]
fn a_long_run_of_hosts_cut_off_over_lossy_links_loses_nothing() {
    let Some(mut lab) = Lab::start("a_long_run_of_hosts_cut_off_over_lossy_links_loses_nothing")
    else {
        return;
    };
    let how = lab.impair_all();
    lab.ask_locally = true;
    lab.start_herd();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(env_number("HERD_MULTIHOST_SECONDS", 0));
    let mut newest: HashMap<String, String> = HashMap::new();
    let mut round = 0;
    while round < ALL.len() || Instant::now() < deadline {
        let cut = ALL[round % ALL.len()];
        lab.cut(cut);
        for (i, server) in ALL.iter().enumerate() {
            let group = (i + round) % ALL.len();
            for (id, at) in lab.report_many(server, &format!("g{group}-"), 20) {
                newest.insert(id, at);
            }
        }
        lab.heal(cut);
        round += 1;
    }
    let healed = Instant::now();
    let newest: Vec<(String, String)> = newest.into_iter().collect();
    lab.await_reports(&newest);
    say(&format!(
        "a_long_run_of_hosts_cut_off_over_lossy_links_loses_nothing: {round} rounds ({how}) \
         in {:.1?}, {} clients converged {:.1?} after the last heal",
        healed - started,
        newest.len(),
        healed.elapsed()
    ));
}

//! Test support: run a herd of real `herd serve` processes on free ports and
//! talk to them over TCP like a client would.
//!
//! Ports are found by binding port 0 and letting go; should another process
//! take one in between, the server fails to bind, and the herd is started
//! again on fresh ports. Waiting is always for a condition with a deadline
//! (`eventually`), never a bare sleep.

#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The five-server herd of SPEC §1.
pub const DEFAULT_TOPOLOGY: &[(&str, &[&str])] = &[
    ("Hill", &["Jaquez", "Smith"]),
    ("Jaquez", &["Hill", "Singleton"]),
    ("Smith", &["Hill", "Singleton", "Campbell"]),
    ("Campbell", &["Smith", "Singleton"]),
    ("Singleton", &["Jaquez", "Smith", "Campbell"]),
];

/// How long any awaited condition may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds, failing the test after `PATIENCE`.
#[track_caller]
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The `herd` binary under test.
pub fn herd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_herd")
}

/// A free TCP port on 127.0.0.1, as far as the OS knows right now.
pub fn free_address() -> SocketAddr {
    use std::collections::HashSet;
    use std::sync::Mutex;
    // Tests of one binary run in parallel: never hand the same port to two
    // of them, even if the OS offers it again once released.
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    // Below the kernel's ephemeral range (32768 and up by default), so that
    // no outgoing connection takes the port while a server is restarting;
    // any port found bindable will do, else one the OS picks.
    let mut tries = 0;
    loop {
        tries += 1;
        let wanted = if tries < 100 {
            rand::random_range(15_000..32_000u16)
        } else {
            0
        };
        let Ok(address) = TcpListener::bind(("127.0.0.1", wanted)).and_then(|l| l.local_addr())
        else {
            continue;
        };
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given
            .get_or_insert_with(HashSet::new)
            .insert(address.port())
        {
            return address;
        }
    }
}

/// A client time a little after now, unique per call within this process.
pub fn now_text() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    // Strictly increasing even when the clock is not.
    let nanos = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .map_or(now, |last| now.max(last + 1));
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// One server process of a test herd.
pub struct ServerProcess {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    child: Option<Child>,
}

/// A herd of real server processes, stopped (by process id) when dropped.
pub struct Herd {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub servers: Vec<ServerProcess>,
    secret: String,
}

impl Herd {
    /// Starts the five-server herd of SPEC §1.
    pub fn start_default() -> Herd {
        Herd::start(DEFAULT_TOPOLOGY)
    }

    /// Starts a herd with the given servers and neighbours.
    pub fn start(topology: &[(&str, &[&str])]) -> Herd {
        Herd::start_with(topology, "")
    }

    /// Starts a herd, with `extra` TOML (top-level keys and tables such as
    /// `[limits]`) added to its config.
    pub fn start_with(topology: &[(&str, &[&str])], extra: &str) -> Herd {
        for _ in 0..5 {
            let mut herd = Herd::configure(topology, extra);
            if herd.launch_all() {
                return herd;
            }
        }
        panic!("could not start a herd on free ports five times in a row");
    }

    /// Writes a config on fresh free ports; starts nothing.
    pub fn configure(topology: &[(&str, &[&str])], extra: &str) -> Herd {
        let dir = tempfile::tempdir().expect("temporary folder");
        let servers: Vec<ServerProcess> = topology
            .iter()
            .map(|(name, _)| ServerProcess {
                name: (*name).to_owned(),
                client: free_address(),
                peer: free_address(),
                child: None,
            })
            .collect();
        // Top-level keys first: `extra` may open tables such as [limits].
        let mut config = format!("log_dir = \"logs\"\n{extra}\n");
        for ((name, neighbours), server) in topology.iter().zip(&servers) {
            let neighbours: Vec<String> = neighbours.iter().map(|n| format!("{n:?}")).collect();
            config.push_str(&format!(
                "\n[[servers]]\nname = {name:?}\nclient = \"{}\"\npeer = \"{}\"\nneighbours = [{}]\n",
                server.client,
                server.peer,
                neighbours.join(", ")
            ));
        }
        let config_path = dir.path().join("herd.toml");
        std::fs::write(&config_path, config).expect("writing the test config");
        let secret: [u8; 16] = rand::random();
        Herd {
            dir,
            config_path,
            servers,
            secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn launch_all(&mut self) -> bool {
        let names: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        for name in &names {
            if !self.launch(name) {
                self.stop_all();
                return false;
            }
        }
        true
    }

    /// The herd's shared secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The command that runs server `name` of this herd.
    pub fn command(&self, name: &str) -> Command {
        self.command_with_config(name, &self.config_path)
    }

    /// The command that runs server `name` of this herd from its own config
    /// file `config` (the fault campaign gives each server one, in which its
    /// neighbours' peer addresses are those of fault-injecting proxies).
    pub fn command_with_config(&self, name: &str, config: &Path) -> Command {
        let mut command = Command::new(herd_binary());
        command
            .arg("serve")
            .arg(name)
            .arg("--config")
            .arg(config)
            .env("HERD_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts server `name` and waits until it accepts clients. Returns
    /// false if it exited instead (its port was taken, say).
    pub fn launch(&mut self, name: &str) -> bool {
        let config = self.config_path.clone();
        self.launch_with_config(name, &config)
    }

    /// `launch`, with the server reading its own config file `config`.
    pub fn launch_with_config(&mut self, name: &str, config: &Path) -> bool {
        let mut child = self
            .command_with_config(name, config)
            .spawn()
            .expect("spawning herd serve");
        let client = self.server(name).client;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if TcpStream::connect(client).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                eprintln!("{name} exited at start ({status}): {stderr}");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never listened on {client}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.server_mut(name).child = Some(child);
        true
    }

    pub fn server(&self, name: &str) -> &ServerProcess {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
    }

    fn server_mut(&mut self, name: &str) -> &mut ServerProcess {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
    }

    /// The process id of a running server.
    pub fn pid(&self, name: &str) -> Pid {
        let child = self.server(name).child.as_ref().expect("server is running");
        Pid::from_raw(child.id() as i32)
    }

    /// Sends `signal` to server `name` (its own process only).
    pub fn signal(&self, name: &str, signal: Signal) {
        kill(self.pid(name), signal).expect("signalling a server we started");
    }

    /// How server `name`'s process ended, if it has (reaping it), without
    /// waiting; `None` while it runs (or is stopped) or was never started.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let child = self.server_mut(name).child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGKILLs server `name` and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.server_mut(name).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs server `name` and returns how long it took to exit.
    pub fn terminate(&mut self, name: &str) -> Duration {
        let mut child = self
            .server_mut(name)
            .child
            .take()
            .expect("server is running");
        let started = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        while child.try_wait().expect("waiting for a server").is_none() {
            assert!(started.elapsed() < PATIENCE, "{name} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(2));
        }
        started.elapsed()
    }

    /// Starts a stopped or killed server again on its own ports.
    pub fn restart(&mut self, name: &str) {
        assert!(
            self.launch(name),
            "{name} could not start again on its ports"
        );
    }

    /// A new client connection to server `name`.
    pub fn client(&self, name: &str) -> LineClient {
        LineClient::connect(self.server(name).client)
    }

    /// The text of server `name`'s log file.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until WHATSAT for `client_id` at every listed server shows the
    /// AT line `expected`.
    #[track_caller]
    pub fn await_everywhere(&self, names: &[&str], client_id: &str, expected: &str) {
        for name in names {
            let mut client = self.client(name);
            eventually(&format!("{name} to know {expected}"), || {
                client.at_line_of(client_id).as_deref() == Some(expected)
            });
        }
    }

    /// Waits until every listed server holds, for every client in
    /// `acknowledged` (client id, AT reply, in the order they were made),
    /// the last AT reply made for it.
    #[track_caller]
    pub fn await_newest(&self, names: &[&str], acknowledged: &[(String, String)]) {
        let mut newest: Vec<(&str, &str)> = Vec::new();
        for (client, at) in acknowledged {
            match newest.iter_mut().find(|(c, _)| c == client) {
                Some(entry) => entry.1 = at,
                None => newest.push((client, at)),
            }
        }
        for (client, at) in newest {
            self.await_everywhere(names, client, at);
        }
    }

    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        for name in names {
            self.kill(&name);
        }
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A blocking line client with timeouts, for tests.
pub struct LineClient {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl LineClient {
    pub fn connect(address: SocketAddr) -> LineClient {
        LineClient::from_stream(TcpStream::connect(address).expect("connecting to a test server"))
    }

    /// A line client over an already connected stream.
    pub fn from_stream(stream: TcpStream) -> LineClient {
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        let reader = BufReader::new(stream.try_clone().expect("cloning a socket"));
        LineClient { stream, reader }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("writing to a test server");
    }

    /// Sends one line and `\n`.
    pub fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
    }

    /// Reads one line, without its `\n`, as bytes.
    pub fn read_line_bytes(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .expect("reading a reply");
        assert_eq!(
            line.pop(),
            Some(b'\n'),
            "connection closed mid-reply: {line:?}"
        );
        line
    }

    /// Reads one line, without its `\n`.
    pub fn read_line(&mut self) -> String {
        String::from_utf8(self.read_line_bytes()).expect("UTF-8 reply")
    }

    /// Reads a whole WHATSAT answer: the AT line, the JSON and the blank line.
    pub fn read_answer(&mut self) -> (String, String) {
        let at = self.read_line();
        if at.starts_with("? ") {
            return (at, String::new());
        }
        let mut json = String::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            json.push_str(&line);
            json.push('\n');
        }
        (at, json)
    }

    /// Sends a line and reads the one-line reply.
    pub fn request(&mut self, line: &str) -> String {
        self.send_line(line);
        self.read_line()
    }

    /// Reports a location now; returns the AT reply.
    pub fn iamat(&mut self, client_id: &str, location: &str) -> String {
        self.request(&format!("IAMAT {client_id} {location} {}", now_text()))
    }

    /// The AT line this server holds for `client_id`, or `None` if it
    /// answers `?` (does not know the client).
    pub fn at_line_of(&mut self, client_id: &str) -> Option<String> {
        self.send_line(&format!("WHATSAT {client_id} 1 1"));
        let (at, _) = self.read_answer();
        (!at.starts_with("? ")).then_some(at)
    }

    /// Reads until the server closes the connection.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("reading to EOF");
        rest
    }

    /// Closes the sending side (EOF to the server).
    pub fn finish_sending(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }
}

//! Test support: a herd of servers run in this process through
//! `herd::server::run`, on listeners bound to 127.0.0.1:0 before the config
//! is written from their addresses; a small line client; `eventually`.
//!
//! `process` runs `herd serve` processes instead, for the tests where a
//! separate process is the point (the command line, signals, the log file,
//! a process's memory). Waiting is always for a condition with a deadline
//! (`eventually`), never a bare sleep.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod pki;
pub mod postgres;
pub mod process;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd::config::HerdConfig;
use herd::peer::auth::Keyring;
use herd::server::{self, ServerSetup};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

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

/// A whole number from the environment variable `name` (how long or with
/// which seed a test runs), or `default` when it is not set; a value that
/// is not a whole number fails the test rather than being ignored.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The `herd` binary under test.
pub fn herd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_herd")
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

/// The text of a herd config: `extra` (top-level keys and tables such as
/// `[limits]`), then each server of `topology` with its client and peer
/// address from `addresses`, in the same order.
pub fn config_text(
    topology: &[(&str, &[&str])],
    addresses: &[(SocketAddr, SocketAddr)],
    extra: &str,
) -> String {
    config_text_with_admin(topology, addresses, &[], extra)
}

/// `config_text`, each server with the admin address of `admin` in the
/// same order (none for a server past its end).
pub fn config_text_with_admin(
    topology: &[(&str, &[&str])],
    addresses: &[(SocketAddr, SocketAddr)],
    admin: &[SocketAddr],
    extra: &str,
) -> String {
    // Top-level keys first: `extra` may open tables such as [limits].
    let mut config = format!("log_dir = \"logs\"\n{extra}\n");
    for (i, ((name, neighbours), (client, peer))) in topology.iter().zip(addresses).enumerate() {
        let neighbours: Vec<String> = neighbours.iter().map(|n| format!("{n:?}")).collect();
        let admin = admin
            .get(i)
            .map(|admin| format!("admin = \"{admin}\"\n"))
            .unwrap_or_default();
        let _ = write!(
            config,
            "\n[[servers]]\nname = {name:?}\nclient = \"{client}\"\npeer = \"{peer}\"\n{admin}neighbours = [{}]\n",
            neighbours.join(", ")
        );
    }
    config
}

/// A keyring of one herd secret.
pub fn keyring(secret: &str) -> Arc<Keyring> {
    Arc::new(Keyring::new(&[secret]).expect("a test secret is not empty"))
}

/// A fresh random herd secret, as hex.
pub fn new_secret() -> String {
    let secret: [u8; 16] = rand::random();
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------ ports

/// A TCP port of 127.0.0.1 held by this process: bound, and listening only
/// while a server runs on it. Bound but not listening, it refuses
/// connections as a port whose server is down does, and no other socket
/// can take it meanwhile, so a stopped server starts again on its own
/// ports.
pub struct Port {
    socket: socket2::Socket,
}

impl Port {
    /// A port the OS picks.
    pub fn any() -> Port {
        Port::at("127.0.0.1:0".parse().expect("an address")).expect("binding 127.0.0.1:0")
    }

    /// `address` bound again. SO_REUSEADDR, as the binary sets it, so that
    /// the connections of an earlier server on it (in TIME_WAIT) are no
    /// obstacle.
    pub fn at(address: SocketAddr) -> std::io::Result<Port> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        Ok(Port { socket })
    }

    /// `address` bound again, once the socket that had it has let go. A
    /// server's listener closes as it stops, a moment before the port is
    /// bound here again; in that moment the kernel may lend the port (from
    /// its ephemeral range) to some outgoing connection, which holds it a
    /// while.
    #[track_caller]
    pub fn again(address: SocketAddr) -> Port {
        let mut port = None;
        eventually(&format!("{address} to be free again"), || {
            port = Port::at(address).ok();
            port.is_some()
        });
        port.expect("bound")
    }

    pub fn address(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .expect("a bound IPv4 socket has an address")
    }

    /// Starts listening; the listener goes to a server.
    pub fn listen(self) -> std::net::TcpListener {
        // As deep as the binary's (the kernel caps it at somaxconn).
        self.socket.listen(8192).expect("listening on a bound port");
        self.socket
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        self.socket.into()
    }
}

// ------------------------------------------------------------ logs

/// What one server logged (every `tracing` event at INFO and above, from
/// the threads of its runtime), as lines of `LEVEL message fields`, as
/// the log file has them.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<S: tracing::Subscriber> Layer<S> for Log {
    fn on_event(&self, event: &tracing::Event<'_>, _context: Context<'_, S>) {
        struct Fields {
            fields: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.message.push_str(value);
                } else {
                    let _ = write!(self.fields, " {}={value}", field.name());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let _ = write!(self.message, "{value:?}");
                } else {
                    let _ = write!(self.fields, " {}={value:?}", field.name());
                }
            }
        }
        let mut line = Fields {
            fields: String::new(),
            message: String::new(),
        };
        event.record(&mut line);
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            log,
            "{} {}{}",
            event.metadata().level(),
            line.message,
            line.fields
        );
    }
}

thread_local! {
    /// The log this runtime thread's events go to, while the thread lives.
    static LOG_GUARD: RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { RefCell::new(None) };
}

/// A runtime for one server, one worker thread as `herd up` gives each
/// server, whose threads log to `log`. (A process has one global log; the
/// servers of one test process each get theirs by being the default on
/// their own runtime's threads.)
fn server_runtime(name: &str, log: Log) -> tokio::runtime::Runtime {
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(log),
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("herd-{name}"))
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            LOG_GUARD.with(|slot| *slot.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| LOG_GUARD.with(|slot| drop(slot.borrow_mut().take())))
        .build()
        .expect("a runtime for a test server")
}

/// A whole WHATSAT answer read a line at a time by `read_line` (each
/// without its `\n`): the AT line, then the JSON up to the blank line; a
/// `? ` line alone for a refused request.
pub fn read_answer_with(mut read_line: impl FnMut() -> String) -> (String, String) {
    let at = read_line();
    if at.starts_with("? ") {
        return (at, String::new());
    }
    let mut json = String::new();
    loop {
        let line = read_line();
        if line.is_empty() {
            break;
        }
        json.push_str(&line);
        json.push('\n');
    }
    (at, json)
}

// ------------------------------------------------------------ one server

/// One server running in this process, on a runtime of its own.
pub struct RunningServer {
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    /// The herd secrets it accepts, which a test may replace as it runs.
    pub keyring: Arc<Keyring>,
    /// What `server::run` returned, once it has.
    finished: mpsc::Receiver<Result<(), String>>,
}

impl RunningServer {
    /// Runs server `name` of `config`, with the herd secret `secret` and
    /// the places provider its config names, on `client` and `peer`.
    pub fn start(
        config: &HerdConfig,
        name: &str,
        secret: &str,
        ports: (Port, Port),
        log: Log,
    ) -> RunningServer {
        RunningServer::start_with_secrets(config, name, &[secret], ports, log)
    }

    /// `start`, accepting `secrets` and dialling with the first.
    pub fn start_with_secrets(
        config: &HerdConfig,
        name: &str,
        secrets: &[&str],
        (client, peer): (Port, Port),
        log: Log,
    ) -> RunningServer {
        RunningServer::start_with_admin(config, name, secrets, (client, peer), None, log)
    }

    /// `start_with_secrets`, with an admin port on `admin` if given.
    pub fn start_with_admin(
        config: &HerdConfig,
        name: &str,
        secrets: &[&str],
        (client, peer): (Port, Port),
        admin: Option<Port>,
        log: Log,
    ) -> RunningServer {
        let places = herd::places::from_config(config, name)
            .unwrap_or_else(|error| panic!("{name}'s places provider: {error:#}"));
        let keyring = Arc::new(Keyring::new(secrets).expect("test secrets are not empty"));
        let setup = ServerSetup::from_config(config, name, keyring, places)
            .unwrap_or_else(|error| panic!("setting up {name}: {error}"));
        RunningServer::start_setup(
            setup,
            Some(client.listen()),
            None,
            peer.listen(),
            admin.map(Port::listen),
            log,
        )
    }

    /// Runs server `name` of `config` with the herd secret `secret`, taking
    /// TLS clients on `client_tls` with `certificate` and plain ones on
    /// `client` if given.
    pub fn start_with_tls(
        config: &HerdConfig,
        name: &str,
        secret: &str,
        (client, client_tls, peer): (Option<Port>, Port, Port),
        certificate: Arc<herd::client::tls::ClientTls>,
        log: Log,
    ) -> RunningServer {
        let places = herd::places::from_config(config, name)
            .unwrap_or_else(|error| panic!("{name}'s places provider: {error:#}"));
        let mut setup = ServerSetup::from_config(config, name, keyring(secret), places)
            .unwrap_or_else(|error| panic!("setting up {name}: {error}"));
        setup.client_tls = Some(certificate);
        RunningServer::start_setup(
            setup,
            client.map(Port::listen),
            Some(client_tls.listen()),
            peer.listen(),
            None,
            log,
        )
    }

    /// Runs a server from `setup` on listening sockets.
    fn start_setup(
        setup: ServerSetup,
        client: Option<std::net::TcpListener>,
        client_tls: Option<std::net::TcpListener>,
        peer: std::net::TcpListener,
        admin: Option<std::net::TcpListener>,
        log: Log,
    ) -> RunningServer {
        let name = setup.name.clone();
        let keyring = setup.keyring.clone();
        let runtime = server_runtime(&name, log);
        let shutdown = CancellationToken::new();
        let (done, finished) = mpsc::channel();
        let token = shutdown.clone();
        let label = name.clone();
        runtime.spawn(async move {
            let outcome = async {
                let listen = tokio::net::TcpListener::from_std;
                let listeners = server::Listeners {
                    client: client.map(listen).transpose()?,
                    client_tls: client_tls.map(listen).transpose()?,
                    peer: listen(peer)?,
                    admin: admin.map(listen).transpose()?,
                };
                server::serve(setup, listeners, token).await
            }
            .await
            .map_err(|error| format!("{error:#}"));
            if let Err(error) = &outcome {
                // Said at once: the test may be waiting on this server.
                eprintln!("{label} stopped with an error: {error}");
            }
            let _ = done.send(outcome);
        });
        RunningServer {
            name,
            runtime: Some(runtime),
            shutdown,
            keyring,
            finished,
        }
    }

    /// Stops the server as SIGTERM does (`server::run` returns once its
    /// connections are done or the drain time is up) and waits for it.
    /// Panics if it does not stop, or stopped with an error.
    pub fn stop(mut self) {
        let outcome = self.shut_down();
        match outcome {
            Some(Ok(())) => {}
            Some(Err(error)) => panic!("{} had stopped with an error: {error}", self.name),
            None => panic!("{} did not stop", self.name),
        }
    }

    /// Cancels, waits for `run` to return (at most `PATIENCE`), and drops
    /// whatever tasks are left, closing their sockets.
    fn shut_down(&mut self) -> Option<Result<(), String>> {
        let runtime = self.runtime.take()?;
        self.shutdown.cancel();
        let outcome = self.finished.recv_timeout(PATIENCE).ok();
        if tokio::runtime::Handle::try_current().is_ok() {
            // (A runtime cannot wait for another from inside an async test.)
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(PATIENCE);
        }
        outcome
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

// ------------------------------------------------------------ paused clock

/// The setup of server `name` of a herd of `topology`, and every server's
/// ports, bound here, in `topology`'s order: for tests that run
/// `server::run` themselves (on tokio's paused clock, say). Its places
/// provider is `places`, else the default; its store is kept in memory only.
pub fn setup(
    topology: &[(&str, &[&str])],
    name: &str,
    places: Option<Arc<dyn herd::places::Places>>,
) -> (ServerSetup, Vec<(Port, Port)>) {
    let (mut setups, ports) = setups(topology, &[name], places);
    (setups.pop().expect("one setup"), ports)
}

/// `setup` for each of `names`, all of one herd, with one secret.
pub fn setups(
    topology: &[(&str, &[&str])],
    names: &[&str],
    places: Option<Arc<dyn herd::places::Places>>,
) -> (Vec<ServerSetup>, Vec<(Port, Port)>) {
    let ports: Vec<(Port, Port)> = topology
        .iter()
        .map(|_| (Port::any(), Port::any()))
        .collect();
    let addresses: Vec<(SocketAddr, SocketAddr)> = ports
        .iter()
        .map(|(client, peer)| (client.address(), peer.address()))
        .collect();
    let text = config_text(topology, &addresses, "");
    let config = HerdConfig::parse(&text, "test config", &std::env::temp_dir())
        .unwrap_or_else(|error| panic!("the test config: {error}\n{text}"));
    let secret = new_secret();
    let setups = names
        .iter()
        .map(|name| {
            let places = places.clone().unwrap_or_else(|| {
                herd::places::from_config(&config, name).expect("the default places provider")
            });
            let mut setup = ServerSetup::from_config(&config, name, keyring(&secret), places)
                .unwrap_or_else(|error| panic!("setting up {name}: {error}"));
            setup.storage = None;
            setup
        })
        .collect();
    (setups, ports)
}

/// Awaits `future` with tokio's paused clock held still, for a test that
/// waits on real sockets or threads: while a blocking task is in flight,
/// tokio does not move a paused clock on (see `tokio::time::pause`), so no
/// timer fires merely because the runtime sat idle waiting for the kernel.
/// Fails the test if `future` is not done after `PATIENCE` of real time,
/// as it never is if it waits on a timer.
pub async fn with_clock_held<T>(what: &str, future: impl Future<Output = T>) -> T {
    let (release, released) = mpsc::channel::<()>();
    let mut holder = tokio::task::spawn_blocking(move || {
        let _ = released.recv_timeout(PATIENCE);
    });
    tokio::select! {
        output = future => {
            drop(release);
            holder.await.expect("the clock holder");
            output
        }
        _ = &mut holder => panic!("{what}: not done after {PATIENCE:?} with the clock held"),
    }
}

// ------------------------------------------------------------ a herd

/// One server of a test herd: its addresses, and its listeners or its run.
pub struct TestServer {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// The admin port's address, for a herd started with them.
    pub admin: Option<SocketAddr>,
    /// The ports, held while the server is stopped.
    ports: Option<(Port, Port)>,
    admin_port: Option<Port>,
    running: Option<RunningServer>,
    log: Log,
}

/// A herd of servers running in this process, stopped when dropped.
pub struct Herd {
    pub dir: tempfile::TempDir,
    /// The config, also written here (data and logs are relative to it).
    pub config_path: PathBuf,
    pub config: HerdConfig,
    pub servers: Vec<TestServer>,
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
        let mut herd = Herd::configure(topology, extra);
        for (name, _) in topology {
            herd.launch(name);
        }
        herd
    }

    /// Starts a herd whose servers have admin ports too.
    pub fn start_with_admin(topology: &[(&str, &[&str])], extra: &str) -> Herd {
        let mut herd = Herd::configure_with(topology, extra, true);
        for (name, _) in topology {
            herd.launch(name);
        }
        herd
    }

    /// Binds every server's ports and writes the config from their
    /// addresses; starts nothing.
    pub fn configure(topology: &[(&str, &[&str])], extra: &str) -> Herd {
        Herd::configure_with(topology, extra, false)
    }

    /// `configure`, with an admin port for every server if `admin`.
    pub fn configure_with(topology: &[(&str, &[&str])], extra: &str, admin: bool) -> Herd {
        let dir = tempfile::tempdir().expect("temporary folder");
        let ports: Vec<(Port, Port)> = topology
            .iter()
            .map(|_| (Port::any(), Port::any()))
            .collect();
        let addresses: Vec<(SocketAddr, SocketAddr)> = ports
            .iter()
            .map(|(client, peer)| (client.address(), peer.address()))
            .collect();
        let admin_ports: Vec<Port> = if admin {
            topology.iter().map(|_| Port::any()).collect()
        } else {
            Vec::new()
        };
        let admin_addresses: Vec<SocketAddr> = admin_ports.iter().map(Port::address).collect();
        let text = config_text_with_admin(topology, &addresses, &admin_addresses, extra);
        let config_path = dir.path().join("herd.toml");
        std::fs::write(&config_path, &text).expect("writing the test config");
        let config = HerdConfig::parse(&text, &config_path.display().to_string(), dir.path())
            .unwrap_or_else(|error| panic!("the test config: {error}\n{text}"));
        let mut admin_ports = admin_ports.into_iter();
        let servers = topology
            .iter()
            .zip(ports)
            .map(|((name, _), ports)| TestServer {
                name: (*name).to_owned(),
                client: ports.0.address(),
                peer: ports.1.address(),
                ports: Some(ports),
                admin_port: admin_ports.next(),
                admin: None,
                running: None,
                log: Log::default(),
            })
            .collect::<Vec<TestServer>>()
            .into_iter()
            .map(|mut server| {
                server.admin = server.admin_port.as_ref().map(Port::address);
                server
            })
            .collect();
        Herd {
            dir,
            config_path,
            config,
            servers,
            secret: new_secret(),
        }
    }

    /// The herd's shared secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Starts server `name` on its ports. It accepts at once: connections
    /// wait in the listen backlog until it gets to them.
    pub fn launch(&mut self, name: &str) {
        let secret = self.secret.clone();
        self.launch_with_secret(name, &secret);
    }

    /// Starts server `name` on its ports with `secret` for the herd's
    /// secret (another herd's, say).
    pub fn launch_with_secret(&mut self, name: &str, secret: &str) {
        self.launch_with_secrets(name, &[secret]);
    }

    /// Starts server `name` on its ports accepting `secrets`, dialling with
    /// the first.
    pub fn launch_with_secrets(&mut self, name: &str, secrets: &[&str]) {
        let index = self.index(name);
        let server = &mut self.servers[index];
        assert!(server.running.is_none(), "{name} is already running");
        let ports = server
            .ports
            .take()
            .expect("a stopped server holds its ports");
        server.running = Some(RunningServer::start_with_admin(
            &self.config,
            name,
            secrets,
            ports,
            server.admin_port.take(),
            server.log.clone(),
        ));
    }

    /// The herd secrets running server `name` accepts, to replace while
    /// it runs.
    pub fn keyring(&self, name: &str) -> Arc<Keyring> {
        self.server(name)
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("{name} is not running"))
            .keyring
            .clone()
    }

    /// Server `name`'s peer port, listening, for a test to play that
    /// server on; it is started no more.
    pub fn take_listener(&mut self, name: &str) -> std::net::TcpListener {
        let index = self.index(name);
        let server = &mut self.servers[index];
        assert!(server.running.is_none(), "{name} is running");
        let (_, peer) = server
            .ports
            .take()
            .expect("a stopped server holds its ports");
        let listener = peer.listen();
        listener
            .set_nonblocking(false)
            .expect("a blocking listener");
        listener
    }

    /// Stops server `name` (see `RunningServer::stop`); its ports refuse
    /// connections until it is started again.
    pub fn stop(&mut self, name: &str) {
        let index = self.index(name);
        let server = &mut self.servers[index];
        server
            .running
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"))
            .stop();
        server.ports = Some((Port::again(server.client), Port::again(server.peer)));
        server.admin_port = server.admin.map(Port::again);
    }

    /// Starts a stopped server again on its own ports.
    pub fn restart(&mut self, name: &str) {
        self.launch(name);
    }

    /// Stops every running server: all are told at once, then waited for.
    pub fn stop_all(&mut self) {
        for server in &self.servers {
            if let Some(running) = &server.running {
                running.shutdown.cancel();
            }
        }
        let names: Vec<String> = self
            .servers
            .iter()
            .filter(|s| s.running.is_some())
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            self.stop(&name);
        }
    }

    fn index(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
    }

    pub fn server(&self, name: &str) -> &TestServer {
        &self.servers[self.index(name)]
    }

    /// A new client connection to server `name`.
    pub fn client(&self, name: &str) -> LineClient {
        LineClient::connect(self.server(name).client)
    }

    /// What server `name` has logged so far, over all its runs.
    pub fn log(&self, name: &str) -> String {
        self.server(name).log.text()
    }

    /// Waits until WHATSAT for `client_id` at every listed server shows the
    /// AT line `expected`.
    #[track_caller]
    pub fn await_everywhere(&self, names: &[&str], client_id: &str, expected: &str) {
        await_everywhere(|name| self.server(name).client, names, client_id, expected);
    }

    /// Waits until every listed server holds, for every client in
    /// `acknowledged` (client id, AT reply, in the order they were made),
    /// the last AT reply made for it.
    #[track_caller]
    pub fn await_newest(&self, names: &[&str], acknowledged: &[(String, String)]) {
        await_newest(|name| self.server(name).client, names, acknowledged);
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        // All told at once, then waited for, before the folder goes.
        for server in &self.servers {
            if let Some(running) = &server.running {
                running.shutdown.cancel();
            }
        }
        for server in &mut self.servers {
            drop(server.running.take());
        }
    }
}

/// `Herd::await_everywhere` for any herd, given where its servers listen.
#[track_caller]
pub fn await_everywhere(
    address_of: impl Fn(&str) -> SocketAddr,
    names: &[&str],
    client_id: &str,
    expected: &str,
) {
    for name in names {
        let mut client = LineClient::connect(address_of(name));
        eventually(&format!("{name} to know {expected}"), || {
            client.at_line_of(client_id).as_deref() == Some(expected)
        });
    }
}

/// `Herd::await_newest` for any herd, given where its servers listen.
#[track_caller]
pub fn await_newest(
    address_of: impl Fn(&str) -> SocketAddr,
    names: &[&str],
    acknowledged: &[(String, String)],
) {
    let mut newest: Vec<(&str, &str)> = Vec::new();
    for (client, at) in acknowledged {
        match newest.iter_mut().find(|(c, _)| c == client) {
            Some(entry) => entry.1 = at,
            None => newest.push((client, at)),
        }
    }
    for (client, at) in newest {
        await_everywhere(&address_of, names, client, at);
    }
}

// ------------------------------------------------------------ clients

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
        read_answer_with(|| self.read_line())
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

//! The `herd` command: run one server, run a whole herd, or talk to a server.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use herd::config::{HerdConfig, SECRET_ENV};
use herd::server::{self, ServerSetup};

/// An application-server herd: clients report where they are to any server
/// (IAMAT), the servers flood each newer location to one another, and any
/// server answers what is near a client (WHATSAT).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one server of the herd, by its name (e.g. `herd serve Hill`).
    ///
    /// The herd's shared secret comes from the config's `secret` or from
    /// $HERD_SECRET; every server of a herd must have the same one.
    Serve {
        /// The server's name in the herd config.
        name: String,
        #[command(flatten)]
        herd: HerdArgs,
        /// Worker threads; 0 means one per CPU. Several servers sharing a
        /// machine do best with 1 each (no wake-ups across threads).
        #[arg(long, default_value_t = 0, env = "HERD_THREADS")]
        threads: usize,
    },
    /// Run every server of the herd on this machine, one process each, until
    /// Ctrl-C. Makes up a shared secret unless one is configured.
    Up {
        #[command(flatten)]
        herd: HerdArgs,
    },
    /// Send lines to a server and print everything it answers.
    ///
    /// With no LINE arguments, the lines are read from standard input.
    Send {
        /// The server's client address, `host:port`.
        address: String,
        /// The lines to send, e.g. 'IAMAT kiwi +34.068930-118.445127 1621464827.959498503'.
        lines: Vec<String>,
        /// Give up after this many seconds without an answer.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Talk to a server interactively: type lines, see the answers.
    Client {
        /// The server's client address, `host:port`.
        address: String,
    },
    /// Print the embedded default herd config, a starting point for your own.
    Config,
    /// Work with places data.
    Places {
        #[command(subcommand)]
        command: PlacesCommand,
    },
}

#[derive(Subcommand)]
enum PlacesCommand {
    /// Turn an OpenStreetMap extract into a places database for
    /// `provider = "osm"`.
    ///
    /// Takes a .osm.pbf file as Geofabrik (https://download.geofabrik.de/)
    /// or BBBike (https://extract.bbbike.org/) publish them, and keeps every
    /// named point of interest of its nodes and ways.
    Import {
        /// The OpenStreetMap extract, e.g. finland-latest.osm.pbf.
        extract: PathBuf,
        /// The database file to write, e.g. finland.places.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct HerdArgs {
    /// The herd config (TOML). Without it, the embedded default five-server
    /// herd on 127.0.0.1 (see `herd config`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where to write each server's NAME.log (overrides the config's log_dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

impl HerdArgs {
    fn load(&self) -> anyhow::Result<HerdConfig> {
        let mut config = match &self.config {
            Some(path) => HerdConfig::load(path)?,
            None => HerdConfig::embedded(),
        };
        if let Some(log_dir) = &self.log_dir {
            config.log_dir = log_dir.clone();
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            name,
            herd,
            threads,
        } => serve(&name, &herd, threads),
        Command::Up { herd } => up(&herd),
        Command::Send {
            address,
            lines,
            timeout,
        } => runtime().and_then(|rt| rt.block_on(send(&address, lines, timeout))),
        Command::Client { address } => runtime().and_then(|rt| rt.block_on(client(&address))),
        Command::Config => {
            print!("{}", herd::config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Places {
            command: PlacesCommand::Import { extract, out },
        } => import_places(&extract, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    server_runtime(0)
}

/// A runtime with `threads` workers (one per CPU for 0); a single worker
/// runs everything on the calling thread.
fn server_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(name: &str, args: &HerdArgs, threads: usize) -> anyhow::Result<()> {
    let config = args.load()?;
    let server_config = config.server(name).map_err(anyhow::Error::msg)?.clone();
    let Some(secret) = config.secret_or_env() else {
        bail!(
            "no herd secret: set `secret` in the config or ${SECRET_ENV} (the same for every server); `herd up` makes one for you"
        );
    };
    let _log_guard = init_logging(&config.log_dir, name)?;
    raise_open_file_limit();
    let places = herd::places::from_config(&config, name)?;
    let setup = ServerSetup::from_config(&config, name, secret.into_bytes(), places)
        .map_err(anyhow::Error::msg)?;
    server_runtime(threads)?.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = cancel_on_signal(shutdown.clone()).context("handling signals")?;
        let client = listen(&server_config.client).await.with_context(|| {
            format!(
                "{name}: cannot listen for clients on {}",
                server_config.client
            )
        })?;
        let peer = listen(&server_config.peer).await.with_context(|| {
            format!(
                "{name}: cannot listen for neighbours on {}",
                server_config.peer
            )
        })?;
        tokio::spawn(on_signal);
        server::run(setup, client, peer, shutdown).await
    })
}

/// Binds `address` with a listen backlog deep enough for bursts of
/// thousands of connections (the usual 1024 overflows into SYN retries).
async fn listen(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(address).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // So that a restarted server binds again at once (SPEC §8).
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved).and_then(|()| socket.listen(8192)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Lets a server hold as many connections as its limits allow: raises the
/// soft limit on open files to the hard one (or higher, when allowed).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // Root may raise the hard limit too; anyone may raise soft to hard.
    let wanted = hard.max(1 << 20);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() && soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Takes over SIGTERM and SIGINT at once (so that one arriving a moment
/// later no longer kills the process outright), and returns the task that
/// cancels `token` when one arrives. Call it inside the runtime.
fn cancel_on_signal(token: CancellationToken) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        token.cancel();
    })
}

/// Sends every event to `LOG_DIR/NAME.log` through a background writer, so
/// that logging every message costs the hot path a formatted line and one
/// short lock, not a write.
fn init_logging(log_dir: &Path, name: &str) -> anyhow::Result<herd::log::FlushGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("creating log folder {}", log_dir.display()))?;
    let path = log_dir.join(format!("{name}.log"));
    let (layer, guard) = herd::log::FileLayer::open(&path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    layer.take_message_lines();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
    Ok(guard)
}

/// `herd places import EXTRACT --out FILE`.
fn import_places(extract: &Path, out: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let summary = herd::places::osm_import::import(extract, out, std::io::stderr().is_terminal())?;
    println!(
        "{} places ({} from nodes, {} from ways) written to {} ({} KiB) in {:.1} s",
        summary.places,
        summary.from_nodes,
        summary.from_ways,
        out.display(),
        summary.bytes.div_ceil(1024),
        started.elapsed().as_secs_f64()
    );
    if summary.ways_without_nodes > 0 {
        println!(
            "{} ways were left out: none of their nodes is in the extract",
            summary.ways_without_nodes
        );
    }
    Ok(())
}

fn up(args: &HerdArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let secret = config.secret_or_env().unwrap_or_else(|| {
        let bytes: [u8; 32] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let exe = std::env::current_exe().context("finding the herd binary")?;
    runtime()?.block_on(async {
        // Before any child exists, so that Ctrl-C or SIGTERM always stops
        // them rather than killing this process alone.
        let stop = CancellationToken::new();
        tokio::spawn(cancel_on_signal(stop.clone()).context("handling signals")?);
        let mut children = Vec::new();
        for server in &config.servers {
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("serve")
                .arg(&server.name)
                // All the servers share this machine: one thread each keeps
                // their tasks from waking each other across CPUs.
                .arg("--threads")
                .arg("1")
                .env(SECRET_ENV, &secret);
            if let Some(path) = &args.config {
                command.arg("--config").arg(path);
            }
            command.arg("--log-dir").arg(&config.log_dir);
            let child = command
                .spawn()
                .with_context(|| format!("starting {}", server.name))?;
            children.push((server, child));
        }
        // Report each server once it answers on its client port.
        let mut ready = true;
        for (server, child) in &mut children {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if TcpStream::connect(&server.client).await.is_ok() {
                    println!(
                        "{:<10} clients {:<21} peers {:<21} log {}",
                        server.name,
                        server.client,
                        server.peer,
                        config
                            .log_dir
                            .join(format!("{}.log", server.name))
                            .display()
                    );
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("herd: {} exited at start ({status})", server.name);
                    ready = false;
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    eprintln!(
                        "herd: {} is not listening on {} after 5 s",
                        server.name, server.client
                    );
                    ready = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if ready {
            println!("herd of {} servers is up; Ctrl-C stops it", children.len());
            let _ = std::io::stdout().flush();
            let mut watch = tokio::time::interval(Duration::from_millis(200));
            let mut exited = vec![false; children.len()];
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = watch.tick() => {}
                }
                for (i, (server, child)) in children.iter_mut().enumerate() {
                    if !exited[i]
                        && let Ok(Some(status)) = child.try_wait()
                    {
                        eprintln!(
                            "herd: {} exited ({status}); the others keep running",
                            server.name
                        );
                        exited[i] = true;
                    }
                }
            }
        }
        for (_, child) in &children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for (server, child) in &mut children {
            match tokio::time::timeout(Duration::from_secs(3), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("herd: {} did not stop; killing it", server.name);
                    let _ = child.kill().await;
                }
            }
        }
        if ready {
            Ok(())
        } else {
            bail!("the herd did not start")
        }
    })
}

async fn send(address: &str, lines: Vec<String>, timeout_secs: f64) -> anyhow::Result<()> {
    let wait = Duration::try_from_secs_f64(timeout_secs)
        .context("--timeout must be a positive number of seconds")?;
    let mut stream = tokio::time::timeout(wait, TcpStream::connect(address))
        .await
        .with_context(|| format!("connecting to {address}: timed out"))?
        .with_context(|| format!("connecting to {address}"))?;
    let mut input = Vec::new();
    if lines.is_empty() {
        tokio::io::stdin().read_to_end(&mut input).await?;
    } else {
        for line in lines {
            input.extend_from_slice(line.as_bytes());
            input.push(b'\n');
        }
    }
    stream.write_all(&input).await?;
    // EOF tells the server to answer everything and close (SPEC §2).
    stream.shutdown().await?;
    let mut stdout = tokio::io::stdout();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(wait, stream.read(&mut buffer))
            .await
            .context("no answer in time")??;
        if read == 0 {
            break;
        }
        stdout.write_all(&buffer[..read]).await?;
    }
    stdout.flush().await?;
    Ok(())
}

async fn client(address: &str) -> anyhow::Result<()> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    if std::io::stdin().is_terminal() {
        eprintln!("connected to {address}; type IAMAT or WHATSAT lines, Ctrl-D to finish");
    }
    let (reader, mut writer) = stream.into_split();
    let printer = tokio::spawn(async move {
        let mut reader = reader;
        let mut stdout = tokio::io::stdout();
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = reader.read(&mut buffer).await {
            if read == 0 || stdout.write_all(&buffer[..read]).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
    });
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    while stdin.read_until(b'\n', &mut line).await? > 0 {
        writer.write_all(&line).await?;
        line.clear();
    }
    writer.shutdown().await?;
    printer.await?;
    Ok(())
}

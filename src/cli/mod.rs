//! The `herd` command line: one module per subcommand, and what they share.

mod history;
mod notify;
mod places;
mod serve;
mod status;
mod talk;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use herd::config::HerdConfig;

/// An application-server herd: clients report where they are to any server
/// (IAMAT), the servers flood each newer location to one another, and any
/// server answers what is near a client (WHATSAT).
#[derive(Parser)]
#[command(version = env!("HERD_VERSION"), about, long_about = None)]
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
    ///
    /// With `client_tls = "HOST:PORT"` in its entry and a certificate (a
    /// `[tls]` table with `cert` and `key` PEM files), the server takes
    /// clients over TLS there too, or only there if its entry has no
    /// `client`. SIGHUP reads the config again: the herd secrets and the
    /// certificate are replaced for the next handshakes, and connections
    /// that are up stay up.
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
    /// Ask every server of the herd how it is, through its admin port, and
    /// print one table: reachable, clients held, links up, backlog, rates.
    ///
    /// Exits 0 only when every server answers and every link is up, so it
    /// serves as a readiness check in scripts.
    Status {
        #[command(flatten)]
        herd: HerdArgs,
        /// Ask again every 2 seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Print what the servers said as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send lines to a server and print everything it answers.
    ///
    /// With no LINE arguments, the lines are read from standard input.
    Send {
        /// The server's client address, `host:port` (its `client_tls`
        /// address with --tls).
        address: String,
        /// The lines to send, e.g. 'IAMAT kiwi +34.068930-118.445127 1621464827.959498503'.
        lines: Vec<String>,
        /// Give up after this many seconds without an answer.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        #[command(flatten)]
        tls: talk::TlsArgs,
    },
    /// Talk to a server interactively: type lines, see the answers.
    Client {
        /// The server's client address, `host:port` (its `client_tls`
        /// address with --tls).
        address: String,
        #[command(flatten)]
        tls: talk::TlsArgs,
    },
    /// Print a herd config: the embedded default five-server herd, or with
    /// --servers a generated herd of any size and shape on this machine.
    ///
    /// Examples: `herd config > herd.toml`;
    /// `herd config --servers 20 --topology random:3 > twenty.toml`, then
    /// `herd up --config twenty.toml`.
    Config {
        /// Generate a herd of this many servers (named S01, S02, …).
        #[arg(long)]
        servers: Option<usize>,
        /// How generated servers are linked: ring, chords (a ring and a
        /// link across from each server of the first half), mesh (every
        /// pair), or random:DEGREE[:SEED] (a random connected graph of that
        /// average degree).
        #[arg(long, default_value = "chords", requires = "servers")]
        topology: herd::config::shape::Shape,
        /// The first client port of a generated herd; its peer ports follow
        /// its client ports.
        #[arg(long, default_value_t = 12000, requires = "servers")]
        base_port: u16,
    },
    /// A client's archived reports, newest first; or the clients seen near
    /// a place; or erase a client, from the core database ([history]).
    ///
    /// Examples: `herd history kiwi --since 1795300000 --limit 10`;
    /// `herd history --near 34.07,-118.44 --radius 5 --json`;
    /// `herd history --forget kiwi`.
    History {
        #[command(flatten)]
        query: history::Query,
        #[command(flatten)]
        herd: HerdArgs,
    },
    /// Work with places data.
    Places {
        #[command(subcommand)]
        command: PlacesCommand,
    },
    /// Print a shell completion script for herd.
    ///
    /// For bash: `herd completions bash > ~/.local/share/bash-completion/completions/herd`;
    /// for zsh, into a folder of $fpath as `_herd`; for fish:
    /// `herd completions fish > ~/.config/fish/completions/herd.fish`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print herd's manual page (roff), e.g. `herd man > herd.1; man ./herd.1`.
    Man,
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

#[derive(clap::Args, Clone)]
pub(crate) struct HerdArgs {
    /// The herd config (TOML). Without it, the embedded default five-server
    /// herd on 127.0.0.1 (see `herd config`).
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// Where to write each server's NAME.log (overrides the config's log_dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

impl HerdArgs {
    pub(crate) fn load(&self) -> anyhow::Result<HerdConfig> {
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

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            name,
            herd,
            threads,
        } => serve::serve(&name, &herd, threads),
        Command::Up { herd } => up::up(&herd),
        Command::Status { herd, watch, json } => status::status(&herd, watch, json),
        Command::Send {
            address,
            lines,
            timeout,
            tls,
        } => runtime().and_then(|rt| rt.block_on(talk::send(&address, &tls, lines, timeout))),
        Command::Client { address, tls } => runtime().and_then(|rt| {
            let result = rt.block_on(talk::client(&address, &tls));
            // A read of standard input may be under way on a thread of the
            // runtime; it must not hold up the end of a closed session.
            rt.shutdown_background();
            result
        }),
        Command::Config {
            servers,
            topology,
            base_port,
        } => match servers {
            None => {
                print!("{}", herd::config::DEFAULT_CONFIG);
                Ok(())
            }
            Some(servers) => herd::config::shape::generate(servers, topology, base_port)
                .map(|config| print!("{}", config.to_toml()))
                .map_err(anyhow::Error::msg),
        },
        Command::Places {
            command: PlacesCommand::Import { extract, out },
        } => places::import(&extract, &out),
        Command::History { query, herd } => history::history(&herd, &query),
        Command::Completions { shell } => {
            // Made in memory first: the generator panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "herd", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the manual page"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    server_runtime(0)
}

/// A runtime with `threads` workers (one per CPU for 0); a single worker
/// runs everything on the calling thread.
pub(crate) fn server_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
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

/// Takes over SIGTERM and SIGINT at once (so that one arriving a moment
/// later no longer kills the process outright), and returns the task that
/// cancels `token` when one arrives. Call it inside the runtime.
pub(crate) fn cancel_on_signal(
    token: tokio_util::sync::CancellationToken,
) -> std::io::Result<impl Future<Output = ()>> {
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

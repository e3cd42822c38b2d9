//! `herd-bench`: a load tool for any server that speaks the herd protocol
//! (the shared SPEC.md), the Rust herd and the Python and Node baselines
//! alike. It is self-contained (nothing from the `herd` library) so that it
//! measures servers only through the wire protocol.
//!
//! It is written not to be the bottleneck: one task per connection that
//! owns its socket, pipelined requests, replies batched into one write, and
//! a single-threaded runtime by default (`--threads 1`), which leaves the
//! other cores to the server under test.
//!
//!     herd-bench iamat --addr 127.0.0.1:12000 --conns 32 --depth 8 --duration 10
//!     herd-bench iamat --addr 127.0.0.1:12000 --conns 32 --rate 5000 --duration 10
//!     herd-bench iamat --addr 127.0.0.1:12000 --depth 4 --clients 1000 \
//!         --flooded-to 127.0.0.1:12001 --flooded-to 127.0.0.1:12003
//!     herd-bench whatsat --addr 127.0.0.1:12000 --radius 10 --bound 5 --duration 10
//!     herd-bench propagate --from 127.0.0.1:12000 --to 127.0.0.1:12003 --samples 200
//!     herd-bench conns --addr 127.0.0.1:12000 --idle 20000 --pid "$SERVER_PID"
//!     herd-bench fill --addr 127.0.0.1:12000 --clients 1000000 --pid "$SERVER_PID"
//!     herd-bench startup --addr 127.0.0.1:12000 --launches 10 -- herd serve Hill
//!     herd-bench chart --title "IAMAT throughput" --unit req/s --log <figures.tsv >chart.svg
//!
//! Every run stops by itself; `--json` prints one JSON object instead of a
//! table; the exit status is non-zero when any reply was invalid, missing,
//! or a connection failed. A server's memory and open files (`--pid`) are
//! read from `/proc`, so those figures need the server on this machine.

mod chart;
mod conns;
mod echo;
mod fill;
mod line;
mod load;
mod process;
mod propagate;
mod reply;
mod startup;
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

/// Load and latency measurements for any server speaking the herd protocol.
#[derive(Parser)]
#[command(name = "herd-bench", version)]
struct Cli {
    /// Runtime threads: 1 runs everything on one thread (current-thread
    /// runtime); 0 uses one worker per CPU.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object of results instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Allow targets outside the loopback range (refused by default).
    #[arg(long, global = true)]
    allow_non_loopback: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// IAMAT throughput and latency over many pipelined connections.
    Iamat {
        #[command(flatten)]
        load: LoadArgs,
        /// Distinct clients each connection reports, in turn. With 1, every
        /// IAMAT of a connection supersedes its previous one, which a herd
        /// may then never need to flood; many clients per connection make
        /// every IAMAT a location the herd must spread, as with real phones.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        clients: u64,
        /// After the load, ask this server (repeatable) until it holds
        /// every connection's last report, and report the throughput the
        /// herd kept up with: all replies over the time until then.
        #[arg(long)]
        flooded_to: Vec<String>,
        /// Seconds to wait for --flooded-to.
        #[arg(long, default_value_t = 60.0)]
        flood_timeout: f64,
    },
    /// WHATSAT throughput and latency (client locations seeded with IAMAT first).
    Whatsat {
        #[command(flatten)]
        load: LoadArgs,
        /// Radius in kilometres, as sent (0 < radius <= 50).
        #[arg(long, default_value = "10")]
        radius: String,
        /// The most results to ask for (1..=20).
        #[arg(long, default_value_t = 5)]
        bound: u32,
    },
    /// Propagation latency: IAMAT at one server, pipelined WHATSATs at
    /// others until they show it (the IAMAT round trip is reported alongside).
    Propagate {
        /// The server that receives the IAMAT.
        #[arg(long)]
        from: String,
        /// A server to watch for the update (repeatable).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Updates to time.
        #[arg(long, default_value_t = 100)]
        samples: usize,
        /// Updates sent first and not timed (links come up, caches warm).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Seconds one update may take to reach every target.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// WHATSAT polls kept in flight back to back at each target (2: one
        /// waits at the server while the other is answered).
        #[arg(long, default_value_t = 2)]
        depth: usize,
        /// The radius the polls ask for, in kilometres as sent (small, so
        /// that the places lookup costs little).
        #[arg(long, default_value = "0.001")]
        radius: String,
        /// Mean milliseconds between one sample's end and the next (light
        /// load); each pause is drawn at random from half of it to one and
        /// a half times it, so that samples do not fall in step with a
        /// server's own timers.
        #[arg(long, default_value_t = 5.0)]
        pause_ms: f64,
    },
    /// Probe latency and server memory while it holds many idle connections.
    Conns {
        #[arg(long)]
        addr: String,
        /// Idle connections to open and hold.
        #[arg(long)]
        idle: usize,
        /// Probe IAMAT round trips before and while the idle connections are held.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Seconds to keep holding them after the probe, before checking they are still open.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Idle connections opened from each loopback source address
        /// (127.0.0.2, 127.0.0.3, ...), as from many clients; 0: all from one.
        #[arg(long, default_value_t = 500)]
        per_source: usize,
        /// The server's PID, to report its memory and open files from /proc.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Report many distinct clients (one IAMAT each) as fast as the server
    /// takes them; then the server's memory (with --pid).
    Fill {
        #[arg(long)]
        addr: String,
        /// Distinct client ids to report.
        #[arg(long, default_value_t = 1_000_000)]
        clients: u64,
        #[arg(long, default_value_t = 8)]
        conns: usize,
        /// IAMATs sent together per connection before reading their replies.
        #[arg(long, default_value_t = 256)]
        depth: usize,
        /// The server's PID, to report its memory from /proc.
        #[arg(long)]
        pid: Option<u32>,
        /// Seconds to wait after the last reply before reading the memory again.
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
    },
    /// Start-up time: launch a server command again and again; time until
    /// its client port accepts, until it answers an IAMAT, and its exit
    /// after SIGTERM.
    Startup {
        /// The client address the launched server listens on.
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 10)]
        launches: usize,
        /// Microseconds between connection attempts.
        #[arg(long, default_value_t = 200)]
        poll_us: u64,
        /// Seconds one launch may take to accept, to answer, or to exit.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Milliseconds between one launch's exit and the next launch.
        #[arg(long, default_value_t = 100.0)]
        pause_ms: f64,
        /// The server command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Draws a grouped bar chart as SVG on standard output, from lines
    /// `group<TAB>series<TAB>value` on standard input (one bar per series
    /// in each group; `scripts/bench-compare.sh` draws its charts so).
    Chart {
        #[arg(long)]
        title: String,
        /// The values' unit, written after each value and on the axis.
        #[arg(long, default_value = "")]
        unit: String,
        /// A logarithmic axis, for values that differ by orders of magnitude.
        #[arg(long)]
        log: bool,
        /// Series in the order they take, and so their colours (comma
        /// separated), whether or not each has values; others follow.
        #[arg(long, value_delimiter = ',')]
        series: Vec<String>,
    },
    /// Helper of `conns`: holds idle connections until standard input ends.
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        per_source: usize,
        #[arg(long, default_value_t = 5.0)]
        connect_timeout: f64,
    },
    /// A trivial IAMAT line server: the loopback limit to compare against.
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        addr: String,
        /// Seconds after which it exits by itself.
        #[arg(long, default_value_t = 3600.0)]
        max_run: f64,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// The server's client address, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Connections, each with client ids of its own (see `iamat --clients`).
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Requests in flight per connection (closed loop; ignored with --rate).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Open loop: requests per second across all connections, sent on
    /// schedule whatever the replies do; latency is counted from each
    /// request's intended send time (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for replies still due after the end.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Never sleep waiting for replies: keep polling the sockets, at the
    /// cost of a whole CPU (needs --threads 1). On loopback a server's send
    /// also runs the tool's side of TCP, and waking a tool that sleeps costs
    /// the server, inside its own send, what a client on another machine
    /// would never cost it; polling spares it that. Use it only where the
    /// tool has a CPU to itself (one server on a two-CPU machine), not when
    /// it shares the CPUs with a whole herd.
    #[arg(long)]
    busy_poll: bool,
}

/// Seconds from the command line, kept within an hour so every run ends.
fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    if !(0.0..=3600.0).contains(&value) {
        bail!("{what} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if cli.threads > 1 {
            builder.worker_threads(cli.threads);
        }
        builder.enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herd-bench: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("herd-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command and prints its report; returns whether all went well.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let resolve = |addr: &str| line::resolve(addr, cli.allow_non_loopback);
    let threads = if cli.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cli.threads
    };
    let (ok, json, table) = match cli.command {
        Command::Iamat {
            load: args,
            clients,
            flooded_to,
            flood_timeout,
        } => {
            let clients = usize::try_from(clients).context("--clients")?;
            let request = load::Request::Iamat { clients };
            let mut config = load_config(&args, request, threads, &resolve)?;
            config.flooded_to = flooded_to
                .iter()
                .map(|addr| resolve(addr).context("--flooded-to"))
                .collect::<Result<_, _>>()?;
            config.flood_timeout = seconds(flood_timeout, "--flood-timeout")?;
            let report = load::run(config).await?;
            (report.ok(), report.to_json(), report.to_table())
        }
        Command::Whatsat {
            load: args,
            radius,
            bound,
        } => {
            let request = load::Request::Whatsat {
                radius_km: radius,
                bound,
            };
            let config = load_config(&args, request, threads, &resolve)?;
            let report = load::run(config).await?;
            (report.ok(), report.to_json(), report.to_table())
        }
        Command::Propagate {
            from,
            to,
            samples,
            warmup,
            timeout,
            depth,
            radius,
            pause_ms,
        } => {
            let config = propagate::PropagateConfig {
                from: resolve(&from)?,
                to: to
                    .iter()
                    .map(|addr| resolve(addr))
                    .collect::<Result<_, _>>()?,
                samples,
                warmup,
                timeout: seconds(timeout, "--timeout")?,
                connect_timeout: CONNECT_TIMEOUT,
                depth,
                radius_km: radius,
                pause: seconds(pause_ms / 1000.0, "--pause-ms")?,
            };
            let report = propagate::run(config).await?;
            (report.ok(), report.to_json(), report.to_table())
        }
        Command::Conns {
            addr,
            idle,
            samples,
            hold,
            per_source,
            pid,
        } => {
            let config = conns::ConnsConfig {
                addr: resolve(&addr)?,
                idle,
                samples,
                hold: seconds(hold, "--hold")?,
                timeout: Duration::from_secs(10),
                connect_timeout: CONNECT_TIMEOUT,
                per_source,
                pid,
            };
            let report = conns::run(config).await?;
            (report.ok(), report.to_json(), report.to_table())
        }
        Command::Fill {
            addr,
            clients,
            conns,
            depth,
            pid,
            settle,
        } => {
            let config = fill::FillConfig {
                addr: resolve(&addr)?,
                clients,
                conns,
                depth,
                pid,
                settle: seconds(settle, "--settle")?,
                timeout: Duration::from_secs(30),
                connect_timeout: CONNECT_TIMEOUT,
            };
            let report = fill::run(config).await?;
            (report.ok(), report.to_json(), report.to_table())
        }
        Command::Startup {
            addr,
            launches,
            poll_us,
            timeout,
            pause_ms,
            command,
        } => {
            let config = startup::StartupConfig {
                addr: resolve(&addr)?,
                launches,
                command,
                poll: Duration::from_micros(poll_us),
                timeout: seconds(timeout, "--timeout")?,
                pause: seconds(pause_ms / 1000.0, "--pause-ms")?,
            };
            // Blocking on purpose: nothing else runs meanwhile, and plain
            // threads sleep more precisely than the runtime's timer.
            let report = startup::run(config)?;
            (report.ok(), report.to_json(), report.to_table())
        }
        Command::Chart {
            title,
            unit,
            log,
            series,
        } => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                .context("reading the figures from standard input")?;
            let chart = chart::Chart {
                title,
                unit,
                log,
                series,
                points: chart::parse_points(&input)?,
            };
            print!("{}", chart::render(&chart)?);
            return Ok(true);
        }
        Command::Hold {
            addr,
            first,
            count,
            per_source,
            connect_timeout,
        } => {
            conns::hold(
                resolve(&addr)?,
                first,
                count,
                per_source,
                seconds(connect_timeout, "--connect-timeout")?,
                Duration::from_secs(3600),
            )
            .await?;
            return Ok(true);
        }
        Command::EchoServer { addr, max_run } => {
            resolve(&addr)?;
            echo::serve(&addr, seconds(max_run, "--max-run")?).await?;
            return Ok(true);
        }
    };
    if cli.json {
        println!("{json}");
    } else {
        print!("{table}");
    }
    Ok(ok)
}

fn load_config(
    args: &LoadArgs,
    request: load::Request,
    threads: usize,
    resolve: &dyn Fn(&str) -> anyhow::Result<std::net::SocketAddr>,
) -> anyhow::Result<load::LoadConfig> {
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    Ok(load::LoadConfig {
        addr: resolve(&args.addr).context("--addr")?,
        conns: args.conns,
        depth: args.depth,
        rate: args.rate,
        warmup: seconds(args.warmup, "--warmup")?,
        duration: seconds(args.duration, "--duration")?,
        drain_timeout: seconds(args.drain_timeout, "--drain-timeout")?,
        connect_timeout: CONNECT_TIMEOUT,
        request,
        threads,
        busy_poll: args.busy_poll,
        flooded_to: Vec::new(),
        flood_timeout: Duration::ZERO,
    })
}

//! Many idle connections: how much memory does the server spend on them,
//! and does it still answer a probe client quickly while it holds them?
//!
//! Connections are opened from many loopback addresses (127.0.0.2,
//! 127.0.0.3, ...; `--per-source` each), as many clients would, so that a
//! server's per-address limit treats them as it would in the field.
//!
//! The tool cannot raise its own open-file limit (that needs `setrlimit`,
//! i.e. `libc` or `rustix`, and the crate forbids `unsafe`; raising the hard
//! limit also needs privileges). When the limit is too low for all the idle
//! connections, it starts copies of itself (`herd-bench hold`), each holding
//! a share, and drives them through their standard input and output.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::line::{LineConn, connect_from, run_id, spread_source, unix_nanos};
use crate::process::{self, Memory};
use crate::reply::{self, Client, Clock, Kind};
use crate::stats::Summary;

/// Descriptors this process keeps for itself (standard streams, the probe,
/// the runtime, pipes to helpers) beyond the idle connections.
const RESERVED_FILES: usize = 64;

pub struct ConnsConfig {
    pub addr: SocketAddr,
    pub idle: usize,
    pub samples: usize,
    pub hold: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle connections per source address (0: all from the default one).
    pub per_source: usize,
    /// The server's process, to read its memory and open files from `/proc`.
    pub pid: Option<u32>,
}

pub struct ConnsReport {
    addr: SocketAddr,
    idle: usize,
    nofile: Option<(String, String)>,
    helpers: usize,
    opened: usize,
    failed: usize,
    first_failure: Option<String>,
    open_seconds: f64,
    open_at_end: usize,
    baseline: Summary,
    loaded: Summary,
    invalid: u64,
    invalid_samples: Vec<String>,
    pid: Option<u32>,
    memory_before: Option<Memory>,
    memory_held: Option<Memory>,
    files_before: Option<usize>,
    files_held: Option<usize>,
}

/// What a helper says once it has opened its share, and again at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HoldStatus {
    opened: usize,
    failed: usize,
    first_failure: Option<String>,
    open_at_end: Option<usize>,
}

/// A helper process holding a share of the idle connections.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

pub async fn run(config: ConnsConfig) -> anyhow::Result<ConnsReport> {
    let nofile = process::open_file_limits();
    let capacity = process::soft_open_file_limit()
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_FILES)
        .max(1);

    let client = Client::new(&format!("{}-probe", run_id()), 0);
    let mut probe = LineConn::connect(config.addr, config.connect_timeout).await?;
    let mut clock = Clock::default();
    let mut invalid = 0;
    let mut invalid_samples = Vec::new();
    let mut measure = async |probe: &mut LineConn| -> anyhow::Result<Histogram<u64>> {
        let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("the bounds are constants that hdrhistogram accepts");
        for _ in 0..config.samples {
            let time = clock.next(unix_nanos());
            let mut request = String::new();
            client.write_iamat(time, &mut request);
            let start = Instant::now();
            let reply = probe
                .round_trip(request.as_bytes(), Kind::Iamat, config.timeout)
                .await
                .context("probe IAMAT")?;
            let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record(elapsed.max(1));
            let line = reply.strip_suffix(b"\n").unwrap_or(&reply);
            if let Err(why) = reply::check_iamat_reply(line, &client, time) {
                invalid += 1;
                if invalid_samples.len() < 3 {
                    invalid_samples.push(format!("{why}: {}", reply::sample(&reply)));
                }
            }
        }
        Ok(histogram)
    };

    let baseline = Summary::of(&measure(&mut probe).await?);
    let memory_before = config.pid.and_then(Memory::of);
    let files_before = config.pid.and_then(process::open_files);

    // This process's share first, then helpers for the rest.
    let opening = Instant::now();
    let own = config.idle.min(capacity);
    let mut helpers = Vec::new();
    let mut first = own;
    while first < config.idle {
        let count = (config.idle - first).min(capacity);
        helpers.push(start_helper(&config, first, count).await?);
        first += count;
    }
    let (idle, mut failed, mut first_failure) = open_idle(
        config.addr,
        0,
        own,
        config.per_source,
        config.connect_timeout,
    )
    .await;
    let mut opened = idle.len();
    let helper_count = helpers.len();
    for helper in &mut helpers {
        let status = read_status(helper).await.context("a hold helper")?;
        opened += status.opened;
        failed += status.failed;
        if first_failure.is_none() {
            first_failure = status.first_failure;
        }
    }
    let open_seconds = opening.elapsed().as_secs_f64();

    let loaded = Summary::of(&measure(&mut probe).await?);
    // Let the server accept any connection still in its backlog before
    // looking at its memory.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let memory_held = config.pid.and_then(Memory::of);
    let files_held = config.pid.and_then(process::open_files);
    if !config.hold.is_zero() {
        tokio::time::sleep(config.hold).await;
    }
    // Let the runtime see any close from the server before looking.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut open_at_end = idle.iter().filter(|stream| still_open(stream)).count();
    for mut helper in helpers {
        // Closing its input tells the helper to look and report.
        drop(helper.stdin.take());
        let status = read_status(&mut helper).await.context("a hold helper")?;
        open_at_end += status.open_at_end.unwrap_or(0);
        let _ = tokio::time::timeout(Duration::from_secs(10), helper.child.wait()).await;
    }

    Ok(ConnsReport {
        addr: config.addr,
        idle: config.idle,
        nofile,
        helpers: helper_count,
        opened,
        failed,
        first_failure,
        open_seconds,
        open_at_end,
        baseline,
        loaded,
        invalid,
        invalid_samples,
        pid: config.pid,
        memory_before,
        memory_held,
        files_before,
        files_held,
    })
}

/// Starts `herd-bench hold` for idle connections `first..first + count`.
async fn start_helper(config: &ConnsConfig, first: usize, count: usize) -> anyhow::Result<Helper> {
    let exe = std::env::current_exe().context("finding this program to start a helper")?;
    let mut child = Command::new(exe)
        .arg("hold")
        .arg("--addr")
        .arg(config.addr.to_string())
        .arg("--first")
        .arg(first.to_string())
        .arg("--count")
        .arg(count.to_string())
        .arg("--per-source")
        .arg(config.per_source.to_string())
        .arg("--connect-timeout")
        .arg(config.connect_timeout.as_secs_f64().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting a hold helper")?;
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().context("the helper's output")?);
    Ok(Helper {
        child,
        stdin,
        stdout,
    })
}

async fn read_status(helper: &mut Helper) -> anyhow::Result<HoldStatus> {
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(600), helper.stdout.read_line(&mut line))
        .await
        .context("no status in time")??;
    if read == 0 {
        bail!("the helper exited without a status");
    }
    serde_json::from_str(&line).with_context(|| format!("status line {line:?}"))
}

/// `herd-bench hold`: opens idle connections `first..first + count`, says
/// so on standard output (one JSON line), holds them until standard input
/// ends (or `max_hold` passes), then says how many are still open.
pub async fn hold(
    addr: SocketAddr,
    first: usize,
    count: usize,
    per_source: usize,
    connect_timeout: Duration,
    max_hold: Duration,
) -> anyhow::Result<()> {
    let (idle, failed, first_failure) =
        open_idle(addr, first, count, per_source, connect_timeout).await;
    let mut status = HoldStatus {
        opened: idle.len(),
        failed,
        first_failure,
        open_at_end: None,
    };
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{}\n", serde_json::to_string(&status)?).as_bytes())
        .await?;
    stdout.flush().await?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(max_hold, async {
        while stdin.read(&mut sink).await.is_ok_and(|read| read > 0) {}
    })
    .await;
    status.open_at_end = Some(idle.iter().filter(|stream| still_open(stream)).count());
    stdout
        .write_all(format!("{}\n", serde_json::to_string(&status)?).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// Opens connections `first..first + count` that send nothing, a few
/// hundred at a time.
async fn open_idle(
    addr: SocketAddr,
    first: usize,
    count: usize,
    per_source: usize,
    timeout: Duration,
) -> (Vec<TcpStream>, usize, Option<String>) {
    const AT_ONCE: usize = 256;
    let mut streams = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_failure = None;
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while started < count || !tasks.is_empty() {
        while started < count && tasks.len() < AT_ONCE {
            let source = spread_source(addr, first + started, per_source);
            tasks.spawn(connect_from(addr, source, timeout));
            started += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(stream))) => streams.push(stream),
            Some(Ok(Err(error))) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("{error:#}"));
            }
            Some(Err(error)) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("connect task: {error}"));
            }
            None => break,
        }
    }
    (streams, failed, first_failure)
}

/// Whether the server has neither closed nor written to an idle connection.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Err(error) => error.kind() == ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

impl ConnsReport {
    pub fn ok(&self) -> bool {
        self.invalid == 0 && self.failed == 0 && self.open_at_end == self.opened
    }

    pub fn to_json(&self) -> Value {
        json!({
            "command": "conns",
            "addr": self.addr.to_string(),
            "idle_requested": self.idle,
            "nofile_soft": self.nofile.as_ref().map(|limits| limits.0.clone()),
            "nofile_hard": self.nofile.as_ref().map(|limits| limits.1.clone()),
            "helper_processes": self.helpers,
            "idle_opened": self.opened,
            "idle_failed": self.failed,
            "first_failure": self.first_failure,
            "open_seconds": (self.open_seconds * 1000.0).round() / 1000.0,
            "idle_open_at_end": self.open_at_end,
            "probe_before_us": self.baseline.to_json(),
            "probe_while_held_us": self.loaded.to_json(),
            "server_pid": self.pid,
            "server_memory_before": self.memory_before.map(Memory::to_json),
            "server_memory_held": self.memory_held.map(Memory::to_json),
            "server_open_files_before": self.files_before,
            "server_open_files_held": self.files_held,
            "invalid": self.invalid,
            "invalid_samples": self.invalid_samples,
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!("idle connections to {}\n", self.addr);
        if let Some((soft, hard)) = &self.nofile {
            out.push_str(&format!(
                "  open-file limit    soft {soft}, hard {hard}; {} helper process(es)\n",
                self.helpers
            ));
        }
        out.push_str(&format!(
            "  idle opened        {} of {} in {:.2} s ({} failed), {} still open at the end\n",
            self.opened, self.idle, self.open_seconds, self.failed, self.open_at_end
        ));
        if let Some(failure) = &self.first_failure {
            out.push_str(&format!("  first failure      {failure}\n"));
        }
        out.push_str(&format!("  probe, none held   {}\n", self.baseline.row()));
        out.push_str(&format!("  probe, all held    {}\n", self.loaded.row()));
        if let Some(pid) = self.pid {
            let show = |memory: Option<Memory>, files: Option<usize>| {
                format!(
                    "{}, {} open files",
                    memory.map_or("memory unknown".into(), Memory::row),
                    files.map_or("?".into(), |files| files.to_string())
                )
            };
            out.push_str(&format!(
                "  server {pid}, none held  {}\n",
                show(self.memory_before, self.files_before)
            ));
            out.push_str(&format!(
                "  server {pid}, all held   {}\n",
                show(self.memory_held, self.files_held)
            ));
        }
        out.push_str(&format!("  invalid {}\n", self.invalid));
        for sample in &self.invalid_samples {
            out.push_str(&format!("  invalid reply: {sample}\n"));
        }
        out.push_str(if self.ok() { "  OK\n" } else { "  FAILED\n" });
        out
    }
}

//! Many idle connections: does the server still answer a probe client
//! quickly while it holds them?
//!
//! The tool cannot raise its own open-file limit (that needs `setrlimit`,
//! i.e. `libc` or `rustix`, and the crate forbids `unsafe`), so it reads
//! the limit from `/proc/self/limits` and says what to do when it is too
//! low: run it under `ulimit -n "$(ulimit -Hn)"`, as the compare script does.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::line::{LineConn, connect, run_id, unix_nanos};
use crate::reply::{self, Client, Clock, Kind};
use crate::stats::Summary;

pub struct ConnsConfig {
    pub addr: SocketAddr,
    pub idle: usize,
    pub samples: usize,
    pub hold: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

pub struct ConnsReport {
    addr: SocketAddr,
    idle: usize,
    nofile: Option<(String, String)>,
    opened: usize,
    failed: usize,
    first_failure: Option<String>,
    open_seconds: f64,
    open_at_end: usize,
    baseline: Summary,
    loaded: Summary,
    invalid: u64,
    invalid_samples: Vec<String>,
}

/// The soft and hard open-file limits, as `/proc/self/limits` shows them.
pub fn open_file_limits() -> Option<(String, String)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.to_string()))
}

pub async fn run(config: ConnsConfig) -> anyhow::Result<ConnsReport> {
    let nofile = open_file_limits();
    if let Some((soft, hard)) = &nofile
        && let Ok(soft_limit) = soft.parse::<usize>()
        && soft_limit < config.idle + 64
    {
        eprintln!(
            "herd-bench: the open-file limit is {soft} (hard {hard}), too low for {} idle \
             connections; run under `ulimit -n \"$(ulimit -Hn)\"` (the server needs it too)",
            config.idle
        );
    }

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

    let opening = Instant::now();
    let (idle, failed, first_failure) =
        open_idle(config.addr, config.idle, config.connect_timeout).await;
    let open_seconds = opening.elapsed().as_secs_f64();

    let loaded = Summary::of(&measure(&mut probe).await?);
    if !config.hold.is_zero() {
        tokio::time::sleep(config.hold).await;
    }
    // Let the runtime see any close from the server before looking.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let open_at_end = idle.iter().filter(|stream| still_open(stream)).count();

    Ok(ConnsReport {
        addr: config.addr,
        idle: config.idle,
        nofile,
        opened: idle.len(),
        failed,
        first_failure,
        open_seconds,
        open_at_end,
        baseline,
        loaded,
        invalid,
        invalid_samples,
    })
}

/// Opens `count` connections that send nothing, a few hundred at a time.
async fn open_idle(
    addr: SocketAddr,
    count: usize,
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
            tasks.spawn(connect(addr, timeout));
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
            "idle_opened": self.opened,
            "idle_failed": self.failed,
            "first_failure": self.first_failure,
            "open_seconds": (self.open_seconds * 1000.0).round() / 1000.0,
            "idle_open_at_end": self.open_at_end,
            "probe_before_us": self.baseline.to_json(),
            "probe_while_held_us": self.loaded.to_json(),
            "invalid": self.invalid,
            "invalid_samples": self.invalid_samples,
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!("idle connections to {}\n", self.addr);
        if let Some((soft, hard)) = &self.nofile {
            out.push_str(&format!("  open-file limit    soft {soft}, hard {hard}\n"));
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
        out.push_str(&format!("  invalid {}\n", self.invalid));
        for sample in &self.invalid_samples {
            out.push_str(&format!("  invalid reply: {sample}\n"));
        }
        out.push_str(if self.ok() { "  OK\n" } else { "  FAILED\n" });
        out
    }
}

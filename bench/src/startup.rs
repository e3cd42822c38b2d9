//! Start-up time: launches a server command again and again and measures,
//! for each launch, the time from spawning it until its client port
//! accepts a TCP connection, then until it answers a first IAMAT, and
//! (after SIGTERM) until it has exited.
//!
//! The port is polled with plain connection attempts every `poll` (a
//! refused attempt on loopback costs microseconds), so the figures are late
//! by at most about one poll interval.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::line::{run_id, unix_nanos};
use crate::reply::{self, Client, Clock};
use crate::stats::Summary;

pub struct StartupConfig {
    pub addr: SocketAddr,
    pub launches: usize,
    /// The program and its arguments.
    pub command: Vec<String>,
    pub poll: Duration,
    /// How long one launch may take to accept, answer, or exit.
    pub timeout: Duration,
    /// Time between one launch's exit and the next launch.
    pub pause: Duration,
}

pub struct StartupReport {
    addr: SocketAddr,
    command: Vec<String>,
    /// Per launch, milliseconds: accepting, answering, exiting after SIGTERM.
    listen_ms: Vec<f64>,
    answer_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    failures: Vec<String>,
}

pub fn run(config: StartupConfig) -> anyhow::Result<StartupReport> {
    if config.command.is_empty() {
        bail!("give the server command after `--`");
    }
    let mut report = StartupReport {
        addr: config.addr,
        command: config.command.clone(),
        listen_ms: Vec::new(),
        answer_ms: Vec::new(),
        exit_ms: Vec::new(),
        failures: Vec::new(),
    };
    if TcpStream::connect_timeout(&config.addr, Duration::from_millis(100)).is_ok() {
        bail!(
            "{} already accepts connections before any launch",
            config.addr
        );
    }
    let client = Client::new(&format!("{}-start", run_id()), 0);
    let mut clock = Clock::default();
    for launch in 0..config.launches {
        if launch > 0 {
            std::thread::sleep(config.pause);
        }
        let launched = Instant::now();
        let mut child = Command::new(&config.command[0])
            .args(&config.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("launching {:?}", config.command[0]))?;
        let outcome = measure_launch(&config, &mut child, launched, &client, &mut clock);
        let stopped = stop(&mut child, config.timeout);
        match (outcome, stopped) {
            (Ok((listen, answer)), Ok(exit)) => {
                report.listen_ms.push(ms(listen));
                report.answer_ms.push(ms(answer));
                report.exit_ms.push(ms(exit));
            }
            (Err(error), _) | (Ok(_), Err(error)) => {
                report
                    .failures
                    .push(format!("launch {}: {error:#}", launch + 1));
            }
        }
    }
    Ok(report)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Waits for the port to accept, then for the answer to one IAMAT.
fn measure_launch(
    config: &StartupConfig,
    child: &mut Child,
    launched: Instant,
    client: &Client,
    clock: &mut Clock,
) -> anyhow::Result<(Duration, Duration)> {
    let stream = loop {
        match TcpStream::connect_timeout(&config.addr, config.timeout) {
            Ok(stream) => break stream,
            Err(error) => {
                if let Some(status) = child.try_wait()? {
                    bail!("the server exited ({status}) before accepting: {error}");
                }
                if launched.elapsed() >= config.timeout {
                    bail!("not accepting after {:?}: {error}", config.timeout);
                }
                std::thread::sleep(config.poll);
            }
        }
    };
    let listen = launched.elapsed();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.timeout))?;
    let time = clock.next(unix_nanos());
    let mut request = String::new();
    client.write_iamat(time, &mut request);
    (&stream).write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut reply)
        .context("reading the first IAMAT's reply")?;
    let answer = launched.elapsed();
    let line = reply.strip_suffix(b"\n").unwrap_or(&reply);
    if let Err(why) = reply::check_iamat_reply(line, client, time) {
        bail!("invalid IAMAT reply ({why}): {}", reply::sample(&reply));
    }
    Ok((listen, answer))
}

/// Sends SIGTERM and waits for the exit; SIGKILL after `timeout`.
fn stop(child: &mut Child, timeout: Duration) -> anyhow::Result<Duration> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("a PID fits in i32")?);
    let asked = Instant::now();
    if child.try_wait()?.is_none() {
        kill(pid, Signal::SIGTERM).context("sending SIGTERM")?;
    }
    loop {
        if child.try_wait()?.is_some() {
            return Ok(asked.elapsed());
        }
        if asked.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running {timeout:?} after SIGTERM (killed)");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Milliseconds to a summary (in microseconds, as the other commands give).
fn summary(values_ms: &[f64]) -> Summary {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("the bounds are constants that hdrhistogram accepts");
    for &value in values_ms {
        histogram.saturating_record(((value * 1e6) as u64).max(1));
    }
    Summary::of(&histogram)
}

impl StartupReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn to_json(&self) -> Value {
        let round = |values: &[f64]| {
            values
                .iter()
                .map(|value| (value * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        };
        json!({
            "command": "startup",
            "addr": self.addr.to_string(),
            "server_command": self.command,
            "launches": self.listen_ms.len() + self.failures.len(),
            "accepting_ms": round(&self.listen_ms),
            "answering_ms": round(&self.answer_ms),
            "exit_after_sigterm_ms": round(&self.exit_ms),
            "accepting_us": summary(&self.listen_ms).to_json(),
            "answering_us": summary(&self.answer_ms).to_json(),
            "exit_after_sigterm_us": summary(&self.exit_ms).to_json(),
            "failures": self.failures,
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "start-up of `{}` ({} launches), waiting for {}\n",
            self.command.join(" "),
            self.listen_ms.len() + self.failures.len(),
            self.addr
        );
        out.push_str(&format!(
            "  launch -> accepting         {}\n",
            summary(&self.listen_ms).row()
        ));
        out.push_str(&format!(
            "  launch -> first AT reply    {}\n",
            summary(&self.answer_ms).row()
        ));
        out.push_str(&format!(
            "  SIGTERM -> exited           {}\n",
            summary(&self.exit_ms).row()
        ));
        for failure in &self.failures {
            out.push_str(&format!("  failed: {failure}\n"));
        }
        out.push_str(if self.ok() { "  OK\n" } else { "  FAILED\n" });
        out
    }
}

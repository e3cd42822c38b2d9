//! Fills a server with many distinct clients as fast as it takes them (one
//! IAMAT each, pipelined over a few connections), then reads how much
//! memory the server holds (`/proc/PID/status`, when given its PID) and
//! checks with WHATSAT that a few of the clients are known.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::line::{LineConn, connect, run_id, unix_nanos};
use crate::process::Memory;
use crate::reply::{self, Client, ClientTime, Clock, Kind};

pub struct FillConfig {
    pub addr: SocketAddr,
    pub clients: u64,
    pub conns: usize,
    /// IAMATs sent together per connection before reading their replies.
    pub depth: usize,
    pub pid: Option<u32>,
    /// Time to wait after the last reply before reading the memory again.
    pub settle: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

pub struct FillReport {
    addr: SocketAddr,
    clients: u64,
    conns: usize,
    depth: usize,
    seconds: f64,
    invalid: u64,
    invalid_samples: Vec<String>,
    errors: Vec<String>,
    verified: usize,
    verify_failures: Vec<String>,
    pid: Option<u32>,
    memory_before: Option<Memory>,
    memory_filled: Option<Memory>,
    memory_settled: Option<Memory>,
    memory_verified: Option<Memory>,
}

/// The client of number `n` in this run (distinct id, varied location).
fn client(run: &str, n: u64) -> Client {
    Client::new(
        run,
        usize::try_from(n).expect("client numbers fit in usize"),
    )
}

pub async fn run(config: FillConfig) -> anyhow::Result<FillReport> {
    if config.conns == 0 || config.depth == 0 {
        bail!("--conns and --depth must be at least 1");
    }
    let run = format!("{}f", run_id());
    let memory_before = config.pid.and_then(Memory::of);
    let mut streams = Vec::with_capacity(config.conns);
    for _ in 0..config.conns {
        streams.push(connect(config.addr, config.connect_timeout).await?);
    }

    // The first, a middle and the last client are looked up at the end.
    let watched = if config.clients == 0 {
        Vec::new()
    } else {
        vec![0, config.clients / 2, config.clients - 1]
    };
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let numbers = (index as u64..config.clients).step_by(config.conns);
        tasks.spawn(fill_one(
            stream,
            run.clone(),
            numbers,
            watched.clone(),
            config.depth,
            config.timeout,
        ));
    }
    let mut invalid = 0;
    let mut invalid_samples = Vec::new();
    let mut errors = Vec::new();
    let mut times = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let outcome = done.context("a fill task panicked")?;
        invalid += outcome.invalid;
        invalid_samples.extend(outcome.invalid_samples);
        invalid_samples.truncate(5);
        if let Some(error) = outcome.error {
            errors.push(error);
        }
        times.extend(outcome.watched_times);
    }
    let seconds = start.elapsed().as_secs_f64();
    let memory_filled = config.pid.and_then(Memory::of);
    tokio::time::sleep(config.settle).await;
    let memory_settled = config.pid.and_then(Memory::of);

    let mut verified = 0;
    let mut verify_failures = Vec::new();
    if !watched.is_empty() {
        let mut check = LineConn::connect(config.addr, config.connect_timeout).await?;
        for n in watched {
            let client = client(&run, n);
            let mut request = String::new();
            client.write_whatsat("1", 1, &mut request);
            let answer = check
                .round_trip(request.as_bytes(), Kind::Whatsat, config.timeout)
                .await
                .with_context(|| format!("WHATSAT {}", client.id))?;
            let time = times
                .iter()
                .find(|(number, _)| *number == n)
                .map(|(_, time)| *time);
            match time {
                Some(time) => match reply::check_whatsat_answer(&answer, &client, time, 1) {
                    Ok(_) => verified += 1,
                    Err(why) => verify_failures.push(format!("{why}: {}", reply::sample(&answer))),
                },
                None => verify_failures.push(format!("{} was not sent", client.id)),
            }
        }
    }

    // The lookups may have loaded the places data: memory as in service.
    let memory_verified = config.pid.and_then(Memory::of);

    Ok(FillReport {
        addr: config.addr,
        clients: config.clients,
        conns: config.conns,
        depth: config.depth,
        seconds,
        invalid,
        invalid_samples,
        errors,
        verified,
        verify_failures,
        pid: config.pid,
        memory_before,
        memory_filled,
        memory_settled,
        memory_verified,
    })
}

#[derive(Default)]
struct FillOutcome {
    invalid: u64,
    invalid_samples: Vec<String>,
    error: Option<String>,
    /// The client times sent to the watched clients.
    watched_times: Vec<(u64, ClientTime)>,
}

/// Reports the clients `numbers` on one connection, `depth` at a time.
async fn fill_one(
    mut stream: TcpStream,
    run: String,
    numbers: impl Iterator<Item = u64>,
    watched: Vec<u64>,
    depth: usize,
    timeout: Duration,
) -> FillOutcome {
    let mut outcome = FillOutcome::default();
    let mut numbers = numbers.peekable();
    let mut clock = Clock::default();
    let mut out = String::with_capacity(depth * 100);
    let mut batch: Vec<(Client, ClientTime, u64)> = Vec::with_capacity(depth);
    let mut input: Vec<u8> = Vec::with_capacity(64 * 1024);
    while numbers.peek().is_some() {
        out.clear();
        batch.clear();
        for n in numbers.by_ref().take(depth) {
            let client = client(&run, n);
            let time = clock.next(unix_nanos());
            client.write_iamat(time, &mut out);
            batch.push((client, time, n));
        }
        let result = tokio::time::timeout(timeout, async {
            stream.write_all(out.as_bytes()).await?;
            let mut replies = 0;
            let mut start = 0;
            while replies < batch.len() {
                if let Some(offset) = input[start..].iter().position(|&b| b == b'\n') {
                    let line = &input[start..start + offset];
                    let (client, time, _) = &batch[replies];
                    if let Err(why) = reply::check_iamat_reply(line, client, *time) {
                        outcome.invalid += 1;
                        if outcome.invalid_samples.len() < 3 {
                            outcome
                                .invalid_samples
                                .push(format!("{why}: {}", reply::sample(line)));
                        }
                    }
                    replies += 1;
                    start += offset + 1;
                    continue;
                }
                input.drain(..start);
                start = 0;
                if input.capacity() - input.len() < 16 * 1024 {
                    input.reserve(64 * 1024);
                }
                if stream.read_buf(&mut input).await? == 0 {
                    anyhow::bail!("the server closed the connection");
                }
            }
            input.drain(..start);
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                outcome.error = Some(format!("{error:#}"));
                return outcome;
            }
            Err(_) => {
                outcome.error = Some("no reply in time".into());
                return outcome;
            }
        }
        for (_, time, n) in &batch {
            if watched.contains(n) {
                outcome.watched_times.push((*n, *time));
            }
        }
    }
    outcome
}

impl FillReport {
    pub fn ok(&self) -> bool {
        self.invalid == 0
            && self.errors.is_empty()
            && self.verify_failures.is_empty()
            && self.verified == if self.clients == 0 { 0 } else { 3 }
    }

    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.clients as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "command": "fill",
            "addr": self.addr.to_string(),
            "clients": self.clients,
            "conns": self.conns,
            "depth": self.depth,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "clients_per_second": self.rate().round(),
            "server_pid": self.pid,
            "server_memory_before": self.memory_before.map(Memory::to_json),
            "server_memory_filled": self.memory_filled.map(Memory::to_json),
            "server_memory_settled": self.memory_settled.map(Memory::to_json),
            "server_memory_after_whatsat": self.memory_verified.map(Memory::to_json),
            "verified": self.verified,
            "verify_failures": self.verify_failures,
            "invalid": self.invalid,
            "invalid_samples": self.invalid_samples,
            "errors": self.errors,
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "fill {} with {} distinct clients ({} conns x {} pipelined)\n",
            self.addr, self.clients, self.conns, self.depth
        );
        out.push_str(&format!(
            "  took {:.2} s, {:.0} clients/s\n",
            self.seconds,
            self.rate()
        ));
        if let Some(pid) = self.pid {
            let show = |memory: Option<Memory>| memory.map_or("unknown".into(), Memory::row);
            out.push_str(&format!(
                "  server {pid} before   {}\n",
                show(self.memory_before)
            ));
            out.push_str(&format!(
                "  server {pid} filled   {}\n",
                show(self.memory_filled)
            ));
            out.push_str(&format!(
                "  server {pid} settled  {}\n",
                show(self.memory_settled)
            ));
            out.push_str(&format!(
                "  server {pid} after 3 WHATSAT  {}\n",
                show(self.memory_verified)
            ));
        }
        out.push_str(&format!(
            "  verified {} of 3 clients by WHATSAT\n",
            self.verified
        ));
        for failure in &self.verify_failures {
            out.push_str(&format!("  verify failed: {failure}\n"));
        }
        out.push_str(&format!("  invalid {}\n", self.invalid));
        for sample in &self.invalid_samples {
            out.push_str(&format!("  invalid reply: {sample}\n"));
        }
        for error in &self.errors {
            out.push_str(&format!("  error: {error}\n"));
        }
        out.push_str(if self.ok() { "  OK\n" } else { "  FAILED\n" });
        out
    }
}

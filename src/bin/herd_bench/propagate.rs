//! How long an update takes to reach other servers: IAMAT at one server,
//! then WHATSAT (radius 1, bound 1) at each target, again and again, until
//! the target's AT line carries the new client time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::line::{LineConn, run_id, unix_nanos};
use crate::reply::{self, Client, ClientTime, Clock, Kind};
use crate::stats::Summary;

pub struct PropagateConfig {
    pub from: SocketAddr,
    pub to: Vec<SocketAddr>,
    pub samples: usize,
    pub warmup: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

struct Target {
    addr: SocketAddr,
    conn: Option<LineConn>,
    latency: Histogram<u64>,
    timeouts: u64,
    polls: u64,
    errors: Vec<String>,
}

pub struct PropagateReport {
    from: SocketAddr,
    samples: usize,
    iamat: Summary,
    targets: Vec<(SocketAddr, Summary, u64, f64, Vec<String>)>,
    invalid: u64,
    invalid_samples: Vec<String>,
}

/// What one poll loop at one target found.
enum Outcome {
    Seen(Duration),
    TimedOut,
    Failed(String),
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("the bounds are constants that hdrhistogram accepts")
}

pub async fn run(config: PropagateConfig) -> anyhow::Result<PropagateReport> {
    let client = Client::new(&format!("{}-prop", run_id()), 0);
    let mut from = LineConn::connect(config.from, config.connect_timeout).await?;
    let mut targets = Vec::new();
    for &addr in &config.to {
        targets.push(Target {
            addr,
            conn: Some(LineConn::connect(addr, config.connect_timeout).await?),
            latency: histogram(),
            timeouts: 0,
            polls: 0,
            errors: Vec::new(),
        });
    }
    let mut iamat = histogram();
    let mut clock = Clock::default();
    let mut invalid = 0;
    let mut invalid_samples = Vec::new();

    for sample in 0..config.warmup + config.samples {
        let recording = sample >= config.warmup;
        let time = clock.next(unix_nanos());
        let mut request = String::new();
        client.write_iamat(time, &mut request);
        let start = Instant::now();
        let reply = from
            .round_trip(request.as_bytes(), Kind::Iamat, config.timeout)
            .await
            .with_context(|| format!("IAMAT at {}", config.from))?;
        if recording {
            iamat.saturating_record(nanos(start.elapsed()));
        }
        if let Err(why) =
            reply::check_iamat_reply(reply.strip_suffix(b"\n").unwrap_or(&reply), &client, time)
        {
            invalid += 1;
            invalid_samples.push(format!("{why}: {}", reply::sample(&reply)));
            continue;
        }

        let deadline = start + config.timeout;
        let mut polls = JoinSet::new();
        for (index, target) in targets.iter_mut().enumerate() {
            let conn = target.conn.take();
            let (addr, client, connect_timeout) =
                (target.addr, client.clone(), config.connect_timeout);
            polls.spawn(async move {
                let (conn, outcome, polls, bad) =
                    poll(addr, conn, &client, time, start, deadline, connect_timeout).await;
                (index, conn, outcome, polls, bad)
            });
        }
        while let Some(done) = polls.join_next().await {
            let (index, conn, outcome, poll_count, bad) = done.context("a poll task panicked")?;
            let target = &mut targets[index];
            target.conn = conn;
            target.polls += poll_count;
            for sample in bad {
                invalid += 1;
                if invalid_samples.len() < 5 {
                    invalid_samples.push(sample);
                }
            }
            if !recording {
                continue;
            }
            match outcome {
                Outcome::Seen(latency) => {
                    target.latency.saturating_record(nanos(latency));
                }
                Outcome::TimedOut => target.timeouts += 1,
                Outcome::Failed(error) => {
                    if target.errors.len() < 3 {
                        target.errors.push(error);
                    }
                }
            }
        }
    }

    let recorded = config.samples.max(1) as f64;
    Ok(PropagateReport {
        from: config.from,
        samples: config.samples,
        iamat: Summary::of(&iamat),
        targets: targets
            .into_iter()
            .map(|target| {
                (
                    target.addr,
                    Summary::of(&target.latency),
                    target.timeouts,
                    target.polls as f64 / (recorded + config.warmup as f64),
                    target.errors,
                )
            })
            .collect(),
        invalid,
        invalid_samples,
    })
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Asks `addr` about `client` until its answer carries `time` or the
/// deadline passes. Returns the connection if it is still in step, the
/// outcome, the number of polls and any invalid answers seen.
async fn poll(
    addr: SocketAddr,
    conn: Option<LineConn>,
    client: &Client,
    time: ClientTime,
    start: Instant,
    deadline: Instant,
    connect_timeout: Duration,
) -> (Option<LineConn>, Outcome, u64, Vec<String>) {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match LineConn::connect(addr, connect_timeout).await {
            Ok(conn) => conn,
            Err(error) => return (None, Outcome::Failed(format!("{error:#}")), 0, Vec::new()),
        },
    };
    let time_text = time.text();
    let mut request = String::new();
    client.write_whatsat("1", 1, &mut request);
    let mut polls = 0;
    let mut bad = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (Some(conn), Outcome::TimedOut, polls, bad);
        }
        let answer = match conn
            .round_trip(request.as_bytes(), Kind::Whatsat, deadline - now)
            .await
        {
            Ok(answer) => answer,
            Err(_) if Instant::now() >= deadline => {
                return (None, Outcome::TimedOut, polls, bad);
            }
            Err(error) => return (None, Outcome::Failed(format!("{error:#}")), polls, bad),
        };
        polls += 1;
        if answer.starts_with(b"? ") {
            // The target does not know the client yet (first sample).
            continue;
        }
        match reply::answer_time(&answer, client.id.as_bytes()) {
            Some(seen) if seen == time_text.as_bytes() => {
                let latency = start.elapsed();
                if let Err(why) = reply::check_whatsat_answer(&answer, client, time, 1) {
                    bad.push(format!("{why}: {}", reply::sample(&answer)));
                }
                return (Some(conn), Outcome::Seen(latency), polls, bad);
            }
            Some(_) => {}
            None => bad.push(format!(
                "not an AT answer for the client: {}",
                reply::sample(&answer)
            )),
        }
    }
}

impl PropagateReport {
    pub fn ok(&self) -> bool {
        self.invalid == 0
            && self
                .targets
                .iter()
                .all(|(_, _, timeouts, _, errors)| *timeouts == 0 && errors.is_empty())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "command": "propagate",
            "from": self.from.to_string(),
            "samples": self.samples,
            "iamat_latency_us": self.iamat.to_json(),
            "targets": self.targets.iter().map(|(addr, latency, timeouts, polls, errors)| json!({
                "addr": addr.to_string(),
                "latency_us": latency.to_json(),
                "timeouts": timeouts,
                "mean_polls": (polls * 100.0).round() / 100.0,
                "errors": errors,
            })).collect::<Vec<_>>(),
            "invalid": self.invalid,
            "invalid_samples": self.invalid_samples,
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "propagation from {} ({} samples; latency from sending the IAMAT until a target's WHATSAT shows it)\n",
            self.from, self.samples
        );
        out.push_str(&format!(
            "  IAMAT round trip at {}: {}\n",
            self.from,
            self.iamat.row()
        ));
        for (addr, latency, timeouts, polls, errors) in &self.targets {
            out.push_str(&format!(
                "  -> {addr}: {}  timeouts {timeouts}  polls/sample {polls:.1}\n",
                latency.row()
            ));
            for error in errors {
                out.push_str(&format!("     error: {error}\n"));
            }
        }
        out.push_str(&format!("  invalid {}\n", self.invalid));
        for sample in &self.invalid_samples {
            out.push_str(&format!("  invalid reply: {sample}\n"));
        }
        out.push_str(if self.ok() { "  OK\n" } else { "  FAILED\n" });
        out
    }
}

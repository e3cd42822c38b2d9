//! How long an update takes to reach other servers, as a client sees it.
//!
//! Each sample sends one IAMAT to the first server and, at the same moment,
//! starts asking each target about the client with WHATSATs (a tiny radius
//! and bound 1, so that the places lookup costs as little as the server
//! allows) kept `depth` in flight back to back. The latency of a target is
//! from writing the IAMAT until reading the first answer whose AT line
//! carries the new client time. It includes the IAMAT's one-way trip to
//! the first server and the answer's trip back, i.e. about one round trip
//! of a small request (reported alongside as the IAMAT round trip, so that
//! readers can subtract it), and up to one poll's spacing (reported as the
//! mean time between two answers). One update at a time, with a pause
//! between samples (of a random length around `pause`): the load is light.

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
    /// WHATSATs kept in flight at each target.
    pub depth: usize,
    /// The radius the polls ask for, as sent (kilometres).
    pub radius_km: String,
    /// Mean time between the end of one sample and the start of the next
    /// (each pause is drawn from half of it to one and a half times it).
    pub pause: Duration,
}

struct Target {
    addr: SocketAddr,
    conn: Option<LineConn>,
    latency: Histogram<u64>,
    timeouts: u64,
    polls: u64,
    /// Answers read and their total spacing, for the mean poll interval.
    spaced: u64,
    spacing: Duration,
    errors: Vec<String>,
}

pub struct PropagateReport {
    from: SocketAddr,
    samples: usize,
    depth: usize,
    radius_km: String,
    iamat: Summary,
    targets: Vec<TargetReport>,
    invalid: u64,
    invalid_samples: Vec<String>,
}

struct TargetReport {
    addr: SocketAddr,
    latency: Summary,
    timeouts: u64,
    mean_polls: f64,
    mean_poll_interval_us: f64,
    errors: Vec<String>,
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
    anyhow::ensure!(config.depth >= 1, "--depth must be at least 1");
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
            spaced: 0,
            spacing: Duration::ZERO,
            errors: Vec::new(),
        });
    }
    let mut poll_request = String::new();
    client.write_whatsat(&config.radius_km, 1, &mut poll_request);
    let mut iamat = histogram();
    let mut clock = Clock::default();
    let mut invalid = 0;
    let mut invalid_samples = Vec::new();

    for sample in 0..config.warmup + config.samples {
        if sample > 0 && !config.pause.is_zero() {
            // Anywhere from half the pause to one and a half: samples a
            // fixed time apart fall in step with any timer of the herd of
            // about that period (herd holds a report over a link outside
            // its tree for 5 ms, the default pause), and then measure that
            // coincidence in every sample instead of in its share of them.
            tokio::time::sleep(config.pause.mul_f64(0.5 + rand::random::<f64>())).await;
        }
        let recording = sample >= config.warmup;
        let time = clock.next(unix_nanos());
        let mut request = String::new();
        client.write_iamat(time, &mut request);
        let start = Instant::now();
        let deadline = start + config.timeout;
        from.send(request.as_bytes())
            .await
            .with_context(|| format!("IAMAT at {}", config.from))?;
        let mut polls = JoinSet::new();
        for (index, target) in targets.iter_mut().enumerate() {
            let conn = target.conn.take();
            let (addr, client, connect_timeout, poll_request, depth) = (
                target.addr,
                client.clone(),
                config.connect_timeout,
                poll_request.clone(),
                config.depth,
            );
            polls.spawn(async move {
                let polled = poll(
                    addr,
                    conn,
                    &client,
                    time,
                    start,
                    deadline,
                    connect_timeout,
                    &poll_request,
                    depth,
                )
                .await;
                (index, polled)
            });
        }
        let reply = from
            .reply(Kind::Iamat, deadline)
            .await
            .with_context(|| format!("IAMAT at {}", config.from))?;
        if recording {
            iamat.saturating_record(nanos(start.elapsed()));
        }
        if let Err(why) =
            reply::check_iamat_reply(reply.strip_suffix(b"\n").unwrap_or(&reply), &client, time)
        {
            invalid += 1;
            if invalid_samples.len() < 5 {
                invalid_samples.push(format!("{why}: {}", reply::sample(&reply)));
            }
        }

        while let Some(done) = polls.join_next().await {
            let (index, polled) = done.context("a poll task panicked")?;
            let target = &mut targets[index];
            target.conn = polled.conn;
            target.polls += polled.polls;
            if polled.polls > 1 {
                target.spaced += polled.polls - 1;
                target.spacing += polled.spacing;
            }
            for sample in polled.bad {
                invalid += 1;
                if invalid_samples.len() < 5 {
                    invalid_samples.push(sample);
                }
            }
            if !recording {
                continue;
            }
            match polled.outcome {
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

    let all_samples = (config.samples + config.warmup).max(1) as f64;
    Ok(PropagateReport {
        from: config.from,
        samples: config.samples,
        depth: config.depth,
        radius_km: config.radius_km,
        iamat: Summary::of(&iamat),
        targets: targets
            .into_iter()
            .map(|target| TargetReport {
                addr: target.addr,
                latency: Summary::of(&target.latency),
                timeouts: target.timeouts,
                mean_polls: target.polls as f64 / all_samples,
                mean_poll_interval_us: if target.spaced == 0 {
                    0.0
                } else {
                    target.spacing.as_secs_f64() * 1e6 / target.spaced as f64
                },
                errors: target.errors,
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
/// deadline passes, keeping `depth` WHATSATs in flight back to back so that
/// the server always has the next one waiting: the update is seen by the
/// first one the server handles after storing it. Returns the connection
/// if it is still in step, the outcome, the number of answers read and
/// their total spacing, and any invalid answers seen.
#[allow(clippy::too_many_arguments)]
async fn poll(
    addr: SocketAddr,
    conn: Option<LineConn>,
    client: &Client,
    time: ClientTime,
    start: Instant,
    deadline: Instant,
    connect_timeout: Duration,
    request: &str,
    depth: usize,
) -> Polled {
    let mut polled = Polled {
        conn: None,
        outcome: Outcome::TimedOut,
        polls: 0,
        spacing: Duration::ZERO,
        bad: Vec::new(),
    };
    let mut conn = match conn {
        Some(conn) => conn,
        None => match LineConn::connect(addr, connect_timeout).await {
            Ok(conn) => conn,
            Err(error) => {
                polled.outcome = Outcome::Failed(format!("{error:#}"));
                return polled;
            }
        },
    };
    let time_text = time.text();
    let failed = |polled: &mut Polled, error: anyhow::Error| {
        polled.outcome = if Instant::now() >= deadline {
            Outcome::TimedOut
        } else {
            Outcome::Failed(format!("{error:#}"))
        };
    };
    if let Err(error) = conn.send(request.repeat(depth).as_bytes()).await {
        failed(&mut polled, error);
        return polled;
    }
    let mut in_flight = depth;
    let mut last_answer: Option<Instant> = None;
    loop {
        let answer = match conn.reply(Kind::Whatsat, deadline).await {
            Ok(answer) => answer,
            Err(error) => {
                // Out of step (or gone): the caller reconnects.
                failed(&mut polled, error);
                return polled;
            }
        };
        let now = Instant::now();
        in_flight -= 1;
        polled.polls += 1;
        if let Some(last) = last_answer {
            polled.spacing += now - last;
        }
        last_answer = Some(now);
        // `? ...`: the target does not know the client yet (first sample).
        if !answer.starts_with(b"? ") {
            match reply::answer_time(&answer, client.id.as_bytes()) {
                Some(seen) if seen == time_text.as_bytes() => {
                    polled.outcome = Outcome::Seen(now - start);
                    if let Err(why) = reply::check_whatsat_answer(&answer, client, time, 1) {
                        polled
                            .bad
                            .push(format!("{why}: {}", reply::sample(&answer)));
                    }
                    break;
                }
                Some(_) => {}
                None => polled.bad.push(format!(
                    "not an AT answer for the client: {}",
                    reply::sample(&answer)
                )),
            }
        }
        if Instant::now() >= deadline {
            return polled;
        }
        if let Err(error) = conn.send(request.as_bytes()).await {
            failed(&mut polled, error);
            return polled;
        }
        in_flight += 1;
    }
    // Read the answers still due, so the connection is in step for the
    // next sample.
    let drain_deadline = Instant::now() + connect_timeout;
    for _ in 0..in_flight {
        if conn.reply(Kind::Whatsat, drain_deadline).await.is_err() {
            return polled;
        }
    }
    polled.conn = Some(conn);
    polled
}

/// What one poll loop at one target did.
struct Polled {
    conn: Option<LineConn>,
    outcome: Outcome,
    polls: u64,
    /// The time between the first and the last answer read.
    spacing: Duration,
    bad: Vec<String>,
}

impl PropagateReport {
    pub fn ok(&self) -> bool {
        self.invalid == 0
            && self
                .targets
                .iter()
                .all(|target| target.timeouts == 0 && target.errors.is_empty())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "command": "propagate",
            "from": self.from.to_string(),
            "samples": self.samples,
            "poll_depth": self.depth,
            "poll_radius_km": self.radius_km,
            "iamat_latency_us": self.iamat.to_json(),
            "targets": self.targets.iter().map(|target| json!({
                "addr": target.addr.to_string(),
                "latency_us": target.latency.to_json(),
                "timeouts": target.timeouts,
                "mean_polls": (target.mean_polls * 100.0).round() / 100.0,
                "mean_poll_interval_us": (target.mean_poll_interval_us * 10.0).round() / 10.0,
                "errors": target.errors,
            })).collect::<Vec<_>>(),
            "invalid": self.invalid,
            "invalid_samples": self.invalid_samples,
            "ok": self.ok(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "propagation from {} ({} samples; from writing the IAMAT until a target answers \
             with it; {} WHATSAT {} km bound 1 in flight per target)\n",
            self.from, self.samples, self.depth, self.radius_km
        );
        out.push_str(&format!(
            "  IAMAT round trip at {}: {}\n",
            self.from,
            self.iamat.row()
        ));
        for target in &self.targets {
            out.push_str(&format!(
                "  -> {}: {}  timeouts {}  polls/sample {:.1}  poll interval {}\n",
                target.addr,
                target.latency.row(),
                target.timeouts,
                target.mean_polls,
                crate::stats::show_us(target.mean_poll_interval_us),
            ));
            for error in &target.errors {
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

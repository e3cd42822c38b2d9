//! When to tell an operator that a link keeps failing: a warning at the
//! first failure, then at a falling rate, and a word when it works again.
//! Pure: the time is an argument, and the caller logs.
//!
//! A dialler retries a neighbour that is down every few hundred
//! milliseconds; a warning per try would bury the log and the terminal,
//! and none at all leaves a misconfigured herd silently cut in two. So
//! within one run of failures the gaps between warnings double, from
//! `FIRST_GAP` up to `MOST_GAP`, which a long outage then repeats. A kind
//! of failure not yet warned about in the run (the neighbour was down and
//! now refuses our secret, say) is warned about at once: what went wrong
//! has changed, and the operator fixing it needs to know. A failure the
//! caller expects for a moment (a neighbour started with this server may
//! not listen yet) can be counted without a warning; the first one that
//! is not is warned about, with the count so far.

use std::time::{Duration, Instant};

/// The gap after the first warning of a run of failures.
pub const FIRST_GAP: Duration = Duration::from_secs(1);
/// The longest gap between two warnings while the failures go on.
pub const MOST_GAP: Duration = Duration::from_secs(60);
/// Kinds of failure remembered per run (more are warned about at the
/// falling rate only).
const KINDS: usize = 8;

/// The failures of one link, or of one group of attempts at one (the
/// strangers knocking on a peer port), since it last worked.
#[derive(Debug, Default)]
pub struct Failures<K> {
    run: Option<Run<K>>,
}

#[derive(Debug)]
struct Run<K> {
    first: Instant,
    failures: u64,
    /// When the last warning of the run was; `None` before the first.
    last_warned: Option<Instant>,
    gap: Duration,
    kinds_warned: Vec<K>,
}

/// A run of failures so far: how many, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    pub failures: u64,
    /// From the first failure of the run to now.
    pub lasted: Duration,
}

impl<K: PartialEq> Failures<K> {
    pub fn new() -> Self {
        Self { run: None }
    }

    /// Notes a failure of kind `kind` at `now`; returns the run so far if
    /// this one is to be warned about.
    pub fn failed(&mut self, kind: K, now: Instant) -> Option<Outage> {
        self.note(kind, now, false)
    }

    /// Notes a failure that is to be expected for now: counted, never
    /// warned about.
    pub fn failed_quietly(&mut self, kind: K, now: Instant) {
        self.note(kind, now, true);
    }

    fn note(&mut self, kind: K, now: Instant, quiet: bool) -> Option<Outage> {
        let run = self.run.get_or_insert_with(|| Run {
            first: now,
            failures: 0,
            last_warned: None,
            gap: FIRST_GAP,
            kinds_warned: Vec::new(),
        });
        run.failures += 1;
        if quiet {
            return None;
        }
        let new_kind = !run.kinds_warned.contains(&kind);
        let due = match run.last_warned {
            None => true,
            Some(at) => now.saturating_duration_since(at) >= run.gap,
        };
        if !new_kind && !due {
            return None;
        }
        if new_kind && run.kinds_warned.len() < KINDS {
            run.kinds_warned.push(kind);
        }
        if due && run.last_warned.is_some() {
            run.gap = (run.gap * 2).min(MOST_GAP);
        }
        run.last_warned = Some(now);
        Some(Outage {
            failures: run.failures,
            lasted: now.saturating_duration_since(run.first),
        })
    }

    /// Notes that the link works at `now`; returns the run of failures it
    /// ends, if one was warned about (quiet ones end quietly).
    pub fn succeeded(&mut self, now: Instant) -> Option<Outage> {
        let run = self.run.take()?;
        run.last_warned?;
        Some(Outage {
            failures: run.failures,
            lasted: now.saturating_duration_since(run.first),
        })
    }

    /// Whether the link has failed since it last worked.
    pub fn failing(&self) -> bool {
        self.run.is_some()
    }
}

/// A duration as an operator reads it in a log line: `850ms`, `12.3s`,
/// `4m05s`, `3h20m`.
pub fn human(duration: Duration) -> String {
    let millis = duration.as_millis();
    let secs = duration.as_secs();
    if millis < 1000 {
        format!("{millis}ms")
    } else if secs < 60 {
        format!("{}.{}s", secs, duration.subsec_millis() / 100)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs / 60 % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tries every `every` for `over`, always failing the same way; the
    /// failure numbers that were warned about.
    fn warned(every: Duration, over: Duration) -> Vec<u64> {
        let start = Instant::now();
        let mut failures = Failures::new();
        let mut warned = Vec::new();
        let mut at = Duration::ZERO;
        while at <= over {
            if let Some(outage) = failures.failed("refused", start + at) {
                assert_eq!(outage.lasted, at);
                warned.push(outage.failures);
            }
            at += every;
        }
        warned
    }

    #[test]
    fn a_dialler_retrying_every_400_ms_warns_at_a_falling_rate() {
        // Warnings at 0 s, 1.2 s, 3.2 s, 7.2 s, 15.2 s, 31.2 s, 63.2 s, then
        // every minute: failure 1, 4, 9, 19, 39, 79, 159, 309, ...
        let warned = warned(Duration::from_millis(400), Duration::from_secs(600));
        assert_eq!(&warned[..7], [1, 4, 9, 19, 39, 79, 159]);
        let gaps: Vec<u64> = warned.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), 150, "a minute of tries: {gaps:?}");
        // Ten minutes of 1,500 failures: 15 warnings.
        assert_eq!(warned.len(), 15, "{warned:?}");
    }

    #[test]
    fn a_new_kind_of_failure_is_warned_about_at_once_but_only_once() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut failures = Failures::new();
        assert!(failures.failed("refused", ms(0)).is_some());
        assert!(failures.failed("refused", ms(400)).is_none());
        let outage = failures.failed("secret", ms(800)).expect("a new kind");
        assert_eq!(outage.failures, 3);
        // Flapping between kinds already told adds nothing.
        for n in 3..20 {
            let kind = if n % 2 == 0 { "refused" } else { "secret" };
            let at = ms(800 + n * 10);
            assert!(failures.failed(kind, at).is_none(), "{n}");
        }
        // The rate goes on from the last warning.
        assert!(failures.failed("secret", ms(1900)).is_some());
    }

    #[test]
    fn success_ends_the_run_and_says_how_long_it_was() {
        let start = Instant::now();
        let mut failures = Failures::new();
        assert_eq!(failures.succeeded(start), None, "nothing had failed");
        assert!(!failures.failing());
        failures.failed(1, start);
        failures.failed(1, start + Duration::from_millis(50));
        assert!(failures.failing());
        assert_eq!(
            failures.succeeded(start + Duration::from_millis(2500)),
            Some(Outage {
                failures: 2,
                lasted: Duration::from_millis(2500)
            })
        );
        // A new run starts afresh, with a warning at its first failure.
        let later = start + Duration::from_secs(10);
        assert_eq!(failures.failed(1, later).map(|o| o.failures), Some(1));
    }

    #[test]
    fn failures_expected_for_now_are_counted_but_not_warned_about() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut failures = Failures::new();
        failures.failed_quietly("refused", ms(0));
        failures.failed_quietly("refused", ms(400));
        // The first that is not expected is warned about, with the count.
        let outage = failures.failed("refused", ms(800)).expect("warned");
        assert_eq!(outage.failures, 3);
        assert_eq!(outage.lasted, Duration::from_millis(800));
        assert!(failures.failed("refused", ms(1200)).is_none());
        assert!(failures.failed("refused", ms(1800)).is_some());
        // A run that was never told ends without a word.
        let mut quiet = Failures::new();
        quiet.failed_quietly("refused", ms(0));
        assert!(quiet.failing());
        assert_eq!(quiet.succeeded(ms(100)), None);
        assert!(!quiet.failing());
    }

    #[test]
    fn durations_read_as_an_operator_would_write_them() {
        let check = |millis: u64, text: &str| {
            assert_eq!(human(Duration::from_millis(millis)), text, "{millis}");
        };
        check(0, "0ms");
        check(850, "850ms");
        check(12_345, "12.3s");
        check(245_000, "4m05s");
        check(12_000_000, "3h20m");
    }
}

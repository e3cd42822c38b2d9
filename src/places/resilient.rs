//! What makes a remote places API safe and cheap to call from WHATSAT: a
//! time budget per call with retries inside it, a bound on concurrent
//! requests, a circuit breaker, coalescing of identical queries, a small
//! cache, and counters that show what the API costs.
//!
//! [`Resilient`] wraps any [`Upstream`] (both Google APIs) and is itself a
//! [`Places`]. A query goes:
//!
//! 1. to the cache, keyed by [`Upstream::key`], which names everything the
//!    provider is asked, so an answer never stands in for a different query
//!    (the bound is not part of it: answers are kept whole and cut per
//!    query);
//! 2. else to an identical query already in flight, whose answer it shares;
//! 3. else, unless the circuit breaker is open, to a new upstream call, run
//!    in a task of its own so that it finishes (and fills the cache) even if
//!    the WHATSAT that started it goes away. The call gets `timeout` in
//!    all: waiting for one of `max_concurrent` slots, the request, and any
//!    retries of transient failures (connection errors, timeouts, 5xx,
//!    `OVER_QUERY_LIMIT`), which back off exponentially with jitter.
//!
//! After `breaker_failures` calls in a row fail transiently, the breaker
//! opens: queries are answered `UNKNOWN_ERROR` at once, without a request,
//! for `breaker_cooldown`; then one query tries the provider again, and its
//! success closes the breaker. Final errors such as `REQUEST_DENIED` show a
//! working provider and do not count.
//!
//! Nothing here blocks: waiting for the provider holds up only the WHATSAT
//! that asked (and the later lines of its connection, whose replies must
//! stay in order), never other clients.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::stats::PlacesStats;

use super::answer::Answer;
use super::remote::{Upstream, UpstreamError};
use super::{NearbyQuery, Places, PlacesError};

/// How a [`Resilient`] provider behaves; `PlacesConfig` has the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The whole budget of one upstream call, retries included.
    pub timeout: Duration,
    /// Requests per call at most (1 = no retries).
    pub max_attempts: u32,
    /// Requests in flight toward the provider at most.
    pub max_concurrent: usize,
    /// How long an answer is reused; zero turns the cache off.
    pub cache_ttl: Duration,
    /// Answers kept at most (the oldest go first).
    pub cache_max_entries: usize,
    /// Transient failures in a row that open the circuit breaker; 0 never
    /// opens it.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a query may try again.
    pub breaker_cooldown: Duration,
    /// How often the counters are logged (when they changed); zero never.
    pub stats_interval: Duration,
}

/// First retry's backoff; each later one doubles, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a provider has done since the server started.
pub type Stats = crate::stats::PlacesCounts;

/// One call's outcome, shared by every query waiting for it.
type Outcome = Result<Arc<Answer>, UpstreamError>;

/// A remote provider with timeouts, retries, a concurrency bound, a circuit
/// breaker, coalescing and a cache.
pub struct Resilient<U: Upstream> {
    inner: Arc<Inner<U>>,
}

struct Inner<U: Upstream> {
    upstream: U,
    settings: Settings,
    slots: Semaphore,
    cache: Mutex<Cache>,
    /// Calls in flight, by key; each waiter watches for the outcome.
    in_flight: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    breaker: Mutex<Breaker>,
    counters: PlacesStats,
    /// Whether the task that logs the counters has been started.
    reporting: std::sync::Once,
}

impl<U: Upstream> Resilient<U> {
    /// Wraps `upstream`.
    pub fn new(upstream: U, settings: Settings) -> Self {
        let slots = Semaphore::new(settings.max_concurrent.max(1));
        let cache = Cache::new(settings.cache_ttl, settings.cache_max_entries);
        Self {
            inner: Arc::new(Inner {
                upstream,
                settings,
                slots,
                cache: Mutex::new(cache),
                in_flight: Mutex::new(HashMap::new()),
                breaker: Mutex::new(Breaker::Closed { failures: 0 }),
                counters: PlacesStats::default(),
                reporting: std::sync::Once::new(),
            }),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

#[async_trait]
impl<U: Upstream> Places for Resilient<U> {
    async fn nearby(&self, query: &NearbyQuery) -> Result<Value, PlacesError> {
        let inner = &self.inner;
        inner.start_reporting();
        inner.counters.queries.bump();
        let outcome = inner.answer(query).await.and_then(|answer| {
            answer.cut(query.limit).map_err(|error| {
                PlacesError::Unavailable(format!("{}: {error}", inner.upstream.name()))
            })
        });
        if outcome.is_err() {
            inner.counters.failed_answers.bump();
        }
        outcome
    }

    fn stats(&self) -> Option<&PlacesStats> {
        Some(&self.inner.counters)
    }
}

impl<U: Upstream> Inner<U> {
    async fn answer(self: &Arc<Self>, query: &NearbyQuery) -> Result<Arc<Answer>, PlacesError> {
        let key = self.upstream.key(query);
        if let Some(answer) = self.cache_get(&key) {
            self.counters.cache_hits.bump();
            return Ok(answer);
        }
        let mut receiver = {
            let mut in_flight = self
                .in_flight
                .lock()
                .expect("in-flight lock is never poisoned");
            match in_flight.get(&key) {
                Some(receiver) => {
                    self.counters.coalesced.bump();
                    receiver.clone()
                }
                None => {
                    // A call that finished just now has filled the cache.
                    if let Some(answer) = self.cache_get(&key) {
                        self.counters.cache_hits.bump();
                        return Ok(answer);
                    }
                    if let Err(wait) = self.admit() {
                        self.counters.breaker_rejections.bump();
                        return Err(PlacesError::Unavailable(format!(
                            "{} keeps failing; circuit breaker open for another {} ms",
                            self.upstream.name(),
                            wait.as_millis()
                        )));
                    }
                    let (sender, receiver) = watch::channel(None);
                    in_flight.insert(key.clone(), receiver.clone());
                    tokio::spawn(self.clone().call(key, query.clone(), sender));
                    receiver
                }
            }
        };
        let outcome = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| PlacesError::Unavailable("the upstream call was lost".into()))?
            .clone()
            .expect("waited for Some");
        outcome.map_err(|error| error.to_places_error())
    }

    /// One upstream call for `key`, shared by every query waiting on
    /// `sender`.
    async fn call(
        self: Arc<Self>,
        key: String,
        query: NearbyQuery,
        sender: watch::Sender<Option<Outcome>>,
    ) {
        let outcome = self.call_with_retries(&query).await.map(Arc::new);
        if let Err(error) = &outcome {
            // The detail (Google's error_message, the connection error) is
            // what a user needs to fix a key or a network; the answer only
            // carries the status.
            warn!(
                provider = self.upstream.name(),
                status = %error.status,
                detail = %error.detail,
                "places request failed"
            );
        }
        self.record(&outcome);
        let mut in_flight = self
            .in_flight
            .lock()
            .expect("in-flight lock is never poisoned");
        if let Ok(answer) = &outcome {
            self.cache_put(key.clone(), answer.clone());
        }
        in_flight.remove(&key);
        drop(in_flight);
        // No one may be waiting any more; that is fine.
        let _ = sender.send(Some(outcome));
    }

    async fn call_with_retries(&self, query: &NearbyQuery) -> Result<Answer, UpstreamError> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout_at(deadline, async {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.counters.upstream_calls.bump();
                self.upstream.fetch(query).await
            })
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::unreachable(format!(
                    "no answer within {} ms",
                    self.settings.timeout.as_millis()
                )))
            });
            let error = match result {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            self.counters.failed(&error.status);
            let backoff = backoff(attempt);
            if !error.transient
                || attempt >= self.settings.max_attempts
                || Instant::now() + backoff >= deadline
            {
                return Err(error);
            }
            debug!(
                provider = self.upstream.name(),
                attempt,
                %error,
                backoff_ms = backoff.as_millis(),
                "places request failed; retrying"
            );
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    /// Whether a new call may go out now; else how long the breaker stays
    /// open. The first query after the cool-down is let through as a trial.
    fn admit(&self) -> Result<(), Duration> {
        let mut breaker = self.breaker.lock().expect("breaker lock is never poisoned");
        match *breaker {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *breaker = Breaker::Trial;
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            // While the trial is out, everyone else waits for its verdict.
            Breaker::Trial => Err(Duration::ZERO),
        }
    }

    /// Updates the breaker with a call's outcome.
    fn record(&self, outcome: &Result<Arc<Answer>, UpstreamError>) {
        let threshold = self.settings.breaker_failures;
        let mut breaker = self.breaker.lock().expect("breaker lock is never poisoned");
        let failed = matches!(outcome, Err(error) if error.transient);
        let was = *breaker;
        *breaker = match (was, failed) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, true) if threshold == 0 || failures + 1 < threshold => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (_, true) => Breaker::Open {
                until: Instant::now() + self.settings.breaker_cooldown,
            },
        };
        match (was, *breaker) {
            (Breaker::Closed { .. }, Breaker::Open { .. }) => {
                self.counters.breaker_opened.bump();
                warn!(
                    provider = self.upstream.name(),
                    failures = threshold,
                    cooldown_ms = self.settings.breaker_cooldown.as_millis(),
                    "places provider keeps failing; circuit breaker open"
                );
            }
            (Breaker::Trial, Breaker::Open { .. }) => {
                debug!(
                    provider = self.upstream.name(),
                    "places provider still failing"
                );
            }
            (Breaker::Trial, Breaker::Closed { .. }) => {
                info!(
                    provider = self.upstream.name(),
                    "places provider answers again; circuit breaker closed"
                );
            }
            _ => {}
        }
        self.counters
            .breaker_open
            .set(i64::from(!matches!(*breaker, Breaker::Closed { .. })));
    }

    fn cache_get(&self, key: &str) -> Option<Arc<Answer>> {
        self.cache
            .lock()
            .expect("cache lock is never poisoned")
            .get(key, Instant::now())
    }

    fn cache_put(&self, key: String, answer: Arc<Answer>) {
        self.cache
            .lock()
            .expect("cache lock is never poisoned")
            .put(key, answer, Instant::now());
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Starts, once, the task that logs the counters every
    /// `stats_interval` while they change. It holds the provider weakly, so
    /// it ends with it.
    fn start_reporting(self: &Arc<Self>) {
        let interval = self.settings.stats_interval;
        if interval.is_zero() {
            return;
        }
        self.reporting.call_once(|| {
            let weak: Weak<Self> = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
                let mut last = Stats::default();
                loop {
                    ticks.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let stats = inner.stats();
                    if stats != last {
                        let entries = inner
                            .cache
                            .lock()
                            .expect("cache lock is never poisoned")
                            .len();
                        info!(
                            provider = inner.upstream.name(),
                            queries = stats.queries,
                            cache_hits = stats.cache_hits,
                            coalesced = stats.coalesced,
                            upstream_calls = stats.upstream_calls,
                            upstream_failures = stats.upstream_failures,
                            failed_answers = stats.failed_answers,
                            breaker_rejections = stats.breaker_rejections,
                            breaker_opened = stats.breaker_opened,
                            cache_entries = entries,
                            "places stats"
                        );
                        last = stats;
                    }
                }
            });
        });
    }
}

/// The pause before attempt `attempt + 1`: exponential, capped, with "equal
/// jitter" (half fixed, half random), so that servers retrying together
/// spread out while each still waits a while.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    /// Calls go out; `failures` transient failures in a row so far.
    Closed { failures: u32 },
    /// No calls until `until`.
    Open { until: Instant },
    /// One call is out to see whether the provider is back.
    Trial,
}

/// Answers by key, each for `ttl`, at most `max_entries` of them.
struct Cache {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<String, (Arc<Answer>, Instant)>,
    /// Keys in the order they were stored, with their expiry: as every
    /// entry lives equally long, that is also the order they expire in.
    /// An entry whose key was stored again since is skipped when popped.
    order: VecDeque<(Instant, String)>,
}

impl Cache {
    fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_entries > 0
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Arc<Answer>> {
        let (answer, expires) = self.entries.get(key)?;
        if now < *expires {
            Some(answer.clone())
        } else {
            self.entries.remove(key);
            None
        }
    }

    fn put(&mut self, key: String, answer: Arc<Answer>, now: Instant) {
        if !self.enabled() {
            return;
        }
        let expires = now + self.ttl;
        self.entries.insert(key.clone(), (answer, expires));
        self.order.push_back((expires, key));
        while let Some((expires, key)) = self.order.front() {
            let over =
                self.entries.len() > self.max_entries || self.order.len() > 2 * self.max_entries;
            if !over && *expires > now {
                break;
            }
            if self
                .entries
                .get(key)
                .is_some_and(|(_, current)| current == expires)
            {
                self.entries.remove(key);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that answers from a script, after a delay.
    struct Scripted {
        calls: AtomicUsize,
        delay: Duration,
        /// Answers for calls 1, 2, ...; the last one repeats.
        script: Vec<Result<Value, UpstreamError>>,
    }

    impl Scripted {
        fn new(delay: Duration, script: Vec<Result<Value, UpstreamError>>) -> Self {
            Self {
                calls: AtomicUsize::new(0),
                delay,
                script,
            }
        }
    }

    #[async_trait]
    impl Upstream for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn key(&self, query: &NearbyQuery) -> String {
            format!("{},{}|{}", query.lat, query.lng, query.radius_m_text)
        }
        async fn fetch(&self, _query: &NearbyQuery) -> Result<Answer, UpstreamError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.script[call.min(self.script.len() - 1)]
                .clone()
                .map(Answer::from_value)
        }
    }

    fn settings() -> Settings {
        Settings {
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            max_concurrent: 4,
            cache_ttl: Duration::from_secs(60),
            cache_max_entries: 100,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(10),
            stats_interval: Duration::ZERO,
        }
    }

    fn query(lat: f64, limit: usize) -> NearbyQuery {
        NearbyQuery {
            lat,
            lng: 24.94,
            radius_m: 1000.0,
            radius_m_text: "1000".into(),
            limit,
        }
    }

    fn ok(n: usize) -> Result<Value, UpstreamError> {
        let results: Vec<Value> = (0..n).map(|i| json!({ "name": format!("P{i}") })).collect();
        Ok(json!({ "html_attributions": [], "results": results, "status": "OK" }))
    }

    fn calls(provider: &Resilient<Scripted>) -> usize {
        provider.inner.upstream.calls.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn identical_concurrent_queries_make_one_call() {
        let provider = Arc::new(Resilient::new(
            Scripted::new(Duration::from_millis(500), vec![ok(20)]),
            settings(),
        ));
        let mut tasks = Vec::new();
        for limit in 1..=20 {
            let provider = provider.clone();
            tasks.push(tokio::spawn(async move {
                provider.nearby(&query(60.17, limit)).await
            }));
        }
        for (limit, task) in (1..=20).zip(tasks) {
            let answer = task.await.unwrap().unwrap();
            assert_eq!(answer["results"].as_array().unwrap().len(), limit);
        }
        assert_eq!(calls(&provider), 1);
        let stats = provider.stats();
        assert_eq!(
            (stats.queries, stats.upstream_calls, stats.coalesced),
            (20, 1, 19)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_until_they_expire() {
        let provider = Resilient::new(Scripted::new(Duration::ZERO, vec![ok(3)]), settings());
        provider.nearby(&query(60.17, 5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        let answer = provider.nearby(&query(60.17, 2)).await.unwrap();
        assert_eq!(answer["results"].as_array().unwrap().len(), 2);
        assert_eq!(calls(&provider), 1);
        // Another place is another query.
        provider.nearby(&query(60.18, 2)).await.unwrap();
        assert_eq!(calls(&provider), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        provider.nearby(&query(60.17, 2)).await.unwrap();
        assert_eq!(calls(&provider), 3);
        assert_eq!(provider.stats().cache_hits, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_turns_the_cache_off() {
        let provider = Resilient::new(
            Scripted::new(Duration::ZERO, vec![ok(3)]),
            Settings {
                cache_ttl: Duration::ZERO,
                ..settings()
            },
        );
        for _ in 0..3 {
            provider.nearby(&query(60.17, 5)).await.unwrap();
        }
        assert_eq!(calls(&provider), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_final_ones_not() {
        let flaky = Resilient::new(
            Scripted::new(
                Duration::ZERO,
                vec![
                    Err(UpstreamError::unreachable("refused")),
                    Err(UpstreamError::http(503, "")),
                    ok(1),
                ],
            ),
            settings(),
        );
        assert!(flaky.nearby(&query(60.17, 5)).await.is_ok());
        assert_eq!(calls(&flaky), 3);
        assert_eq!(flaky.stats().upstream_failures, 2);

        let denied = Resilient::new(
            Scripted::new(
                Duration::ZERO,
                vec![Err(UpstreamError::status("REQUEST_DENIED", "bad key"))],
            ),
            settings(),
        );
        assert_eq!(
            denied.nearby(&query(60.17, 5)).await,
            Err(PlacesError::Status("REQUEST_DENIED".into()))
        );
        assert_eq!(calls(&denied), 1);

        let limited = Resilient::new(
            Scripted::new(
                Duration::ZERO,
                vec![Err(UpstreamError::status("OVER_QUERY_LIMIT", ""))],
            ),
            settings(),
        );
        assert_eq!(
            limited.nearby(&query(60.17, 5)).await,
            Err(PlacesError::Status("OVER_QUERY_LIMIT".into()))
        );
        assert_eq!(calls(&limited), 3, "max_attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_provider_times_out_within_the_budget() {
        let provider = Resilient::new(
            Scripted::new(Duration::from_secs(30), vec![ok(1)]),
            Settings {
                timeout: Duration::from_millis(800),
                ..settings()
            },
        );
        let started = Instant::now();
        let error = provider.nearby(&query(60.17, 5)).await.unwrap_err();
        assert!(matches!(error, PlacesError::Unavailable(_)), "{error:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(800));
        // The whole budget went to the one hung attempt.
        assert_eq!(calls(&provider), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_before_the_time_budget_is_spent() {
        // Always over the limit: retried with backoff until the next pause
        // would reach past the budget. The answer is then the provider's own
        // status (not a timeout), given within the budget.
        let provider = Resilient::new(
            Scripted::new(
                Duration::ZERO,
                vec![Err(UpstreamError::status("OVER_QUERY_LIMIT", ""))],
            ),
            Settings {
                timeout: Duration::from_millis(700),
                max_attempts: 10,
                ..settings()
            },
        );
        let started = Instant::now();
        assert_eq!(
            provider.nearby(&query(60.17, 5)).await,
            Err(PlacesError::Status("OVER_QUERY_LIMIT".into()))
        );
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        let calls = calls(&provider);
        assert!((2..10).contains(&calls), "{calls} calls");
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_answers_at_once_and_recovers() {
        let provider = Resilient::new(
            Scripted::new(
                Duration::ZERO,
                vec![
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    // The trial after the first cool-down fails too.
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    Err(UpstreamError::http(500, "")),
                    ok(2),
                ],
            ),
            Settings {
                max_attempts: 3,
                breaker_failures: 3,
                cache_ttl: Duration::ZERO,
                ..settings()
            },
        );
        // Three calls of three attempts each fail: the breaker opens.
        for lat in [1.0, 2.0, 3.0] {
            assert!(provider.nearby(&query(lat, 5)).await.is_err());
        }
        assert_eq!(calls(&provider), 9);
        let started = Instant::now();
        let error = provider.nearby(&query(4.0, 5)).await.unwrap_err();
        assert!(
            matches!(&error, PlacesError::Unavailable(text) if text.contains("circuit breaker")),
            "{error:?}"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(calls(&provider), 9, "no request while open");
        assert_eq!(provider.stats().breaker_rejections, 1);
        assert_eq!(provider.stats().breaker_opened, 1);

        // After the cool-down, one trial; a failed trial opens it again at once.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(provider.nearby(&query(5.0, 5)).await.is_err());
        assert_eq!(calls(&provider), 12);
        let after_trial = calls(&provider);
        assert!(provider.nearby(&query(6.0, 5)).await.is_err());
        assert_eq!(
            calls(&provider),
            after_trial,
            "open again after a failed trial"
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(provider.nearby(&query(7.0, 5)).await.is_ok());
        assert!(
            provider.nearby(&query(8.0, 5)).await.is_ok(),
            "closed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_do_not_open_the_breaker() {
        let provider = Resilient::new(
            Scripted::new(
                Duration::ZERO,
                vec![Err(UpstreamError::status("INVALID_REQUEST", ""))],
            ),
            Settings {
                breaker_failures: 1,
                ..settings()
            },
        );
        for lat in [1.0, 2.0, 3.0] {
            assert_eq!(
                provider.nearby(&query(lat, 5)).await,
                Err(PlacesError::Status("INVALID_REQUEST".into()))
            );
        }
        assert_eq!(calls(&provider), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_toward_the_provider_is_bounded() {
        let provider = Arc::new(Resilient::new(
            Scripted::new(Duration::from_millis(100), vec![ok(1)]),
            Settings {
                max_concurrent: 2,
                ..settings()
            },
        ));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let provider = provider.clone();
            tasks.push(tokio::spawn(async move {
                provider.nearby(&query(f64::from(i), 1)).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // Six calls, two at a time, 100 ms each.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn the_cache_is_bounded() {
        let now = Instant::now();
        let mut cache = Cache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.put(
                format!("k{i}"),
                Arc::new(Answer::from_value(json!({ "n": i }))),
                now,
            );
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("k9", now).is_some());
        assert!(cache.get("k0", now).is_none());
        assert!(cache.order.len() <= 6);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..40 {
            let pause = backoff(attempt);
            let full = FIRST_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(pause >= full / 2 && pause <= full, "{attempt}: {pause:?}");
        }
    }
}

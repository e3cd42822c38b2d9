//! Counters: the one home for what the wings count, so that they can be
//! logged now and exposed later from one place.
//!
//! A [`Counter`] is a relaxed atomic: bumping it is one uncontended atomic
//! add on the server's own thread, with no lock and no allocation, so the
//! hot paths can afford it. Each server owns its [`ServerStats`] (tests run
//! several servers in one process); a places provider owns its
//! [`PlacesStats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// A count that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn bump(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one server has done since it started.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Client connections accepted, and refused for their address's limit.
    pub connections: Counter,
    pub connections_refused: Counter,
    /// IAMAT lines that stored a report, and those that were not newer.
    pub iamat_stored: Counter,
    pub iamat_not_newer: Counter,
    /// WHATSAT lines answered with places.
    pub whatsat: Counter,
    /// Lines answered `?`.
    pub invalid: Counter,
    /// Frames and their update lines sent to neighbours, heartbeats
    /// included in the frames.
    pub frames_sent: Counter,
    pub updates_sent: Counter,
    /// Announcements (`H`) sent over lazy links, and their bytes.
    pub announcements_sent: Counter,
    pub announcement_bytes_sent: Counter,
    /// Frames and update lines received, and the updates that were stored.
    pub frames_received: Counter,
    pub updates_received: Counter,
    pub updates_stored: Counter,
    /// Times a sending link came up, and went down.
    pub links_up: Counter,
    pub links_down: Counter,
    /// Reports written to the core database, and rounds of the archiver
    /// that failed (the database unreachable, locked or refusing).
    pub reports_archived: Counter,
    pub archive_failures: Counter,
}

/// What a remote places provider has done since the server started.
#[derive(Debug, Default)]
pub struct PlacesStats {
    /// WHATSAT queries asked of the provider.
    pub queries: Counter,
    /// Queries answered from the cache.
    pub cache_hits: Counter,
    /// Queries that shared an identical query's call in flight.
    pub coalesced: Counter,
    /// Requests sent to the API, retries included: what the API bills.
    pub upstream_calls: Counter,
    /// Requests that failed (each attempt counts).
    pub upstream_failures: Counter,
    /// Queries answered with an error status.
    pub failed_answers: Counter,
    /// Queries answered `UNKNOWN_ERROR` at once by the open breaker.
    pub breaker_rejections: Counter,
    /// Times the breaker opened.
    pub breaker_opened: Counter,
}

impl PlacesStats {
    /// The counts as they are now.
    pub fn snapshot(&self) -> PlacesCounts {
        PlacesCounts {
            queries: self.queries.get(),
            cache_hits: self.cache_hits.get(),
            coalesced: self.coalesced.get(),
            upstream_calls: self.upstream_calls.get(),
            upstream_failures: self.upstream_failures.get(),
            failed_answers: self.failed_answers.get(),
            breaker_rejections: self.breaker_rejections.get(),
            breaker_opened: self.breaker_opened.get(),
        }
    }
}

/// [`PlacesStats`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlacesCounts {
    pub queries: u64,
    pub cache_hits: u64,
    pub coalesced: u64,
    pub upstream_calls: u64,
    pub upstream_failures: u64,
    pub failed_answers: u64,
    pub breaker_rejections: u64,
    pub breaker_opened: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_across_threads() {
        let stats = std::sync::Arc::new(ServerStats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.iamat_stored.bump();
                    }
                    stats.updates_sent.add(5);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(stats.iamat_stored.get(), 4000);
        assert_eq!(stats.updates_sent.get(), 20);
    }

    #[test]
    fn a_places_snapshot_reads_every_counter() {
        let stats = PlacesStats::default();
        stats.queries.add(3);
        stats.breaker_opened.bump();
        let counts = stats.snapshot();
        assert_eq!(
            (counts.queries, counts.breaker_opened, counts.cache_hits),
            (3, 1, 0)
        );
    }
}

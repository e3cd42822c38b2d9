//! The latest known location of every client, and the order in which this
//! server accepted them.
//!
//! Every accepted report gets the next *sequence number* of this server.
//! A client appears in the sequence once, at its newest report, so "what
//! did I accept after sequence N" is a range scan whose size is what was
//! missed, never the size of the store. That one ordered index is both the
//! flood's outbox for every neighbour and the catch-up log (see `flood`).
//!
//! Plain synchronous code: no IO, no clock, no tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use crate::protocol::Location;
use crate::time::Timestamp;

/// Where a report came from: a client of this server, or a neighbour
/// (by its index in the server's neighbour list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Client,
    Neighbour(usize),
}

/// A client's reported location, as the herd stores and floods it.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub client_id: Bytes,
    pub client_time: Timestamp,
    pub location: Location,
    /// The AT line the receiving server answered with, without a line
    /// ending; WHATSAT answers repeat it exactly.
    pub at_line: Bytes,
}

#[derive(Debug)]
struct Entry {
    report: Report,
    seq: u64,
    source: Source,
}

#[derive(Debug, Default)]
struct Inner {
    clients: HashMap<Bytes, Entry>,
    /// Sequence number -> client id, one entry per client at its newest report.
    by_seq: BTreeMap<u64, Bytes>,
    head: u64,
}

/// One report picked for a neighbour by [`Store::since`].
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub seq: u64,
    pub at_line: Bytes,
}

/// The latest report of every client.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `report` if it is newer than what we have, and returns its new
    /// sequence number; `None` means it was not newer and changed nothing.
    pub fn update(&self, report: Report, source: Source) -> Option<u64> {
        let mut inner = self.inner.lock().expect("store lock is never poisoned");
        let inner = &mut *inner;
        let old_seq = match inner.clients.get(&report.client_id) {
            // Equal times are not newer: this is what ends a flood.
            Some(known) if known.report.client_time >= report.client_time => return None,
            Some(known) => Some(known.seq),
            None => None,
        };
        if let Some(old_seq) = old_seq {
            inner.by_seq.remove(&old_seq);
        }
        inner.head += 1;
        let seq = inner.head;
        inner.by_seq.insert(seq, report.client_id.clone());
        inner.clients.insert(
            report.client_id.clone(),
            Entry {
                report,
                seq,
                source,
            },
        );
        Some(seq)
    }

    /// Puts back a report replayed from disk under its old sequence number,
    /// if it is newer than what is there. Numbers only ever grow: the head
    /// moves past `seq`.
    pub fn restore(&self, report: Report, seq: u64) {
        let mut inner = self.inner.lock().expect("store lock is never poisoned");
        let inner = &mut *inner;
        inner.head = inner.head.max(seq);
        if let Some(known) = inner.clients.get(&report.client_id) {
            if known.report.client_time >= report.client_time {
                return;
            }
            inner.by_seq.remove(&known.seq);
        }
        inner.by_seq.insert(seq, report.client_id.clone());
        inner.clients.insert(
            report.client_id.clone(),
            Entry {
                report,
                seq,
                source: Source::Client,
            },
        );
    }

    /// Makes the next sequence number at least `next`.
    pub fn continue_from(&self, next: u64) {
        let mut inner = self.inner.lock().expect("store lock is never poisoned");
        inner.head = inner.head.max(next.saturating_sub(1));
    }

    /// The newest report of a client.
    pub fn get(&self, client_id: &[u8]) -> Option<Report> {
        let inner = self.inner.lock().expect("store lock is never poisoned");
        inner
            .clients
            .get(client_id)
            .map(|entry| entry.report.clone())
    }

    /// The highest sequence number given out so far (0 when empty).
    pub fn head(&self) -> u64 {
        self.inner
            .lock()
            .expect("store lock is never poisoned")
            .head
    }

    /// How many clients are known.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().expect("store lock is never poisoned");
        inner.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reports accepted after sequence `after`, oldest first, at most
    /// `max` of them.
    ///
    /// `leave_out: Some((neighbour, above))` leaves out the reports that came
    /// from that neighbour and are numbered above `above`: never send an
    /// update back to its sender while the link that brought it is up. Those
    /// numbered lower are sent anyway, since the neighbour may have lost
    /// them in a restart since.
    ///
    /// Returns the sequence number the scan reached; the caller continues
    /// from there. Reports that were superseded are gone from the sequence,
    /// so the scan visits each client once at most.
    pub fn since(
        &self,
        after: u64,
        leave_out: Option<(usize, u64)>,
        max: usize,
        out: &mut Vec<Pending>,
    ) -> u64 {
        let inner = self.inner.lock().expect("store lock is never poisoned");
        let mut reached = after;
        let mut exhausted = true;
        for (scanned, (&seq, client_id)) in inner.by_seq.range(after + 1..).enumerate() {
            // Bound the work under the lock even when most entries are skipped.
            if out.len() >= max || scanned >= max * 4 {
                exhausted = false;
                break;
            }
            reached = seq;
            let entry = &inner.clients[client_id];
            let sent_it = leave_out
                .is_some_and(|(to, above)| seq > above && entry.source == Source::Neighbour(to));
            if !sent_it {
                out.push(Pending {
                    seq,
                    at_line: entry.report.at_line.clone(),
                });
            }
        }
        // Everything up to the head was seen: no sequence number in between
        // is left (they were superseded), so the neighbour is complete up to it.
        if exhausted { inner.head } else { reached }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(client: &str, time: &str) -> Report {
        let at_line = format!("AT Hill +0.000000000 {client} +1+1 {time}");
        Report {
            client_id: Bytes::copy_from_slice(client.as_bytes()),
            client_time: Timestamp::parse(time.as_bytes()).unwrap(),
            location: Location { lat: 1.0, lng: 1.0 },
            at_line: Bytes::from(at_line),
        }
    }

    fn seqs(store: &Store, after: u64, to: usize, max: usize) -> (Vec<u64>, u64) {
        let mut out = Vec::new();
        let reached = store.since(after, Some((to, 0)), max, &mut out);
        (out.iter().map(|p| p.seq).collect(), reached)
    }

    #[test]
    fn only_newer_reports_are_kept() {
        let store = Store::new();
        assert_eq!(store.update(report("kiwi", "1.5"), Source::Client), Some(1));
        assert_eq!(
            store.update(report("kiwi", "1.500000000"), Source::Client),
            None
        );
        assert_eq!(store.update(report("kiwi", "1.10"), Source::Client), None);
        assert_eq!(store.update(report("kiwi", "1.9"), Source::Client), Some(2));
        assert_eq!(
            store.get(b"kiwi").unwrap().at_line,
            report("kiwi", "1.9").at_line
        );
        assert_eq!(store.len(), 1);
        assert!(store.get(b"nobody").is_none());
    }

    #[test]
    fn since_lists_each_client_once_at_its_newest_report() {
        let store = Store::new();
        store.update(report("a", "1"), Source::Client);
        store.update(report("b", "1"), Source::Client);
        store.update(report("a", "2"), Source::Client);
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2, 3], 3));
        assert_eq!(seqs(&store, 2, 0, 100), (vec![3], 3));
        assert_eq!(seqs(&store, 3, 0, 100), (vec![], 3));
    }

    #[test]
    fn since_skips_what_came_from_the_neighbour_asking() {
        let store = Store::new();
        store.update(report("a", "1"), Source::Neighbour(0));
        store.update(report("b", "1"), Source::Neighbour(1));
        store.update(report("c", "1"), Source::Client);
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2, 3], 3));
        assert_eq!(seqs(&store, 0, 1, 100), (vec![1, 3], 3));
        // Only skipped entries left: the scan still moves on to the head.
        store.update(report("d", "1"), Source::Neighbour(0));
        assert_eq!(seqs(&store, 3, 0, 100), (vec![], 4));
    }

    #[test]
    fn restored_reports_keep_their_numbers_and_newest_wins() {
        let store = Store::new();
        store.restore(report("a", "2"), 7);
        store.restore(report("a", "1"), 9);
        store.restore(report("b", "1"), 3);
        assert_eq!(store.get(b"a").unwrap().client_time, report("a", "2").client_time);
        assert_eq!(seqs(&store, 0, 0, 100), (vec![3, 7], 9));
        store.continue_from(100);
        assert_eq!(store.update(report("c", "1"), Source::Client), Some(100));
    }

    #[test]
    fn reports_from_before_the_link_came_up_are_sent_back() {
        let store = Store::new();
        store.update(report("a", "1"), Source::Neighbour(0));
        store.update(report("b", "1"), Source::Neighbour(0));
        let mut out = Vec::new();
        store.since(0, Some((0, 1)), 100, &mut out);
        assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), [1]);
        out.clear();
        store.since(0, None, 100, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn since_stops_at_max_and_resumes() {
        let store = Store::new();
        for i in 0..10 {
            store.update(report(&format!("c{i}"), "1"), Source::Client);
        }
        let (first, reached) = seqs(&store, 0, 0, 4);
        assert_eq!((first, reached), (vec![1, 2, 3, 4], 4));
        let (second, reached) = seqs(&store, reached, 0, 4);
        assert_eq!((second, reached), (vec![5, 6, 7, 8], 8));
        assert_eq!(seqs(&store, reached, 0, 4), (vec![9, 10], 10));
    }
}

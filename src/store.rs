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

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

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

impl Report {
    /// A report for an AT line (as `protocol::format_at` makes it, or as
    /// `protocol::parse_at_line` accepted it); the client id is the line's
    /// fourth field, shared rather than copied.
    pub fn new(at_line: Bytes, client_time: Timestamp, location: Location) -> Self {
        Self {
            client_id: at_line.slice(client_id_range(&at_line)),
            client_time,
            location,
            at_line,
        }
    }
}

/// A stored report, kept compact: one store may hold millions. The client
/// id is not stored apart: it is the fourth field of the AT line.
#[derive(Debug)]
struct Entry {
    at_line: Bytes,
    client_time: Timestamp,
    location: Location,
    seq: u64,
    /// `CLIENT`, or the index of the neighbour it came from.
    source: u32,
    /// Where the client id lies in `at_line`, found once: lookups compare
    /// ids for every probe.
    id_start: u32,
    id_end: u32,
    /// Neighbours (bit `k` for neighbour `k` < 32) that sent us this same
    /// report again after we had it: like the source, they need not be
    /// sent it (see [`Store::since`]).
    also_from: u32,
}

const CLIENT: u32 = u32::MAX;

fn source_code(source: Source) -> u32 {
    match source {
        Source::Client => CLIENT,
        Source::Neighbour(index) => u32::try_from(index).expect("fewer than 4 billion neighbours"),
    }
}

/// The `also_from` bit of a neighbour; none for clients and for
/// neighbours past the 32nd (who are then sent everything but their own).
fn neighbour_bit(source: Source) -> u32 {
    match source {
        Source::Neighbour(index) if index < 32 => 1 << index,
        _ => 0,
    }
}

/// Where the client id lies in an AT line: its fourth field.
fn client_id_range(at_line: &[u8]) -> std::ops::Range<usize> {
    let mut spaces = memchr::memchr_iter(b' ', at_line);
    let start = spaces.nth(2).map_or(0, |i| i + 1);
    let end = spaces.next().unwrap_or(at_line.len());
    start..end
}

impl Entry {
    fn new(report: Report, seq: u64, source: Source) -> Self {
        // `Report::new` found the id already: it is a slice of the line.
        let ids = match (report.client_id.as_ptr() as usize)
            .checked_sub(report.at_line.as_ptr() as usize)
        {
            Some(start) if start + report.client_id.len() <= report.at_line.len() => {
                start..start + report.client_id.len()
            }
            _ => client_id_range(&report.at_line),
        };
        debug_assert_eq!(report.at_line[ids.clone()], report.client_id[..]);
        let offset = |at| u32::try_from(at).expect("lines are shorter than 4 GiB");
        Entry {
            id_start: offset(ids.start),
            id_end: offset(ids.end),
            at_line: report.at_line,
            client_time: report.client_time,
            location: report.location,
            seq,
            source: source_code(source),
            also_from: 0,
        }
    }

    fn client_id_range(&self) -> std::ops::Range<usize> {
        self.id_start as usize..self.id_end as usize
    }

    fn client_id(&self) -> &[u8] {
        &self.at_line[self.client_id_range()]
    }

    fn report(&self) -> Report {
        Report {
            client_id: self.at_line.slice(self.client_id_range()),
            client_time: self.client_time,
            location: self.location,
            at_line: self.at_line.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Every client's entry; clients are never removed, so indices last.
    entries: Vec<Entry>,
    /// Client id -> index into `entries`.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Sequence number -> index into `entries`, one per client, at its
    /// newest report.
    by_seq: BTreeMap<u64, u32>,
    head: u64,
}

impl Inner {
    fn find(&self, client_id: &[u8]) -> Option<u32> {
        self.find_hashed(self.hasher.hash_one(client_id), client_id)
    }

    fn find_hashed(&self, hash: u64, client_id: &[u8]) -> Option<u32> {
        self.index
            .find(hash, |&i| self.entries[i as usize].client_id() == client_id)
            .copied()
    }

    /// Stores `report` under `seq` if it is newer; returns whether it was.
    fn put(&mut self, report: Report, seq: impl FnOnce(&mut Self) -> u64, source: Source) -> bool {
        let hash = self.hasher.hash_one(&report.client_id[..]);
        match self.find_hashed(hash, &report.client_id) {
            Some(i) => {
                let known = &mut self.entries[i as usize];
                // Equal times are not newer: this is what ends a flood.
                if known.client_time >= report.client_time {
                    // The sender holds what we hold (or one it would never
                    // replace it with, being no newer): sending it back would
                    // change nothing there.
                    if known.client_time == report.client_time {
                        known.also_from |= neighbour_bit(source);
                    }
                    return false;
                }
                let old_seq = known.seq;
                self.by_seq.remove(&old_seq);
                let seq = seq(self);
                self.by_seq.insert(seq, i);
                self.entries[i as usize] = Entry::new(report, seq, source);
            }
            None => {
                let i = u32::try_from(self.entries.len()).expect("fewer than 4 billion clients");
                let seq = seq(self);
                self.entries.push(Entry::new(report, seq, source));
                self.by_seq.insert(seq, i);
                let Inner {
                    index,
                    entries,
                    hasher,
                    ..
                } = self;
                index.insert_unique(hash, i, |&j| {
                    hasher.hash_one(entries[j as usize].client_id())
                });
            }
        }
        true
    }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock is never poisoned")
    }

    /// Keeps `report` if it is newer than what we have, and returns its new
    /// sequence number; `None` means it was not newer and changed nothing.
    ///
    /// `report.client_id` must be the client id field of `report.at_line`.
    pub fn update(&self, report: Report, source: Source) -> Option<u64> {
        let mut inner = self.lock();
        let mut given = 0;
        let newer = inner.put(
            report,
            |inner| {
                inner.head += 1;
                given = inner.head;
                given
            },
            source,
        );
        newer.then_some(given)
    }

    /// Puts back a report replayed from disk under its old sequence number,
    /// if it is newer than what is there. Numbers only ever grow: the head
    /// moves past `seq`.
    pub fn restore(&self, report: Report, seq: u64) {
        let mut inner = self.lock();
        inner.head = inner.head.max(seq);
        inner.put(report, |_| seq, Source::Client);
    }

    /// Makes the next sequence number at least `next`.
    pub fn continue_from(&self, next: u64) {
        let mut inner = self.lock();
        inner.head = inner.head.max(next.saturating_sub(1));
    }

    /// The newest report of a client.
    pub fn get(&self, client_id: &[u8]) -> Option<Report> {
        let inner = self.lock();
        inner
            .find(client_id)
            .map(|i| inner.entries[i as usize].report())
    }

    /// The highest sequence number given out so far (0 when empty).
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// How many clients are known.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reports accepted after sequence `after`, oldest first, at most
    /// `max` of them.
    ///
    /// `leave_out: Some((neighbour, above))` leaves out the reports that came
    /// from that neighbour, or that it sent us again after we had them, and
    /// are numbered above `above`: never send an update back to a neighbour
    /// that sent it while the link to it is up. Those
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
        let inner = self.lock();
        let leave_out = leave_out.map(|(to, above)| {
            let to = Source::Neighbour(to);
            (source_code(to), neighbour_bit(to), above)
        });
        let mut reached = after;
        let mut exhausted = true;
        for (scanned, (&seq, &i)) in inner.by_seq.range(after + 1..).enumerate() {
            // Bound the work under the lock even when most entries are skipped.
            if out.len() >= max || scanned >= max * 4 {
                exhausted = false;
                break;
            }
            reached = seq;
            let entry = &inner.entries[i as usize];
            let sent_it = leave_out.is_some_and(|(to, bit, above)| {
                seq > above && (entry.source == to || entry.also_from & bit != 0)
            });
            if !sent_it {
                out.push(Pending {
                    seq,
                    at_line: entry.at_line.clone(),
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
        let report = Report::new(
            Bytes::from(at_line),
            Timestamp::parse(time.as_bytes()).unwrap(),
            Location { lat: 1.0, lng: 1.0 },
        );
        assert_eq!(report.client_id, client.as_bytes());
        report
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
    fn since_skips_what_the_neighbour_asking_sent_again() {
        let store = Store::new();
        store.update(report("a", "1"), Source::Neighbour(0));
        store.update(report("b", "1"), Source::Client);
        store.update(report("c", "1"), Source::Neighbour(0));
        // Neighbour 1 sends the same `a` again, an older `b`, and a `c` no
        // newer though it is another line: none is stored...
        assert_eq!(store.update(report("a", "1"), Source::Neighbour(1)), None);
        assert_eq!(store.update(report("b", "0"), Source::Neighbour(1)), None);
        let other_c = Report::new(
            Bytes::from_static(b"AT Smith +0.000000000 c +2+2 1"),
            Timestamp::parse(b"1").unwrap(),
            Location { lat: 2.0, lng: 2.0 },
        );
        assert_eq!(store.update(other_c, Source::Neighbour(1)), None);
        // ...and neighbour 1 is not sent the `a` and `c` it holds, but is
        // sent the newer `b` it lacks.
        assert_eq!(seqs(&store, 0, 1, 100), (vec![2], 3));
        // Neighbour 0 still gets all but its own.
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2], 3));
        // Before the link came up, a neighbour may have lost what it sent.
        let mut out = Vec::new();
        store.since(0, Some((1, 3)), 100, &mut out);
        assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3]);
        // A newer report starts afresh: everyone but its source gets it.
        store.update(report("a", "2"), Source::Neighbour(0));
        assert_eq!(seqs(&store, 3, 1, 100), (vec![4], 4));
        assert_eq!(seqs(&store, 3, 0, 100), (vec![], 4));
    }

    #[test]
    fn neighbours_past_the_32nd_are_sent_all_but_their_own() {
        let store = Store::new();
        store.update(report("a", "1"), Source::Neighbour(0));
        assert_eq!(store.update(report("a", "1"), Source::Neighbour(40)), None);
        assert_eq!(seqs(&store, 0, 40, 100), (vec![1], 1));
        store.update(report("b", "1"), Source::Neighbour(40));
        assert_eq!(seqs(&store, 1, 40, 100), (vec![], 2));
    }

    #[test]
    fn restored_reports_keep_their_numbers_and_newest_wins() {
        let store = Store::new();
        store.restore(report("a", "2"), 7);
        store.restore(report("a", "1"), 9);
        store.restore(report("b", "1"), 3);
        assert_eq!(
            store.get(b"a").unwrap().client_time,
            report("a", "2").client_time
        );
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

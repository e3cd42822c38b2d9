//! The latest known location of every client, and the order in which this
//! server accepted them.
//!
//! Every accepted report gets the next *sequence number* of this server.
//! A client appears in the sequence once, at its newest report, so "what
//! did I accept after sequence N" is a range scan whose size is what was
//! missed, never the size of the store. That one ordered index is both the
//! flood's outbox for every neighbour and the catch-up log (see `flood`).
//!
//! Entries are laid out for the memory, not the arithmetic: under load, a
//! lookup's cost is the cache lines it touches (a server of the herd looks
//! up every report it receives, duplicates included), so a client's AT
//! line, and with it its id, is kept in its entry, which is two cache lines
//! long, rather than in an allocation of its own; the client index is a
//! table of 8-byte slots that a lookup reads one cache line of; and the
//! entries sit in chunks that never move, so that a growing store never
//! copies them.
//!
//! Plain synchronous code: no IO, no clock, no tasks.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;
use foldhash::fast::RandomState;
use std::hash::BuildHasher;

use crate::protocol::time::Timestamp;
use crate::protocol::{self, Location};

/// Where a report came from: a client of this server, or a neighbour
/// (by its index in the server's neighbour list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Client,
    Neighbour(usize),
}

/// What the store did with a report it was offered ([`Store::update`],
/// [`Store::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The stored line was this one: marked as sent by that neighbour.
    Same,
    /// Not newer than the stored report: nothing stored.
    NotNewer,
    /// Stored, under this sequence number.
    Stored(u64),
    /// Not a valid AT line: nothing changed.
    Malformed,
    /// Received longer ago than the store keeps clients (see [`Bounds`]):
    /// every server drops it alike, so nothing changed.
    Expired,
    /// About a client the store does not hold, and the store is at its
    /// ceiling for reports from that source (see [`Bounds`]): nothing
    /// changed.
    Full,
}

impl Applied {
    /// The sequence number it was stored under, if it was.
    pub fn stored(self) -> Option<u64> {
        match self {
            Applied::Stored(seq) => Some(seq),
            _ => None,
        }
    }
}

/// What a store keeps: for how long after a client was last heard from,
/// and how many clients. Every server of a herd should have the same
/// bounds; docs/storage.md says why the herd then agrees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// A client whose newest report was received (its client time plus
    /// the skew in its AT line) this many seconds ago or more is
    /// forgotten; 0 keeps clients for ever.
    pub ttl_secs: u64,
    /// A client's report about a client not held is refused once the
    /// store holds this many clients; 0: no ceiling.
    pub max_clients: usize,
    /// The same for a neighbour's report: a backstop above what a herd
    /// whose servers share `max_clients` can reach, so that in such a herd
    /// no flooded report is ever refused for room; 0: no ceiling.
    pub max_clients_from_neighbours: usize,
}

/// A client's stored report, as WHATSAT answers from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The AT line the receiving server answered with, without a line
    /// ending; WHATSAT answers repeat it exactly.
    pub at_line: Bytes,
    pub client_time: Timestamp,
    pub location: Location,
}

impl Report {
    /// The report an AT line (as `protocol::format_at` makes it, or as
    /// `protocol::parse_at_line` accepts it) stands for; `None` if it is
    /// not a valid AT line.
    pub fn from_at_line(at_line: Bytes) -> Option<Self> {
        let at = protocol::parse_at_line(&at_line)?;
        let (client_time, location) = (at.client_time, at.location);
        Some(Self {
            at_line,
            client_time,
            location,
        })
    }
}

/// Lines up to this long (nearly all: `AT Hill +0.263873386
/// kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503` is 83
/// bytes) live in their entry; longer ones in an allocation of their own.
const INLINE: usize = 92;

/// A stored AT line, and where its client id lies in it when that is kept.
enum Line {
    Inline {
        len: u8,
        id_start: u8,
        id_end: u8,
        bytes: [u8; INLINE],
    },
    /// A long line, rare: its id is found again when asked for.
    Heap(Box<[u8]>),
}

impl Line {
    fn new(line: &[u8], id: Range<usize>) -> Self {
        if line.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..line.len()].copy_from_slice(line);
            let small = |at: usize| u8::try_from(at).expect("within an inline line");
            Line::Inline {
                len: small(line.len()),
                id_start: small(id.start),
                id_end: small(id.end),
                bytes,
            }
        } else {
            Line::Heap(line.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Line::Inline { len, bytes, .. } => &bytes[..usize::from(*len)],
            Line::Heap(bytes) => bytes,
        }
    }

    fn client_id(&self) -> &[u8] {
        let id = match self {
            Line::Inline {
                id_start, id_end, ..
            } => usize::from(*id_start)..usize::from(*id_end),
            Line::Heap(bytes) => client_id_range(bytes),
        };
        &self.as_bytes()[id]
    }
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A stored report: one store may hold millions, and a lookup reads one
/// entry (two cache lines, fetched together) and nothing else.
#[derive(Debug)]
#[repr(align(64))]
struct Entry {
    /// The report's sequence number; [`FREE`] for an entry no client holds.
    seq: u64,
    /// The client time, in two fields rather than a `Timestamp`, whose
    /// padding would leave no room for `receipt` in two cache lines.
    client_secs: u64,
    client_nanos: u32,
    /// When the report was received, in whole seconds since the epoch
    /// (clamped to `u32`): what expiry goes by. `u32::MAX` when the store
    /// keeps clients for ever.
    receipt: u32,
    /// `CLIENT`, or the index of the neighbour it came from.
    source: u32,
    /// Neighbours (bit `k` for neighbour `k` < 32) that sent us this same
    /// report again after we had it: like the source, they need not be
    /// sent it (see [`Store::since`]).
    also_from: u32,
    line: Line,
}

const CLIENT: u32 = u32::MAX;

/// The sequence number of a free entry: numbers given out start at 1.
const FREE: u64 = 0;

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

/// The server an AT line names: the server the client reported to.
pub fn origin(at_line: &[u8]) -> &[u8] {
    let rest = at_line.get(3..).unwrap_or_default();
    rest.split(|&b| b == b' ').next().unwrap_or_default()
}

/// Where the client id lies in an AT line: its fourth field.
pub(crate) fn client_id_range(at_line: &[u8]) -> Range<usize> {
    let mut spaces = memchr::memchr_iter(b' ', at_line);
    let start = spaces.nth(2).map_or(0, |i| i + 1);
    let end = spaces.next().unwrap_or(at_line.len());
    start..end
}

/// When an AT line's report was received, in nanoseconds since the epoch:
/// its client time plus its skew; `None` if the skew cannot be read.
fn received_nanos(at_line: &[u8], client_time: Timestamp) -> Option<i128> {
    let mut spaces = memchr::memchr_iter(b' ', at_line);
    let (start, end) = (spaces.nth(1)?, spaces.next()?);
    Some(client_time.as_nanos() + skew_nanos(&at_line[start + 1..end])?)
}

/// When an AT line's report was received (see [`received_nanos`]), in
/// whole seconds since the epoch, clamped to `u32` (a line whose skew
/// cannot be read counts as received at its client time).
pub(crate) fn receipt_secs(at_line: &[u8], client_time: Timestamp) -> u32 {
    let received = received_nanos(at_line, client_time).unwrap_or_else(|| client_time.as_nanos());
    let secs = received.div_euclid(1_000_000_000);
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

/// An AT line's stamp: when its origin received it (see
/// [`received_nanos`]), as every server reads it alike from the line. An
/// origin gives its own reports stamps that only grow (see
/// `Replica::accept_client`), which is what lets a watermark stand for
/// all of an origin's reports up to it (see [`Store::marked`]). A line
/// whose skew cannot be read gets `u64::MAX`, which no watermark reaches.
pub fn stamp(at_line: &[u8], client_time: Timestamp) -> u64 {
    received_nanos(at_line, client_time).map_or(u64::MAX, |received| {
        u64::try_from(received.clamp(1, i128::from(u64::MAX - 1))).expect("clamped")
    })
}

/// A skew field (`[+-]digits.ddddddddd`) in nanoseconds; a skew beyond
/// `u64` seconds is taken as `u64::MAX` seconds.
fn skew_nanos(skew: &[u8]) -> Option<i128> {
    let (&sign, rest) = skew.split_first()?;
    let dot = memchr::memchr(b'.', rest)?;
    let (whole, fraction) = (&rest[..dot], &rest[dot + 1..]);
    if whole.is_empty() || !whole.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !(1..=9).contains(&fraction.len()) {
        return None;
    }
    let whole = crate::protocol::time::parse_digits_u64(whole).unwrap_or(u64::MAX);
    let scale = 10u64.pow(9 - fraction.len() as u32);
    let fraction = crate::protocol::time::parse_digits_u64(fraction)? * scale;
    let magnitude = i128::from(whole) * 1_000_000_000 + i128::from(fraction);
    match sign {
        b'+' => Some(magnitude),
        b'-' => Some(-magnitude),
        _ => None,
    }
}

impl Entry {
    fn new(
        at_line: &[u8],
        id: Range<usize>,
        client_time: Timestamp,
        receipt: u32,
        seq: u64,
        source: Source,
    ) -> Self {
        Entry {
            seq,
            client_secs: client_time.secs(),
            client_nanos: client_time.subsec_nanos(),
            receipt,
            source: source_code(source),
            also_from: 0,
            line: Line::new(at_line, id),
        }
    }

    /// An entry no client holds, kept for the next new client.
    fn free() -> Self {
        Entry {
            seq: FREE,
            client_secs: 0,
            client_nanos: 0,
            receipt: u32::MAX,
            source: CLIENT,
            also_from: 0,
            line: Line::new(&[], 0..0),
        }
    }

    fn client_time(&self) -> Timestamp {
        Timestamp::new(self.client_secs, self.client_nanos).expect("stored from a Timestamp")
    }
}

/// Entries per chunk of [`Entries`]: 8,192 of 128 bytes, 1 MiB.
const CHUNK: usize = 8192;

/// Every client's entry, by index, in chunks that never move once
/// allocated: adding a client never copies the others. (A `Vec` doubling
/// from a million entries copies all of them and faults in twice the
/// memory while every request waits.)
///
/// A forgotten client's entry is freed for the next new client, the
/// lowest free one first, so that the entries gather in the first chunks
/// and the last ones empty and are given back.
#[derive(Debug, Default)]
struct Entries {
    chunks: Vec<Vec<Entry>>,
    /// Entries handed out, free ones included: the next new one's number
    /// when none is free.
    len: usize,
    /// Entries clients hold.
    live: usize,
    /// Free entries, lowest first.
    free: BinaryHeap<Reverse<u32>>,
    /// Per chunk: the entries clients hold, and a receipt time no later
    /// than the earliest of theirs (what lets a sweep pass over a chunk
    /// with nothing to expire without reading it).
    chunk_live: Vec<u32>,
    chunk_oldest: Vec<u32>,
}

impl Entries {
    /// How many clients hold an entry.
    fn live(&self) -> usize {
        self.live
    }

    /// Entry `index`'s chunk and place in it.
    fn place(index: u32) -> (usize, usize) {
        let index = index as usize;
        (index / CHUNK, index % CHUNK)
    }

    fn get(&self, index: u32) -> Option<&Entry> {
        let (chunk, at) = Self::place(index);
        self.chunks.get(chunk)?.get(at)
    }

    /// Every entry a client holds, with its number, in order.
    fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.chunks
            .iter()
            .flatten()
            .zip(0u32..)
            .map(|(entry, i)| (i, entry))
            .filter(|(_, entry)| entry.seq != FREE)
    }

    /// Gives `entry` a place: the lowest free one, else a new one.
    fn push(&mut self, entry: Entry) -> u32 {
        let receipt = entry.receipt;
        let index = match self.free.pop() {
            Some(Reverse(index)) => {
                self[index] = entry;
                index
            }
            None => {
                let index = u32::try_from(self.len).expect("fewer than 4 billion clients");
                if self.len.is_multiple_of(CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                    self.chunk_live.push(0);
                    self.chunk_oldest.push(u32::MAX);
                }
                self.chunks
                    .last_mut()
                    .expect("a chunk with room")
                    .push(entry);
                self.len += 1;
                index
            }
        };
        let (chunk, _) = Self::place(index);
        self.chunk_live[chunk] += 1;
        self.received(index, receipt);
        self.live += 1;
        index
    }

    /// Notes that entry `index` now holds a report received at `receipt`.
    fn received(&mut self, index: u32, receipt: u32) {
        let (chunk, _) = Self::place(index);
        let oldest = &mut self.chunk_oldest[chunk];
        *oldest = (*oldest).min(receipt);
    }

    /// Frees entry `index` for a later client.
    fn release(&mut self, index: u32) {
        self[index] = Entry::free();
        self.free.push(Reverse(index));
        let (chunk, _) = Self::place(index);
        self.chunk_live[chunk] -= 1;
        self.live -= 1;
    }

    /// Gives back the chunks at the end that no client holds an entry in.
    fn trim(&mut self) {
        let before = self.chunks.len();
        while self.chunk_live.last() == Some(&0) {
            self.chunks.pop();
            self.chunk_live.pop();
            self.chunk_oldest.pop();
        }
        if self.chunks.len() < before {
            self.len = self.chunks.len() * CHUNK;
            let len = self.len;
            self.free.retain(|&Reverse(index)| (index as usize) < len);
            self.free.shrink_to(self.free.len().max(CHUNK));
        }
    }
}

impl std::ops::Index<u32> for Entries {
    type Output = Entry;

    fn index(&self, index: u32) -> &Entry {
        self.get(index).expect("an entry number given out")
    }
}

impl std::ops::IndexMut<u32> for Entries {
    fn index_mut(&mut self, index: u32) -> &mut Entry {
        let (chunk, at) = Self::place(index);
        &mut self.chunks[chunk][at]
    }
}

/// Client id -> entry number: open addressing with linear probing over
/// 8-byte slots, each the entry number (plus one; 0 is empty) and 32 bits
/// of the client id's hash. A lookup reads one cache line of slots, and an
/// entry only when the hash bits match; clients are never removed, so
/// there are no tombstones, and growing reads the slots alone, where they
/// lie (see [`Index::resize`]). Kept over `hashbrown::HashTable`, which
/// costs a second miss per lookup once the table outgrows the caches
/// (measured in BENCHMARKS.md, "The store").
#[derive(Debug, Default)]
struct Index {
    slots: Vec<u64>,
    len: usize,
}

impl Index {
    /// Where a hash's probe starts in a table of `slots` (a power of two).
    fn start(hash: u32, slots: usize) -> usize {
        // Fibonacci hashing: the top bits of the product mix every bit.
        (u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (slots - 1)
    }

    /// The entry a slot holds if it carries `hash`; `None` for an empty
    /// slot or another hash.
    fn entry_of(slot: u64, hash: u32) -> Option<u32> {
        (slot != 0 && (slot >> 32) as u32 == hash).then(|| (slot as u32) - 1)
    }

    fn find(&self, hash: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut at = Self::start(hash, self.slots.len());
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            if let Some(entry) = Self::entry_of(slot, hash).filter(|&entry| is(entry)) {
                return Some(entry);
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds a client known not to be there.
    fn insert(&mut self, hash: u32, entry: u32) {
        // At most 3/4 full, so probes stay short.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize(((self.len + 1) * 2).next_power_of_two().max(16));
        }
        Self::place(&mut self.slots, hash, entry);
        self.len += 1;
    }

    /// Takes out entry `entry`, whose hash is `hash`. Linear probing needs
    /// no tombstone for it: the slots after it in its cluster that may sit
    /// in its place (their probe starts at or before it) move back, one
    /// by one, so every entry stays reachable from its start.
    fn remove(&mut self, hash: u32, entry: u32) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let wanted = u64::from(hash) << 32 | u64::from(entry + 1);
        let mut hole = Self::start(hash, self.slots.len());
        loop {
            match self.slots[hole] {
                0 => return,
                slot if slot == wanted => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let slot = self.slots[at];
            if slot == 0 {
                break;
            }
            let start = Self::start((slot >> 32) as u32, self.slots.len());
            // Movable when its start is not in the stretch after the hole
            // up to it (cyclically): it is then reached through the hole.
            if (at.wrapping_sub(start) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.slots[hole] = slot;
                hole = at;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }

    fn place(slots: &mut [u64], hash: u32, entry: u32) {
        let mask = slots.len() - 1;
        let mut at = Self::start(hash, slots.len());
        while slots[at] != 0 {
            at = (at + 1) & mask;
        }
        slots[at] = u64::from(hash) << 32 | u64::from(entry + 1);
    }

    /// Puts back a slot taken out of the table.
    fn place_slot(slots: &mut [u64], slot: u64) {
        Self::place(slots, (slot >> 32) as u32, (slot as u32) - 1);
    }

    /// Grows the table to `slots` (a power of two, larger) where it lies:
    /// the old slots' pages are reused and only the new part is fresh
    /// memory. (A new table beside the old one takes fresh pages for both,
    /// and on a machine where a fresh page is a fault in the host, that is
    /// dear: BENCHMARKS.md, "The store".)
    ///
    /// A slot's start in the larger table is its start in the old one plus
    /// a multiple of the old size (the hash's next bits), so every entry is
    /// put again in one pass over the old slots in order, each taken out
    /// and placed anew: its new probe from its new start runs only over
    /// slots already done (which are never emptied again), the grown part
    /// (only ever filled) or the slot it was just taken from, so no entry
    /// placed in the pass is cut off from its start by a slot emptied
    /// later. That needs every old entry to lie at or after its old start,
    /// which is true of all but a cluster that wraps past the old end: the
    /// slots before the old table's first empty one are taken out first
    /// and put back last.
    fn resize(&mut self, slots: usize) {
        let old = self.slots.len();
        debug_assert!(slots.is_power_of_two() && slots > old);
        if old == 0 {
            self.slots = vec![0; slots];
            return;
        }
        let first_empty = self
            .slots
            .iter()
            .position(|&slot| slot == 0)
            .expect("a table at most three quarters full has an empty slot");
        let wrapped: Vec<u64> = self.slots[..first_empty].to_vec();
        self.slots[..first_empty].fill(0);
        self.slots.resize(slots, 0);
        for at in first_empty..old {
            let slot = std::mem::take(&mut self.slots[at]);
            if slot != 0 {
                Self::place_slot(&mut self.slots, slot);
            }
        }
        // All taken (they lie before the first empty slot).
        for slot in wrapped {
            Self::place_slot(&mut self.slots, slot);
        }
    }
}

/// A report in the [`Sequence`]: its number and its client's entry, in 12
/// bytes (`packed(4)`: a `(u64, u32)` pair would take 16).
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
struct Numbered {
    seq: u64,
    /// [`GONE`] once the report was superseded.
    entry: u32,
}

const GONE: u32 = u32::MAX;

/// Sequence number -> entry, for each client its newest report, in number
/// order: a log of [`Numbered`] pairs, appended to as numbers are given
/// out (always above every number before), a superseded report's pair
/// marked gone where it is and the gone ones dropped once they are as
/// many as the live ones. (A `BTreeMap` of the same pairs took ~25 bytes
/// a client with the half-full leaves that ascending inserts leave, and a
/// B-tree insert and remove per report; on a machine where a fresh page is
/// a fault in the host, a store's growth is paid by the byte.)
#[derive(Debug, Default)]
struct Sequence {
    pairs: Vec<Numbered>,
    /// Pairs marked gone and not yet dropped.
    gone: usize,
    /// A replay restored reports (in the order they were logged, which need
    /// not be their numbers' order) without keeping the pairs: they are
    /// built again, from the entries, before the sequence is next used.
    stale: bool,
}

impl Sequence {
    /// Adds the report numbered `seq`, above every number so far.
    fn push(&mut self, seq: u64, entry: u32) {
        debug_assert!(self.pairs.last().is_none_or(|last| { last.seq } < seq));
        self.pairs.push(Numbered { seq, entry });
    }

    /// Marks the report numbered `seq` as superseded.
    fn remove(&mut self, seq: u64) {
        if let Ok(at) = self.pairs.binary_search_by_key(&seq, |pair| pair.seq) {
            self.pairs[at].entry = GONE;
            self.gone += 1;
        }
        // As many gone as live: one pass drops them, so that the log stays
        // within twice the clients and each drop is paid by as many
        // supersessions as there are pairs kept.
        if self.gone >= 4096 && self.gone * 2 >= self.pairs.len() {
            self.pairs.retain(|pair| pair.entry != GONE);
            self.gone = 0;
            // Clients forgotten in numbers leave room that is given back.
            if self.pairs.capacity() > 4 * self.pairs.len() {
                self.pairs.shrink_to(2 * self.pairs.len());
            }
        }
    }

    /// Builds the pairs again from the entries if a replay left them stale.
    fn refresh(&mut self, entries: &Entries) {
        if !self.stale {
            return;
        }
        self.pairs.clear();
        self.pairs
            .extend(entries.iter().map(|(entry, known)| Numbered {
                seq: known.seq,
                entry,
            }));
        self.pairs.sort_unstable_by_key(|pair| pair.seq);
        self.gone = 0;
        self.stale = false;
    }

    /// The pairs numbered above `after`, gone ones included, in order.
    fn after(&self, after: u64) -> &[Numbered] {
        debug_assert!(!self.stale);
        let start = self.pairs.partition_point(|pair| pair.seq <= after);
        &self.pairs[start..]
    }
}

/// Gives out the next sequence number.
fn next_seq(inner: &mut Inner) -> u64 {
    inner.head += 1;
    inner.head
}

/// Where a line's client id lies, its hash, and its entry if known.
struct Lookup {
    id: Range<usize>,
    hash: u32,
    found: Option<u32>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every client's entry; entries never move, so indices last while
    /// their client is held.
    entries: Entries,
    /// Client id -> index into `entries`.
    index: Index,
    hasher: RandomState,
    /// Sequence number -> index into `entries`, one per client, at its
    /// newest report.
    sequence: Sequence,
    head: u64,
    /// Per origin, how far this server and its neighbours hold its reports
    /// (see [`Store::marked`]).
    marks: Marks,
    bounds: Bounds,
    /// Reports received in a second before this one are expired (0: none is):
    /// set from the clock by [`Store::set_now`].
    horizon: u32,
}

/// A watermark: every report made at an origin stamped in `from < stamp
/// <= to` is held (or a newer one of the same client). A range rather
/// than a bound, since a server that restarts, and may have lost its
/// data, can vouch only for what it stamps from then on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub from: u64,
    pub to: u64,
}

impl Mark {
    /// Whether the report of `stamp` is held.
    pub fn covers(self, stamp: u64) -> bool {
        self.from < stamp && stamp <= self.to
    }

    pub fn is_empty(self) -> bool {
        self.to <= self.from
    }

    /// Takes in another range that holds too: joined where they meet,
    /// else whichever reaches higher (new reports are what a watermark is
    /// asked about).
    pub fn merge(&mut self, other: Mark) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other;
        } else if other.from <= self.to && self.from <= other.to {
            *self = Mark {
                from: self.from.min(other.from),
                to: self.to.max(other.to),
            };
        } else if other.to > self.to {
            *self = other;
        }
    }
}

/// Watermarks: for each origin (a server named in AT lines, numbered in
/// the order first seen), the range of stamps of its reports this server
/// holds, and what each neighbour said of itself the same way.
#[derive(Debug, Default)]
struct Marks {
    ids: foldhash::HashMap<Box<[u8]>, u32>,
    names: Vec<Box<[u8]>>,
    held: Vec<Mark>,
    /// This server's own reports since it started.
    own: Mark,
    /// Per neighbour, per origin.
    told: Vec<Vec<Mark>>,
}

impl Marks {
    fn id(&mut self, origin: &[u8]) -> usize {
        if let Some(&id) = self.ids.get(origin) {
            return id as usize;
        }
        let id = self.names.len();
        self.ids.insert(
            origin.into(),
            u32::try_from(id).expect("fewer than 4 billion origins"),
        );
        self.names.push(origin.into());
        self.held.push(Mark::default());
        id
    }

    fn merge(marks: &mut Vec<Mark>, id: usize, mark: Mark) {
        if marks.len() <= id {
            marks.resize(id + 1, Mark::default());
        }
        marks[id].merge(mark);
    }
}

/// The ceiling a report is held to for a client not held: a client's,
/// a neighbour's, or none for a report read back from the log.
#[derive(Clone, Copy)]
enum Room {
    Client,
    Neighbour,
    Unbounded,
}

impl Inner {
    fn hash(&self, client_id: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(client_id);
        (hash ^ (hash >> 32)) as u32
    }

    fn refresh_sequence(&mut self) {
        self.sequence.refresh(&self.entries);
    }

    /// Whether an entry's report was received before the horizon. Such a
    /// report is as good as gone: no lookup finds it and no scan sends it,
    /// whether or not a sweep has freed its entry yet.
    fn expired(&self, entry: &Entry) -> bool {
        entry.receipt < self.horizon
    }

    /// The receipt time to keep for `at_line`: only read when clients
    /// expire, so that a store that keeps them for ever pays nothing.
    fn receipt(&self, at_line: &[u8], client_time: Timestamp) -> u32 {
        if self.bounds.ttl_secs == 0 {
            u32::MAX
        } else {
            receipt_secs(at_line, client_time)
        }
    }

    fn find(&self, client_id: &[u8]) -> Option<u32> {
        self.find_hashed(self.hash(client_id), client_id)
            .filter(|&i| !self.expired(&self.entries[i]))
    }

    fn find_hashed(&self, hash: u32, client_id: &[u8]) -> Option<u32> {
        self.index.find(hash, |entry| {
            self.entries[entry].line.client_id() == client_id
        })
    }

    /// Stores the report of `at_line` under `seq` if it is newer, and
    /// there is room for it if its client is new.
    fn put(
        &mut self,
        at_line: &[u8],
        client_time: Timestamp,
        seq: impl FnOnce(&mut Self) -> u64,
        source: Source,
        room: Room,
    ) -> Applied {
        let lookup = self.look_up(at_line);
        self.put_at(lookup, at_line, client_time, seq, source, room)
    }

    /// Finds the client of `at_line`.
    fn look_up(&self, at_line: &[u8]) -> Lookup {
        let id = client_id_range(at_line);
        let hash = self.hash(&at_line[id.clone()]);
        let found = self.find_hashed(hash, &at_line[id.clone()]);
        Lookup { id, hash, found }
    }

    /// Whether a new client may be added for a report held to `room`.
    fn has_room(&self, room: Room) -> bool {
        let ceiling = match room {
            Room::Client => self.bounds.max_clients,
            Room::Neighbour => self.bounds.max_clients_from_neighbours,
            Room::Unbounded => 0,
        };
        ceiling == 0 || self.entries.live() < ceiling
    }

    /// [`Inner::put`] once the client of `at_line` is looked up.
    fn put_at(
        &mut self,
        Lookup { id, hash, found }: Lookup,
        at_line: &[u8],
        client_time: Timestamp,
        seq: impl FnOnce(&mut Self) -> u64,
        source: Source,
        room: Room,
    ) -> Applied {
        let receipt = self.receipt(at_line, client_time);
        if receipt < self.horizon {
            return Applied::Expired;
        }
        match found {
            Some(i) => {
                let stale = self.expired(&self.entries[i]);
                let known = &mut self.entries[i];
                // Equal times are not newer: this is what ends a flood. A
                // report expired is as good as gone, so anything replaces it.
                if !stale && known.client_time() >= client_time {
                    // The sender holds what we hold (or one it would never
                    // replace it with, being no newer): sending it back would
                    // change nothing there.
                    if known.client_time() == client_time {
                        known.also_from |= neighbour_bit(source);
                    }
                    return Applied::NotNewer;
                }
                let old_seq = known.seq;
                let seq = seq(self);
                if !self.sequence.stale {
                    self.sequence.remove(old_seq);
                    self.sequence.push(seq, i);
                }
                self.entries[i] =
                    Entry::new(at_line, id.clone(), client_time, receipt, seq, source);
                self.entries.received(i, receipt);
                Applied::Stored(seq)
            }
            None => {
                if !self.has_room(room) {
                    return Applied::Full;
                }
                let seq = seq(self);
                let entry = self.entries.push(Entry::new(
                    at_line,
                    id.clone(),
                    client_time,
                    receipt,
                    seq,
                    source,
                ));
                if !self.sequence.stale {
                    self.sequence.push(seq, entry);
                }
                self.index.insert(hash, entry);
                Applied::Stored(seq)
            }
        }
    }

    /// Forgets the clients of chunk `chunk` whose reports are expired;
    /// returns how many.
    fn sweep_chunk(&mut self, chunk: usize) -> usize {
        if self.entries.chunk_oldest[chunk] >= self.horizon {
            return 0;
        }
        let first = u32::try_from(chunk * CHUNK).expect("entry numbers fit u32");
        let count = self.entries.chunks[chunk].len() as u32;
        let mut oldest = u32::MAX;
        let mut forgotten = 0;
        for i in first..first + count {
            let entry = &self.entries[i];
            if entry.seq == FREE {
                continue;
            }
            if !self.expired(entry) {
                oldest = oldest.min(entry.receipt);
                continue;
            }
            let (seq, hash) = (entry.seq, self.hash(entry.line.client_id()));
            if !self.sequence.stale {
                self.sequence.remove(seq);
            }
            self.index.remove(hash, i);
            self.entries.release(i);
            forgotten += 1;
        }
        self.entries.chunk_oldest[chunk] = oldest;
        forgotten
    }
}

/// A report as [`Store::since`] picked it: its sequence number, and the
/// entry of the client it belongs to, so that [`Store::still_to_send`]
/// finds it again without a search by number, which would cost a link a
/// binary search per held report. Ordered by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Picked {
    pub seq: u64,
    entry: u32,
    /// Where the report came from (see [`Picked::came_from`]).
    source: u32,
    /// Its client time, as stored: what a link needs, with the AT line, to
    /// work out its stamp without reading the time again.
    pub client_time: Timestamp,
}

impl Picked {
    /// The neighbour that sent us the report, or `None` for a client's
    /// (or one replayed from the log).
    pub fn came_from(&self) -> Option<usize> {
        (self.source != CLIENT).then_some(self.source as usize)
    }
}

/// Reports picked and their AT lines, in the order added, the lines
/// together in one buffer rather than one allocation each: what
/// [`Store::since`] picked, the buffer reused from call to call.
#[derive(Debug, Default)]
pub struct Batch {
    lines: Vec<u8>,
    /// The report and where its line ends in `lines`.
    items: Vec<(Picked, usize)>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.lines.clear();
        self.items.clear();
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, picked: Picked, line: &[u8]) {
        self.lines.extend_from_slice(line);
        self.items.push((picked, self.lines.len()));
    }

    /// Each report and its AT line, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = (Picked, &[u8])> {
        let mut start = 0;
        self.items.iter().map(move |&(picked, end)| {
            let line = &self.lines[start..end];
            start = end;
            (picked, line)
        })
    }
}

/// How far a [`Store::since`] scan got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The sequence number it reached: everything up to it was looked at.
    pub reached: u64,
    /// It stopped at its bound before the head: there is more to send.
    pub more: bool,
}

/// [`Store::since`]'s `leave_out` rule, ready to test entries with.
#[derive(Clone, Copy)]
struct LeaveOut {
    source: u32,
    bit: u32,
    above: u64,
}

impl LeaveOut {
    fn new((to, above): (usize, u64)) -> Self {
        let to = Source::Neighbour(to);
        Self {
            source: source_code(to),
            bit: neighbour_bit(to),
            above,
        }
    }

    /// The neighbour sent us the report numbered `seq` while its link was up.
    fn leaves_out(self, seq: u64, entry: &Entry) -> bool {
        seq > self.above && (entry.source == self.source || entry.also_from & self.bit != 0)
    }
}

/// The latest report of every client.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    /// A store that keeps every client for ever, with no ceiling.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store held to `bounds`.
    pub fn with_bounds(bounds: Bounds) -> Self {
        let store = Self::default();
        store.lock().bounds = bounds;
        store
    }

    /// The bounds the store is held to.
    pub fn bounds(&self) -> Bounds {
        self.lock().bounds
    }

    /// Tells the store the time, in whole seconds since the epoch: reports
    /// received `ttl_secs` or more before it are expired from now on. The
    /// store reads no clock; its owner calls this every second or so.
    pub fn set_now(&self, now_secs: u64) {
        let mut inner = self.lock();
        let ttl = inner.bounds.ttl_secs;
        if ttl == 0 {
            return;
        }
        // Expired once `ttl` whole seconds have passed since the second
        // it was received in: never early, at most a second late.
        let horizon = now_secs.saturating_sub(ttl);
        // The horizon never goes back: a client forgotten stays forgotten
        // if the clock is set back.
        inner.horizon = inner
            .horizon
            .max(u32::try_from(horizon).unwrap_or(u32::MAX));
    }

    /// Frees the entries of expired clients in chunk `chunk` of the
    /// entries, one lock held for one chunk at most; returns how many it
    /// freed, or `None` past the last chunk, when the chunks at the end
    /// that no client holds are given back. A sweep calls it for chunk 0,
    /// 1, ... until `None`.
    pub fn sweep(&self, chunk: usize) -> Option<usize> {
        let mut inner = self.lock();
        if chunk >= inner.entries.chunks.len() {
            inner.entries.trim();
            return None;
        }
        inner.refresh_sequence();
        Some(inner.sweep_chunk(chunk))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock is never poisoned")
    }

    /// Keeps the report of `at_line` (an AT line, as `protocol::format_at`
    /// makes it or `protocol::parse_at_line` accepts it, whose client time
    /// is `client_time`) if it is newer than what we have: `Stored` with
    /// its new sequence number; otherwise it changed nothing, and says why
    /// (`NotNewer`, `Expired`, or `Full` for a new client past the ceiling
    /// of its source).
    pub fn update(&self, at_line: &[u8], client_time: Timestamp, source: Source) -> Applied {
        let mut inner = self.lock();
        inner.refresh_sequence();
        let room = match source {
            Source::Client => Room::Client,
            Source::Neighbour(_) => Room::Neighbour,
        };
        let applied = inner.put(at_line, client_time, next_seq, source, room);
        // A client's report is this server's own, and its own stamps only
        // grow: it holds every one of its reports from the first stored
        // since it started up to this one (not those before: it may have
        // lost them).
        if source == Source::Client && matches!(applied, Applied::Stored(_)) {
            let id = inner.marks.id(origin(at_line));
            let stamp = stamp(at_line, client_time);
            let own = &mut inner.marks.own;
            own.to = stamp;
            if own.from == 0 {
                own.from = stamp - 1;
            }
            let own = *own;
            // Joined with what neighbours vouched for only where they meet:
            // what lies between may be what was lost.
            inner.marks.held[id].merge(own);
        }
        applied
    }

    /// Applies a neighbour's report with one lookup of its client: a line
    /// byte for byte the one stored (a second copy) is only marked as sent
    /// by `source` (so that it is not sent back there), without being
    /// checked again; any other is checked by `client_time`, which gives the line's
    /// client time (`None`: malformed), and kept if newer, as
    /// [`Store::update`] does.
    pub fn apply(
        &self,
        at_line: &[u8],
        source: Source,
        client_time: impl FnOnce() -> Option<Timestamp>,
    ) -> Applied {
        let mut inner = self.lock();
        let lookup = inner.look_up(at_line);
        if let Some(i) = lookup.found {
            let stale = inner.expired(&inner.entries[i]);
            let known = &mut inner.entries[i];
            if known.line.as_bytes() == at_line {
                // The same line was received at the same time.
                if stale {
                    return Applied::Expired;
                }
                known.also_from |= neighbour_bit(source);
                return Applied::Same;
            }
        }
        let Some(client_time) = client_time() else {
            return Applied::Malformed;
        };
        inner.refresh_sequence();
        inner.put_at(
            lookup,
            at_line,
            client_time,
            next_seq,
            source,
            Room::Neighbour,
        )
    }

    /// Takes in a watermark line from neighbour `source` about `origin`:
    /// the neighbour holds every report made at `origin` in `held` (or a
    /// newer one of the same client), and has sent us, or knows we hold,
    /// every one in `vouched`. The neighbour sends it after the reports it
    /// stands for, so by now we hold those: our own watermark takes it in.
    pub fn marked(&self, source: Source, origin: &[u8], held: Mark, vouched: Mark) {
        let Source::Neighbour(neighbour) = source else {
            return;
        };
        let mut inner = self.lock();
        let id = inner.marks.id(origin);
        inner.marks.held[id].merge(vouched);
        let told = &mut inner.marks.told;
        if told.len() <= neighbour {
            told.resize_with(neighbour + 1, Vec::new);
        }
        Marks::merge(&mut told[neighbour], id, held);
    }

    /// Forgets what neighbour `source` said it holds: its link was lost,
    /// and a neighbour that comes back may have lost reports too (a
    /// restart without its data folder).
    pub fn forget_told(&self, source: Source) {
        if let Source::Neighbour(neighbour) = source
            && let Some(told) = self.lock().marks.told.get_mut(neighbour)
        {
            told.clear();
        }
    }

    /// The number of `origin`, by which [`Store::since_marked`] reports
    /// watermarks; stable for the life of the store.
    pub fn origin_id(&self, origin: &[u8]) -> usize {
        self.lock().marks.id(origin)
    }

    /// The name of origin number `id`.
    pub fn origin_name(&self, id: usize) -> Option<Box<[u8]>> {
        self.lock().marks.names.get(id).cloned()
    }

    /// Puts back a report replayed from disk under its old sequence number,
    /// if it is newer than what is there and not expired; the ceiling does
    /// not apply to what the store held before. Numbers only ever grow:
    /// the head moves past `seq`.
    pub fn restore(&self, at_line: &[u8], client_time: Timestamp, seq: u64) {
        let mut inner = self.lock();
        inner.head = inner.head.max(seq);
        // The sequence is built once the replay is over (see `Sequence`).
        inner.sequence.stale = true;
        inner.put(
            at_line,
            client_time,
            |_| seq,
            Source::Client,
            Room::Unbounded,
        );
    }

    /// Makes the next sequence number at least `next`.
    pub fn continue_from(&self, next: u64) {
        let mut inner = self.lock();
        inner.head = inner.head.max(next.saturating_sub(1));
    }

    /// Reads into the cache what looking up these clients will read: their
    /// index slots, then the entries those slots point to. A neighbour's
    /// frame holds hundreds of reports for clients scattered over a store
    /// far larger than the caches, and a lookup's cost is its cache misses
    /// (the first slot read above all); taken
    /// one report at a time they come one after another, while here each
    /// step issues a frame's loads independently of each other, so that
    /// the processor overlaps their misses. Changes nothing.
    pub fn warm<'a>(&self, client_ids: impl Iterator<Item = &'a [u8]>) {
        let inner = self.lock();
        if inner.index.slots.is_empty() {
            return;
        }
        let mut wanted: Vec<(u32, usize)> = client_ids
            .map(|id| {
                let hash = inner.hash(id);
                (hash, Index::start(hash, inner.index.slots.len()))
            })
            .collect();
        // The slots: no load depends on another. Each found client's slot
        // position is replaced by its entry's number.
        let mut touched = 0u64;
        wanted.retain_mut(|(hash, at)| {
            let slot = inner.index.slots[*at];
            touched ^= slot;
            Index::entry_of(slot, *hash)
                .map(|entry| *at = entry as usize)
                .is_some()
        });
        // The entries those slots point to.
        for &(_, entry) in &wanted {
            touched ^= inner.entries.get(entry as u32).map_or(0, |entry| entry.seq);
        }
        std::hint::black_box(touched);
    }

    /// The newest report of a client.
    pub fn get(&self, client_id: &[u8]) -> Option<Report> {
        let at_line = {
            let inner = self.lock();
            let i = inner.find(client_id)?;
            Bytes::copy_from_slice(inner.entries[i].line.as_bytes())
        };
        // Every stored line was made or checked as an AT line, so this
        // finds it again (the location is not kept apart: it is read back
        // here, for WHATSAT only, rather than stored for every client).
        let report = Report::from_at_line(at_line);
        debug_assert!(report.is_some(), "a stored line is an AT line");
        report
    }

    /// The highest sequence number given out so far (0 when empty).
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// How many clients are held (those expired included, until a sweep
    /// forgets them).
    pub fn len(&self) -> usize {
        self.lock().entries.live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds to `out` the reports accepted after sequence `after`, oldest
    /// first, until `out` holds `max` of them.
    ///
    /// `leave_out: Some((neighbour, above))` leaves out the reports that came
    /// from that neighbour and are numbered above `above`: never send an
    /// update back to a neighbour that sent it, or a copy of it, while the
    /// link to it is up. Those numbered lower are sent anyway, since the
    /// neighbour may have lost them in a restart since.
    ///
    /// Returns how far the scan reached (the caller continues from there)
    /// and whether it stopped short of the head. Reports that were
    /// superseded are gone from the sequence, so the scan visits each client
    /// once at most.
    pub fn since(
        &self,
        after: u64,
        leave_out: Option<(usize, u64)>,
        max: usize,
        out: &mut Batch,
    ) -> Scan {
        Self::scan(&mut self.lock(), after, leave_out, max, out)
    }

    /// [`Store::since`] for the link to neighbour `leave_out.0`, with this
    /// server's watermarks (by origin number) in `held`, taken under the
    /// same lock: a scan that reached the head and these tell what the
    /// neighbour will hold once it has what the scan picked.
    pub fn since_marked(
        &self,
        after: u64,
        leave_out: (usize, u64),
        max: usize,
        out: &mut Batch,
        held: &mut Vec<Mark>,
    ) -> Scan {
        let mut inner = self.lock();
        let scan = Self::scan(&mut inner, after, Some(leave_out), max, out);
        held.clear();
        held.extend_from_slice(&inner.marks.held);
        scan
    }

    /// What neighbour `neighbour` said it holds, by origin number, into
    /// `told` (see [`Store::marked`]).
    pub fn told(&self, neighbour: usize, told: &mut Vec<Mark>) {
        told.clear();
        if let Some(theirs) = self.lock().marks.told.get(neighbour) {
            told.extend_from_slice(theirs);
        }
    }

    fn scan(
        inner: &mut Inner,
        after: u64,
        leave_out: Option<(usize, u64)>,
        max: usize,
        out: &mut Batch,
    ) -> Scan {
        inner.refresh_sequence();
        let leave_out = leave_out.map(LeaveOut::new);
        let mut reached = after;
        let mut exhausted = true;
        for (scanned, pair) in inner.sequence.after(after).iter().enumerate() {
            // Bound the work under the lock even when most entries are skipped.
            if out.len() >= max || scanned >= max.saturating_mul(4) {
                exhausted = false;
                break;
            }
            let Numbered { seq, entry: i } = *pair;
            reached = seq;
            if i == GONE {
                continue;
            }
            let entry = &inner.entries[i];
            // Catch-up never sends a client forgotten, swept or not.
            if inner.expired(entry) {
                continue;
            }
            if leave_out.is_some_and(|rule| rule.leaves_out(seq, entry)) {
                continue;
            }
            out.push(
                Picked {
                    seq,
                    entry: i,
                    source: entry.source,
                    client_time: entry.client_time(),
                },
                entry.line.as_bytes(),
            );
        }
        // Everything up to the head was seen: no sequence number in between
        // is left (they were superseded), so the neighbour is complete up to it.
        Scan {
            reached: if exhausted { inner.head } else { reached },
            more: !exhausted,
        }
    }

    /// Adds to `out` the report `picked` (by [`Store::since`]) if it is
    /// still its client's newest and `leave_out` (as for [`Store::since`])
    /// does not leave it out; returns whether it did. For a report a link
    /// held back: by now it may have been superseded (the newer one has a
    /// number of its own) or the neighbour may have sent it to us.
    pub fn still_to_send(&self, picked: Picked, leave_out: (usize, u64), out: &mut Batch) -> bool {
        let inner = self.lock();
        // Entries never move and a client's entry holds the number of its
        // newest report, so the entry still holds this number exactly when
        // the report is still the newest.
        let Some(entry) = inner
            .entries
            .get(picked.entry)
            .filter(|entry| entry.seq == picked.seq && !inner.expired(entry))
        else {
            return false;
        };
        if LeaveOut::new(leave_out).leaves_out(picked.seq, entry) {
            return false;
        }
        out.push(picked, entry.line.as_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_line(client: &str, time: &str) -> String {
        format!("AT Hill +0.000000000 {client} +1+1 {time}")
    }

    fn update(store: &Store, client: &str, time: &str, source: Source) -> Option<u64> {
        let line = at_line(client, time);
        store
            .update(
                line.as_bytes(),
                Timestamp::parse(time.as_bytes()).unwrap(),
                source,
            )
            .stored()
    }

    /// Restores `client`'s report of `time` under number `seq`, as a replay does.
    fn restore(store: &Store, client: &str, time: &str, seq: u64) {
        let line = at_line(client, time);
        store.restore(
            line.as_bytes(),
            Timestamp::parse(time.as_bytes()).unwrap(),
            seq,
        );
    }

    /// The numbers a scan for neighbour `to` picks, and how far it reached.
    fn seqs(store: &Store, after: u64, to: usize, max: usize) -> (Vec<u64>, u64) {
        let mut out = Batch::new();
        let reached = store.since(after, Some((to, 0)), max, &mut out).reached;
        (out.iter().map(|(p, _)| p.seq).collect(), reached)
    }

    #[test]
    fn entries_are_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Entry>(), 128);
    }

    #[test]
    fn only_newer_reports_are_kept() {
        let store = Store::new();
        assert_eq!(update(&store, "kiwi", "1.5", Source::Client), Some(1));
        assert_eq!(update(&store, "kiwi", "1.500000000", Source::Client), None);
        assert_eq!(update(&store, "kiwi", "1.10", Source::Client), None);
        assert_eq!(update(&store, "kiwi", "1.9", Source::Client), Some(2));
        let kept = store.get(b"kiwi").unwrap();
        assert_eq!(kept.at_line, at_line("kiwi", "1.9"));
        assert_eq!(kept.client_time, Timestamp::parse(b"1.9").unwrap());
        assert_eq!(kept.location, Location { lat: 1.0, lng: 1.0 });
        assert_eq!(store.len(), 1);
        assert!(store.get(b"nobody").is_none());
    }

    #[test]
    fn lines_too_long_for_an_entry_are_kept_whole() {
        let store = Store::new();
        let long_id = "x".repeat(300);
        let short_id = "y".repeat(INLINE - at_line("", "7").len());
        for id in [&long_id, &short_id] {
            assert!(update(&store, id, "7", Source::Client).is_some());
            let kept = store.get(id.as_bytes()).unwrap();
            assert_eq!(kept.at_line, at_line(id, "7"));
            assert_eq!(update(&store, id, "7", Source::Client), None);
            assert!(update(&store, id, "8", Source::Client).is_some());
            assert_eq!(store.get(id.as_bytes()).unwrap().at_line, at_line(id, "8"));
        }
        assert_eq!(at_line(&short_id, "7").len(), INLINE);
        // Ids that share a long prefix are still told apart.
        assert!(store.get(&long_id.as_bytes()[..299]).is_none());
        let mut out = Batch::new();
        store.since(0, None, 10, &mut out);
        let lines: Vec<_> = out.iter().map(|(_, line)| line.to_vec()).collect();
        assert_eq!(
            lines,
            [
                at_line(&long_id, "8").into_bytes(),
                at_line(&short_id, "8").into_bytes()
            ]
        );
    }

    #[test]
    fn the_index_finds_every_entry_through_growth_and_equal_hashes() {
        let mut index = Index::default();
        assert_eq!(index.find(7, |_| true), None);
        // Entry e has hash e / 3: runs of three equal hashes, told apart
        // only by the comparison, as for two ids whose hashes collide.
        for entry in 0..5000 {
            index.insert(entry / 3, entry);
        }
        for entry in 0..5000 {
            assert_eq!(index.find(entry / 3, |e| e == entry), Some(entry));
        }
        assert_eq!(index.find(5000, |_| true), None);
        assert_eq!(index.find(4, |_| false), None);
        assert!(
            index.len * 4 <= index.slots.len() * 3,
            "at most three quarters full"
        );
    }

    /// The next number of a fixed, well-mixed sequence (xorshift64).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Hashes whose probe starts at `at` in a table of `slots`.
    fn hashes_starting_at(at: usize, slots: usize) -> impl Iterator<Item = u32> {
        (0u32..).filter(move |&hash| Index::start(hash, slots) == at)
    }

    #[test]
    fn growing_in_place_keeps_a_cluster_that_wraps_past_the_end() {
        let mut index = Index::default();
        index.resize(16);
        // Five entries starting at the last slot fill it and wrap round to
        // the first four; one starting at slot 2 lands after them, at 4.
        let wrapping: Vec<u32> = hashes_starting_at(15, 16).take(5).collect();
        for (entry, &hash) in (0..).zip(&wrapping) {
            index.insert(hash, entry);
        }
        let after = hashes_starting_at(2, 16).next().unwrap();
        index.insert(after, 5);
        assert_eq!(index.slots[4] as u32, 6, "the entry after the wrapped ones");
        for size in [32, 64, 1024] {
            index.resize(size);
            for (entry, &hash) in (0..).zip(&wrapping) {
                assert_eq!(index.find(hash, |e| e == entry), Some(entry), "{size}");
            }
            assert_eq!(index.find(after, |e| e == 5), Some(5), "{size}");
            assert_eq!(index.slots.iter().filter(|&&slot| slot != 0).count(), 6);
        }
    }

    #[test]
    fn growing_in_place_keeps_every_entry_findable() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || xorshift(&mut state);
        for round in 0..2000 {
            let mut index = Index::default();
            let slots = 16 << (round % 4);
            index.resize(slots);
            // Up to three quarters full, hashes from a small range in some
            // rounds so that clusters are long and wrap.
            let entries = (next() as usize) % (slots * 3 / 4) + 1;
            let range = if round % 2 == 0 {
                1 << 32
            } else {
                slots as u64 / 4
            };
            let hashes: Vec<u32> = (0..entries).map(|_| (next() % range) as u32).collect();
            for (entry, &hash) in (0..).zip(&hashes) {
                index.insert(hash, entry);
            }
            index.resize(slots << (1 + round % 3));
            for (entry, &hash) in (0..).zip(&hashes) {
                assert_eq!(
                    index.find(hash, |e| e == entry),
                    Some(entry),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn warming_reads_every_kind_of_lookup_and_changes_nothing() {
        let store = Store::new();
        // An empty store has no slots to read.
        store.warm([&b"kiwi"[..]].into_iter());
        assert!(store.is_empty());
        // Past a chunk and through several resizes of the index, so the
        // last entries and moved slots are read too.
        let clients: Vec<String> = (0..CHUNK + 100).map(|i| format!("c{i}")).collect();
        for client in &clients {
            update(&store, client, "1", Source::Neighbour(0));
        }
        let listed = |store: &Store| {
            let mut out = Batch::new();
            store.since(0, None, 1 << 20, &mut out);
            out.iter()
                .map(|(seq, line)| (seq, line.to_vec()))
                .collect::<Vec<_>>()
        };
        let before = listed(&store);
        let unknown = ["nobody", "", "c99999999"];
        store.warm(
            clients
                .iter()
                .map(String::as_str)
                .chain(unknown)
                .map(str::as_bytes),
        );
        assert_eq!(listed(&store), before);
        assert_eq!(store.len(), clients.len());
        for client in [&clients[0], &clients[CHUNK], clients.last().unwrap()] {
            assert_eq!(
                store.get(client.as_bytes()).unwrap().at_line,
                at_line(client, "1").as_bytes()
            );
        }
        assert!(store.get(b"nobody").is_none());
        // Still newest-wins, with the sender remembered.
        assert_eq!(update(&store, "c1", "1", Source::Neighbour(1)), None);
        assert!(update(&store, "c1", "2", Source::Client).is_some());
    }

    /// The report numbered `seq` as a scan picks it.
    fn picked(store: &Store, seq: u64) -> Picked {
        let mut out = Batch::new();
        store.since(seq - 1, None, 1, &mut out);
        let picked = out.iter().next().unwrap().0;
        assert_eq!(picked.seq, seq);
        picked
    }

    #[test]
    fn a_held_report_is_still_sent_unless_superseded_or_sent_to_us() {
        let store = Store::new();
        let mut out = Batch::new();
        let first = picked(&store, update(&store, "kiwi", "1", Source::Client).unwrap());
        let other = picked(&store, update(&store, "emu", "1", Source::Client).unwrap());
        assert!(store.still_to_send(first, (0, 0), &mut out));
        // Superseded: the newer report has a number of its own.
        let newer = picked(&store, update(&store, "kiwi", "2", Source::Client).unwrap());
        assert_eq!(newer.entry, first.entry);
        assert!(!store.still_to_send(first, (0, 0), &mut out));
        assert!(store.still_to_send(newer, (0, 0), &mut out));
        // Neighbour 1 sent us the same report meanwhile: not to it, but
        // still to others, and still to it if numbered before its link
        // came up (it may have lost it since).
        assert_eq!(update(&store, "emu", "1", Source::Neighbour(1)), None);
        assert!(!store.still_to_send(other, (1, 0), &mut out));
        assert!(store.still_to_send(other, (0, 0), &mut out));
        assert!(store.still_to_send(other, (1, other.seq), &mut out));
        // Numbers or entries never given out.
        for never in [
            Picked {
                seq: 0,
                entry: 0,
                source: CLIENT,
                client_time: Timestamp::default(),
            },
            Picked {
                seq: 99,
                entry: 0,
                source: CLIENT,
                client_time: Timestamp::default(),
            },
            Picked {
                seq: first.seq,
                entry: 7,
                source: CLIENT,
                client_time: Timestamp::default(),
            },
            Picked {
                seq: first.seq,
                entry: u32::MAX,
                source: CLIENT,
                client_time: Timestamp::default(),
            },
        ] {
            assert!(!store.still_to_send(never, (0, 0), &mut out), "{never:?}");
        }
        let sent: Vec<_> = out.iter().map(|(picked, _)| picked).collect();
        assert_eq!(sent, [first, newer, other, other]);
    }

    /// A line's stamp is when its origin received it: client time plus
    /// skew, to the nanosecond, read alike by every server.
    #[test]
    fn a_stamp_is_the_receive_time_of_the_line() {
        let time = Timestamp::parse(b"1700000000.25").unwrap();
        let line = b"AT Hill +0.500000001 kiwi +1+1 1700000000.25";
        assert_eq!(stamp(line, time), 1_700_000_000_750_000_001);
        let early = b"AT Hill -0.250000000 kiwi +1+1 1700000000.25";
        assert_eq!(stamp(early, time), 1_700_000_000_000_000_000);
        // No skew to read: no watermark reaches it.
        assert_eq!(stamp(b"AT Hill kiwi", time), u64::MAX);
        assert_eq!(stamp(b"AT Hill 0.5 kiwi +1+1 1", time), u64::MAX);
        assert_eq!(origin(line), b"Hill");
    }

    /// Watermarks: a server's own rise with the reports its clients make;
    /// a neighbour's vouching raises ours; what a neighbour says of itself
    /// is kept apart, for its link, until forgotten.
    #[test]
    fn watermarks_rise_from_clients_and_neighbours() {
        let store = Store::new();
        let marks = |store: &Store| {
            let mut held = Vec::new();
            store.since_marked(0, (0, 0), 10, &mut Batch::new(), &mut held);
            held
        };
        let mark = |from, to| Mark { from, to };
        let time = Timestamp::parse(b"5").unwrap();
        store.update(b"AT Hill +1.000000000 kiwi +1+1 5", time, Source::Client);
        let hill = store.origin_id(b"Hill");
        // From the first report stored on: the ones before may be lost.
        assert_eq!(marks(&store)[hill], mark(5_999_999_999, 6_000_000_000));
        store.update(b"AT Hill +2.000000000 emu +1+1 5", time, Source::Client);
        assert_eq!(marks(&store)[hill], mark(5_999_999_999, 7_000_000_000));
        // A vouched range that meets ours joins it; our own reports since
        // start extend only their own range, never bridging a gap.
        store.marked(
            Source::Neighbour(1),
            b"Hill",
            mark(0, 1),
            mark(100, 6_000_000_000),
        );
        assert_eq!(marks(&store)[hill], mark(100, 7_000_000_000));
        // Not newer, or a neighbour's report: no change.
        store.update(b"AT Hill +3.000000000 kiwi +1+1 5", time, Source::Client);
        store.update(
            b"AT Hill +9.000000000 owl +1+1 5",
            time,
            Source::Neighbour(1),
        );
        assert_eq!(marks(&store)[hill], mark(100, 7_000_000_000));
        // A gap between what was vouched and our own: ours, the higher.
        let other = Store::new();
        other.marked(Source::Neighbour(1), b"Hill", mark(0, 1), mark(100, 200));
        other.update(b"AT Hill +1.000000000 kiwi +1+1 5", time, Source::Client);
        assert_eq!(
            marks(&other)[other.origin_id(b"Hill")],
            mark(5_999_999_999, 6_000_000_000)
        );
        // Neighbour 1 vouches for Smith's reports up to 40 and holds 50.
        store.marked(Source::Neighbour(1), b"Smith", mark(10, 50), mark(10, 40));
        let smith = store.origin_id(b"Smith");
        assert_eq!(store.origin_name(smith).as_deref(), Some(&b"Smith"[..]));
        assert_eq!(marks(&store)[smith], mark(10, 40));
        // Ranges that meet are joined; one apart and lower is not taken.
        store.marked(Source::Neighbour(1), b"Smith", mark(0, 5), mark(0, 20));
        assert_eq!(marks(&store)[smith], mark(0, 40));
        // One apart and higher replaces it (a server that restarted, or a
        // gap that may be what was lost); one apart and lower is not taken.
        store.marked(Source::Neighbour(2), b"Smith", mark(0, 5), mark(60, 70));
        assert_eq!(marks(&store)[smith], mark(60, 70));
        store.marked(Source::Neighbour(2), b"Smith", mark(0, 5), mark(41, 45));
        assert_eq!(marks(&store)[smith], mark(60, 70), "apart and lower");
        let mut told = Vec::new();
        store.told(1, &mut told);
        assert_eq!(told[smith], mark(10, 50));
        assert!(told[smith].covers(50) && !told[smith].covers(10));
        store.told(0, &mut told);
        assert!(told.is_empty(), "neighbour 0 said nothing");
        store.forget_told(Source::Neighbour(1));
        store.told(1, &mut told);
        assert!(told.is_empty());
        // A client's watermark line means nothing.
        store.marked(Source::Client, b"Smith", mark(0, 90), mark(0, 90));
        assert_eq!(marks(&store)[smith], mark(60, 70));
    }

    #[test]
    fn clients_past_a_chunk_are_found_and_listed_in_order() {
        let store = Store::new();
        let clients = CHUNK * 2 + 10;
        for i in 0..clients {
            update(&store, &format!("c{i}"), "1", Source::Client);
        }
        // Each chunk keeps its place: a client of the first chunk changed
        // after the others were added is still the same entry.
        assert_eq!(
            update(&store, "c3", "2", Source::Client),
            Some(clients as u64 + 1)
        );
        assert_eq!(store.len(), clients);
        for i in (0..clients).step_by(97) {
            let report = store.get(format!("c{i}").as_bytes()).expect("stored");
            assert!(report.at_line.ends_with(if i == 3 { b" 2" } else { b" 1" }));
        }
        let (seqs, _) = seqs(&store, clients as u64 - 2, 0, clients);
        assert_eq!(
            seqs,
            [clients as u64 - 1, clients as u64, clients as u64 + 1]
        );
    }

    #[test]
    fn since_lists_each_client_once_at_its_newest_report() {
        let store = Store::new();
        update(&store, "a", "1", Source::Client);
        update(&store, "b", "1", Source::Client);
        update(&store, "a", "2", Source::Client);
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2, 3], 3));
        assert_eq!(seqs(&store, 2, 0, 100), (vec![3], 3));
        assert_eq!(seqs(&store, 3, 0, 100), (vec![], 3));
        let mut out = Batch::new();
        store.since(0, None, 100, &mut out);
        let lines: Vec<_> = out
            .iter()
            .map(|(picked, line)| (picked.seq, line.to_vec()))
            .collect();
        assert_eq!(
            lines,
            [
                (2, at_line("b", "1").into_bytes()),
                (3, at_line("a", "2").into_bytes())
            ]
        );
    }

    #[test]
    fn since_skips_what_came_from_the_neighbour_asking() {
        let store = Store::new();
        update(&store, "a", "1", Source::Neighbour(0));
        update(&store, "b", "1", Source::Neighbour(1));
        update(&store, "c", "1", Source::Client);
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2, 3], 3));
        assert_eq!(seqs(&store, 0, 1, 100), (vec![1, 3], 3));
        // Only skipped entries left: the scan still moves on to the head.
        update(&store, "d", "1", Source::Neighbour(0));
        assert_eq!(seqs(&store, 3, 0, 100), (vec![], 4));
    }

    #[test]
    fn since_skips_what_the_neighbour_asking_sent_again() {
        let store = Store::new();
        update(&store, "a", "1", Source::Neighbour(0));
        update(&store, "b", "1", Source::Client);
        update(&store, "c", "1", Source::Neighbour(0));
        // Neighbour 1 sends the same `a` again, an older `b`, and a `c` no
        // newer though it is another line: none is stored...
        assert_eq!(update(&store, "a", "1", Source::Neighbour(1)), None);
        assert_eq!(update(&store, "b", "0", Source::Neighbour(1)), None);
        let other_c = b"AT Smith +0.000000000 c +2+2 1";
        let one = Timestamp::parse(b"1").unwrap();
        assert_eq!(
            store.update(other_c, one, Source::Neighbour(1)),
            Applied::NotNewer
        );
        // ...and neighbour 1 is not sent the `a` and `c` it holds, but is
        // sent the newer `b` it lacks.
        assert_eq!(seqs(&store, 0, 1, 100), (vec![2], 3));
        // Neighbour 0 still gets all but its own.
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2], 3));
        // Before the link came up, a neighbour may have lost what it sent.
        let mut out = Batch::new();
        store.since(0, Some((1, 3)), 100, &mut out);
        assert_eq!(
            out.iter().map(|(picked, _)| picked.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // A newer report starts afresh: everyone but its source gets it.
        update(&store, "a", "2", Source::Neighbour(0));
        assert_eq!(seqs(&store, 3, 1, 100), (vec![4], 4));
        assert_eq!(seqs(&store, 3, 0, 100), (vec![], 4));
    }

    /// `apply` marks a byte-identical copy as `update` would, without
    /// checking it again, and checks and stores anything else as `update`
    /// does.
    #[test]
    fn a_neighbours_report_is_marked_checked_or_stored_in_one_lookup() {
        let store = Store::new();
        update(&store, "a", "1", Source::Neighbour(0));
        update(&store, "b", "1", Source::Client);
        let never_asked = || -> Option<Timestamp> { panic!("a second copy is not checked") };
        let a = at_line("a", "1");
        assert_eq!(
            store.apply(a.as_bytes(), Source::Neighbour(1), never_asked),
            Applied::Same
        );
        // Neighbour 1 is not sent the `a` it holds; `b` it still gets.
        assert_eq!(seqs(&store, 0, 1, 100), (vec![2], 2));
        assert_eq!(store.head(), 2);
        // Not the stored line, and malformed: nothing changes.
        for malformed in ["", "AT", "a b c ", "AT Hill +0.000000000 b +1+1 x"] {
            let applied = store.apply(malformed.as_bytes(), Source::Neighbour(1), || None);
            assert_eq!(applied, Applied::Malformed, "{malformed:?}");
        }
        // Another line for `b`, but not newer.
        let older = "AT Smith +0.000000000 b +1+1 1".to_string();
        let time = || Timestamp::parse(b"1");
        assert_eq!(
            store.apply(older.as_bytes(), Source::Neighbour(1), time),
            Applied::NotNewer
        );
        assert_eq!(store.head(), 2);
        // A newer one for `b`, and one for a client not known yet: stored,
        // and not sent back to neighbour 1, which sent them.
        let newer = at_line("b", "2");
        let time = || Timestamp::parse(b"2");
        assert_eq!(
            store.apply(newer.as_bytes(), Source::Neighbour(1), time),
            Applied::Stored(3)
        );
        let new_client = at_line("zebra", "1");
        let time = || Timestamp::parse(b"1");
        assert_eq!(
            store.apply(new_client.as_bytes(), Source::Neighbour(1), time),
            Applied::Stored(4)
        );
        assert_eq!(store.get(b"b").unwrap().at_line, newer);
        assert_eq!(store.get(b"zebra").unwrap().at_line, new_client);
        assert_eq!(seqs(&store, 2, 1, 100), (vec![], 4));
        assert_eq!(seqs(&store, 2, 0, 100), (vec![3, 4], 4));
    }

    #[test]
    fn neighbours_past_the_32nd_are_sent_all_but_their_own() {
        let store = Store::new();
        update(&store, "a", "1", Source::Neighbour(0));
        assert_eq!(update(&store, "a", "1", Source::Neighbour(40)), None);
        assert_eq!(seqs(&store, 0, 40, 100), (vec![1], 1));
        update(&store, "b", "1", Source::Neighbour(40));
        assert_eq!(seqs(&store, 1, 40, 100), (vec![], 2));
    }

    #[test]
    fn restored_reports_keep_their_numbers_and_newest_wins() {
        let store = Store::new();
        let restore = |client: &str, time: &str, seq| restore(&store, client, time, seq);
        restore("a", "2", 7);
        restore("a", "1", 9);
        restore("b", "1", 3);
        assert_eq!(
            store.get(b"a").unwrap().client_time,
            Timestamp::parse(b"2").unwrap()
        );
        assert_eq!(seqs(&store, 0, 0, 100), (vec![3, 7], 9));
        store.continue_from(100);
        assert_eq!(update(&store, "c", "1", Source::Client), Some(100));
    }

    #[test]
    fn reports_from_before_the_link_came_up_are_sent_back() {
        let store = Store::new();
        update(&store, "a", "1", Source::Neighbour(0));
        update(&store, "b", "1", Source::Neighbour(0));
        let mut out = Batch::new();
        store.since(0, Some((0, 1)), 100, &mut out);
        assert_eq!(
            out.iter().map(|(picked, _)| picked.seq).collect::<Vec<_>>(),
            [1]
        );
        out.clear();
        store.since(0, None, 100, &mut out);
        assert_eq!(out.len(), 2);
    }

    /// Every client's newest number, in order, as a model of the sequence.
    fn newest_numbers(newest: &std::collections::HashMap<usize, u64>) -> Vec<u64> {
        let mut numbers: Vec<u64> = newest.values().copied().collect();
        numbers.sort_unstable();
        numbers
    }

    /// Through enough supersessions that gone pairs are dropped many times,
    /// the sequence holds each client once at its newest report, in order,
    /// read whole or a bounded batch at a time, and stays within twice
    /// the clients.
    #[test]
    fn the_sequence_keeps_each_client_once_through_many_supersessions() {
        let store = Store::new();
        let mut newest = std::collections::HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 1..=60_000u64 {
            // A fixed, well-mixed choice of client.
            let client = (xorshift(&mut state) % 3_000) as usize;
            let seq = update(
                &store,
                &format!("c{client}"),
                &round.to_string(),
                Source::Client,
            )
            .expect("each round's time is newer");
            newest.insert(client, seq);
            if round % 10_000 == 0 {
                let (whole, reached) = seqs(&store, 0, 0, 1 << 20);
                assert_eq!(whole, newest_numbers(&newest));
                assert_eq!(reached, round);
                let mut batched = Vec::new();
                let mut after = 0;
                loop {
                    let mut out = Batch::new();
                    let scan = store.since(after, None, 64, &mut out);
                    batched.extend(out.iter().map(|(picked, _)| picked.seq));
                    after = scan.reached;
                    if !scan.more {
                        break;
                    }
                }
                assert_eq!(batched, whole);
                assert_eq!(after, round);
            }
        }
        let inner = store.lock();
        assert!(inner.sequence.pairs.len() <= 2 * 3_000 + 4096);
        assert!(inner.sequence.gone < inner.sequence.pairs.len());
    }

    /// A replay restores reports in the order they were logged, which need
    /// not be their numbers' order; the sequence that follows is in number
    /// order and goes on above the head.
    #[test]
    fn a_replay_out_of_order_leaves_the_sequence_in_order() {
        let store = Store::new();
        let restore = |client: &str, time: &str, seq| restore(&store, client, time, seq);
        restore("a", "1", 50);
        restore("b", "1", 20);
        restore("c", "1", 40);
        restore("b", "2", 30);
        restore("d", "1", 10);
        store.continue_from(60);
        // Everything up to the head (59) was seen.
        assert_eq!(seqs(&store, 0, 0, 100), (vec![10, 30, 40, 50], 59));
        assert_eq!(seqs(&store, 30, 0, 100), (vec![40, 50], 59));
        assert_eq!(update(&store, "d", "2", Source::Client), Some(60));
        assert_eq!(update(&store, "e", "1", Source::Client), Some(61));
        assert_eq!(seqs(&store, 0, 0, 100), (vec![30, 40, 50, 60, 61], 61));
    }

    /// An AT line for `client` at client time `time`, received at
    /// `received` (whole seconds): the skew is the difference.
    fn received_line(client: &str, time: u64, received: u64) -> (String, Timestamp) {
        let skew = crate::protocol::time::format_skew(
            i128::from(received) * 1_000_000_000,
            Timestamp::new(time, 0).unwrap(),
        );
        (
            format!("AT Hill {skew} {client} +1+1 {time}"),
            Timestamp::new(time, 0).unwrap(),
        )
    }

    fn offer(store: &Store, client: &str, time: u64, received: u64, source: Source) -> Applied {
        let (line, client_time) = received_line(client, time, received);
        store.update(line.as_bytes(), client_time, source)
    }

    fn apply(store: &Store, client: &str, time: u64, received: u64) -> Applied {
        let (line, client_time) = received_line(client, time, received);
        store.apply(line.as_bytes(), Source::Neighbour(0), || Some(client_time))
    }

    #[test]
    fn the_receipt_time_is_the_client_time_plus_the_skew() {
        let check = |line: &str, time: &str, want: u32| {
            let time = Timestamp::parse(time.as_bytes()).unwrap();
            assert_eq!(receipt_secs(line.as_bytes(), time), want, "{line}");
        };
        check(
            "AT Hill +0.263873386 kiwi +1+1 1621464827.959498503",
            "1621464827.959498503",
            1621464828,
        );
        check("AT Hill -2.500000000 kiwi +1+1 100.2", "100.2", 97);
        check("AT Hill +0.000000000 kiwi +1+1 100", "100", 100);
        // Before the epoch, and past what u32 seconds hold: clamped.
        check("AT Hill -200.000000000 kiwi +1+1 100", "100", 0);
        check(
            "AT Hill +0.000000000 kiwi +1+1 99999999999",
            "99999999999",
            u32::MAX,
        );
        check(
            &format!("AT Hill +{}.000000000 k +1+1 1", "9".repeat(30)),
            "1",
            u32::MAX,
        );
        // An unreadable skew counts as none.
        check("AT Hill x kiwi +1+1 100", "100", 100);
        check("AT", "100", 100);
    }

    #[test]
    fn an_expired_client_is_as_good_as_gone_before_any_sweep() {
        let store = Store::with_bounds(Bounds {
            ttl_secs: 10,
            ..Bounds::default()
        });
        store.set_now(1000);
        assert!(
            offer(&store, "kiwi", 5, 995, Source::Client)
                .stored()
                .is_some()
        );
        assert!(
            offer(&store, "emu", 5, 1000, Source::Client)
                .stored()
                .is_some()
        );
        let kiwi = picked(&store, 1);
        // 1005: kiwi was received ten seconds ago, emu five.
        store.set_now(1005);
        assert!(store.get(b"kiwi").is_some(), "not a second early");
        store.set_now(1006);
        assert!(store.get(b"kiwi").is_none());
        assert!(store.get(b"emu").is_some());
        // Never sent again, by a scan or as a held report.
        assert_eq!(seqs(&store, 0, 0, 100), (vec![2], 2));
        let mut out = Batch::new();
        assert!(!store.still_to_send(kiwi, (0, 0), &mut out));
        // A flooded copy received as long ago is refused, the same line
        // included; a later report takes its place even with an older
        // client time, since what it meets is gone.
        assert_eq!(apply(&store, "kiwi", 5, 995), Applied::Expired);
        assert_eq!(apply(&store, "owl", 9, 990), Applied::Expired);
        assert_eq!(apply(&store, "kiwi", 3, 1004), Applied::Stored(3));
        assert_eq!(
            store.get(b"kiwi").unwrap().client_time,
            Timestamp::new(3, 0).unwrap()
        );
        // Until then a report no newer is not newer.
        assert_eq!(apply(&store, "emu", 4, 1005), Applied::NotNewer);
        // The clock set back does not bring a client back.
        store.set_now(0);
        assert!(store.get(b"owl").is_none());
        assert_eq!(apply(&store, "owl", 9, 990), Applied::Expired);
    }

    #[test]
    fn a_sweep_frees_expired_entries_for_new_clients_and_gives_back_chunks() {
        let store = Store::with_bounds(Bounds {
            ttl_secs: 100,
            ..Bounds::default()
        });
        store.set_now(1000);
        let clients = 3 * CHUNK;
        // The first chunk's clients are heard from later than the rest.
        for i in 0..clients {
            let received = if i < CHUNK { 1050 } else { 1000 };
            let stored = offer(&store, &format!("c{i}"), 1, received, Source::Neighbour(1));
            assert!(stored.stored().is_some());
        }
        let sweep = |store: &Store| {
            let (mut chunk, mut freed) = (0, 0);
            while let Some(count) = store.sweep(chunk) {
                freed += count;
                chunk += 1;
            }
            freed
        };
        assert_eq!(sweep(&store), 0, "nothing expired yet");
        store.set_now(1101);
        assert_eq!(sweep(&store), 2 * CHUNK);
        assert_eq!(store.len(), CHUNK);
        {
            let inner = store.lock();
            assert_eq!(
                inner.entries.chunks.len(),
                1,
                "the emptied chunks are given back"
            );
            assert_eq!(inner.index.len, CHUNK);
        }
        for i in (0..clients).step_by(61) {
            assert_eq!(
                store.get(format!("c{i}").as_bytes()).is_some(),
                i < CHUNK,
                "c{i}"
            );
        }
        assert_eq!(seqs(&store, 0, 0, 1 << 20).0.len(), CHUNK);
        // Half of the first chunk expires: new clients take the freed
        // entries, lowest first, and the chunk count stays.
        for i in (0..CHUNK).step_by(2) {
            offer(&store, &format!("c{i}"), 2, 1060, Source::Client);
        }
        store.set_now(1151);
        assert_eq!(sweep(&store), CHUNK / 2);
        for i in 0..CHUNK / 2 {
            offer(&store, &format!("new{i}"), 1, 1151, Source::Client);
        }
        let inner = store.lock();
        assert_eq!(inner.entries.chunks.len(), 1);
        assert_eq!(inner.entries.live(), CHUNK);
        assert!(inner.entries.free.is_empty());
        drop(inner);
        assert!(store.get(b"new0").is_some());
        assert!(store.get(b"c0").is_some());
        assert!(store.get(b"c1").is_none());
        store.set_now(10_000);
        assert_eq!(sweep(&store), CHUNK);
        assert!(store.is_empty());
        assert!(store.lock().entries.chunks.is_empty());
    }

    #[test]
    fn the_index_finds_every_entry_left_after_removals() {
        let mut state = 0x51_7cc1_b727_220a_u64;
        for round in 0..300 {
            let mut index = Index::default();
            // Hashes from a small range in some rounds: long clusters that
            // wrap past the end, which removals must keep reachable.
            let range = if round % 2 == 0 { 1 << 32 } else { 64 };
            let count = 1 + (xorshift(&mut state) % 400) as u32;
            let hashes: Vec<u32> = (0..count)
                .map(|_| (xorshift(&mut state) % range) as u32)
                .collect();
            for (entry, &hash) in (0..).zip(&hashes) {
                index.insert(hash, entry);
            }
            let mut present = vec![true; hashes.len()];
            for _ in 0..count * 3 / 4 {
                let entry = (xorshift(&mut state) % u64::from(count)) as u32;
                if present[entry as usize] {
                    index.remove(hashes[entry as usize], entry);
                    present[entry as usize] = false;
                }
            }
            for (entry, &hash) in (0..).zip(&hashes) {
                let found = index.find(hash, |e| e == entry);
                assert_eq!(found.is_some(), present[entry as usize], "round {round}");
            }
            assert_eq!(index.len, present.iter().filter(|&&p| p).count());
        }
    }

    #[test]
    fn past_the_ceiling_new_clients_are_refused_and_known_ones_kept() {
        let store = Store::with_bounds(Bounds {
            max_clients: 2,
            max_clients_from_neighbours: 3,
            ..Bounds::default()
        });
        assert_eq!(update(&store, "a", "1", Source::Client), Some(1));
        assert_eq!(update(&store, "b", "1", Source::Client), Some(2));
        let line = at_line("c", "1");
        let one = Timestamp::parse(b"1").unwrap();
        assert_eq!(
            store.update(line.as_bytes(), one, Source::Client),
            Applied::Full
        );
        assert!(store.get(b"c").is_none());
        // Known clients are still updated.
        assert_eq!(update(&store, "a", "2", Source::Client), Some(3));
        // A neighbour's report has its own, higher ceiling.
        assert_eq!(
            store.apply(line.as_bytes(), Source::Neighbour(0), || Some(one)),
            Applied::Stored(4)
        );
        let d = at_line("d", "1");
        assert_eq!(
            store.apply(d.as_bytes(), Source::Neighbour(0), || Some(one)),
            Applied::Full
        );
        assert_eq!(store.len(), 3);
        // What a replay reads back is never refused.
        store.restore(d.as_bytes(), one, 9);
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn since_stops_at_max_and_resumes() {
        let store = Store::new();
        for i in 0..10 {
            update(&store, &format!("c{i}"), "1", Source::Client);
        }
        let (first, reached) = seqs(&store, 0, 0, 4);
        assert_eq!((first, reached), (vec![1, 2, 3, 4], 4));
        let (second, reached) = seqs(&store, reached, 0, 4);
        assert_eq!((second, reached), (vec![5, 6, 7, 8], 8));
        assert_eq!(seqs(&store, reached, 0, 4), (vec![9, 10], 10));
    }
}

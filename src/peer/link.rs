//! The link logic, without IO: what a link sends next, what it holds back,
//! what a received frame changes. The async shells in `shell` own the
//! sockets and timers and call in here; the simulator (`peer::sim`, in the
//! tests) drives the same code over an in-memory network.
//!
//! A sending link ([`Sender`]) streams its server's sequence from the
//! neighbour's cursor on: first what was missed, then each report as it is
//! accepted, holding some back for a while as the routes say (see
//! `routes`). A receiving link ([`Receiver`]) applies each frame to the
//! replica and moves the neighbour's cursor. `docs/flooding.md` describes
//! the algorithm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::peer::routes::{Routes, Wait};
use crate::peer::wire::{self, PayloadLine, frame_client_id, parse_payload_line, update_parts};
use crate::protocol::parse_at_line;
use crate::replica::Replica;
use crate::replica::store::{self, Applied, Batch, Mark, Picked, Scan, Source, Store};

/// The most updates in one frame (about 130 KB): big enough that a link
/// with a backlog drains it in few frames, small enough that a frame is
/// never long in the writing.
pub const BATCH: usize = 1024;
/// A frame of at least this many updates, which left no backlog, marks a
/// busy link, which then waits `LINGER` after it before sending the next.
const BUSY_FRAME: usize = 16;
pub const LINGER: Duration = Duration::from_millis(1);
/// How long a lazy link holds a report's payload back, waiting for the
/// neighbour's watermark to reach it (the neighbour has it from its own
/// tree parent): long enough for the tree to deliver under load, short
/// enough that a silently failed tree link still costs the servers below
/// it well under 50 ms.
pub const LAZY_HOLD: Duration = Duration::from_millis(20);
/// On a busy lazy link (at least `BUSY_HELD` reports held), a held report
/// whose wait is over waits on while the neighbour's watermark for its
/// origin moved within this: the neighbour's tree is late (a herd busier
/// than its CPUs), not broken, as a broken one stops the watermark below
/// the first report it lost. On a quiet link a watermark moves only as
/// often as reports come, so there the hold alone decides.
const STILL_MOVING: Duration = Duration::from_millis(20);
const BUSY_HELD: usize = 64;
/// The longest a held report waits on so.
const MAX_WAIT_ON: Duration = Duration::from_millis(100);
/// The least time between frames a link sends for watermarks alone: a
/// neighbour holding payloads for us learns within this, well inside its
/// hold, what we hold, in one frame for however many reports.
pub const MARK_INTERVAL: Duration = Duration::from_millis(10);
/// The most reports a link holds back; past that, it sends at once.
const MAX_HELD: usize = 1 << 16;

/// Where a sending link starts, given the cursor the neighbour offered
/// (`cursor_run`, `cursor_seq`), our run id and the head of our sequence.
/// A cursor for another run of ours means nothing now; one beyond our
/// numbering means our data folder is older than the neighbour's knowledge
/// of it (restored from a backup): start over either way.
pub fn start_from(cursor_run: u64, cursor_seq: u64, run: u64, head: u64) -> u64 {
    if cursor_run == run && cursor_seq <= head {
        cursor_seq
    } else {
        0
    }
}

/// What a sending link does next, as [`Sender::poll`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A frame of `updates` reports is in the buffer: send it, then go on
    /// as `then` says.
    Frame { updates: usize, then: Then },
    /// Nothing to send from this look (all superseded, or the neighbour's
    /// own), but more to look at: poll again after letting others run.
    Again,
    /// Nothing to send: wait for newly accepted reports, the heartbeat, or
    /// `until`, when a held report comes due.
    Idle { until: Option<Instant> },
}

/// What a link does after sending a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// A backlog (catch-up, or more updates than the frame held): the next
    /// frame goes at once, after letting the server's other tasks run.
    /// Waiting here would cap the link at a frame per wait, and a link that
    /// falls behind stays behind.
    Hurry,
    /// A busy link that is keeping up waits until then before its next
    /// frame, so that frames grow instead of multiplying (each costs every
    /// hop a write, a read, a tag and a log flush), and so that what the
    /// neighbour sends meanwhile need not be sent back.
    Linger(Instant),
    /// A quiet link never waits: poll again.
    Poll,
}

/// The sending side of one link: how far it has streamed the sequence,
/// and what it holds back.
pub struct Sender {
    /// The neighbour's index in the server's neighbour list.
    index: usize,
    /// The next report to look at is numbered above this.
    next: u64,
    /// How far the neighbour is complete, as it was last told (`C`).
    confirmed: u64,
    /// How far it is complete, as of the last poll.
    complete: u64,
    /// What the neighbour sent us before this link came up may be what it
    /// lost in a restart: send it back too. Later ones it surely has.
    link_up_at: u64,
    /// Reports held back (see `routes`); the neighbour is complete only
    /// up to below the oldest.
    held: Held<HeldReport>,
    scanned: Batch,
    pending: Batch,
    /// What becomes of each report of the current scan.
    decisions: Vec<Decision>,
    /// Per origin number (see `Store::origin_id`): what is held back and
    /// the watermark last sent.
    origins: Vec<OriginMarks>,
    /// Origin numbers by name, and names by number, as this link met them.
    origin_ids: foldhash::HashMap<Box<[u8]>, usize>,
    origin_names: Vec<Box<[u8]>>,
    /// Watermarks as of the last poll: ours, and the neighbour's own.
    own_marks: Vec<Mark>,
    told: Vec<Mark>,
    /// Watermark lines due: origin number, held, vouched.
    marks: Vec<(usize, Mark, u64)>,
    /// When the last frame of reports or watermarks went.
    last_frame: Option<Instant>,
    /// Watermark lines put in frames, and their bytes, since last taken.
    marks_sent: (u64, u64),
}

/// A report held back, with what its watermark check needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HeldReport {
    picked: Picked,
    origin: usize,
    stamp: u64,
}

/// One origin's side of a link's watermarks.
#[derive(Debug, Default)]
struct OriginMarks {
    /// The stamps held back whose minimum it is worth knowing: each is
    /// lower than every one after it, and the first is the lowest held.
    lowest: VecDeque<u64>,
    /// The (held, vouched) pair last sent.
    sent: (Mark, u64),
    /// How far the neighbour said it holds, and when that last moved.
    told_to: u64,
    told_moved: Option<Instant>,
}

impl OriginMarks {
    fn hold(&mut self, stamp: u64) {
        while self.lowest.back().is_some_and(|&last| last > stamp) {
            self.lowest.pop_back();
        }
        self.lowest.push_back(stamp);
    }

    /// Held reports leave in the order they came.
    fn release(&mut self, stamp: u64) {
        if self.lowest.front() == Some(&stamp) {
            self.lowest.pop_front();
        }
    }
}

/// What a sending link does with one report it scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Payload,
    /// Held back, or known to be there: nothing now.
    Skip,
}

impl Sender {
    /// A link to neighbour `index` that starts after report `start` (see
    /// [`start_from`]), coming up when the sequence's head is `link_up_at`.
    pub fn new(index: usize, start: u64, link_up_at: u64) -> Self {
        Self {
            index,
            next: start,
            confirmed: start,
            complete: start,
            link_up_at,
            held: Held::default(),
            scanned: Batch::new(),
            pending: Batch::new(),
            decisions: Vec::new(),
            origins: Vec::new(),
            origin_ids: foldhash::HashMap::default(),
            origin_names: Vec::new(),
            own_marks: Vec::new(),
            told: Vec::new(),
            marks: Vec::new(),
            last_frame: None,
            marks_sent: (0, 0),
        }
    }

    fn origin_id(&mut self, store: &Store, origin: &[u8]) -> usize {
        if let Some(&id) = self.origin_ids.get(origin) {
            return id;
        }
        let id = store.origin_id(origin);
        self.origin_ids.insert(origin.into(), id);
        self.origin(id);
        id
    }

    fn origin(&mut self, id: usize) -> &mut OriginMarks {
        if self.origins.len() <= id {
            self.origins.resize_with(id + 1, OriginMarks::default);
        }
        &mut self.origins[id]
    }

    fn origin_name(&mut self, store: &Store, id: usize) -> &[u8] {
        while self.origin_names.len() <= id {
            let name = store
                .origin_name(self.origin_names.len())
                .unwrap_or_default();
            self.origin_names.push(name);
        }
        &self.origin_names[id]
    }

    /// Until when the neighbour's watermark for origin `id` counts as
    /// still moving (its tree delivers, if late), if it does now.
    fn moving_until(&self, id: usize, now: Instant) -> Option<Instant> {
        self.origins
            .get(id)
            .and_then(|state| state.told_moved)
            .map(|moved| moved + STILL_MOVING)
            .filter(|&until| now < until)
    }

    /// Whether the neighbour said it holds a report held back.
    fn covered(&self, report: &HeldReport) -> bool {
        self.told
            .get(report.origin)
            .is_some_and(|told| told.covers(report.stamp))
    }

    /// Decides the next frame: the link-state lines in `control` (taken),
    /// held reports whose wait is over, then what the store accepted since
    /// the last look: a payload for the neighbours that are children in the
    /// report's tree, a hold for the others; then watermarks that moved.
    /// Builds the frame in `frame` (see `wire::start_frame`), calling `sent`
    /// with each AT line whose payload is put in it.
    pub fn poll(
        &mut self,
        store: &Store,
        routes: &Routes,
        now: Instant,
        control: &mut Vec<u8>,
        frame: &mut Vec<u8>,
        mut sent: impl FnMut(&[u8]),
    ) -> Step {
        let leave_out = (self.index, self.link_up_at);
        self.pending.clear();
        store.told(self.index, &mut self.told);
        for id in 0..self.told.len() {
            let to = self.told[id].to;
            let state = self.origin(id);
            if to > state.told_to {
                state.told_to = to;
                state.told_moved = Some(now);
            }
        }
        // Held reports the neighbour now holds are dropped; those whose
        // wait is over go now, unless superseded or sent to us meanwhile,
        // or the neighbour is still catching up on their origin's reports.
        let mut waiting_on = None;
        while self.pending.len() < BATCH / 2
            && let Some((report, until)) = self.held.front()
        {
            let covered = self.covered(&report);
            if !covered && until > now {
                break;
            }
            if !covered
                && now < until + MAX_WAIT_ON
                && self.held.len() >= BUSY_HELD
                && let Some(moving) = self.moving_until(report.origin, now)
            {
                waiting_on = Some(moving.min(until + MAX_WAIT_ON));
                break;
            }
            self.held.pop_front();
            self.origin(report.origin).release(report.stamp);
            if !covered {
                store.still_to_send(report.picked, leave_out, &mut self.pending);
            }
        }
        let mut behind = waiting_on.is_none() && self.held.due(now);
        self.scanned.clear();
        let Scan { reached, more } = store.since_marked(
            self.next,
            leave_out,
            BATCH - self.pending.len(),
            &mut self.scanned,
            &mut self.own_marks,
        );
        behind |= more;
        self.decisions.clear();
        let mut updates = self.pending.len();
        let scanned = std::mem::take(&mut self.scanned);
        for (picked, at_line) in scanned.iter() {
            // A large catch-up (what the store held before the link came
            // up) is sent whole: holding it back would only make it longer.
            // A live report is routed by the tree even when the link is
            // behind: under load the links are behind, and sending every
            // lazy link its payload then would only add to the load.
            let live = picked.seq > self.link_up_at;
            let origin = wire::origin(at_line);
            let lazy = (live || !more)
                && routes.wait(origin, picked.came_from(), self.index) == Wait::Hold;
            let decision = if lazy {
                let report = HeldReport {
                    picked,
                    origin: self.origin_id(store, origin),
                    stamp: store::stamp(at_line, picked.client_time),
                };
                if self.covered(&report) {
                    Decision::Skip
                } else if self.held.len() < MAX_HELD {
                    self.origin(report.origin).hold(report.stamp);
                    self.held.push(report, now + LAZY_HOLD);
                    Decision::Skip
                } else {
                    Decision::Payload
                }
            } else {
                Decision::Payload
            };
            if decision == Decision::Payload {
                updates += 1;
            }
            self.decisions.push(decision);
        }
        self.scanned = scanned;
        self.next = self.next.max(reached);
        self.complete = self
            .held
            .oldest()
            .map_or(self.next, |oldest| oldest.picked.seq.saturating_sub(1));
        // Watermarks, once the scan reached the head: the neighbour will
        // then have everything we hold but what is held back for it.
        let wanted = !more && self.moved_marks(store, routes);
        let marks_due = wanted
            && self
                .last_frame
                .is_none_or(|last| now >= last + MARK_INTERVAL);
        // How far the neighbour is complete goes with the next frame of
        // reports, or else with the next heartbeat: a frame for that alone
        // costs both ends a turn (a write, a read, a cursor record), and on
        // a quiet link that would be a turn per report, back the way the
        // report came, in the way of its next hops. A cursor that lags only
        // means a few more reports sent again after a reconnection.
        if updates > 0 || marks_due || !control.is_empty() {
            wire::start_frame(frame);
            frame.append(control);
            for (picked, at_line) in self.pending.iter() {
                sent(at_line);
                wire::push_update(frame, picked.seq, at_line);
            }
            for ((picked, at_line), decision) in self.scanned.iter().zip(&self.decisions) {
                if *decision == Decision::Payload {
                    sent(at_line);
                    wire::push_update(frame, picked.seq, at_line);
                }
            }
            if !more {
                self.push_marks(frame);
            }
            wire::push_complete(frame, self.complete);
            self.confirmed = self.complete;
            self.last_frame = Some(now);
            let then = if behind {
                Then::Hurry
            } else if updates >= BUSY_FRAME {
                Then::Linger(now + LINGER)
            } else {
                Then::Poll
            };
            return Step::Frame { updates, then };
        }
        if behind {
            return Step::Again;
        }
        let marks_at = self
            .last_frame
            .filter(|_| wanted)
            .map(|last| last + MARK_INTERVAL);
        let held_at = waiting_on.or_else(|| self.held.next_due());
        Step::Idle {
            until: held_at.into_iter().chain(marks_at).min(),
        }
    }

    /// Works out the watermark lines that moved since last sent (into
    /// `marks`); returns whether one is about an origin for which the
    /// neighbour holds payloads back for us, which is worth a frame alone.
    fn moved_marks(&mut self, store: &Store, routes: &Routes) -> bool {
        self.marks.clear();
        let mut wanted = false;
        for id in 0..self.own_marks.len() {
            let held = self.own_marks[id];
            if held.is_empty() {
                continue;
            }
            let state = self.origin(id);
            // The neighbour has all of it but what is held back for it.
            let vouched = state
                .lowest
                .front()
                .map_or(held.to, |&lowest| held.to.min(lowest - 1))
                .max(held.from);
            if (held, vouched) == state.sent {
                continue;
            }
            self.marks.push((id, held, vouched));
            let index = self.index;
            let name = self.origin_name(store, id);
            wanted = wanted || routes.lazy(name, index);
        }
        wanted
    }

    /// Puts the moved watermarks in `frame`, as sent.
    fn push_marks(&mut self, frame: &mut Vec<u8>) {
        for &(id, held, vouched) in &self.marks {
            let before = frame.len();
            wire::push_mark(frame, &self.origin_names[id], held, vouched);
            self.marks_sent.0 += 1;
            self.marks_sent.1 += (frame.len() - before) as u64;
            self.origins[id].sent = (held, vouched);
        }
        self.marks.clear();
    }

    /// The heartbeat's frame, in `frame`: how far the neighbour is
    /// complete, if that moved since it was last told, or else nothing
    /// (an empty frame still tells it the link lives).
    pub fn heartbeat(&mut self, frame: &mut Vec<u8>) {
        wire::start_frame(frame);
        if self.complete > self.confirmed {
            wire::push_complete(frame, self.complete);
        }
        self.confirmed = self.complete;
    }

    /// How far the neighbour is complete as of the last poll: every report
    /// numbered up to this is sent, or known to be held there.
    pub fn complete(&self) -> u64 {
        self.complete
    }

    /// The watermark lines put in frames since the last call, and their
    /// bytes.
    pub fn take_marks_sent(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.marks_sent)
    }

    /// How many reports the link holds back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The receiving side of one link: neighbour `index`, run `run`.
pub struct Receiver {
    index: usize,
    run: u64,
}

impl Receiver {
    pub fn new(index: usize, run: u64) -> Self {
        Self { index, run }
    }

    /// The neighbour's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Applies one frame's payload to the replica, announces what it
    /// stored, and moves the neighbour's cursor to the frame's last number.
    /// Calls `received` with each update's AT line and `malformed` with
    /// each line that is not a payload line. Returns the frame's last
    /// number, if it had one.
    /// Link-state lines (`L`) go to `control`, watermarks (`W`) to the
    /// store.
    pub fn frame(
        &self,
        replica: &Replica,
        payload: &[u8],
        mut received: impl FnMut(&[u8], Applied),
        mut control: impl FnMut(&[u8]),
        mut malformed: impl FnMut(&[u8]),
    ) -> Option<u64> {
        replica
            .store()
            .warm(payload.split(|&b| b == b'\n').filter_map(frame_client_id));
        let mut complete = None;
        for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match line.first() {
                Some(b'L') => {
                    control(line);
                    continue;
                }
                Some(b'W') => {
                    match wire::parse_mark(line) {
                        Some((origin, held, vouched)) => replica.store().marked(
                            Source::Neighbour(self.index),
                            origin,
                            held,
                            vouched,
                        ),
                        None => malformed(line),
                    }
                    continue;
                }
                _ => {}
            }
            match self.line(replica, line, &mut received) {
                Some(seq) => complete = Some(seq),
                None => malformed(line),
            }
        }
        replica.announce();
        if let Some(seq) = complete {
            replica.advance_cursor(self.index, self.run, seq);
        }
        complete
    }

    /// Applies one payload line; returns its sequence number, or `None` if
    /// the line is malformed.
    fn line(
        &self,
        replica: &Replica,
        line: &[u8],
        received: &mut impl FnMut(&[u8], Applied),
    ) -> Option<u64> {
        let Some((seq, at_line)) = update_parts(line) else {
            return match parse_payload_line(line)? {
                PayloadLine::Complete { seq } => Some(seq),
                PayloadLine::Update { .. } => None,
            };
        };
        // One lookup of the client: a copy of a report we hold (the same
        // line from another neighbour first, the usual fate of a copy over a
        // link outside the tree) only marks who sent it, since the line was
        // checked when it was first stored; any other line is checked here,
        // under the same lookup, and kept if newer.
        let applied = replica.apply(at_line, Source::Neighbour(self.index), || {
            parse_at_line(at_line)
                .filter(|_| line.last() != Some(&b' '))
                .map(|at| at.client_time)
        });
        if applied == Applied::Malformed {
            return None;
        }
        received(at_line, applied);
        Some(seq)
    }
}

/// The payloads a link holds back, in the order it scanned them: numbers
/// and due times only increase, so the first held is also the first due
/// and the oldest. A report is a [`Picked`], ordered by number (a plain
/// number in the tests).
pub(crate) struct Held<R = Picked> {
    queue: VecDeque<(R, Instant)>,
}

impl<R> Default for Held<R> {
    fn default() -> Self {
        Held {
            queue: VecDeque::new(),
        }
    }
}

impl<R: Copy + Ord> Held<R> {
    fn len(&self) -> usize {
        self.queue.len()
    }

    /// Holds `report`, newer than any held, until `until`.
    fn push(&mut self, report: R, until: Instant) {
        self.queue.push_back((report, until));
    }

    /// The oldest report held, and when its wait is over.
    fn front(&self) -> Option<(R, Instant)> {
        self.queue.front().copied()
    }

    fn pop_front(&mut self) {
        self.queue.pop_front();
    }

    /// Takes a report whose wait is over, the oldest first.
    #[cfg(test)]
    fn pop_due(&mut self, now: Instant) -> Option<R> {
        match self.queue.front() {
            Some(&(report, until)) if until <= now => {
                self.queue.pop_front();
                Some(report)
            }
            _ => None,
        }
    }

    /// Whether some report's wait is over.
    fn due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|until| until <= now)
    }

    /// When the next wait is over.
    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|&(_, until)| until)
    }

    /// The oldest report held.
    fn oldest(&self) -> Option<R> {
        self.queue.front().map(|&(report, _)| report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::time::Timestamp;

    /// Payloads come due in order, and the oldest held still bounds what
    /// the neighbour is complete up to.
    #[test]
    fn held_reports_come_due_in_order_and_the_oldest_bounds_complete() {
        let start = Instant::now();
        let mut held = Held::<u64>::default();
        assert_eq!(
            (held.oldest(), held.next_due(), held.len()),
            (None, None, 0)
        );
        held.push(1, start + LAZY_HOLD);
        held.push(2, start + LAZY_HOLD + Duration::from_millis(1));
        assert_eq!((held.len(), held.oldest()), (2, Some(1)));
        assert_eq!(held.next_due(), Some(start + LAZY_HOLD));
        assert!(!held.due(start));
        assert_eq!(held.pop_due(start), None);
        let end = start + LAZY_HOLD;
        assert_eq!(held.pop_due(end), Some(1));
        assert_eq!(held.pop_due(end), None, "2 is not due yet");
        assert_eq!(held.oldest(), Some(2));
        assert_eq!(held.pop_due(end + LAZY_HOLD), Some(2));
        assert_eq!(held.oldest(), None);
    }

    /// Polls `sender` with no link-state lines waiting.
    fn poll(
        sender: &mut Sender,
        store: &Store,
        routes: &Routes,
        now: Instant,
        frame: &mut Vec<u8>,
    ) -> Step {
        sender.poll(store, routes, now, &mut Vec::new(), frame, |_| {})
    }

    fn triangle_routes_at_a() -> Routes {
        let herd = [("A", vec!["B", "C"]), ("B", vec!["C"]), ("C", vec![])];
        Routes::configured("A", &["B", "C"], &herd)
    }

    fn at_line(origin: &str, client: &str, time: &str) -> String {
        format!("AT {origin} +0.000000000 {client} +1+1 {time}")
    }

    fn lines(frame: &[u8], kind: u8) -> Vec<String> {
        wire::payload(frame)
            .split(|&b| b == b'\n')
            .filter(|l| l.first() == Some(&kind))
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    /// Applies a frame of `lines` from neighbour `index` at `replica`.
    fn receive(replica: &Replica, index: usize, lines: &str) {
        Receiver::new(index, 9).frame(
            replica,
            lines.as_bytes(),
            |_, _| {},
            |_| {},
            |_| panic!("well-formed"),
        );
    }

    /// At A of the triangle A, B, C, a report made at B is held back from
    /// C (A-C is outside B's tree, both ways); its payload goes when the
    /// hold is over, unless C's watermark for B reached it meanwhile.
    #[test]
    fn a_lazy_link_holds_the_payload_until_the_neighbours_watermark_reaches_it() {
        let routes = triangle_routes_at_a();
        let replica = Replica::in_memory(vec!["B".into(), "C".into()], 1);
        let store = replica.store();
        let t0 = Instant::now();
        let mut frame = Vec::new();
        let mut to_c = Sender::new(1, 0, 0);
        let from_b = at_line("B", "kiwi", "5");
        receive(&replica, 0, &format!("U 1 {from_b}\n"));
        let step = poll(&mut to_c, store, &routes, t0, &mut frame);
        assert_eq!(
            step,
            Step::Idle {
                until: Some(t0 + LAZY_HOLD)
            }
        );
        assert_eq!(to_c.held(), 1);
        assert_eq!(to_c.complete(), 0, "not complete past a held report");
        let step = poll(&mut to_c, store, &routes, t0 + LAZY_HOLD, &mut frame);
        assert_eq!(
            step,
            Step::Frame {
                updates: 1,
                then: Then::Poll
            }
        );
        assert_eq!(lines(&frame, b'U'), [format!("U 1 {from_b}")]);

        // Again, but B vouches that A holds it, and C says it holds it too
        // before the hold is over.
        let t1 = t0 + LAZY_HOLD * 2;
        let from_b = at_line("B", "pear", "6");
        receive(
            &replica,
            0,
            &format!("U 2 {from_b}\nW B 0 6000000000 6000000000\n"),
        );
        poll(&mut to_c, store, &routes, t1, &mut frame);
        // A tells C how far it holds B's reports; C's hold for A may end.
        // Having held the payload back, A vouches only below it.
        assert_eq!(lines(&frame, b'W'), ["W B 0 6000000000 5999999999"]);
        assert!(lines(&frame, b'U').is_empty());
        receive(&replica, 1, "W B 0 6000000000 0\n");
        let step = poll(&mut to_c, store, &routes, t1 + LINGER, &mut frame);
        assert_eq!(to_c.held(), 0, "dropped at once");
        assert_eq!(
            step,
            Step::Idle {
                until: Some(t1 + MARK_INTERVAL)
            },
            "the watermark waits its turn"
        );
        let step = poll(&mut to_c, store, &routes, t1 + MARK_INTERVAL, &mut frame);
        assert!(matches!(step, Step::Frame { updates: 0, .. }), "{step:?}");
        assert_eq!(lines(&frame, b'W'), ["W B 0 6000000000 6000000000"]);
        let step = poll(&mut to_c, store, &routes, t1 + LAZY_HOLD, &mut frame);
        assert_eq!(step, Step::Idle { until: None });
        assert_eq!(to_c.complete(), 2);
    }

    /// A report the neighbour's watermark already covers is neither sent
    /// nor held.
    #[test]
    fn a_report_under_the_neighbours_watermark_is_not_held() {
        let routes = triangle_routes_at_a();
        let replica = Replica::in_memory(vec!["B".into(), "C".into()], 1);
        receive(&replica, 1, "W B 0 9000000000 0\n");
        receive(&replica, 0, &format!("U 1 {}\n", at_line("B", "kiwi", "5")));
        let now = Instant::now();
        let mut frame = Vec::new();
        let mut to_c = Sender::new(1, 0, 0);
        let step = poll(&mut to_c, replica.store(), &routes, now, &mut frame);
        assert_eq!(step, Step::Idle { until: None });
        assert_eq!((to_c.held(), to_c.complete()), (0, 1));
    }

    /// A frame down the tree carries, after its payloads, the watermark
    /// they complete: the origin's own, as far as its clients' reports go.
    #[test]
    fn payloads_down_the_tree_carry_their_watermark() {
        let routes = triangle_routes_at_a();
        let replica = Replica::in_memory(vec!["B".into(), "C".into()], 1);
        let time = Timestamp::parse(b"7").unwrap();
        let mut line = Vec::new();
        for received in [7_000_000_005, 7_000_000_001] {
            replica.accept_client(received, time, &mut line, |received, out| {
                out.clear();
                let skew = crate::protocol::time::SkewText::new(received, time);
                out.extend_from_slice(b"AT A ");
                out.extend_from_slice(skew.as_bytes());
                out.extend_from_slice(format!(" c{received} +1+1 7").as_bytes());
                0..out.len()
            });
        }
        let mut frame = Vec::new();
        let mut to_b = Sender::new(0, 0, 0);
        poll(
            &mut to_b,
            replica.store(),
            &routes,
            Instant::now(),
            &mut frame,
        );
        assert_eq!(lines(&frame, b'U').len(), 2);
        // The second report's clock went back: it was stamped after the
        // first all the same.
        assert_eq!(
            lines(&frame, b'W'),
            ["W A 7000000004 7000000006 7000000006"]
        );
        let text = String::from_utf8_lossy(&frame).into_owned();
        assert!(
            text.ends_with("W A 7000000004 7000000006 7000000006\nC 2\n"),
            "{text}"
        );
    }

    /// Link-state lines go out in the next frame, before anything else.
    #[test]
    fn control_lines_lead_the_next_frame() {
        let routes = triangle_routes_at_a();
        let replica = Replica::in_memory(vec!["B".into(), "C".into()], 1);
        let (mut frame, mut control) = (Vec::new(), b"L A 3 B\n".to_vec());
        let mut to_b = Sender::new(0, 0, 0);
        let now = Instant::now();
        let step = to_b.poll(
            replica.store(),
            &routes,
            now,
            &mut control,
            &mut frame,
            |_| {},
        );
        assert_eq!(
            step,
            Step::Frame {
                updates: 0,
                then: Then::Poll
            }
        );
        assert!(wire::payload(&frame).starts_with(b"L A 3 B\n"));
        assert!(control.is_empty(), "taken");
        let mut seen = Vec::new();
        Receiver::new(0, 9).frame(
            &replica,
            wire::payload(&frame),
            |_, _| {},
            |l| seen.push(l.to_vec()),
            |_| {},
        );
        assert_eq!(seen, [b"L A 3 B".to_vec()]);
    }

    /// A report made here goes down its own tree at once, and a backlog
    /// (catch-up) is sent whole, in frames of at most `BATCH`.
    #[test]
    fn own_reports_go_at_once_and_a_backlog_in_full_frames() {
        let routes = triangle_routes_at_a();
        let replica = Replica::in_memory(vec!["B".into(), "C".into()], 1);
        for i in 0..BATCH + 10 {
            let line = at_line("A", &format!("c{i}"), "5");
            assert!(
                replica
                    .accept(
                        line.as_bytes(),
                        Timestamp::parse(b"5").unwrap(),
                        Source::Client
                    )
                    .stored()
                    .is_some()
            );
        }
        let now = Instant::now();
        let mut frame = Vec::new();
        let mut sent = 0;
        let mut to_b = Sender::new(0, 0, replica.store().head());
        let mut none = Vec::new();
        let step = to_b.poll(replica.store(), &routes, now, &mut none, &mut frame, |_| {
            sent += 1
        });
        assert_eq!(
            step,
            Step::Frame {
                updates: BATCH,
                then: Then::Hurry
            }
        );
        assert_eq!(sent, BATCH);
        let step = poll(&mut to_b, replica.store(), &routes, now, &mut frame);
        assert_eq!(
            step,
            Step::Frame {
                updates: 10,
                then: Then::Poll
            }
        );
        assert!(wire::payload(&frame).ends_with(format!("C {}\n", BATCH + 10).as_bytes()));
        assert_eq!(
            poll(&mut to_b, replica.store(), &routes, now, &mut frame),
            Step::Idle { until: None }
        );
    }

    #[test]
    fn a_cursor_is_honoured_only_for_our_run_and_within_our_sequence() {
        assert_eq!(start_from(7, 10, 7, 12), 10);
        assert_eq!(start_from(6, 10, 7, 12), 0, "another run of ours");
        assert_eq!(start_from(7, 13, 7, 12), 0, "beyond our numbering");
    }

    #[test]
    fn a_received_frame_is_applied_and_moves_the_cursor() {
        let replica = Replica::in_memory(vec!["B".into()], 1);
        let receiver = Receiver::new(0, 9);
        assert_eq!(replica.cursor_for(0, 9).seq, 0);
        let payload = format!(
            "U 3 {}\nU 4 AT B nonsense\nU 5 {}\nC 7\n",
            at_line("B", "kiwi", "5"),
            at_line("B", "kiwi", "4"),
        );
        let (mut received, mut malformed) = (Vec::new(), Vec::new());
        let complete = receiver.frame(
            &replica,
            payload.as_bytes(),
            |line, applied| received.push((String::from_utf8_lossy(line).into_owned(), applied)),
            |_| panic!("no link-state lines"),
            |line| malformed.push(String::from_utf8_lossy(line).into_owned()),
        );
        assert_eq!(complete, Some(7));
        assert_eq!(malformed, vec!["U 4 AT B nonsense".to_owned()]);
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].1, Applied::Stored(1));
        assert_eq!(received[1].1, Applied::NotNewer);
        assert_eq!(replica.cursor_for(0, 9).seq, 7);
        assert_eq!(
            replica.store().get(b"kiwi").unwrap().client_time,
            Timestamp::parse(b"5").unwrap()
        );
    }
}

//! A deterministic, seeded, in-memory network of replicas that drives the
//! link logic (`link::Sender`, `link::Receiver`) exactly as the shells do,
//! without sockets, tasks or a clock: a discrete-event simulation in the
//! manner of raft-rs's test `Network` and chitchat's `ChannelTransport`.
//!
//! Each link direction carries frames in order (as TCP does) after a random
//! delay. Links are cut silently (frames vanish until the silence is
//! noticed, as with a dead network) and healed; servers crash (their
//! neighbours notice at once, as a closed connection tells them) and
//! restart from their log, or with their data folder lost. Each server runs
//! the link-state flooding of `topology` and routes over what it knows. [`Sim::run`] plays a schedule to
//! its end, heals everything, lets the herd settle, and returns what it
//! saw; [`Outcome::check`] says whether the herd converged without loops.
//! Everything random comes from the seed, so a failing seed replays.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::link::{Receiver, Sender, Step, Then, start_from};
use super::routes::Routes;
use super::topology::{Learned, Topology};
use super::wire;
use crate::config::shape::random_connected;
use crate::protocol::time::{SkewText, Timestamp};
use crate::replica::store::{Applied, Batch, Bounds, Source, Store};
use crate::replica::{Cursor, Replica};

/// The shape and the faults of one simulated run.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    /// Server count and the links between them (by index, each once).
    pub servers: usize,
    pub links: Vec<(usize, usize)>,
    /// Client reports over the run, each at a random live server.
    pub reports: usize,
    /// Distinct clients the reports are about.
    pub clients: usize,
    /// Link cuts (each healed later) and server crashes (each restarted).
    pub cuts: usize,
    pub crashes: usize,
    /// Whether a crash may lose the server's data folder (it then comes
    /// back empty, with a new run id, and what only it held is gone).
    pub lose_data: bool,
    /// How long the faults and reports go on, before everything heals.
    pub span: Duration,
    /// The longest a frame takes over a link.
    pub max_delay: Duration,
    /// How long a silently cut link takes to be noticed.
    pub silence: Duration,
    /// How long a client is kept after its newest report, in ticks of the
    /// run's clock (one per report); 0 keeps clients for ever.
    pub ttl: u64,
    /// The most clients a server takes new ones from its clients up to
    /// (neighbours' reports up to that times the servers, as a server
    /// does); 0: no ceiling.
    pub max_clients: usize,
}

impl Schedule {
    /// A random schedule over a random connected herd of 2 to `max_servers`
    /// servers.
    pub fn random(seed: u64, max_servers: usize) -> Self {
        Self::random_sized(seed, 2, max_servers)
    }

    /// A random schedule over a random connected herd of `min_servers` to
    /// `max_servers` servers.
    pub fn random_sized(seed: u64, min_servers: usize, max_servers: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let servers = rng.random_range(min_servers.max(2)..=max_servers.max(min_servers).max(2));
        let degree = rng.random_range(1.0..3.0);
        let mut schedule = Self {
            seed,
            servers,
            links: random_connected(&mut rng, servers, degree),
            reports: rng.random_range(1..60),
            clients: rng.random_range(1..12),
            cuts: rng.random_range(0..4),
            crashes: rng.random_range(0..3),
            lose_data: rng.random_bool(0.3),
            span: Duration::from_millis(rng.random_range(10..400)),
            max_delay: Duration::from_micros(rng.random_range(20..3000)),
            silence: Duration::from_millis(rng.random_range(50..500)),
            ttl: 0,
            max_clients: 0,
        };
        // Drawn last, so that the other choices of a seed stay as they were.
        if rng.random_bool(0.3) {
            schedule.ttl = rng.random_range(2..40);
        }
        // A server that lost its data folder takes its clients in again,
        // past what the herd's ceiling counts on (docs/storage.md), so
        // ceilings are played without.
        if !schedule.lose_data && rng.random_bool(0.3) {
            schedule.max_clients = rng.random_range(1..=schedule.clients);
        }
        schedule
    }

    /// The bounds every server's store is held to, as `server::bounds_of`
    /// sets them.
    fn bounds(&self) -> Bounds {
        Bounds {
            ttl_secs: self.ttl,
            max_clients: self.max_clients,
            max_clients_from_neighbours: self.max_clients * self.servers,
        }
    }
}

/// What one run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    /// Frames delivered, the update lines (payloads) they carried, and the
    /// bytes of watermark (`W`) and link-state (`L`) lines.
    pub frames: u64,
    pub update_lines: u64,
    pub watermark_bytes: u64,
    pub link_state_bytes: u64,
    /// For each report accepted from a client and each other server that
    /// stored it, how long after its acceptance it was stored there.
    pub delays: Vec<Duration>,
    /// Reports accepted from clients.
    pub accepted: u64,
    /// Per server, how often it stored each report (client, time): more
    /// than once would mean a report came round again after being
    /// superseded or kept.
    pub stored_twice: Vec<String>,
    /// Servers that ended without some client's newest surviving report,
    /// as "server: client wants time, has time".
    pub behind: Vec<String>,
    /// Whether the herd went quiet after the faults healed.
    pub settled: bool,
    pub servers: usize,
}

impl Outcome {
    /// `Err` with the seed and what went wrong, if the herd did not converge
    /// or a report went round in a loop.
    pub fn check(&self) -> Result<(), String> {
        if !self.settled {
            return Err(format!("seed {}: the herd never went quiet", self.seed));
        }
        if let Some(first) = self.behind.first() {
            return Err(format!(
                "seed {}: not converged ({} behind), e.g. {first}",
                self.seed,
                self.behind.len()
            ));
        }
        if let Some(first) = self.stored_twice.first() {
            return Err(format!(
                "seed {}: a report stored twice: {first}",
                self.seed
            ));
        }
        Ok(())
    }
}

/// One simulated server.
struct Node {
    name: String,
    replica: Replica,
    topology: Topology,
    routes: Routes,
    /// The topology changed since `routes` was worked out.
    stale: bool,
    alive: bool,
    /// (client, time) -> how often stored.
    stored: HashMap<(String, String), u32>,
}

/// One direction of a link: `from` sends to `to`.
struct Direction {
    from: usize,
    to: usize,
    /// The neighbour index of `to` at `from`, and of `from` at `to`.
    at_from: usize,
    at_to: usize,
    /// The connection, while up: sender and receiver state, and frames in
    /// flight (when each arrives).
    session: Option<Session>,
    /// Link-state lines waiting for this direction's sender.
    control: Vec<u8>,
    /// Bumped on every cut, so that events of an old session are ignored.
    epoch: u64,
    next_poll: Option<Instant>,
}

struct Session {
    sender: Sender,
    receiver: Receiver,
    in_flight: VecDeque<(Instant, Vec<u8>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Report { server: usize },
    Notice { link: usize, epoch: u64 },
    Poll { direction: usize, epoch: u64 },
    Deliver { direction: usize, epoch: u64 },
    Heartbeat,
    Cut { link: usize },
    Heal { link: usize },
    Crash { server: usize },
    Restart { server: usize, lose: bool },
}

/// The network and its clock.
pub struct Sim {
    rng: StdRng,
    start: Instant,
    now: Instant,
    nodes: Vec<Node>,
    directions: Vec<Direction>,
    /// Link index -> its two directions; whether it is cut.
    links: Vec<([usize; 2], bool)>,
    queue: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    order: u64,
    schedule: Schedule,
    frame: Vec<u8>,
    outcome: Outcome,
    /// Client name -> the time of the newest report accepted from a
    /// client, where, and when by the run's clock it was received.
    newest: BTreeMap<String, (Timestamp, usize, u64)>,
    /// Times handed out to reports, per client.
    clock: u64,
    /// The link-state version clock, shared as a wall clock would be.
    versions: u64,
    /// When each report (by its AT line) was accepted from a client.
    accepted_at: HashMap<Vec<u8>, Instant>,
    /// A fault played before the schedule, and how long before it.
    first: Option<Event>,
    lead: Duration,
    /// Servers and links the first fault took for good: not healed.
    for_good: (Option<usize>, Option<usize>),
}

/// How often a link with nothing to say sends a heartbeat frame.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a herd must stay quiet (no report moving anywhere) to count as
/// settled: longer than a hold and a few heartbeats.
const QUIET: Duration = Duration::from_millis(500);

impl Sim {
    pub fn new(schedule: Schedule) -> Self {
        let names: Vec<String> = (0..schedule.servers).map(|i| format!("S{i:02}")).collect();
        let mut adjacent = vec![Vec::new(); schedule.servers];
        for &(a, b) in &schedule.links {
            adjacent[a].push(b);
            adjacent[b].push(a);
        }
        let mut rng = StdRng::seed_from_u64(schedule.seed ^ 0x5eed);
        let nodes = (0..schedule.servers)
            .map(|i| {
                let theirs: Vec<String> = adjacent[i].iter().map(|&j| names[j].clone()).collect();
                let topology = Topology::new(&names[i], theirs.clone());
                let store = Store::with_bounds(schedule.bounds());
                Node {
                    name: names[i].clone(),
                    replica: Replica::with(
                        store,
                        None,
                        rng.random::<u64>() | 1,
                        theirs,
                        &HashMap::new(),
                    ),
                    routes: topology.routes(),
                    stale: false,
                    topology,
                    alive: true,
                    stored: HashMap::new(),
                }
            })
            .collect();
        let mut directions = Vec::new();
        let mut links = Vec::new();
        for &(a, b) in &schedule.links {
            let index = |x: usize, y: usize| {
                adjacent[x]
                    .iter()
                    .position(|&n| n == y)
                    .expect("links are adjacent")
            };
            let first = directions.len();
            for (from, to) in [(a, b), (b, a)] {
                directions.push(Direction {
                    from,
                    to,
                    at_from: index(from, to),
                    at_to: index(to, from),
                    session: None,
                    control: Vec::new(),
                    epoch: 0,
                    next_poll: None,
                });
            }
            links.push(([first, first + 1], false));
        }
        let start = Instant::now();
        let outcome = Outcome {
            seed: schedule.seed,
            servers: schedule.servers,
            ..Outcome::default()
        };
        Self {
            rng,
            start,
            now: start,
            nodes,
            directions,
            links,
            queue: BinaryHeap::new(),
            order: 0,
            schedule,
            frame: Vec::new(),
            outcome,
            newest: BTreeMap::new(),
            clock: 1,
            versions: 0,
            accepted_at: HashMap::new(),
            first: None,
            lead: Duration::ZERO,
            for_good: (None, None),
        }
    }

    /// Lets the herd come up for `lead` before the schedule's reports and
    /// faults begin (reports fall in the span after it).
    pub fn settle_first(&mut self, lead: Duration) {
        self.lead = lead;
    }

    /// Kills server `server` (for good) `lead` before the reports begin.
    pub fn kill_first(&mut self, server: usize, lead: Duration) {
        self.lead = lead;
        self.first = Some(Event::Crash { server });
    }

    /// Cuts link `link` silently (for good) `lead` before the reports begin.
    pub fn cut_first(&mut self, link: usize, lead: Duration) {
        self.lead = lead;
        self.first = Some(Event::Cut { link });
    }

    fn at(&mut self, when: Instant, event: Event) {
        self.order += 1;
        self.queue.push(Reverse((when, self.order, event)));
    }

    fn random_time(&mut self) -> Instant {
        let span = self.schedule.span.as_micros() as u64;
        self.start + self.lead + Duration::from_micros(self.rng.random_range(0..=span))
    }

    /// Plays the schedule, heals everything, lets the herd settle, and
    /// checks the end state.
    pub fn run(mut self) -> Outcome {
        for d in 0..self.directions.len() {
            self.connect(d);
        }
        if let Some(first) = self.first {
            match first {
                Event::Crash { server } => self.for_good.0 = Some(server),
                Event::Cut { link } => self.for_good.1 = Some(link),
                _ => {}
            }
            self.at(self.start + self.lead / 2, first);
        }
        for _ in 0..self.schedule.reports {
            let when = self.random_time();
            let server = self.rng.random_range(0..self.schedule.servers);
            self.at(when, Event::Report { server });
        }
        for _ in 0..self.schedule.cuts {
            if self.links.is_empty() {
                break;
            }
            let link = self.rng.random_range(0..self.links.len());
            let (cut, heal) = (self.random_time(), self.random_time());
            self.at(cut.min(heal), Event::Cut { link });
            self.at(cut.max(heal), Event::Heal { link });
        }
        for _ in 0..self.schedule.crashes {
            let server = self.rng.random_range(0..self.schedule.servers);
            let (crash, back) = (self.random_time(), self.random_time());
            let lose = self.schedule.lose_data && self.rng.random_bool(0.5);
            self.at(crash.min(back), Event::Crash { server });
            self.at(crash.max(back), Event::Restart { server, lose });
        }
        self.at(self.start + HEARTBEAT, Event::Heartbeat);
        // After the span, everything heals; the herd then has a while to
        // settle (holds, heartbeats carrying cursors, reconnections).
        let end = self.start + self.lead + self.schedule.span;
        let settle = end + Duration::from_secs(2);
        let mut quiet_since = None;
        while let Some(Reverse((when, _, event))) = self.queue.pop() {
            if when > settle {
                break;
            }
            self.now = when;
            if when >= end {
                self.heal_everything();
            }
            let busy = self.handle(event);
            if busy {
                quiet_since = None;
            } else if when >= end && quiet_since.is_none() {
                quiet_since = Some(when);
            }
            // Quiet for a while after everything healed: settled.
            if quiet_since.is_some_and(|since| when - since > QUIET) {
                break;
            }
        }
        self.outcome.settled = quiet_since.is_some();
        self.finish()
    }

    fn heal_everything(&mut self) {
        for server in 0..self.nodes.len() {
            if !self.nodes[server].alive && self.for_good.0 != Some(server) {
                self.restart(server, false);
            }
        }
        for link in 0..self.links.len() {
            if self.links[link].1 && self.for_good.1 != Some(link) {
                self.heal(link);
            }
        }
    }

    /// Tells every server the run's clock (reports are received at their
    /// client time: the skew is 0), as each server's own clock would, and
    /// sweeps their stores every few reports.
    fn tell_the_time(&mut self) {
        if self.schedule.ttl == 0 {
            return;
        }
        let sweep = self.clock.is_multiple_of(5);
        for node in &self.nodes {
            let store = node.replica.store();
            store.set_now(self.clock);
            if sweep {
                let mut chunk = 0;
                while store.sweep(chunk).is_some() {
                    chunk += 1;
                }
            }
        }
    }

    /// Whether a report received at `received` (by the run's clock) has
    /// expired by now.
    fn expired(&self, received: u64) -> bool {
        self.schedule.ttl > 0 && received < self.clock.saturating_sub(self.schedule.ttl)
    }

    /// Handles one event; returns whether it moved any report.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Report { server } => {
                if !self.nodes[server].alive {
                    return false;
                }
                let client = format!("c{}", self.rng.random_range(0..self.schedule.clients));
                // Mostly newer times, now and then an older one. Not where
                // clients expire: an older time received later would outlive
                // newer ones, and could come back where they expired.
                let time = if self.schedule.ttl == 0 && self.rng.random_bool(0.1) {
                    self.rng.random_range(1..=self.clock)
                } else {
                    self.clock += 1;
                    self.clock
                };
                let time_text = format!("{time}.000000000");
                let client_time = Timestamp::parse(time_text.as_bytes()).expect("a valid time");
                self.tell_the_time();
                // Received now, by the run's clock, as a server's client
                // path does: at or after the client time.
                let received = i128::from(self.clock) * 1_000_000_000;
                let node = &mut self.nodes[server];
                let mut line = Vec::new();
                let (_, applied) = node.replica.accept_client(
                    received,
                    client_time,
                    &mut line,
                    |received, out| {
                        let skew = SkewText::new(received, client_time);
                        let skew = String::from_utf8_lossy(skew.as_bytes());
                        out.extend_from_slice(
                            format!("AT {} {skew} {client} +1+1 {time_text}", node.name).as_bytes(),
                        );
                        0..out.len()
                    },
                );
                if let Applied::Stored(_) = applied {
                    self.outcome.accepted += 1;
                    self.accepted_at.insert(line, self.now);
                    *node.stored.entry((client.clone(), time_text)).or_default() += 1;
                    let known =
                        self.newest
                            .entry(client)
                            .or_insert((client_time, server, self.clock));
                    if client_time > known.0 {
                        *known = (client_time, server, self.clock);
                    }
                }
                self.announce(server);
                true
            }
            Event::Poll { direction, epoch } => {
                let d = &self.directions[direction];
                if d.epoch != epoch || d.next_poll != Some(self.now) {
                    return false;
                }
                self.directions[direction].next_poll = None;
                self.poll(direction)
            }
            Event::Deliver { direction, epoch } => {
                if self.directions[direction].epoch != epoch {
                    return false;
                }
                self.deliver(direction)
            }
            Event::Heartbeat => {
                for direction in 0..self.directions.len() {
                    let epoch = self.directions[direction].epoch;
                    if let Some(session) = &mut self.directions[direction].session {
                        session.sender.heartbeat(&mut self.frame);
                        let frame = std::mem::take(&mut self.frame);
                        self.send(direction, epoch, frame);
                    }
                }
                self.at(self.now + HEARTBEAT, Event::Heartbeat);
                false
            }
            Event::Cut { link } => {
                // Silent: frames vanish until the silence is noticed.
                if !self.links[link].1 {
                    self.links[link].1 = true;
                    let epoch = self.directions[self.links[link].0[0]].epoch;
                    self.at(
                        self.now + self.schedule.silence,
                        Event::Notice { link, epoch },
                    );
                }
                true
            }
            Event::Notice { link, epoch } => {
                if self.links[link].1 && self.directions[self.links[link].0[0]].epoch == epoch {
                    for d in self.links[link].0 {
                        self.disconnect(d);
                    }
                }
                true
            }
            Event::Heal { link } => {
                self.heal(link);
                true
            }
            Event::Crash { server } => {
                if self.nodes[server].alive {
                    self.nodes[server].alive = false;
                    for d in 0..self.directions.len() {
                        if self.directions[d].from == server || self.directions[d].to == server {
                            self.disconnect(d);
                        }
                    }
                }
                true
            }
            Event::Restart { server, lose } => {
                if !self.nodes[server].alive {
                    self.restart(server, lose);
                }
                true
            }
        }
    }

    fn heal(&mut self, link: usize) {
        self.links[link].1 = false;
        for d in self.links[link].0 {
            // A connection that lost frames in the cut is a new one now.
            self.disconnect(d);
            self.connect(d);
        }
    }

    /// Brings a server back: from its log (everything it accepted, and its
    /// cursors, as with `durability = "always"`), or with its data folder
    /// lost (empty, a new run id).
    fn restart(&mut self, server: usize, lose: bool) {
        let node = &mut self.nodes[server];
        let names = names_of(&node.replica);
        let store = Store::with_bounds(self.schedule.bounds());
        store.set_now(self.clock);
        node.replica = if lose {
            node.stored.clear();
            let run = self.rng.random::<u64>() | 1;
            Replica::with(store, None, run, names, &HashMap::new())
        } else {
            let old = &node.replica;
            let mut batch = Batch::new();
            let mut next = 0;
            loop {
                batch.clear();
                let reached = old.store().since(next, None, 4096, &mut batch).reached;
                for (picked, at_line) in batch.iter() {
                    let at = crate::protocol::parse_at_line(at_line).expect("stored lines parse");
                    store.restore(at_line, at.client_time, picked.seq);
                }
                if reached == next {
                    break;
                }
                next = reached;
            }
            store.continue_from(old.store().head() + 1);
            let cursors: HashMap<String, (u64, u64)> = names
                .iter()
                .cloned()
                .zip(old.cursors())
                .map(|(name, Cursor { run, seq })| (name, (run, seq)))
                .collect();
            Replica::with(store, None, old.run(), names, &cursors)
        };
        node.topology = Topology::new(&node.name, names_of(&node.replica));
        node.stale = true;
        node.alive = true;
        for d in 0..self.directions.len() {
            let (from, to) = (self.directions[d].from, self.directions[d].to);
            if from == server || to == server {
                self.connect(d);
            }
        }
    }

    fn link_of(&self, direction: usize) -> usize {
        direction / 2
    }

    /// Brings a direction up if both ends live and the link is not cut:
    /// the handshake, in which the receiver offers its cursor.
    fn connect(&mut self, direction: usize) {
        let d = &self.directions[direction];
        if d.session.is_some()
            || self.links[self.link_of(direction)].1
            || !self.nodes[d.from].alive
            || !self.nodes[d.to].alive
        {
            return;
        }
        let (from, to, at_from, at_to) = (d.from, d.to, d.at_from, d.at_to);
        let sender_replica = &self.nodes[from].replica;
        let run = sender_replica.run();
        let head = sender_replica.store().head();
        let cursor = self.nodes[to].replica.cursor_for(at_to, run);
        self.nodes[to]
            .replica
            .store()
            .forget_told(Source::Neighbour(at_to));
        // As the shells do on either side of a link that comes up.
        sender_replica
            .store()
            .forget_told(Source::Neighbour(at_from));
        let start = start_from(cursor.run, cursor.seq, run, head);
        let d = &mut self.directions[direction];
        d.epoch += 1;
        d.session = Some(Session {
            sender: Sender::new(at_from, start, head),
            receiver: Receiver::new(at_to, run),
            in_flight: VecDeque::new(),
        });
        d.next_poll = None;
        d.control.clear();
        for line in self.nodes[from].topology.table() {
            wire::push_line(&mut self.directions[direction].control, &line);
        }
        self.claim(from, at_from, true);
        self.poll_at(direction, self.now);
    }

    fn disconnect(&mut self, direction: usize) {
        let d = &mut self.directions[direction];
        let was_up = d.session.take().is_some();
        d.epoch += 1;
        d.next_poll = None;
        d.control.clear();
        let (from, at_from) = (d.from, d.at_from);
        if was_up && self.nodes[from].alive {
            self.claim(from, at_from, false);
        }
    }

    /// Server `server`'s link to its neighbour `index` came up or went
    /// down, as its shell tells `Links::link_changed`.
    fn claim(&mut self, server: usize, index: usize, up: bool) {
        self.versions += 1;
        let node = &mut self.nodes[server];
        if let Some(line) = node.topology.set_link(index, up, self.versions) {
            node.stale = true;
            self.flood(server, &line, None);
        }
    }

    /// Takes in a link-state line at `server` from its neighbour `from`, as
    /// `Links::learn` does.
    fn learn(&mut self, server: usize, from: usize, line: &[u8]) {
        self.versions += 1;
        let node = &mut self.nodes[server];
        match node.topology.apply(line) {
            Learned::Newer => {
                node.stale = true;
                self.flood(server, line, Some(from));
            }
            Learned::AboutMe => {
                let line = node.topology.reannounce(self.versions);
                self.flood(server, &line, None);
            }
            Learned::Known => {}
            Learned::Malformed => panic!("a malformed link-state line"),
        }
        self.outcome.link_state_bytes += line.len() as u64 + 1;
    }

    /// Queues a link-state line on every sending link of `server` but the
    /// one to its neighbour `except`.
    fn flood(&mut self, server: usize, line: &[u8], except: Option<usize>) {
        for direction in 0..self.directions.len() {
            let d = &mut self.directions[direction];
            if d.from == server && Some(d.at_from) != except && d.session.is_some() {
                // (A direction that is down gets the whole table when it
                // comes up, as `Links::flood` does.)
                wire::push_line(&mut d.control, line);
                self.poll_at(direction, self.now);
            }
        }
    }

    fn poll_at(&mut self, direction: usize, when: Instant) {
        let d = &mut self.directions[direction];
        if d.session.is_none() || d.next_poll.is_some_and(|t| t <= when) {
            return;
        }
        d.next_poll = Some(when);
        let epoch = d.epoch;
        self.at(when, Event::Poll { direction, epoch });
    }

    /// Wakes every sending link of `server`, as `Replica::announce` does.
    fn announce(&mut self, server: usize) {
        for direction in 0..self.directions.len() {
            if self.directions[direction].from == server {
                self.poll_at(direction, self.now);
            }
        }
    }

    fn poll(&mut self, direction: usize) -> bool {
        let (from, epoch) = (
            self.directions[direction].from,
            self.directions[direction].epoch,
        );
        // Routes are worked out again when next needed, once for a burst
        // of link-state lines, as `Links::routes` does.
        let node = &mut self.nodes[from];
        if node.stale {
            node.routes = node.topology.routes();
            node.stale = false;
        }
        let node = &self.nodes[from];
        let d = &mut self.directions[direction];
        let Some(session) = &mut d.session else {
            return false;
        };
        let step = session.sender.poll(
            node.replica.store(),
            &node.routes,
            self.now,
            &mut d.control,
            &mut self.frame,
            |_| {},
        );
        match step {
            Step::Frame { then, .. } => {
                let frame = std::mem::take(&mut self.frame);
                self.send(direction, epoch, frame);
                let next = match then {
                    Then::Hurry | Then::Poll => self.now,
                    Then::Linger(until) => until,
                };
                self.poll_at(direction, next);
                true
            }
            Step::Again => {
                self.poll_at(direction, self.now);
                true
            }
            Step::Idle { until } => {
                if let Some(until) = until {
                    self.poll_at(direction, until);
                }
                false
            }
        }
    }

    /// Puts a frame on the wire: it arrives after a random delay, never
    /// before the frames sent ahead of it.
    fn send(&mut self, direction: usize, epoch: u64, frame: Vec<u8>) {
        let delay = self
            .rng
            .random_range(Duration::ZERO..=self.schedule.max_delay);
        if self.links[direction / 2].1 {
            // Cut: the frame vanishes.
            return;
        }
        let Some(session) = &mut self.directions[direction].session else {
            return;
        };
        let after = session.in_flight.back().map_or(self.now, |&(t, _)| t);
        let arrives = (self.now + delay).max(after);
        session.in_flight.push_back((arrives, frame));
        self.at(arrives, Event::Deliver { direction, epoch });
    }

    fn deliver(&mut self, direction: usize) -> bool {
        let to = self.directions[direction].to;
        let Some(session) = &mut self.directions[direction].session else {
            return false;
        };
        let Some((_, frame)) = session.in_flight.pop_front() else {
            return false;
        };
        self.outcome.frames += 1;
        let at_to = session.receiver.index();
        let node = &mut self.nodes[to];
        let mut updates = 0;
        let mut stored = Vec::new();
        let mut control = Vec::new();
        let payload = wire::payload(&frame);
        self.outcome.watermark_bytes += payload
            .split(|&b| b == b'\n')
            .filter(|l| l.first() == Some(&b'W'))
            .map(|l| l.len() as u64 + 1)
            .sum::<u64>();
        session.receiver.frame(
            &node.replica,
            payload,
            |at_line, applied| {
                updates += 1;
                if let Applied::Stored(_) = applied {
                    stored.push(at_line.to_vec());
                }
            },
            |line| control.push(line.to_vec()),
            |line| panic!("a malformed line: {}", String::from_utf8_lossy(line)),
        );
        self.outcome.update_lines += updates;
        for line in &control {
            self.learn(to, at_to, line);
        }
        let node = &mut self.nodes[to];
        for line in &stored {
            if let Some(at) = self.accepted_at.get(line) {
                self.outcome.delays.push(self.now - *at);
            }
        }
        for line in &stored {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let key = (
                String::from_utf8_lossy(fields[3]).into_owned(),
                String::from_utf8_lossy(fields[5]).into_owned(),
            );
            *node.stored.entry(key).or_default() += 1;
        }
        if !stored.is_empty() {
            self.announce(to);
        }
        updates > 0
    }

    fn finish(mut self) -> Outcome {
        for node in &self.nodes {
            for ((client, time), count) in &node.stored {
                if *count > 1 {
                    self.outcome
                        .stored_twice
                        .push(format!("{}: {client} {time} {count} times", node.name));
                }
            }
        }
        // The newest report of each client that survives somewhere (a lost
        // data folder may have taken the newest with it) must be everywhere.
        let mut best: BTreeMap<Vec<u8>, Timestamp> = BTreeMap::new();
        for node in &self.nodes {
            for client in self.newest.keys() {
                if let Some(report) = node.replica.store().get(client.as_bytes()) {
                    let entry = best
                        .entry(client.as_bytes().to_vec())
                        .or_insert(report.client_time);
                    *entry = (*entry).max(report.client_time);
                }
            }
        }
        for node in self.nodes.iter().filter(|node| node.alive) {
            for (client, want) in &best {
                let has = node.replica.store().get(client).map(|r| r.client_time);
                if has != Some(*want) {
                    self.outcome.behind.push(format!(
                        "{}: {} wants {want}, has {has:?}",
                        node.name,
                        String::from_utf8_lossy(client)
                    ));
                }
            }
        }
        // Without lost data, the newest report a client made must be the
        // one that survived.
        if !self.schedule.lose_data {
            for (client, (time, _, received)) in &self.newest {
                if best.get(client.as_bytes()) != Some(time) && !self.expired(*received) {
                    self.outcome
                        .behind
                        .push(format!("{client}: its newest report {time} was lost"));
                }
            }
        }
        self.outcome
    }
}

fn names_of(replica: &Replica) -> Vec<String> {
    replica.neighbours().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::link::LAZY_HOLD;

    /// The default herd's shape: Hill, Jaquez, Smith, Campbell, Singleton.
    fn default_herd(seed: u64) -> Schedule {
        Schedule {
            seed,
            servers: 5,
            // 0 Hill, 1 Jaquez, 2 Smith, 3 Campbell, 4 Singleton.
            links: vec![(0, 1), (0, 2), (1, 4), (2, 4), (2, 3), (3, 4)],
            reports: 0,
            clients: 20,
            cuts: 0,
            crashes: 0,
            lose_data: false,
            span: Duration::from_millis(500),
            max_delay: Duration::from_micros(200),
            silence: Duration::from_millis(300),
            ttl: 0,
            max_clients: 0,
        }
    }

    /// How many schedules to play: `variable` from the environment, or
    /// `default`.
    fn seeds(variable: &str, default: u64) -> u64 {
        std::env::var(variable)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    fn thousands_of_random_schedules_converge_without_loops() {
        let seeds = seeds("HERD_SIM_SEEDS", 2000);
        let (mut lines, mut ideal, mut announced, mut reports) = (0u64, 0u64, 0u64, 0u64);
        for seed in 0..seeds {
            let schedule = Schedule::random(seed, 12);
            let outcome = Sim::new(schedule.clone()).run();
            if let Err(failure) = outcome.check() {
                panic!("{failure}\nschedule: {schedule:?}");
            }
            lines += outcome.update_lines;
            ideal += outcome.accepted * (outcome.servers as u64 - 1);
            announced += outcome.watermark_bytes;
            reports += outcome.accepted;
        }
        println!(
            "{seeds} schedules: {lines} payloads for {ideal} server-deliveries needed \
             ({:.2} per delivery), {:.0} watermark bytes per report",
            lines as f64 / ideal.max(1) as f64,
            announced as f64 / reports.max(1) as f64
        );
    }

    /// Larger herds, 5 to 50 servers, with the same faults: fewer
    /// schedules by default, as each is longer (`HERD_SIM_LARGE_SEEDS`
    /// runs more).
    #[test]
    fn large_random_herds_converge_without_loops() {
        let seeds = seeds("HERD_SIM_LARGE_SEEDS", 200);
        let (mut lines, mut ideal, mut marks, mut reports) = (0u64, 0u64, 0u64, 0u64);
        for seed in 0..seeds {
            let schedule = Schedule::random_sized(1_000_000 + seed, 5, 50);
            let outcome = Sim::new(schedule.clone()).run();
            if let Err(failure) = outcome.check() {
                panic!("{failure}\nschedule: {schedule:?}");
            }
            lines += outcome.update_lines;
            ideal += outcome.accepted * (outcome.servers as u64 - 1);
            marks += outcome.watermark_bytes;
            reports += outcome.accepted;
        }
        println!(
            "{seeds} herds of 5 to 50 servers: {:.2} payloads per server-delivery needed, \
             {:.0} watermark bytes per report",
            lines as f64 / ideal.max(1) as f64,
            marks as f64 / reports.max(1) as f64
        );
    }

    /// A healthy herd sends each report's payload once per server, at once,
    /// along its origin's tree; the other links carry watermarks only.
    #[test]
    fn a_healthy_herd_sends_one_payload_per_server() {
        let schedule = Schedule {
            reports: 200,
            span: Duration::from_secs(2),
            ..default_herd(1)
        };
        let mut sim = Sim::new(schedule);
        // Reports only once every link is up and known.
        sim.settle_first(Duration::from_millis(100));
        let outcome = sim.run();
        outcome.check().unwrap();
        let accepted = outcome.accepted;
        assert!(accepted > 150, "most reports are newer");
        assert_eq!(outcome.update_lines, accepted * 4, "one payload per server");
        assert!(outcome.watermark_bytes > 0);
        let slowest = outcome.delays.iter().max().unwrap();
        assert!(
            *slowest < LAZY_HOLD,
            "no report waited on a hold: {slowest:?}"
        );
    }

    /// With a server dead, and its neighbours aware of it, every report
    /// still reaches every live server down the live links, never waiting
    /// on a hold.
    #[test]
    fn a_dead_server_is_routed_around_at_once() {
        for dead in 0..5 {
            let schedule = Schedule {
                reports: 100,
                span: Duration::from_secs(2),
                ..default_herd(10 + dead as u64)
            };
            let mut sim = Sim::new(schedule);
            sim.kill_first(dead, Duration::from_millis(100));
            let outcome = sim.run();
            outcome.check().unwrap();
            let slowest = outcome.delays.iter().max().unwrap();
            assert!(
                *slowest < LAZY_HOLD,
                "with server {dead} dead a report took {slowest:?}"
            );
        }
    }

    /// A tree link that fails silently still lets every report through
    /// within the hold, well inside 50 ms, by a lazy link.
    #[test]
    fn a_silently_cut_link_costs_at_most_a_hold() {
        // Hill-Smith carries Hill's reports to Smith and Campbell.
        let schedule = Schedule {
            reports: 100,
            span: Duration::from_secs(2),
            silence: Duration::from_secs(10),
            ..default_herd(20)
        };
        let mut sim = Sim::new(schedule);
        sim.cut_first(1, Duration::from_millis(100));
        let outcome = sim.run();
        outcome.check().unwrap();
        let slowest = outcome.delays.iter().max().unwrap();
        assert!(
            *slowest < LAZY_HOLD + Duration::from_millis(5),
            "a report took {slowest:?}"
        );
        assert!(*slowest >= LAZY_HOLD, "some report did wait on the hold");
    }

    #[test]
    fn the_simulator_notices_a_herd_that_does_not_converge() {
        // Two servers whose only link stays cut: each keeps its own report.
        let schedule = Schedule {
            servers: 2,
            links: vec![(0, 1)],
            ..default_herd(3)
        };
        let mut sim = Sim::new(schedule);
        for server in 0..2 {
            sim.nodes[server].replica.accept(
                format!(
                    "AT S0{server} +0.000000000 c0 +1+1 {}.000000000",
                    server + 1
                )
                .as_bytes(),
                Timestamp::parse(format!("{}", server + 1).as_bytes()).unwrap(),
                Source::Client,
            );
        }
        sim.newest
            .insert("c0".into(), (Timestamp::parse(b"2").unwrap(), 1, 2));
        sim.links[0].1 = true;
        // `finish` without running: nothing has flowed.
        let outcome = sim.finish();
        assert!(outcome.behind.iter().any(|b| b.starts_with("S00")));
    }

    #[test]
    fn the_same_seed_plays_the_same_run() {
        let run = |seed| {
            let outcome = Sim::new(Schedule::random(seed, 8)).run();
            (outcome.frames, outcome.update_lines, outcome.accepted)
        };
        assert_eq!(run(42), run(42));
    }
}

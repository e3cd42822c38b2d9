//! Server-to-server links: authentication, flooding and catch-up (SPEC §6).
//!
//! Each direction of a link is one TCP connection, dialled by the sender to
//! the receiver's peer port. The receiver keeps, per neighbour, a *cursor*:
//! the neighbour's run id and the highest of its sequence numbers up to which
//! it holds everything the neighbour has accepted (see `store`). When a link
//! comes up the receiver tells the sender its cursor, and the sender streams
//! its store's sequence from there on: first what was missed, then live
//! updates as they are accepted. Catch-up and flooding are one mechanism, and
//! the work on reconnect is what was missed, not the size of the store.
//!
//! A restarted server has a new run id, so its neighbours' cursors for it no
//! longer apply and it streams its (new) store from the start; and it asks
//! its neighbours from the start, since it knows nothing.
//!
//! Handshake, by the dialler A to the receiver B:
//!
//! ```text
//! B -> A  HERD-CHALLENGE 1 <nonce_b>
//! A -> B  HERD-HELLO <A> <B> <run_a> <nonce_a> <mac>      mac over A, B, run_a, both nonces
//! B -> A  HERD-WELCOME <run> <seq> <mac>                  B's cursor for A, mac over it and both nonces
//! A -> B  frames: u32 length, payload, keyed BLAKE3 tag   tag over a frame counter and the payload
//! B -> A  "ACK <seq>" lines, so that A notices a dead link
//! ```
//!
//! Every MAC is keyed by the herd's shared secret (or by a session key
//! derived from it and both nonces), so a stranger can neither join, nor
//! replay a recorded session (fresh nonces), nor alter or reorder frames
//! (the counter). Payload lines are `U <seq> <AT line>` for an update and
//! `C <seq>` for "complete up to".

pub mod routes;

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::log::{MessageLines, Show};
use crate::peer::routes::{Routes, Wait};
use crate::protocol::time::Timestamp;
use crate::protocol::{Location, parse_at_line};
use crate::replica::store::{Applied, Batch, Picked, Scan, Source};
use crate::server::Server;

type HmacSha256 = Hmac<Sha256>;

/// A configured neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub name: String,
    /// Its peer port, `host:port`.
    pub peer_address: String,
}

/// The most updates in one frame (about 130 KB): big enough that a link
/// with a backlog drains it in few frames, small enough that a frame is
/// never long in the writing.
const BATCH: usize = 1024;
/// A frame of at least this many updates, which left no backlog, marks a
/// busy link, which then waits `LINGER` after it before sending the next
/// (see `send_updates`).
const BUSY_FRAME: usize = 16;
const LINGER: Duration = Duration::from_millis(1);
/// How long a report waits over a link outside its origin's tree from the
/// link's first end (see `routes`): long enough for the tree's own
/// messages of a fresh report to go first, short against `HOLD`.
const SHORT_HOLD: Duration = Duration::from_millis(5);
/// How long a report waits from a link's other end (see `routes`): long
/// enough for the copy from the first end, sent after `SHORT_HOLD`, to
/// arrive first under load.
const HOLD: Duration = Duration::from_millis(30);
/// The most reports a link holds back; past that, it sends at once.
const MAX_HELD: usize = 1 << 16;
/// The largest frame payload a receiver accepts.
const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Time to establish a TCP connection to a neighbour.
const CONNECT_TIME: Duration = Duration::from_millis(500);
/// Time for a peer to complete its handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(2);
/// Reconnection backoff: first retry, and the most between retries. A
/// neighbour that comes back dials us, which wakes our dialler at once.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(400);

/// What one neighbour has sent us: its run id and how far we are complete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    run: u64,
    seq: u64,
}

/// Per-neighbour link state of one server.
pub struct Flood {
    me: String,
    run: u64,
    secret: Vec<u8>,
    neighbours: Vec<Neighbour>,
    /// How long each origin's reports wait for each neighbour (see
    /// `routes`).
    routes: Routes,
    /// Bumped after accepted updates; link senders wait on it.
    accepted: watch::Sender<u64>,
    /// Updates were accepted since the links were last told (see
    /// [`Flood::updated`]).
    unannounced: AtomicBool,
    cursors: Mutex<Vec<Cursor>>,
    /// Wakes the dialler to a neighbour that just showed up.
    wake: Vec<Notify>,
    /// The receiving session of each neighbour, cancelled when a newer one
    /// from the same neighbour replaces it.
    sessions: Mutex<Vec<Option<CancellationToken>>>,
}

impl Flood {
    /// Link state for server `me`. `run` is our run id; `cursors` says,
    /// per neighbour name, how far we hold its stream (its run id, seq), as
    /// recovered from disk.
    pub fn new(
        me: &str,
        neighbours: Vec<Neighbour>,
        routes: Routes,
        secret: Vec<u8>,
        run: u64,
        cursors: &HashMap<String, (u64, u64)>,
    ) -> Self {
        let count = neighbours.len();
        let cursors = neighbours
            .iter()
            .map(|n| {
                cursors
                    .get(&n.name)
                    .map_or(Cursor::default(), |&(run, seq)| Cursor { run, seq })
            })
            .collect();
        Self {
            me: me.to_owned(),
            run,
            secret,
            neighbours,
            routes,
            accepted: watch::Sender::new(0),
            unannounced: AtomicBool::new(false),
            cursors: Mutex::new(cursors),
            wake: (0..count).map(|_| Notify::new()).collect(),
            sessions: Mutex::new(vec![None; count]),
        }
    }

    /// Notes that the store has something new, for the next
    /// [`Flood::announce`]: a batch of updates (a client's lines read
    /// together, a neighbour's frame) wakes the links once, not once per
    /// update (each wake-up locks every waiter list of the channel).
    pub fn updated(&self) {
        self.unannounced.store(true, Ordering::Release);
    }

    /// Tells every link that the store has something new, if it has since
    /// the last time.
    pub fn announce(&self) {
        if !self.unannounced.swap(false, Ordering::AcqRel) {
            return;
        }
        // No link listening (none up, or no neighbours at all): a link
        // that comes up scans the store from its cursor anyway.
        if self.accepted.receiver_count() == 0 {
            return;
        }
        self.accepted
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Every neighbour's cursor: (name, its run id, seq), for a snapshot.
    pub fn cursor_list(&self) -> Vec<(String, u64, u64)> {
        let cursors = self.cursors.lock().expect("cursor lock is never poisoned");
        self.neighbours
            .iter()
            .zip(cursors.iter())
            .filter(|(_, cursor)| cursor.run != 0)
            .map(|(n, c)| (n.name.clone(), c.run, c.seq))
            .collect()
    }

    fn neighbour_index(&self, name: &[u8]) -> Option<usize> {
        self.neighbours
            .iter()
            .position(|n| n.name.as_bytes() == name)
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        for part in parts {
            // Length-prefixed, so that no two part lists authenticate alike.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of a hello from `from` to `to`, over the dialler's run and
    /// both nonces (the listener's challenge first).
    fn hello_mac(
        &self,
        from: &str,
        to: &str,
        run: &str,
        nonce_b: &[u8],
        nonce_a: &[u8],
    ) -> HmacSha256 {
        self.mac(&[
            b"hello",
            from.as_bytes(),
            to.as_bytes(),
            run.as_bytes(),
            nonce_b,
            nonce_a,
        ])
    }

    /// The tag of the listener's welcome: the cursor it holds for the
    /// dialler, over both nonces.
    fn welcome_mac(
        &self,
        from: &str,
        to: &str,
        cursor: (&str, &str),
        nonce_a: &[u8],
        nonce_b: &[u8],
    ) -> HmacSha256 {
        self.mac(&[
            b"welcome",
            from.as_bytes(),
            to.as_bytes(),
            cursor.0.as_bytes(),
            cursor.1.as_bytes(),
            nonce_a,
            nonce_b,
        ])
    }

    /// A link's frame key: derived from the herd secret and both nonces,
    /// so every session has a key of its own.
    fn session_key(&self, nonce_a: &[u8], nonce_b: &[u8]) -> FrameKey {
        FrameKey(
            self.mac(&[b"session", nonce_a, nonce_b])
                .finalize()
                .into_bytes()
                .into(),
        )
    }
}

/// Starts the peer listener and one dialler per neighbour.
pub fn start(
    server: &Arc<Server>,
    listener: TcpListener,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for index in 0..server.flood.neighbours.len() {
        tasks.spawn(dial_loop(server.clone(), index, shutdown.clone()));
    }
    let server = server.clone();
    let shutdown = shutdown.clone();
    let inner_tasks = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, address) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "peer accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let server = server.clone();
            let shutdown = shutdown.clone();
            inner_tasks.spawn(async move {
                if let Err(error) = receive(&server, stream, &shutdown).await {
                    debug!(%address, %error, "peer connection ended");
                }
            });
        }
    });
}

// ----------------------------------------------------------------- sending

/// Keeps the link to neighbour `index` up, streaming our updates over it.
async fn dial_loop(server: Arc<Server>, index: usize, shutdown: CancellationToken) {
    let flood = &server.flood;
    let neighbour = &flood.neighbours[index];
    let mut backoff = BACKOFF_FIRST;
    loop {
        let attempt = async {
            // Shorter than the handshake's time, so that a dial lost to a
            // dead network is retried soon after the network heals.
            let stream = timeout(CONNECT_TIME, TcpStream::connect(&neighbour.peer_address))
                .await
                .map_err(|_| anyhow::anyhow!("connect timed out"))??;
            stream.set_nodelay(true)?;
            dial_handshake(flood, index, stream, server.store.head()).await
        };
        let attempt = tokio::select! {
            attempt = timeout(HANDSHAKE_TIME, attempt) => attempt,
            () = shutdown.cancelled() => return,
        };
        match attempt {
            Ok(Ok(link)) => {
                info!("link up: sending to {}", neighbour.name);
                backoff = BACKOFF_FIRST;
                let outcome = send_updates(&server, index, link, &shutdown).await;
                info!(
                    "link down: sending to {}: {}",
                    neighbour.name,
                    outcome
                        .err()
                        .map_or("shutting down".to_owned(), |e| e.to_string())
                );
            }
            Ok(Err(error)) => debug!(neighbour = %neighbour.name, %error, "cannot link"),
            Err(_) => debug!(neighbour = %neighbour.name, "handshake timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = flood.wake[index].notified() => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// An authenticated sending side of a link.
struct OutgoingLink {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    key: FrameKey,
    /// Where the receiver's cursor says to start.
    start: u64,
}

async fn dial_handshake(
    flood: &Flood,
    index: usize,
    stream: TcpStream,
    head: u64,
) -> anyhow::Result<OutgoingLink> {
    let neighbour = &flood.neighbours[index];
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let challenge = read_short_line(&mut reader).await?;
    let nonce_b = match challenge.split(' ').collect::<Vec<_>>()[..] {
        ["HERD-CHALLENGE", "1", nonce] => {
            decode_hex(nonce).ok_or_else(|| anyhow::anyhow!("bad nonce"))?
        }
        _ => anyhow::bail!("not a herd peer port"),
    };
    let nonce_a: [u8; 16] = rand::random();
    let run = flood.run.to_string();
    let mac = flood.hello_mac(&flood.me, &neighbour.name, &run, &nonce_b, &nonce_a);
    let hello = format!(
        "HERD-HELLO {} {} {} {} {}\n",
        flood.me,
        neighbour.name,
        run,
        encode_hex(&nonce_a),
        encode_hex(&mac.finalize().into_bytes())
    );
    writer.write_all(hello.as_bytes()).await?;
    let welcome = read_short_line(&mut reader).await?;
    let ["HERD-WELCOME", cursor_run, cursor_seq, tag] = welcome.split(' ').collect::<Vec<_>>()[..]
    else {
        anyhow::bail!("refused: {welcome}");
    };
    let tag = decode_hex(tag).ok_or_else(|| anyhow::anyhow!("bad welcome"))?;
    flood
        .welcome_mac(
            &flood.me,
            &neighbour.name,
            (cursor_run, cursor_seq),
            &nonce_a,
            &nonce_b,
        )
        .verify_slice(&tag)
        .map_err(|_| anyhow::anyhow!("{} does not know the herd secret", neighbour.name))?;
    let cursor_run: u64 = cursor_run.parse()?;
    let cursor_seq: u64 = cursor_seq.parse()?;
    let key = flood.session_key(&nonce_a, &nonce_b);
    Ok(OutgoingLink {
        reader,
        writer,
        key,
        // A cursor for another run of ours means nothing now; one beyond our
        // numbering means our data folder is older than the neighbour's
        // knowledge of it (restored from a backup): start over either way.
        start: if cursor_run == flood.run && cursor_seq <= head {
            cursor_seq
        } else {
            0
        },
    })
}

/// Streams the store to a neighbour from the cursor on, then every update
/// as it is accepted, until the link fails or the server stops.
async fn send_updates(
    server: &Server,
    index: usize,
    link: OutgoingLink,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let flood = &server.flood;
    let name = &flood.neighbours[index].name;
    let OutgoingLink {
        mut reader,
        mut writer,
        key,
        start,
    } = link;
    // The next report to look at, and the number the neighbour last heard
    // it is complete up to (`C`).
    let mut next = start;
    let mut confirmed = start;
    // What the neighbour sent us before this link came up may be what it
    // lost in a restart: send it back too. Later ones it surely has.
    let link_up_at = server.store.head();
    let mut counter: u64 = 0;
    let mut accepted = flood.accepted.subscribe();
    let silence = server.limits.link_silence();
    let mut heartbeat = tokio::time::interval(server.limits.link_heartbeat());
    let mut last_heard = Instant::now();
    let mut scanned = Batch::new();
    let mut pending = Batch::new();
    // Reports held back (see `routes`); the neighbour is complete only up
    // to below the oldest.
    let mut held = Held::default();
    // The reports of the current scan held back now, in the scan's order.
    let mut just_held: Vec<Picked> = Vec::new();
    let mut frame = Vec::new();
    let mut ack = [0u8; 256];
    let mut linger_until = None;
    loop {
        if let Some(until) = linger_until.take() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        // Mark the signal seen before looking, so an update accepted in
        // between still wakes us below.
        accepted.borrow_and_update();
        pending.clear();
        let now = Instant::now();
        // Held reports whose wait is over go now, unless superseded or sent
        // to us meanwhile (which is what the wait was for).
        while pending.len() < BATCH / 2
            && let Some(picked) = held.pop_due(now)
        {
            server
                .store
                .still_to_send(picked, (index, link_up_at), &mut pending);
        }
        let mut behind = held.due(now);
        scanned.clear();
        let Scan { reached, more } = server.store.since(
            next,
            Some((index, link_up_at)),
            BATCH - pending.len(),
            &mut scanned,
        );
        behind |= more;
        // What the scan found goes in this frame but for what is held
        // back now (`just_held`).
        just_held.clear();
        for (picked, at_line) in scanned.iter() {
            // Catch-up (a backlog) is sent whole: holding it back would only
            // make it longer.
            if more || held.len() >= MAX_HELD {
                continue;
            }
            let wait = flood.routes.wait(origin(at_line), index);
            if wait != Wait::None {
                held.push(picked, now, wait);
                just_held.push(picked);
            }
        }
        let sending = pending.len() + scanned.len() - just_held.len();
        next = next.max(reached);
        let complete = held
            .oldest()
            .map_or(next, |oldest| oldest.seq.saturating_sub(1));
        // How far the neighbour is complete goes with the next frame of
        // reports, or else with the next heartbeat: a frame for that alone
        // costs both ends a turn (a write, a read, a cursor record), and on
        // a quiet link that would be a turn per report, back the way the
        // report came, in the way of its next hops. A cursor that lags
        // only means a few more reports sent again after a reconnection.
        if sending > 0 {
            start_frame(&mut frame);
            // One log line per update, written together (the busiest lines
            // of the log: one clock reading and one lock per frame).
            let mut log = MessageLines::start();
            let mut add = |seq: u64, at_line: &[u8]| {
                log.line(&["sent to ", name, ": "], at_line);
                // (itoa: `write!` was ~1 % of a five-server profile.)
                frame.extend_from_slice(b"U ");
                frame.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
                frame.push(b' ');
                frame.extend_from_slice(at_line);
                frame.push(b'\n');
            };
            for (picked, at_line) in pending.iter() {
                add(picked.seq, at_line);
            }
            let mut held_now = just_held.iter().peekable();
            for (picked, at_line) in scanned.iter() {
                if held_now.next_if_eq(&&picked).is_none() {
                    add(picked.seq, at_line);
                }
            }
            let _ = writeln!(frame, "C {complete}");
            drop(log);
            write_frame(&mut writer, &key, &mut counter, &mut frame, silence).await?;
            confirmed = complete;
            if behind {
                // A backlog (catch-up, or more updates than the last
                // frame held): the next frame goes at once, after letting
                // the server's other tasks run. Waiting here would cap the
                // link at a frame per wait, and a link that falls behind
                // stays behind.
                tokio::task::yield_now().await;
            } else if sending >= BUSY_FRAME {
                // A busy link that is keeping up waits a moment before its
                // next frame, so that frames grow instead of multiplying
                // (each costs every hop a write, a read, a tag and a log
                // flush), and so that what the neighbour sends us meanwhile
                // need not be sent back (see `Store::since`). A quiet link
                // never waits.
                linger_until = Some(Instant::now() + LINGER);
            }
            continue;
        }
        if behind {
            // Nothing to send from this scan or these held reports (all
            // superseded, or the neighbour's own): on to the next at once.
            tokio::task::yield_now().await;
            continue;
        }
        let wake_held = held.next_due();
        // A busy link never waits here, so its neighbour's acknowledgements
        // pile up unread meanwhile: liveness is judged only after reading
        // what came back (in a fixed order, liveness first).
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                // Acknowledgements waiting to be read are not silence.
                take_acks(&reader, &mut ack, &mut last_heard, name)?;
                if last_heard.elapsed() > silence {
                    anyhow::bail!("{name} silent for {silence:?}");
                }
                start_frame(&mut frame);
                if complete > confirmed {
                    let _ = writeln!(frame, "C {complete}");
                }
                write_frame(&mut writer, &key, &mut counter, &mut frame, silence).await?;
                confirmed = complete;
            }
            changed = accepted.changed() => changed?,
            () = sleep_until_some(wake_held) => {}
            read = reader.read(&mut ack) => {
                if read? == 0 {
                    anyhow::bail!("closed by {name}");
                }
                last_heard = Instant::now();
            }
        }
    }
}

/// The reports a link holds back, in two queues by length of wait; in each,
/// numbers and times only increase (a link scans in order), so each
/// queue's oldest report is also the first due. A report is a
/// [`Picked`], ordered by number (a plain number in the tests).
struct Held<R = Picked> {
    short: VecDeque<(R, Instant)>,
    long: VecDeque<(R, Instant)>,
}

impl<R> Default for Held<R> {
    fn default() -> Self {
        Held {
            short: VecDeque::new(),
            long: VecDeque::new(),
        }
    }
}

impl<R: Copy + Ord> Held<R> {
    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    /// Holds `report`, newer than any held, for `wait`.
    fn push(&mut self, report: R, now: Instant, wait: Wait) {
        match wait {
            Wait::None => {}
            Wait::Short => self.short.push_back((report, now + SHORT_HOLD)),
            Wait::Long => self.long.push_back((report, now + HOLD)),
        }
    }

    /// Takes a report whose wait is over, the oldest first.
    fn pop_due(&mut self, now: Instant) -> Option<R> {
        let due = |queue: &VecDeque<(R, Instant)>| {
            queue
                .front()
                .filter(|&&(_, until)| until <= now)
                .map(|&(seq, _)| seq)
        };
        let queue = match (due(&self.short), due(&self.long)) {
            (Some(short), Some(long)) if long < short => &mut self.long,
            (Some(_), _) => &mut self.short,
            (None, Some(_)) => &mut self.long,
            (None, None) => return None,
        };
        queue.pop_front().map(|(seq, _)| seq)
    }

    /// Whether some report's wait is over.
    fn due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|until| until <= now)
    }

    /// When the next wait is over.
    fn next_due(&self) -> Option<Instant> {
        self.fronts().map(|(_, until)| until).min()
    }

    /// The oldest report held.
    fn oldest(&self) -> Option<R> {
        self.fronts().map(|(report, _)| report).min()
    }

    /// Each queue's first report, with its time.
    fn fronts(&self) -> impl Iterator<Item = (R, Instant)> + '_ {
        self.short
            .front()
            .into_iter()
            .chain(self.long.front())
            .copied()
    }
}

/// Sleeps until `until`, or forever when there is none.
async fn sleep_until_some(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// The server an AT line names: where its report was made.
fn origin(at_line: &[u8]) -> &[u8] {
    let rest = at_line.get(3..).unwrap_or_default();
    rest.split(|&b| b == b' ').next().unwrap_or_default()
}

/// Reads whatever the neighbour has sent back on a link (acknowledgements,
/// whose content does not matter) without waiting, noting when it was heard.
fn take_acks(
    reader: &BufReader<OwnedReadHalf>,
    ack: &mut [u8],
    last_heard: &mut Instant,
    name: &str,
) -> anyhow::Result<()> {
    loop {
        match reader.get_ref().try_read(ack) {
            Ok(0) => anyhow::bail!("closed by {name}"),
            Ok(_) => *last_heard = Instant::now(),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Empties a link's frame buffer, leaving room for the length.
fn start_frame(frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(&[0; 4]);
}

/// Seals and writes one frame. `frame` holds four bytes of room for the
/// length, then the payload; the length and the tag are filled in here, so
/// that a link builds each frame in one buffer that it keeps.
async fn write_frame(
    writer: &mut OwnedWriteHalf,
    key: &FrameKey,
    counter: &mut u64,
    frame: &mut Vec<u8>,
    silence: Duration,
) -> anyhow::Result<()> {
    let payload = &frame[4..];
    let length = u32::try_from(payload.len()).expect("frames are small");
    let tag = key.tag(*counter, payload);
    frame[..4].copy_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(tag.as_bytes());
    *counter += 1;
    // A stopped neighbour must not hold this link forever.
    timeout(silence, writer.write_all(frame))
        .await
        .map_err(|_| anyhow::anyhow!("write timed out"))??;
    Ok(())
}

/// The key that tags a link's frames.
///
/// Frames are tagged with keyed BLAKE3 (a MAC: a keyed pseudo-random
/// function) rather than HMAC-SHA256, which the handshake keeps: every
/// update crosses the herd several times, each crossing tagged by its
/// sender and checked by its receiver, and with HMAC-SHA256 that was ~6 %
/// of a five-server load's profile; BLAKE3 tags the same bytes in a third
/// of the time or less.
struct FrameKey([u8; 32]);

impl FrameKey {
    /// The tag of frame number `counter` (counted from 0 on each link, so
    /// that frames cannot be dropped, reordered or replayed) with `payload`.
    fn tag(&self, counter: u64, payload: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(&counter.to_be_bytes());
        mac.update(payload);
        mac.finalize()
    }
}

// --------------------------------------------------------------- receiving

/// Serves one connection to our peer port: a neighbour sending its updates.
async fn receive(
    server: &Server,
    stream: TcpStream,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let flood = &server.flood;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let nonce_b: [u8; 16] = rand::random();
    let (index, run, key) = timeout(HANDSHAKE_TIME, async {
        writer
            .write_all(format!("HERD-CHALLENGE 1 {}\n", encode_hex(&nonce_b)).as_bytes())
            .await?;
        let hello = read_short_line(&mut reader).await?;
        let Some(Hello {
            from,
            to,
            run_text: run,
            run: run_id,
            nonce: nonce_a,
            tag,
        }) = parse_hello(&hello)
        else {
            anyhow::bail!("not a hello");
        };
        let index = flood
            .neighbour_index(from.as_bytes())
            .filter(|_| to == flood.me)
            .ok_or_else(|| anyhow::anyhow!("{from} is not a neighbour of {}", flood.me))?;
        if flood
            .hello_mac(from, to, run, &nonce_b, &nonce_a)
            .verify_slice(&tag)
            .is_err()
        {
            anyhow::bail!("hello claiming to be {from} failed authentication");
        }
        let cursor = {
            let mut cursors = flood.cursors.lock().expect("cursor lock is never poisoned");
            if cursors[index].run != run_id {
                cursors[index] = Cursor {
                    run: run_id,
                    seq: 0,
                };
            }
            cursors[index]
        };
        let (cursor_run, cursor_seq) = (cursor.run.to_string(), cursor.seq.to_string());
        let mac = flood.welcome_mac(from, to, (&cursor_run, &cursor_seq), &nonce_a, &nonce_b);
        writer
            .write_all(
                format!(
                    "HERD-WELCOME {cursor_run} {cursor_seq} {}\n",
                    encode_hex(&mac.finalize().into_bytes())
                )
                .as_bytes(),
            )
            .await?;
        let key = flood.session_key(&nonce_a, &nonce_b);
        Ok((index, run_id, key))
    })
    .await
    .map_err(|_| anyhow::anyhow!("handshake timed out"))?
    .inspect_err(|error| {
        // A lossy network breaks handshakes too; only a peer that spoke and
        // was not believed is worth a warning.
        if error.downcast_ref::<std::io::Error>().is_some() {
            debug!(%error, "peer handshake failed");
        } else {
            warn!(%error, "peer refused");
        }
    })?;

    let name = flood.neighbours[index].name.clone();
    // This neighbour is up: dial it now rather than at the next backoff.
    flood.wake[index].notify_one();
    let session = shutdown.child_token();
    if let Some(old) = flood
        .sessions
        .lock()
        .expect("session lock is never poisoned")[index]
        .replace(session.clone())
    {
        old.cancel();
    }
    info!("link up: receiving from {name}");
    let outcome = tokio::select! {
        outcome = receive_frames(server, index, run, &key, &mut reader, &mut writer) => outcome,
        () = session.cancelled() => Ok(()),
    };
    info!(
        "link down: receiving from {name}: {}",
        outcome
            .as_ref()
            .err()
            .map_or("replaced or shutting down".to_owned(), |e| e.to_string())
    );
    outcome
}

async fn receive_frames(
    server: &Server,
    index: usize,
    run: u64,
    key: &FrameKey,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> anyhow::Result<()> {
    let flood = &server.flood;
    let name = &flood.neighbours[index].name;
    let mut counter: u64 = 0;
    let mut payload = Vec::new();
    let mut last_ack = Instant::now();
    let (silence, heartbeat) = (server.limits.link_silence(), server.limits.link_heartbeat());
    loop {
        let mut length = [0u8; 4];
        match timeout(silence, reader.read_exact(&mut length)).await {
            Ok(read) => read?,
            Err(_) => anyhow::bail!("{name} silent for {silence:?}"),
        };
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_FRAME {
            anyhow::bail!("frame of {length} bytes is too large");
        }
        payload.resize(length + 32, 0);
        reader.read_exact(&mut payload).await?;
        let (body, tag) = payload.split_at(length);
        // blake3::Hash compares in constant time.
        if key.tag(counter, body) != *tag {
            anyhow::bail!("frame from {name} failed authentication");
        }
        counter += 1;
        let mut complete = None;
        server
            .store
            .warm(body.split(|&b| b == b'\n').filter_map(update_client_id));
        let mut log = MessageLines::start();
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match apply_line(server, index, line, &mut log) {
                Some(seq) => complete = Some(seq),
                None => warn!(neighbour = %name, "ignored a malformed line: {}", Show(line)),
            }
        }
        drop(log);
        flood.announce();
        if let Some(seq) = complete {
            let advanced = {
                let mut cursors = flood.cursors.lock().expect("cursor lock is never poisoned");
                let advanced = cursors[index].run == run && seq > cursors[index].seq;
                if advanced {
                    cursors[index].seq = seq;
                }
                advanced
            };
            // Logged after the frame's reports, so a replay never has a
            // cursor ahead of the data it stands for.
            if advanced && let Some(storage) = &server.storage {
                storage.append_cursor(name, run, seq);
            }
        }
        if let Some(storage) = &server.storage {
            storage.flush_soon().await?;
        }
        // Acknowledge now and then so the sender knows the link lives.
        if last_ack.elapsed() >= heartbeat {
            let seq = complete.unwrap_or(0);
            timeout(silence, writer.write_all(format!("ACK {seq}\n").as_bytes()))
                .await
                .map_err(|_| anyhow::anyhow!("ack timed out"))??;
            last_ack = Instant::now();
        }
    }
}

/// One line of a frame's payload.
#[derive(Debug, PartialEq)]
pub enum PayloadLine<'a> {
    /// `U <seq> <AT line>`: a report, numbered in the sender's sequence,
    /// with the time and location read from its AT line (parsed once).
    Update {
        seq: u64,
        at_line: &'a [u8],
        client_time: Timestamp,
        location: Location,
    },
    /// `C <seq>`: the sender has sent everything up to `seq`.
    Complete { seq: u64 },
}

/// Parses one payload line (without its `\n`); `None` if it is malformed,
/// including an AT line that does not parse.
pub fn parse_payload_line(line: &[u8]) -> Option<PayloadLine<'_>> {
    // Exactly as the sender writes them: single spaces, none at the end.
    if line.last() == Some(&b' ') {
        return None;
    }
    let (kind, rest) = split_word(line)?;
    let (seq, rest) = split_word(rest)?;
    let seq = crate::protocol::time::parse_digits_u64(seq)?;
    match kind {
        b"C" if rest.is_empty() => Some(PayloadLine::Complete { seq }),
        b"U" => {
            let at = parse_at_line(rest)?;
            Some(PayloadLine::Update {
                seq,
                at_line: rest,
                client_time: at.client_time,
                location: at.location,
            })
        }
        _ => None,
    }
}

/// The fields of a `HERD-HELLO` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The sender's run id, as sent (the MAC covers this text).
    pub run_text: &'a str,
    pub run: u64,
    pub nonce: Vec<u8>,
    pub tag: Vec<u8>,
}

/// Parses a `HERD-HELLO` line; `None` if it is malformed.
pub fn parse_hello(line: &str) -> Option<Hello<'_>> {
    let ["HERD-HELLO", from, to, run_text, nonce, tag] = line.split(' ').collect::<Vec<_>>()[..]
    else {
        return None;
    };
    Some(Hello {
        from,
        to,
        run_text,
        run: crate::protocol::time::parse_digits_u64(run_text.as_bytes())?,
        nonce: decode_hex(nonce).filter(|n| n.len() == 16)?,
        tag: decode_hex(tag).filter(|t| t.len() == 32)?,
    })
}

/// Applies one payload line; returns its sequence number, or `None` if the
/// line is malformed.
fn apply_line(server: &Server, index: usize, line: &[u8], log: &mut MessageLines) -> Option<u64> {
    let name = &server.flood.neighbours[index].name;
    if let Some((seq, at_line)) = update_parts(line) {
        // One lookup of the client: a copy of a report we hold (the same
        // line from another neighbour first, the usual fate of a copy over
        // a link outside the tree) only marks who sent it, since the line
        // was checked when it was first stored; any other line is checked
        // here, under the same lookup, and kept if newer.
        let client_time = || match parse_payload_line(line) {
            Some(PayloadLine::Update { client_time, .. }) => Some(client_time),
            _ => None,
        };
        match server
            .store
            .apply(at_line, Source::Neighbour(index), client_time)
        {
            Applied::Malformed => return None,
            Applied::Same => {}
            Applied::NotNewer => debug!(neighbour = %name, "not newer, dropped"),
            Applied::Stored(stored) => server.stored(stored, at_line),
        }
        log.line(&["received from ", name, ": "], at_line);
        return Some(seq);
    }
    match parse_payload_line(line)? {
        PayloadLine::Complete { seq } => Some(seq),
        PayloadLine::Update {
            seq,
            at_line,
            client_time,
            // Checked by the parser; the store reads it back from the line
            // when a WHATSAT needs it.
            location: _,
        } => {
            log.line(&["received from ", name, ": "], at_line);
            if !server.accept(at_line, client_time, Source::Neighbour(index)) {
                debug!(neighbour = %name, "not newer, dropped");
            }
            Some(seq)
        }
    }
}

/// The number and AT line of an update line (`U <seq> <AT line>`), the AT
/// line unchecked; `None` for other lines.
fn update_parts(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(b"U ")?;
    let space = memchr::memchr(b' ', rest)?;
    let seq = crate::protocol::time::parse_digits_u64(&rest[..space])?;
    Some((seq, &rest[space + 1..]))
}

/// The client id of an update line (`U <seq> <AT line>`), found without
/// checking the rest; `None` for other lines.
fn update_client_id(line: &[u8]) -> Option<&[u8]> {
    let (_, at_line) = update_parts(line)?;
    at_line.get(crate::replica::store::client_id_range(at_line))
}

fn split_word(line: &[u8]) -> Option<(&[u8], &[u8])> {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => Some((&line[..space], &line[space + 1..])),
        None => Some((line, &[])),
    }
}

/// Reads a handshake line of at most 512 bytes, without its `\n`.
async fn read_short_line(reader: &mut BufReader<OwnedReadHalf>) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(512)
        .read_until(b'\n', &mut line)
        .await?;
    if read < 512 && line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed during the handshake",
        )
        .into());
    }
    if line.last() != Some(&b'\n') {
        anyhow::bail!("handshake line too long");
    }
    line.pop();
    Ok(String::from_utf8(line)?)
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take "+a" as a digit pair.
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports held short come due before older ones held long, and the
    /// oldest held still bounds what the neighbour is complete up to.
    #[test]
    fn held_reports_come_due_by_their_wait_and_the_oldest_bounds_complete() {
        let start = Instant::now();
        let mut held = Held::<u64>::default();
        assert_eq!(
            (held.oldest(), held.next_due(), held.len()),
            (None, None, 0)
        );
        held.push(1, start, Wait::Long);
        held.push(2, start, Wait::Short);
        held.push(3, start, Wait::None);
        held.push(4, start + Duration::from_millis(1), Wait::Short);
        assert_eq!(held.len(), 3);
        assert_eq!(held.oldest(), Some(1));
        assert_eq!(held.next_due(), Some(start + SHORT_HOLD));
        assert!(!held.due(start));
        assert_eq!(held.pop_due(start), None);
        // After the short wait: the short ones, in order; 1 still held.
        let later = start + SHORT_HOLD + Duration::from_millis(1);
        assert!(held.due(later));
        assert_eq!(held.pop_due(later), Some(2));
        assert_eq!(held.pop_due(later), Some(4));
        assert_eq!(held.pop_due(later), None);
        assert_eq!(held.oldest(), Some(1));
        assert_eq!(held.next_due(), Some(start + HOLD));
        // Both due at once: the older first.
        held.push(5, start + HOLD - SHORT_HOLD, Wait::Short);
        let end = start + HOLD;
        assert_eq!(held.pop_due(end), Some(1));
        assert_eq!(held.pop_due(end), Some(5));
        assert_eq!(held.len(), 0);
        assert_eq!(held.oldest(), None);
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(encode_hex(&bytes), "0001abff");
        assert_eq!(decode_hex("0001abff"), Some(bytes.to_vec()));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("é1"), None);
        assert_eq!(decode_hex("+a"), None);
    }

    #[test]
    fn frame_tags_depend_on_key_counter_and_payload() {
        let (k, x) = (FrameKey([1; 32]), FrameKey([2; 32]));
        let tag = k.tag(0, b"U 1 AT");
        assert_eq!(tag, k.tag(0, b"U 1 AT"));
        assert_ne!(tag, k.tag(1, b"U 1 AT"));
        assert_ne!(tag, x.tag(0, b"U 1 AT"));
        assert_ne!(tag, k.tag(0, b"U 2 AT"));
        // The counter has a fixed width: no payload passes for another
        // counter's.
        assert_ne!(k.tag(0, b"\x01U"), k.tag(1, b"U"));
    }

    #[test]
    fn payload_lines() {
        assert_eq!(
            parse_payload_line(b"C 12"),
            Some(PayloadLine::Complete { seq: 12 })
        );
        assert_eq!(
            parse_payload_line(b"U 3 AT Hill +0.000000001 k +1+1 5"),
            Some(PayloadLine::Update {
                seq: 3,
                at_line: b"AT Hill +0.000000001 k +1+1 5",
                client_time: Timestamp::parse(b"5").unwrap(),
                location: Location { lat: 1.0, lng: 1.0 },
            })
        );
        for bad in [
            &b"C"[..],
            b"C x",
            b"C 1 2",
            b"U 3",
            b"U 3 AT Hill",
            b"X 1",
            b"",
            b"U -1 AT Hill +0.000000001 k +1+1 5",
            b"C +12",
            b"C 12 ",
        ] {
            assert_eq!(
                parse_payload_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn update_lines_name_their_client() {
        assert_eq!(
            update_client_id(b"U 3 AT Hill +0.000000001 kiwi +1+1 5"),
            Some(&b"kiwi"[..])
        );
        // Only updates; a malformed one may name anything or nothing, as
        // it is only warmed for, not believed.
        assert_eq!(update_client_id(b"C 12"), None);
        assert_eq!(update_client_id(b"U"), None);
        assert_eq!(update_client_id(b"U 3"), None);
        let _ = update_client_id(b"U 3 AT Hill");
    }

    #[test]
    fn hello_lines() {
        let line = format!("HERD-HELLO A B 42 {} {}", "ab".repeat(16), "cd".repeat(32));
        let hello = parse_hello(&line).unwrap();
        assert_eq!((hello.from, hello.to, hello.run), ("A", "B", 42));
        assert!(parse_hello("HERD-HELLO A B 42 00 00").is_none());
        assert!(parse_hello(&line.replace("42", "x")).is_none());
        assert!(parse_hello(&format!("{line} extra")).is_none());
    }

    proptest::proptest! {
        #[test]
        fn peer_parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_payload_line(&bytes);
            let _ = parse_hello(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn macs_are_length_prefixed() {
        let flood = Flood::new(
            "A",
            vec![],
            Routes::default(),
            b"secret".to_vec(),
            1,
            &HashMap::new(),
        );
        let a = flood.mac(&[b"ab", b"c"]).finalize().into_bytes();
        let b = flood.mac(&[b"a", b"bc"]).finalize().into_bytes();
        assert_ne!(a, b);
    }
}

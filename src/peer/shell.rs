//! The tasks that own a server's peer sockets and timers: the listener, one
//! dialler per neighbour, and one task per link direction. They read and
//! write bytes and wait; every decision is `link`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::Links;
use super::auth::FrameKey;
use super::failures::{Failures, human};
use super::link::{Receiver, Sender, Step, Then, start_from};
use super::wire::{
    self, Challenge, Hello, MAX_FRAME, PROTOCOL_VERSION, Refusal, TAG_BYTES, hello_version,
    parse_challenge, parse_hello,
};
use crate::log::{MessageLines, OPERATOR, Show};
use crate::replica::store::Applied;

/// Time to establish a TCP connection to a neighbour.
const CONNECT_TIME: Duration = Duration::from_millis(500);
/// Time for a peer to complete its handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(2);
/// Reconnection backoff: first retry, and the most between retries. A
/// neighbour that comes back dials us, which wakes our dialler at once.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// A neighbour may be out of reach for a moment for ordinary reasons: not
/// listening yet when the whole herd starts together, or stopping or
/// restarting when its link has just gone down. Not reaching it within
/// this time after this server starts, or after the link went down, is no
/// warning. A neighbour that answers and refuses is warned about at once.
const GRACE: Duration = Duration::from_secs(2);

/// Why a link, or an attempt at one, ended. The text of a failed attempt
/// starts with its reason in a few words (`connection refused`, `timed
/// out`, `authentication failed`, `wrong herd`, `protocol version`), which
/// an operator can grep for.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connection refused")]
    ConnectionRefused,
    #[error("network error: {0}")]
    Io(std::io::Error),
    #[error("timed out ({0})")]
    TimedOut(&'static str),
    #[error("closed during the handshake")]
    ClosedInHandshake,
    #[error("not a herd peer port")]
    NotHerd,
    #[error("refused: {0}")]
    Refused(String),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("wrong herd: {0}")]
    WrongHerd(String),
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("protocol version: {0}")]
    Version(String),
    #[error("{0} silent for {1:?}")]
    Silent(String, Duration),
    #[error("closed by {0}")]
    Closed(String),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
}

impl From<std::io::Error> for LinkError {
    fn from(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::ConnectionRefused => LinkError::ConnectionRefused,
            _ => LinkError::Io(error),
        }
    }
}

impl LinkError {
    /// Whether the peer spoke and was not believed, rather than the network
    /// failing or a stranger hanging up: only that is worth a warning on a
    /// peer port, which anyone may knock on.
    pub(super) fn is_refusal(&self) -> bool {
        !matches!(
            self,
            LinkError::Io(_) | LinkError::ConnectionRefused | LinkError::ClosedInHandshake
        )
    }

    /// The kind of failure, which decides when a warning is new.
    pub(super) fn kind(&self) -> std::mem::Discriminant<LinkError> {
        std::mem::discriminant(self)
    }

    /// Whether the neighbour could not be reached at all, rather than
    /// answering wrongly: what a neighbour not started yet looks like.
    fn is_unreachable(&self) -> bool {
        matches!(
            self,
            LinkError::ConnectionRefused
                | LinkError::Io(_)
                | LinkError::TimedOut(_)
                | LinkError::ClosedInHandshake
        )
    }
}

type Result<T> = std::result::Result<T, LinkError>;

impl Links {
    /// Tells the operator, at a falling rate per neighbour (and for all
    /// strangers together), that a dialler was refused on our peer port.
    fn refused(&self, claimed: Option<usize>, address: SocketAddr, error: &LinkError) {
        let now = Instant::now().into_std();
        if !error.is_refusal() {
            debug!("peer handshake from {address} failed: {error}");
            return;
        }
        let outage = {
            let mut incoming = self
                .incoming
                .lock()
                .expect("incoming lock is never poisoned");
            let bucket = claimed.unwrap_or(self.neighbours.len());
            incoming[bucket].failed(error.kind(), now)
        };
        let who = match claimed {
            Some(index) => format!("{address} claiming to be {}", self.neighbours[index].name),
            None => address.to_string(),
        };
        match outage {
            Some(outage) if outage.failures == 1 => {
                warn!(target: OPERATOR, "refused a link from {who}: {error}");
            }
            Some(outage) => warn!(
                target: OPERATOR,
                refused_tries = outage.failures,
                failing_for = %human(outage.lasted),
                "refused a link from {who}: {error}"
            ),
            None => debug!("refused a link from {who}: {error}"),
        }
    }

    /// Notes that neighbour `index` linked in; returns the run of refusals
    /// this ends, if there was one.
    fn welcomed(&self, index: usize) -> Option<super::failures::Outage> {
        self.incoming
            .lock()
            .expect("incoming lock is never poisoned")[index]
            .succeeded(Instant::now().into_std())
    }
}

/// Starts the peer listener and one dialler per neighbour.
pub(super) fn start(
    links: &Arc<Links>,
    listener: TcpListener,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for index in 0..links.neighbours.len() {
        tasks.spawn(dial_loop(links.clone(), index, shutdown.clone()));
    }
    let links = links.clone();
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
            let links = links.clone();
            let shutdown = shutdown.clone();
            inner_tasks.spawn(async move {
                if let Err(error) = receive(&links, stream, address, &shutdown).await {
                    debug!(%address, %error, "peer connection ended");
                }
            });
        }
    });
}

// ----------------------------------------------------------------- sending

/// Keeps the link to neighbour `index` up, streaming our updates over it.
async fn dial_loop(links: Arc<Links>, index: usize, shutdown: CancellationToken) {
    let neighbour = &links.neighbours[index];
    let name = &neighbour.name;
    let address = &neighbour.peer_address;
    let mut backoff = BACKOFF_FIRST;
    let mut failures = Failures::new();
    let mut grace_ends = Instant::now() + GRACE;
    loop {
        let attempt = async {
            // Shorter than the handshake's time, so that a dial lost to a
            // dead network is retried soon after the network heals.
            let stream = timeout(CONNECT_TIME, TcpStream::connect(address))
                .await
                .map_err(|_| LinkError::TimedOut("connecting"))??;
            stream.set_nodelay(true)?;
            dial_handshake(&links, index, stream).await
        };
        let attempt = tokio::select! {
            attempt = timeout(HANDSHAKE_TIME, attempt) => attempt,
            () = shutdown.cancelled() => return,
        };
        let now = Instant::now().into_std();
        match attempt.unwrap_or(Err(LinkError::TimedOut("handshake"))) {
            Ok(link) => {
                match failures.succeeded(now) {
                    Some(outage) => info!(
                        target: OPERATOR,
                        failed_tries = outage.failures,
                        failing_for = %human(outage.lasted),
                        "link up: sending to {name}, after failing"
                    ),
                    None => info!("link up: sending to {name}"),
                }
                links.stats.links_up.bump();
                if let Some(stats) = links.stats.neighbour(index) {
                    stats.set_sending(true);
                }
                links.link_changed(index, true);
                backoff = BACKOFF_FIRST;
                let outcome = send_updates(&links, index, link, &shutdown).await;
                links.stats.links_down.bump();
                if let Some(stats) = links.stats.neighbour(index) {
                    stats.set_sending(false);
                }
                links.link_changed(index, false);
                grace_ends = Instant::now() + GRACE;
                info!(
                    "link down: sending to {name}: {}",
                    outcome
                        .err()
                        .map_or("shutting down".to_owned(), |e| e.to_string())
                );
            }
            Err(error) if error.is_unreachable() && Instant::now() < grace_ends => {
                debug!("cannot link to {name} at {address} yet: {error}");
                failures.failed_quietly(error.kind(), now);
            }
            Err(error) => match failures.failed(error.kind(), now) {
                Some(outage) if outage.failures == 1 => {
                    warn!(target: OPERATOR, "cannot link to {name} at {address}: {error}");
                }
                Some(outage) => warn!(
                    target: OPERATOR,
                    failed_tries = outage.failures,
                    failing_for = %human(outage.lasted),
                    "cannot link to {name} at {address}: {error}"
                ),
                None => debug!("cannot link to {name} at {address}: {error}"),
            },
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = links.wake[index].notified() => {}
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

async fn dial_handshake(links: &Links, index: usize, stream: TcpStream) -> Result<OutgoingLink> {
    let neighbour = &links.neighbours[index];
    let name = &neighbour.name;
    let head = links.replica.store().head();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let challenge = read_short_line(&mut reader).await?;
    let nonce_b = match parse_challenge(&challenge) {
        Some(Challenge::Ours { nonce }) => nonce,
        Some(Challenge::Other { version }) => {
            // Say what we speak before closing, so that the other side can
            // tell its operator too.
            let hello = wire::other_version_hello(&links.me, name);
            let _ = writer.write_all(hello.as_bytes()).await;
            return Err(LinkError::Version(format!(
                "{name} speaks peer protocol {version}, this server {PROTOCOL_VERSION}"
            )));
        }
        None => return Err(LinkError::NotHerd),
    };
    let nonce_a: [u8; 16] = rand::random();
    let run = links.replica.run().to_string();
    let tag = links
        .secret
        .hello_tag(&links.me, name, &run, &nonce_b, &nonce_a);
    let hello = format!(
        "HERD-HELLO {PROTOCOL_VERSION} {} {} {} {} {}\n",
        links.me,
        name,
        run,
        hex::encode(nonce_a),
        hex::encode(tag)
    );
    writer.write_all(hello.as_bytes()).await?;
    let welcome = read_short_line(&mut reader).await?;
    let ["HERD-WELCOME", cursor_run, cursor_seq, tag] = welcome.split(' ').collect::<Vec<_>>()[..]
    else {
        return Err(match Refusal::parse(&welcome) {
            Some(Refusal::Secret) => LinkError::Authentication(format!(
                "{name} does not share this herd's secret (it refused our hello)"
            )),
            Some(Refusal::Neighbour) => LinkError::WrongHerd(format!(
                "{name} does not take {} for a neighbour (is its herd config another?)",
                links.me
            )),
            None => LinkError::Refused(welcome),
        });
    };
    let tag = hex::decode(tag).map_err(|_| LinkError::Malformed("welcome"))?;
    if !links.secret.verify_welcome(
        &links.me,
        name,
        (cursor_run, cursor_seq),
        (&nonce_a, &nonce_b),
        &tag,
    ) {
        return Err(LinkError::Authentication(format!(
            "the server answering as {name} does not share this herd's secret"
        )));
    }
    let parse = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| LinkError::Malformed("welcome"))
    };
    let (cursor_run, cursor_seq) = (parse(cursor_run)?, parse(cursor_seq)?);
    Ok(OutgoingLink {
        reader,
        writer,
        key: links.secret.session_key(&nonce_a, &nonce_b),
        start: start_from(cursor_run, cursor_seq, links.replica.run(), head),
    })
}

/// Streams the store to a neighbour from the cursor on, then every update
/// as it is accepted, until the link fails or the server stops.
async fn send_updates(
    links: &Links,
    index: usize,
    link: OutgoingLink,
    shutdown: &CancellationToken,
) -> Result<()> {
    let name = &links.neighbours[index].name;
    let OutgoingLink {
        mut reader,
        mut writer,
        key,
        start,
    } = link;
    let store = links.replica.store();
    let stats = links.stats.neighbour(index);
    let mut sender = Sender::new(index, start, store.head());
    let mut counter: u64 = 0;
    let mut accepted = links.replica.subscribe();
    let silence = links.timing.silence;
    let mut heartbeat = tokio::time::interval(links.timing.heartbeat);
    let mut last_heard = Instant::now();
    let mut frame = Vec::new();
    let mut control = Vec::new();
    let mut ack = [0u8; 256];
    loop {
        // Mark the signal seen before looking, so an update accepted in
        // between still wakes us below.
        accepted.borrow_and_update();
        let now = Instant::now().into_std();
        // One log line per update, written together (the busiest lines of
        // the log: one clock reading and one lock per frame).
        let mut log = MessageLines::start();
        links.take_control(index, &mut control);
        let routes = links.routes();
        let step = sender.poll(store, &routes, now, &mut control, &mut frame, |at_line| {
            log.line(&["sent to ", name, ": "], at_line);
        });
        drop(log);
        if let Some(stats) = stats {
            stats.sent(sender.complete(), store.head());
        }
        let until = match step {
            Step::Frame { updates, then } => {
                write_frame(&mut writer, &key, &mut counter, &mut frame, silence).await?;
                links.stats.frames_sent.bump();
                links.stats.updates_sent.add(updates as u64);
                if let Some(stats) = stats {
                    stats.updates_sent.add(updates as u64);
                    stats.bytes_sent.add(frame.len() as u64);
                }
                let (announcements, bytes) = sender.take_announced();
                links.stats.announcements_sent.add(announcements);
                links.stats.announcement_bytes_sent.add(bytes);
                match then {
                    Then::Hurry => tokio::task::yield_now().await,
                    Then::Linger(until) => tokio::select! {
                        () = tokio::time::sleep_until(Instant::from_std(until)) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    },
                    Then::Poll => {}
                }
                continue;
            }
            Step::Again => {
                tokio::task::yield_now().await;
                continue;
            }
            Step::Idle { until } => until.map(Instant::from_std),
        };
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
                    return Err(LinkError::Silent(name.clone(), silence));
                }
                sender.heartbeat(&mut frame);
                write_frame(&mut writer, &key, &mut counter, &mut frame, silence).await?;
                links.stats.frames_sent.bump();
                if let Some(stats) = stats {
                    stats.bytes_sent.add(frame.len() as u64);
                }
            }
            changed = accepted.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = links.control_ready[index].notified() => {}
            () = sleep_until_some(until) => {}
            read = reader.read(&mut ack) => {
                if read? == 0 {
                    return Err(LinkError::Closed(name.clone()));
                }
                last_heard = Instant::now();
            }
        }
    }
}

/// Sleeps until `until`, or forever when there is none.
async fn sleep_until_some(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Reads whatever the neighbour has sent back on a link (acknowledgements,
/// whose content does not matter) without waiting, noting when it was heard.
fn take_acks(
    reader: &BufReader<OwnedReadHalf>,
    ack: &mut [u8],
    last_heard: &mut Instant,
    name: &str,
) -> Result<()> {
    loop {
        match reader.get_ref().try_read(ack) {
            Ok(0) => return Err(LinkError::Closed(name.to_owned())),
            Ok(_) => *last_heard = Instant::now(),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Seals and writes one frame built by `wire::start_frame`.
async fn write_frame(
    writer: &mut OwnedWriteHalf,
    key: &FrameKey,
    counter: &mut u64,
    frame: &mut Vec<u8>,
    silence: Duration,
) -> Result<()> {
    key.seal(*counter, frame);
    *counter += 1;
    // A stopped neighbour must not hold this link forever.
    timeout(silence, writer.write_all(frame))
        .await
        .map_err(|_| LinkError::TimedOut("writing"))??;
    Ok(())
}

// --------------------------------------------------------------- receiving

/// Serves one connection to our peer port: a neighbour sending its updates.
async fn receive(
    links: &Links,
    stream: TcpStream,
    address: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    // The neighbour the hello claims to come from, once it names one.
    let mut claimed = None;
    let handshake = timeout(
        HANDSHAKE_TIME,
        welcome(links, &mut reader, &mut writer, &mut claimed),
    )
    .await
    .unwrap_or(Err(LinkError::TimedOut("handshake")));
    let (index, run, key) = match handshake {
        Ok(welcomed) => welcomed,
        Err(error) => {
            links.refused(claimed, address, &error);
            return Err(error);
        }
    };

    let name = links.neighbours[index].name.clone();
    // This neighbour is up: dial it now rather than at the next backoff.
    links.wake[index].notify_one();
    let session = shutdown.child_token();
    if let Some(old) = links
        .sessions
        .lock()
        .expect("session lock is never poisoned")[index]
        .replace(session.clone())
    {
        old.cancel();
    }
    match links.welcomed(index) {
        Some(outage) => info!(
            target: OPERATOR,
            refused_tries = outage.failures,
            failing_for = %human(outage.lasted),
            "link up: receiving from {name}, after refusing it"
        ),
        None => info!("link up: receiving from {name}"),
    }
    let stats = links.stats.neighbour(index);
    if let Some(stats) = stats {
        stats.set_receiving(true);
    }
    links
        .replica
        .store()
        .forget_early(crate::replica::store::Source::Neighbour(index));
    let receiver = Receiver::new(index, run);
    let outcome = tokio::select! {
        outcome = receive_frames(links, &receiver, &name, &key, &mut reader, &mut writer) => outcome,
        () = session.cancelled() => Ok(()),
    };
    // A session replaced by a newer one leaves the state to that one.
    if let Some(stats) = stats
        && (!session.is_cancelled() || shutdown.is_cancelled())
    {
        stats.set_receiving(false);
    }
    info!(
        "link down: receiving from {name}: {}",
        outcome
            .as_ref()
            .err()
            .map_or("replaced or shutting down".to_owned(), |e| e.to_string())
    );
    outcome
}

/// The listener's side of the handshake: challenges the dialler, checks
/// its hello, and welcomes it with our cursor for it. Sets `claimed` to
/// the neighbour the hello names, if it names one, so that a refusal can
/// be told against it.
async fn welcome(
    links: &Links,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    claimed: &mut Option<usize>,
) -> Result<(usize, u64, FrameKey)> {
    let nonce_b: [u8; 16] = rand::random();
    writer
        .write_all(wire::challenge_line(&nonce_b).as_bytes())
        .await?;
    let line = read_short_line(reader).await?;
    let Some((version, from)) = hello_version(&line) else {
        return Err(LinkError::Malformed("hello"));
    };
    *claimed = from.and_then(|from| links.neighbour_index(from.as_bytes()));
    if version != PROTOCOL_VERSION {
        // It has closed, or will: it cannot speak our version either.
        return Err(LinkError::Version(format!(
            "it speaks peer protocol {version}, this server {PROTOCOL_VERSION}"
        )));
    }
    let Some(Hello {
        from,
        to,
        run_text,
        run,
        nonce: nonce_a,
        tag,
    }) = parse_hello(&line)
    else {
        return Err(LinkError::Malformed("hello"));
    };
    // The secret first: only a server of this herd learns from the
    // answer whether it is a neighbour.
    if !links
        .secret
        .verify_hello(from, to, run_text, (&nonce_b, &nonce_a), &tag)
    {
        let _ = writer.write_all(Refusal::Secret.line().as_bytes()).await;
        return Err(LinkError::Authentication(
            "it does not share this herd's secret (its hello failed authentication)".into(),
        ));
    }
    let Some(index) = links
        .neighbour_index(from.as_bytes())
        .filter(|_| to == links.me)
    else {
        let _ = writer.write_all(Refusal::Neighbour.line().as_bytes()).await;
        return Err(LinkError::WrongHerd(if to == links.me {
            format!("{from} is not a neighbour of {to} (is its herd config another?)")
        } else {
            format!("its hello is for {to}, and this is {}", links.me)
        }));
    };
    let cursor = links.replica.cursor_for(index, run);
    let (cursor_run, cursor_seq) = (cursor.run.to_string(), cursor.seq.to_string());
    let tag = links
        .secret
        .welcome_tag(from, to, (&cursor_run, &cursor_seq), (&nonce_a, &nonce_b));
    writer
        .write_all(
            format!(
                "HERD-WELCOME {cursor_run} {cursor_seq} {}\n",
                hex::encode(tag)
            )
            .as_bytes(),
        )
        .await?;
    Ok((index, run, links.secret.session_key(&nonce_a, &nonce_b)))
}

async fn receive_frames(
    links: &Links,
    receiver: &Receiver,
    name: &str,
    key: &FrameKey,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let mut counter: u64 = 0;
    let mut payload = Vec::new();
    let mut last_ack = Instant::now();
    let (silence, heartbeat) = (links.timing.silence, links.timing.heartbeat);
    loop {
        let mut length = [0u8; 4];
        match timeout(silence, reader.read_exact(&mut length)).await {
            Ok(read) => read?,
            Err(_) => return Err(LinkError::Silent(name.to_owned(), silence)),
        };
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_FRAME {
            return Err(LinkError::TooLarge(length));
        }
        payload.resize(length + TAG_BYTES, 0);
        reader.read_exact(&mut payload).await?;
        let (body, tag) = payload.split_at(length);
        // blake3::Hash compares in constant time.
        if key.tag(counter, body) != *tag {
            return Err(LinkError::Authentication(format!(
                "a frame from {name} failed its tag"
            )));
        }
        counter += 1;
        let stats = &links.stats;
        stats.frames_received.bump();
        let neighbour = stats.neighbour(receiver.index());
        if let Some(neighbour) = neighbour {
            neighbour.last_heard.set(crate::stats::unix_millis());
            neighbour
                .bytes_received
                .add((4 + length + TAG_BYTES) as u64);
        }
        let mut log = MessageLines::start();
        let complete = receiver.frame(
            &links.replica,
            body,
            |at_line, applied| {
                stats.updates_received.bump();
                if let Some(neighbour) = neighbour {
                    neighbour.updates_received.bump();
                }
                if let Applied::Stored(_) = applied {
                    stats.updates_stored.bump();
                }
                if applied == Applied::NotNewer {
                    debug!(neighbour = %name, "not newer, dropped");
                }
                log.line(&["received from ", name, ": "], at_line);
            },
            |line| links.learn(receiver.index(), line),
            |line| warn!(neighbour = %name, "ignored a malformed line: {}", Show(line)),
        );
        drop(log);
        links.replica.flush_soon().await?;
        // Acknowledge now and then so the sender knows the link lives.
        if last_ack.elapsed() >= heartbeat {
            let seq = complete.unwrap_or(0);
            timeout(silence, writer.write_all(format!("ACK {seq}\n").as_bytes()))
                .await
                .map_err(|_| LinkError::TimedOut("acknowledging"))??;
            last_ack = Instant::now();
        }
    }
}

/// Reads a handshake line of at most 512 bytes, without its `\n`.
async fn read_short_line(reader: &mut BufReader<OwnedReadHalf>) -> Result<String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(512)
        .read_until(b'\n', &mut line)
        .await?;
    if read < 512 && line.last() != Some(&b'\n') {
        return Err(LinkError::ClosedInHandshake);
    }
    if line.last() != Some(&b'\n') {
        return Err(LinkError::Malformed("handshake line (too long)"));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| LinkError::Malformed("handshake line (not UTF-8)"))
}

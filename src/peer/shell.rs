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
use super::auth::{AuthError, Session};
use super::failures::{Failures, human};
use super::link::{Receiver, Sender, Step, Then, start_from};
use super::wire::{
    self, Challenge, Hello, MAX_FRAME, PROTOCOL_VERSION, Refusal, hello_version, parse_challenge,
    parse_hello,
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
    #[error("frame of more than {0} bytes")]
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
                // A server that is stopping takes no new link: one taken
                // now would come up only to go down again at once.
                biased;
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "peer accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
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

/// An authenticated, encrypted sending side of a link.
struct OutgoingLink {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    session: Session,
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
    match parse_challenge(&challenge) {
        Some(Challenge::Ours { .. }) => {}
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
    }
    let keys = links.keyring.keys();
    let key = keys.current();
    let hello = wire::hello_line(&links.me, name, key.id());
    // Both opening lines are bound into the handshake: the listener's
    // fresh nonce makes a recorded hello useless on another connection.
    let mut handshake = key.initiator(format!("{challenge}\n{hello}").as_bytes());
    let message = handshake.write(&wire::hello_payload(&links.me, name, links.replica.run()));
    let mut out = hello.into_bytes();
    push_message(&mut out, &message);
    writer.write_all(&out).await?;
    let answer = read_short_line(&mut reader).await?;
    if answer != wire::WELCOME_LINE.trim_end() {
        return Err(match Refusal::parse(&answer) {
            Some(Refusal::Secret) => LinkError::Authentication(format!(
                "{name} does not share this herd's secret (it refused key {})",
                key.id()
            )),
            Some(Refusal::Neighbour) => LinkError::WrongHerd(format!(
                "{name} does not take {} for a neighbour (is its herd config another?)",
                links.me
            )),
            None => LinkError::Refused(answer),
        });
    }
    let message = read_message(&mut reader).await?;
    let payload = handshake.read(&message).map_err(|_| {
        LinkError::Authentication(format!(
            "the server answering as {name} does not share this herd's secret"
        ))
    })?;
    let (cursor_run, cursor_seq) =
        wire::parse_welcome_payload(&payload).ok_or(LinkError::Malformed("welcome"))?;
    Ok(OutgoingLink {
        reader,
        writer,
        session: handshake
            .finish()
            .map_err(|_| LinkError::Malformed("handshake"))?,
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
        mut session,
        start,
    } = link;
    let store = links.replica.store();
    let stats = links.stats.neighbour(index);
    // A neighbour that was away may have lost what it said it held.
    store.forget_told(crate::replica::store::Source::Neighbour(index));
    let mut sender = Sender::new(index, start, store.head());
    let mut sealed = Vec::new();
    // Acknowledgement records read but not yet whole.
    let mut acks = reader.buffer().to_vec();
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
                write_frame(&mut writer, &mut session, &frame, &mut sealed, silence).await?;
                links.stats.frames_sent.bump();
                links.stats.updates_sent.add(updates as u64);
                if let Some(stats) = stats {
                    stats.updates_sent.add(updates as u64);
                    stats.bytes_sent.add(sealed.len() as u64);
                }
                let (marks, bytes) = sender.take_marks_sent();
                links.stats.watermarks_sent.add(marks);
                links.stats.watermark_bytes_sent.add(bytes);
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
                take_acks(&reader, &mut ack, &mut acks, &mut session, &mut last_heard, name)?;
                if last_heard.elapsed() > silence {
                    return Err(LinkError::Silent(name.clone(), silence));
                }
                sender.heartbeat(&mut frame);
                write_frame(&mut writer, &mut session, &frame, &mut sealed, silence).await?;
                links.stats.frames_sent.bump();
                if let Some(stats) = stats {
                    stats.bytes_sent.add(sealed.len() as u64);
                }
            }
            changed = accepted.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = links.control_ready[index].notified() => {}
            () = sleep_until_some(until) => {}
            read = reader.get_mut().read(&mut ack) => {
                let read = read?;
                if read == 0 {
                    return Err(LinkError::Closed(name.clone()));
                }
                acks.extend_from_slice(&ack[..read]);
                open_acks(&mut session, &mut acks, name)?;
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

/// Reads whatever the neighbour has sent back on a link (acknowledgements)
/// without waiting, noting when it was heard.
fn take_acks(
    reader: &BufReader<OwnedReadHalf>,
    ack: &mut [u8],
    acks: &mut Vec<u8>,
    session: &mut Session,
    last_heard: &mut Instant,
    name: &str,
) -> Result<()> {
    loop {
        match reader.get_ref().try_read(ack) {
            Ok(0) => return Err(LinkError::Closed(name.to_owned())),
            Ok(read) => {
                acks.extend_from_slice(&ack[..read]);
                open_acks(session, acks, name)?;
                *last_heard = Instant::now();
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Decrypts the whole acknowledgement records at the front of `acks`. Their
/// content does not matter, only that they are the neighbour's: one that
/// fails to decrypt ends the link.
fn open_acks(session: &mut Session, acks: &mut Vec<u8>, name: &str) -> Result<()> {
    let mut used = 0;
    while let Some((message, rest)) = wire::split_record(&acks[used..]) {
        session
            .open(message)
            .map_err(|error| frame_error(error, name, "an acknowledgement"))?;
        used = acks.len() - rest.len();
    }
    acks.drain(..used);
    Ok(())
}

/// What a record that failed to open means for the link.
fn frame_error(error: AuthError, name: &str, what: &str) -> LinkError {
    match error {
        AuthError::TooLarge => LinkError::TooLarge(MAX_FRAME),
        _ => LinkError::Authentication(format!("{what} from {name} failed to decrypt")),
    }
}

/// Encrypts and writes one frame built by `wire::start_frame`.
async fn write_frame(
    writer: &mut OwnedWriteHalf,
    session: &mut Session,
    frame: &[u8],
    sealed: &mut Vec<u8>,
    silence: Duration,
) -> Result<()> {
    sealed.clear();
    session.seal(wire::payload(frame), sealed);
    // A stopped neighbour must not hold this link forever.
    timeout(silence, writer.write_all(sealed))
        .await
        .map_err(|_| LinkError::TimedOut("writing"))??;
    Ok(())
}

/// Appends a handshake message with its 2-byte length.
fn push_message(out: &mut Vec<u8>, message: &[u8]) {
    let length = u16::try_from(message.len()).expect("a Noise message is at most 65535 bytes");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(message);
}

/// Reads one record or handshake message: a 2-byte big-endian length and
/// that many bytes.
async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> Result<Vec<u8>> {
    let mut message = Vec::new();
    read_message_into(reader, &mut message).await?;
    Ok(message)
}

async fn read_message_into(
    reader: &mut BufReader<OwnedReadHalf>,
    message: &mut Vec<u8>,
) -> Result<()> {
    let mut length = [0u8; 2];
    reader.read_exact(&mut length).await?;
    message.resize(usize::from(u16::from_be_bytes(length)), 0);
    reader.read_exact(message).await?;
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
    let welcoming = timeout(
        HANDSHAKE_TIME,
        welcome(links, &mut reader, &mut writer, &mut claimed),
    );
    // Nor does it finish welcoming one it took just before.
    let handshake = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(()),
        welcomed = welcoming => welcomed.unwrap_or(Err(LinkError::TimedOut("handshake"))),
    };
    let (index, run, noise) = match handshake {
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
        .forget_told(crate::replica::store::Source::Neighbour(index));
    let receiver = Receiver::new(index, run);
    let outcome = tokio::select! {
        outcome = receive_frames(links, &receiver, &name, noise, &mut reader, &mut writer) => outcome,
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
) -> Result<(usize, u64, Session)> {
    let nonce_b: [u8; 16] = rand::random();
    let challenge = wire::challenge_line(&nonce_b);
    writer.write_all(challenge.as_bytes()).await?;
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
    let Some(Hello { from, to, key_id }) = parse_hello(&line) else {
        return Err(LinkError::Malformed("hello"));
    };
    let message = read_message(reader).await?;
    let keys = links.keyring.keys();
    // The secret first: only a server of this herd learns from the
    // answer whether it is a neighbour.
    let Some(key) = keys.find(key_id) else {
        let _ = writer.write_all(Refusal::Secret.line().as_bytes()).await;
        return Err(LinkError::Authentication(format!(
            "it does not share this herd's secret (it uses key {key_id}, which this server does not hold)"
        )));
    };
    let mut handshake = key.responder(format!("{challenge}{line}\n").as_bytes());
    let Ok(payload) = handshake.read(&message) else {
        let _ = writer.write_all(Refusal::Secret.line().as_bytes()).await;
        return Err(LinkError::Authentication(format!(
            "it does not share this herd's secret (its handshake failed with key {key_id})"
        )));
    };
    // The names inside, which the key vouches for, must be those outside.
    let Some((_, _, run)) = wire::parse_hello_payload(&payload)
        .filter(|&(inner_from, inner_to, _)| (inner_from, inner_to) == (from, to))
    else {
        return Err(LinkError::Malformed("hello"));
    };
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
    let message = handshake.write(&wire::welcome_payload(cursor.run, cursor.seq));
    let mut out = wire::WELCOME_LINE.as_bytes().to_vec();
    push_message(&mut out, &message);
    writer.write_all(&out).await?;
    let session = handshake
        .finish()
        .map_err(|_| LinkError::Malformed("handshake"))?;
    Ok((index, run, session))
}

async fn receive_frames(
    links: &Links,
    receiver: &Receiver,
    name: &str,
    mut session: Session,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> Result<()> {
    let mut message = Vec::new();
    let mut sealed = Vec::new();
    // The bytes of the records of the frame being read, as counted.
    let mut frame_bytes = 0;
    let mut last_ack = Instant::now();
    let (silence, heartbeat) = (links.timing.silence, links.timing.heartbeat);
    loop {
        match timeout(silence, read_message_into(reader, &mut message)).await {
            Ok(read) => read?,
            Err(_) => return Err(LinkError::Silent(name.to_owned(), silence)),
        };
        frame_bytes += 2 + message.len();
        // A frame that fails to decrypt ends the link, and nothing of it
        // is applied: records are only taken in once the frame is whole.
        let Some(body) = session
            .open(&message)
            .map_err(|error| frame_error(error, name, "a frame"))?
        else {
            continue;
        };
        let stats = &links.stats;
        stats.frames_received.bump();
        let neighbour = stats.neighbour(receiver.index());
        if let Some(neighbour) = neighbour {
            neighbour.last_heard.set(crate::stats::unix_millis());
            neighbour
                .bytes_received
                .add(u64::try_from(frame_bytes).unwrap_or(u64::MAX));
        }
        frame_bytes = 0;
        let mut log = MessageLines::start();
        let complete = receiver.frame(
            &links.replica,
            body,
            |at_line, applied| {
                stats.updates_received.bump();
                if let Some(neighbour) = neighbour {
                    neighbour.updates_received.bump();
                }
                match applied {
                    Applied::Stored(_) => stats.updates_stored.bump(),
                    Applied::NotNewer => debug!(neighbour = %name, "not newer, dropped"),
                    Applied::Expired => stats.updates_expired.bump(),
                    Applied::Full => {
                        stats.updates_refused.bump();
                        if let Some(refused) = links.refusals.event(crate::replica::unix_secs()) {
                            warn!(
                                target: OPERATOR,
                                neighbour = %name,
                                refused,
                                "the store is at its ceiling for neighbours' reports: \
                                 updates about new clients are dropped (do the servers share \
                                 [limits] max_clients?)"
                            );
                        }
                    }
                    Applied::Same | Applied::Malformed => {}
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
            sealed.clear();
            session.seal(format!("ACK {seq}\n").as_bytes(), &mut sealed);
            timeout(silence, writer.write_all(&sealed))
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

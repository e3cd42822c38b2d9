//! One client connection: lines in, one reply per line, in order; over a
//! TCP socket or over TLS, by the same code.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Clients;
use super::handler::{Answered, handle};
use crate::log::MessageLines;
use crate::protocol::framing::{Frame, LineFramer};
use crate::stats::{Command, ServerStats};

/// The lines answered since replies were last written, by command. A
/// line's latency runs from the read its bytes came in (the receipt time
/// IAMAT's skew is counted from) to the write of its reply: one clock
/// reading per batch of replies.
struct Unreplied {
    lines: [u64; Command::ALL.len()],
}

impl Unreplied {
    fn answered(&mut self, command: Command) {
        self.lines[command as usize] += 1;
    }

    /// The replies to lines read at `received` were written: times every
    /// line answered since.
    fn replied(&mut self, stats: &ServerStats, received: i128) {
        let nanos = u64::try_from(now_nanos() - received).unwrap_or(0);
        let took = Duration::from_nanos(nanos);
        for command in Command::ALL {
            stats
                .latency(command)
                .observe_many(took, self.lines[command as usize]);
        }
        self.lines = [0; Command::ALL.len()];
    }
}

/// The bytes of a client connection: a TCP socket, or TLS over one.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// Waits until a read would find bytes (or the end) without waiting,
    /// as far as the stream can tell without a buffer of the caller's: so
    /// that an idle connection holds no read buffer.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl ClientStream for TcpStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    async fn readable(&self) -> std::io::Result<()> {
        let (socket, session) = self.get_ref();
        // Bytes already decrypted, or the client's close_notify, are read
        // without the socket; else a read needs the socket's next bytes.
        // (A read leaves the socket readable unless it drained it, and it
        // decrypts every whole record it has, so this misses nothing.)
        if !session.wants_read() {
            return Ok(());
        }
        socket.readable().await
    }
}

/// Serves one client connection until it closes, idles out or the server
/// stops.
pub async fn serve<S: ClientStream>(
    clients: &Clients,
    mut stream: S,
    address: SocketAddr,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    debug!(%address, "client connected");
    // Formatted once: every message in and out is logged with it.
    let address_text = address.to_string();
    let limits = &clients.limits;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut framer = LineFramer::new(limits.max_line_bytes);
    let mut out = Vec::new();
    let mut deadline = Instant::now() + idle;
    // When the bytes being answered were read: the receipt time of every
    // line they hold (they arrived together), from which IAMAT's skew is
    // counted. One clock reading per read, not per line.
    let mut received = now_nanos();
    let mut unreplied = Unreplied {
        lines: [0; Command::ALL.len()],
    };
    // One idle timer and one shutdown waiter for the connection's life,
    // rather than a new one registered and dropped at every read: the
    // timer is moved on only when it fires early (lines came meanwhile).
    let idle_timer = tokio::time::sleep_until(deadline);
    let cancelled = shutdown.cancelled();
    tokio::pin!(idle_timer, cancelled);
    loop {
        let mut answered = false;
        // The lines of one read, logged together (see `MessageLines`).
        let mut log = MessageLines::start();
        while let Some(frame) = framer.next_frame() {
            answered = true;
            let command = answer(clients, frame, received, &address_text, &mut out, &mut log).await;
            unreplied.answered(command);
            // A client that does not read its replies stops being read.
            if out.len() >= limits.max_unsent_bytes {
                log.restamp();
                reply(clients, &mut stream, &mut out, idle).await?;
                unreplied.replied(&clients.stats, received);
            }
        }
        drop(log);
        if !out.is_empty() {
            reply(clients, &mut stream, &mut out, idle).await?;
            unreplied.replied(&clients.stats, received);
        }
        // Idle means no complete line (bytes alone do not count: a slowloris
        // client is cut off too); one clock reading per batch of lines.
        if answered {
            deadline = Instant::now() + idle;
        }
        // Wait for bytes before giving the connection a buffer, so that idle
        // connections cost no buffer memory.
        framer.release_if_empty();
        tokio::select! {
            ready = stream.readable() => ready?,
            () = &mut idle_timer => {
                if Instant::now() >= deadline {
                    debug!(%address, "idle timeout; closing");
                    break;
                }
                idle_timer.as_mut().reset(deadline);
                continue;
            }
            () = &mut cancelled => break,
        }
        // Read no more than the framer needs, so an endless line costs at
        // most `max_line_bytes` of memory.
        let room = framer.room();
        let mut buffer = framer.buffer().limit(room);
        // Tokio's own read notices a short read and forgets the readiness,
        // which saves the WouldBlock read the next turn would make; polled
        // once, since the socket was just reported readable.
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut buffer) => read,
            () = std::future::ready(()) => continue,
        };
        match read {
            Ok(0) => {
                // EOF: answer what is left, then close.
                if let Some(frame) = framer.finish() {
                    let mut log = MessageLines::start();
                    let command =
                        answer(clients, frame, received, &address_text, &mut out, &mut log).await;
                    unreplied.answered(command);
                    drop(log);
                    reply(clients, &mut stream, &mut out, idle).await?;
                    unreplied.replied(&clients.stats, received);
                }
                break;
            }
            Ok(_) => received = now_nanos(),
            Err(error) => return Err(error),
        }
    }
    debug!(%address, "client disconnected");
    stream.shutdown().await
}

/// Writes the replies in `out`, once the updates they acknowledge are
/// handed to every neighbour link and as durable as the storage setting
/// promises.
async fn reply<S: ClientStream>(
    clients: &Clients,
    stream: &mut S,
    out: &mut Vec<u8>,
    patience: Duration,
) -> std::io::Result<()> {
    clients.replica.announce();
    clients.replica.commit().await?;
    // TLS may keep the last record of a write back until flushed; a TCP
    // socket's flush does nothing.
    let written = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    tokio::time::timeout(patience, written)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
        })??;
    out.clear();
    Ok(())
}

/// Answers one line into `out` and logs both; says what the line was.
async fn answer(
    clients: &Clients,
    frame: Frame,
    received: i128,
    address: &str,
    out: &mut Vec<u8>,
    log: &mut MessageLines,
) -> Command {
    match &frame {
        Frame::Line(line) => log.line(&["address=", address, " received: "], line),
        Frame::TooLong(head) => log.line(
            &[
                "address=",
                address,
                " received an over-long line starting: ",
            ],
            &head[..head.len().min(80)],
        ),
    }
    let start = out.len();
    match handle(clients, &frame, received, out).await {
        // An answer from the cache is written out in full the first time
        // only, numbered; later sends of the same answer refer to it. For a
        // server answering many WHATSATs about the same places, this keeps
        // the log (and the disk writes behind it) to a few lines per answer.
        // The reference names the run as well as the number: numbers start
        // again in each run of the server, and runs share a log file.
        Answered::Places { at_line, rendered } if rendered.number != 0 => {
            let number = rendered.number.to_string();
            let run = clients.answers.run();
            let head = [
                "address=", address, " places=", &number, " run=", run, " sent: ",
            ];
            if rendered.logged_before() {
                log.line_with_tail(
                    &head,
                    &at_line,
                    &[
                        "\\n(places answer ",
                        &number,
                        " of run ",
                        run,
                        " as first sent)\\n",
                    ],
                );
            } else {
                log.line_with_tail(&head, &at_line, &["\\n", &rendered.logged, "\\n"]);
            }
            Command::Whatsat
        }
        Answered::Places { at_line, rendered } => {
            // A remote provider's answer, maybe seconds later.
            log.restamp();
            log.line_with_tail(
                &["address=", address, " sent: "],
                &at_line,
                &["\\n", &rendered.logged, "\\n"],
            );
            Command::Whatsat
        }
        Answered::Line(command) => {
            let reply = &out[start..];
            log.line(
                &["address=", address, " sent: "],
                reply.strip_suffix(b"\n").unwrap_or(reply),
            );
            command
        }
    }
}

/// Wall-clock nanoseconds since the epoch (negative before it).
fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

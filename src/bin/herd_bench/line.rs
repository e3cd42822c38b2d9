//! A connection used one request at a time (seeding, propagation probes,
//! the idle-connection probe), and the address and clock helpers the
//! subcommands share.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::reply::{Kind, reply_end};

/// Resolves `HOST:PORT`, refusing anything outside the loopback range
/// unless `allow_remote` (load is only ever meant for this machine).
pub fn resolve(addr: &str, allow_remote: bool) -> anyhow::Result<SocketAddr> {
    let resolved = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    if !resolved.ip().is_loopback() && !allow_remote {
        bail!("{addr} is not a loopback address; pass --allow-non-loopback to load it anyway");
    }
    Ok(resolved)
}

/// Nanoseconds since the epoch, by the wall clock.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0)
}

/// A short id that makes client ids differ between runs of this tool.
pub fn run_id() -> String {
    let nanos = unix_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0x100_0000)
}

/// Connects with a timeout and turns Nagle off (requests are small).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connection that sends one request and reads its whole reply.
pub struct LineConn {
    stream: TcpStream,
    buf: Vec<u8>,
    scanned: usize,
}

impl LineConn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        Ok(LineConn {
            stream: connect(addr, timeout).await?,
            buf: Vec::with_capacity(16 * 1024),
            scanned: 0,
        })
    }

    /// Sends `request` and returns its reply, terminator included. After a
    /// timeout the connection is out of step and should be dropped.
    pub async fn round_trip(
        &mut self,
        request: &[u8],
        kind: Kind,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let exchange = async {
            self.stream.write_all(request).await?;
            loop {
                if let Some(len) = reply_end(&self.buf, kind, &mut self.scanned) {
                    return Ok(self.buf.drain(..len).collect());
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("the server closed the connection before replying");
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .context("no reply in time")?
    }

    /// The socket, once nothing unread is left in the buffer.
    pub fn into_stream(self) -> anyhow::Result<TcpStream> {
        if !self.buf.is_empty() {
            bail!("the server sent more than one reply to one request");
        }
        Ok(self.stream)
    }
}

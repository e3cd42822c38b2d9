//! A connection used one request at a time (seeding, propagation probes,
//! the idle-connection probe), and the address and clock helpers the
//! subcommands share.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::reply::{ClientTime, Kind, reply_end};

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

/// The wall clock as a client time (without `unix_nanos`'s 128-bit
/// division: the load reads it for every batch of requests).
pub fn wall_clock() -> ClientTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| ClientTime {
            secs: since.as_secs(),
            nanos: since.subsec_nanos(),
        })
        .unwrap_or_default()
}

/// A short id that makes client ids differ between runs of this tool.
pub fn run_id() -> String {
    let nanos = unix_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0x100_0000)
}

/// Connects with a timeout and turns Nagle off (requests are small).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    connect_from(addr, None, timeout).await
}

/// Connects from a given local address (`None`: the system picks), with a
/// timeout, and turns Nagle off.
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let connecting = async {
        match source {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = match addr {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        }
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The local address to open connection `index` from when connections are
/// spread `per_source` to an address over the loopback range (127.0.0.2,
/// 127.0.0.3, ...), so that a server's per-address connection limit sees
/// many clients, as it would in the field. `None`: no spreading.
pub fn spread_source(addr: SocketAddr, index: usize, per_source: usize) -> Option<IpAddr> {
    if per_source == 0 || !addr.ip().is_loopback() || !addr.is_ipv4() {
        return None;
    }
    // 127.0.0.2 upwards, wrapping within 127.0.0.0/8 far beyond any real need.
    let host = u32::try_from(index / per_source).unwrap_or(u32::MAX) % 0x00ff_fff0 + 2;
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host)))
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

    /// Writes `requests` whole (pipelined: replies are read with `reply`).
    pub async fn send(&mut self, requests: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(requests).await.context("writing")
    }

    /// The next whole reply, terminator included, waiting until `deadline`.
    pub async fn reply(&mut self, kind: Kind, deadline: Instant) -> anyhow::Result<Vec<u8>> {
        let reading = async {
            loop {
                if let Some(len) = reply_end(&self.buf, kind, &mut self.scanned) {
                    return Ok(self.buf.drain(..len).collect());
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("the server closed the connection before replying");
                }
            }
        };
        tokio::time::timeout_at(deadline, reading)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_loopback_sources() {
        let local: SocketAddr = "127.0.0.1:12000".parse().unwrap();
        let source = |index| spread_source(local, index, 500);
        assert_eq!(source(0), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(source(499), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(source(500), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
        assert_eq!(
            source(500 * 300),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 46)))
        );
        assert_eq!(spread_source(local, 7, 0), None);
        let remote: SocketAddr = "192.0.2.1:12000".parse().unwrap();
        assert_eq!(spread_source(remote, 7, 500), None);
    }
}

//! Readiness, as systemd's `sd_notify` protocol has it: a process started
//! with `$NOTIFY_SOCKET` sends `READY=1` in a datagram to that Unix socket
//! once it serves, and `STOPPING=1` as it stops. `herd serve` sends them;
//! `herd up` listens for them from each server it starts, and so can a
//! systemd unit of `Type=notify`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable that names the socket.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The address `$NOTIFY_SOCKET` names: a path, or with a leading `@` a
/// name in Linux's abstract namespace.
pub(crate) fn socket_address(name: &str) -> io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(name),
    }
}

/// Sends `state` (such as `READY=1`) to `$NOTIFY_SOCKET`, if it is set.
pub(crate) fn notify(state: &str) -> io::Result<()> {
    let Some(name) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(());
    };
    let name = name
        .into_string()
        .map_err(|_| io::Error::other("$NOTIFY_SOCKET is not UTF-8"))?;
    let address = socket_address(&name)?;
    let message = format!("{state}\nMAINPID={}\n", std::process::id());
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

/// Whether `datagram` says its sender is ready.
pub(crate) fn says_ready(datagram: &[u8]) -> bool {
    datagram
        .split(|&b| b == b'\n')
        .any(|line| line == b"READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_one_line_among_others() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=serving\nREADY=1\nMAINPID=7\n"));
        assert!(!says_ready(b"STOPPING=1\n"));
        assert!(!says_ready(b"READY=10"));
    }

    #[test]
    fn a_notification_reaches_an_abstract_socket() {
        let name = format!("herd-notify-test-{}", std::process::id());
        let address = socket_address(&format!("@{name}")).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to_addr(b"READY=1\n", &address).unwrap();
        let mut buffer = [0u8; 64];
        let read = listener.recv(&mut buffer).unwrap();
        assert!(says_ready(&buffer[..read]));
    }
}

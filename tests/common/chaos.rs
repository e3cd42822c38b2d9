//! Fault injection for peer links: a TCP proxy in front of each server's
//! peer port that can cut the link between any two servers.
//!
//! Each server gets a config of its own in which every other server's `peer`
//! address is that server's proxy, so every link connection passes through
//! the proxy of the server it dials. The proxy relays bytes both ways and
//! learns who is dialling from the handshake: the listening server sends
//! `HERD-CHALLENGE 3 <hex>` first, then the dialler sends
//! `HERD-HELLO 3 <from> <to> <key id>` in the clear, and only encrypted
//! Noise messages after it. While the link {from, to} is
//! cut, its connections are closed and new ones are closed as soon as their
//! hello shows whose they are; healing lets the next dial through. A link
//! can also fail silently (`swallow`): its connections stay open and every
//! byte is dropped, as on a network that went dark.
//!
//! Only loopback addresses; every blocking call has a timeout or ends when
//! its socket is shut down.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Time for a dialler to send its hello once the challenge is relayed.
const HELLO_TIME: Duration = Duration::from_secs(5);
/// Time to connect to a real peer port (on loopback: refused or at once).
const CONNECT_TIME: Duration = Duration::from_secs(1);
/// A relayed write that cannot finish in this long (the reader is stopped
/// and its buffers are full) ends the connection: the servers would have
/// dropped the link by then anyway.
const WRITE_TIME: Duration = Duration::from_secs(10);

/// One relayed connection, once its hello said whose it is.
struct Relayed {
    from: String,
    to: String,
    dialler: TcpStream,
    listener: TcpStream,
}

impl Relayed {
    fn close(&self) {
        let _ = self.dialler.shutdown(Shutdown::Both);
        let _ = self.listener.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    /// Cut links, as (smaller name, larger name).
    cut: HashSet<(String, String)>,
    /// Links whose bytes vanish, their connections left open.
    swallowed: HashSet<(String, String)>,
    /// Open relayed connections by id.
    open: HashMap<u64, Relayed>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    stopping: AtomicBool,
    relayed: AtomicU64,
    refused: AtomicU64,
    severed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// Counts of what the proxies did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyStats {
    /// Connections relayed after their hello.
    pub relayed: u64,
    /// New connections closed because their link was cut.
    pub refused: u64,
    /// Open connections closed by a cut.
    pub severed: u64,
}

/// The proxies in front of every server's peer port.
pub struct LinkProxies {
    shared: Arc<Shared>,
    /// Server name -> the proxy address its neighbours dial.
    addresses: HashMap<String, SocketAddr>,
    acceptors: Vec<JoinHandle<()>>,
}

impl LinkProxies {
    /// Starts one proxy per `(server name, real peer address)`.
    pub fn start(targets: &[(String, SocketAddr)]) -> LinkProxies {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stopping: AtomicBool::new(false),
            relayed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            severed: AtomicU64::new(0),
        });
        let mut addresses = HashMap::new();
        let mut acceptors = Vec::new();
        for (name, upstream) in targets {
            let listener = TcpListener::bind("127.0.0.1:0").expect("binding a proxy port");
            addresses.insert(name.clone(), listener.local_addr().expect("proxy address"));
            let shared = shared.clone();
            let (name, upstream) = (name.clone(), *upstream);
            acceptors.push(
                std::thread::Builder::new()
                    .name(format!("proxy-{name}"))
                    .spawn(move || accept_loop(&shared, listener, &name, upstream))
                    .expect("spawning a proxy thread"),
            );
        }
        LinkProxies {
            shared,
            addresses,
            acceptors,
        }
    }

    /// The address that server `name`'s neighbours should dial.
    pub fn address(&self, name: &str) -> SocketAddr {
        self.addresses[name]
    }

    /// Cuts the link between `a` and `b`: closes its connections, both
    /// directions, and closes new ones until healed.
    pub fn cut(&self, a: &str, b: &str) {
        let key = link(a, b);
        let mut state = self.shared.lock();
        state.cut.insert(key.clone());
        let doomed: Vec<u64> = state
            .open
            .iter()
            .filter(|(_, r)| link(&r.from, &r.to) == key)
            .map(|(&id, _)| id)
            .collect();
        for id in doomed {
            if let Some(relayed) = state.open.remove(&id) {
                relayed.close();
                self.shared.severed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Makes the link between `a` and `b` fail silently: its connections
    /// stay open, and from now on every byte either way is dropped.
    pub fn swallow(&self, a: &str, b: &str) {
        self.shared.lock().swallowed.insert(link(a, b));
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        let mut state = self.shared.lock();
        state.cut.remove(&link(a, b));
        state.swallowed.remove(&link(a, b));
    }

    /// Heals every cut link.
    pub fn heal_all(&self) {
        let mut state = self.shared.lock();
        state.cut.clear();
        state.swallowed.clear();
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            relayed: self.shared.relayed.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            severed: self.shared.severed.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every relayed connection.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for relayed in self.shared.lock().open.values() {
            relayed.close();
        }
        // Wake each acceptor blocked in accept() so it sees `stopping`.
        for address in self.addresses.values() {
            let _ = TcpStream::connect_timeout(address, CONNECT_TIME);
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}

impl Drop for LinkProxies {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, to: &str, upstream: SocketAddr) {
    for dialler in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(dialler) = dialler else { continue };
        let shared = shared.clone();
        let to = to.to_owned();
        let _ = std::thread::Builder::new()
            .name(format!("relay-{to}"))
            .spawn(move || relay(&shared, dialler, &to, upstream));
    }
}

/// Relays one dialled connection to the real peer port `upstream` of `to`.
fn relay(shared: &Arc<Shared>, dialler: TcpStream, to: &str, upstream: SocketAddr) {
    // A server that is down refuses; the dialler sees its connection close.
    let Ok(listener) = TcpStream::connect_timeout(&upstream, CONNECT_TIME) else {
        return;
    };
    for stream in [&dialler, &listener] {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIME));
    }
    let (Ok(dialler_out), Ok(listener_in)) = (dialler.try_clone(), listener.try_clone()) else {
        return;
    };
    // Which link this is, once the hello says (see `swallow`).
    let key: Arc<OnceLock<(String, String)>> = Arc::default();
    let swallowing = {
        let (shared, key) = (shared.clone(), key.clone());
        move || {
            key.get()
                .is_some_and(|k| shared.lock().swallowed.contains(k))
        }
    };
    // Listener -> dialler, from the challenge on.
    let back_swallowing = swallowing.clone();
    let back = std::thread::Builder::new()
        .name(format!("relay-back-{to}"))
        .spawn(move || pump(listener_in, dialler_out, back_swallowing));
    let Ok(back) = back else { return };

    // Dialler -> listener: first the hello, to learn who is dialling.
    let _ = dialler.set_read_timeout(Some(HELLO_TIME));
    let mut first = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let mut reader = &dialler;
    while !first.contains(&b'\n') && first.len() < 512 {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => {
                close_both(&dialler, &listener);
                let _ = back.join();
                return;
            }
            Ok(n) => first.extend_from_slice(&chunk[..n]),
        }
    }
    let line_end = first
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(first.len());
    let hello = String::from_utf8_lossy(&first[..line_end]).into_owned();
    let fields: Vec<&str> = hello.split(' ').collect();
    // Anything else (a stranger) is relayed as is and never cut.
    let from = match fields[..] {
        ["HERD-HELLO", _version, from, claimed_to, ..] if claimed_to == to => Some(from.to_owned()),
        _ => None,
    };
    let mut id = None;
    if let Some(from) = &from {
        let mut state = shared.lock();
        if state.cut.contains(&link(from, to)) || shared.stopping.load(Ordering::SeqCst) {
            drop(state);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            close_both(&dialler, &listener);
            let _ = back.join();
            return;
        }
        let (Ok(d), Ok(l)) = (dialler.try_clone(), listener.try_clone()) else {
            drop(state);
            close_both(&dialler, &listener);
            let _ = back.join();
            return;
        };
        let _ = key.set(link(from, to));
        let this = state.next_id;
        state.next_id += 1;
        state.open.insert(
            this,
            Relayed {
                from: from.clone(),
                to: to.to_owned(),
                dialler: d,
                listener: l,
            },
        );
        id = Some(this);
        shared.relayed.fetch_add(1, Ordering::Relaxed);
    }
    let _ = dialler.set_read_timeout(None);
    if (&listener).write_all(&first).is_ok() {
        pump(
            dialler.try_clone().expect("cloning a socket"),
            listener.try_clone().expect("cloning a socket"),
            swallowing,
        );
    }
    close_both(&dialler, &listener);
    let _ = back.join();
    if let Some(id) = id {
        shared.lock().open.remove(&id);
    }
}

/// Copies `from` to `to` until either ends, then closes both; while
/// `swallowing` says so, what is read is dropped instead.
fn pump(mut from: TcpStream, mut to: TcpStream, swallowing: impl Fn() -> bool) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !swallowing() && to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    close_both(&from, &to);
}

fn close_both(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

//! The peer port believes only servers that know the herd's secret, and
//! even they cannot have a recorded session replayed, or a frame altered or
//! repeated or reordered (SPEC §6; the handshake is in docs/protocol.md).
//!
//! The test plays a neighbour itself, with the real secret, to record real
//! traffic and then tamper with it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Herd;
use common::now_text;
use herd::peer::auth::{Key, Session};
use herd::peer::wire;

const PAIR: &[(&str, &[&str])] = &[("Hill", &["Smith"]), ("Smith", &["Hill"])];

/// Hill alone, with its neighbour Smith configured but not running: the
/// test plays Smith, with nobody to take its place.
fn hill_alone() -> Herd {
    let mut herd = Herd::configure(PAIR, "");
    herd.launch("Hill");
    herd
}

/// A connection to a peer port, speaking as `from`, recording what it sends.
struct FakeNeighbour {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    sent: Vec<u8>,
    session: Session,
}

impl FakeNeighbour {
    /// Connects and completes the handshake; `None` if refused.
    fn join(peer: SocketAddr, secret: &[u8], from: &str, to: &str) -> Option<FakeNeighbour> {
        let mut stream = TcpStream::connect(peer).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut challenge = String::new();
        reader.read_line(&mut challenge).unwrap();
        let key = Key::new(secret);
        let hello = wire::hello_line(from, to, key.id());
        let mut handshake = key.initiator(format!("{challenge}{hello}").as_bytes());
        let message = handshake.write(&wire::hello_payload(from, to, 4242));
        let mut sent = hello.into_bytes();
        sent.extend_from_slice(&u16::try_from(message.len()).unwrap().to_be_bytes());
        sent.extend_from_slice(&message);
        let _ = stream.write_all(&sent);
        let mut welcome = String::new();
        reader.read_line(&mut welcome).ok()?;
        if welcome != wire::WELCOME_LINE {
            return None;
        }
        let mut length = [0u8; 2];
        reader.read_exact(&mut length).ok()?;
        let mut message = vec![0; usize::from(u16::from_be_bytes(length))];
        reader.read_exact(&mut message).ok()?;
        handshake.read(&message).ok()?;
        Some(FakeNeighbour {
            stream,
            reader,
            sent,
            session: handshake.finish().ok()?,
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
        let _ = self.stream.write_all(bytes);
    }

    /// A frame carrying one update, encrypted as the next record of this
    /// session.
    fn frame(&mut self, seq: u64, at_line: &str) -> Vec<u8> {
        let payload = format!("U {seq} {at_line}\nC {seq}\n");
        let mut frame = Vec::new();
        self.session.seal(payload.as_bytes(), &mut frame);
        frame
    }

    /// Whether the server has closed this connection.
    fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        // Acks may come first; a refused link ends in EOF or a reset.
        loop {
            let mut buffer = [0u8; 256];
            match self.reader.read(&mut buffer) {
                Ok(0) | Err(_) => return true,
                Ok(n) => rest.extend_from_slice(&buffer[..n]),
            }
            if rest.len() > 1 << 16 {
                return false;
            }
        }
    }
}

fn at_line(client: &str) -> String {
    format!("AT Smith +0.000000001 {client} +1+1 {}", now_text())
}

#[test]
fn a_neighbour_with_the_secret_is_believed() {
    let herd = hill_alone();
    let peer = herd.server("Hill").peer;
    let mut smith =
        FakeNeighbour::join(peer, herd.secret().as_bytes(), "Smith", "Hill").expect("welcomed");
    let line = at_line("genuine");
    let frame = smith.frame(1, &line);
    smith.send(&frame);
    let mut hill = herd.client("Hill");
    common::eventually("Hill to store the update", || {
        hill.at_line_of("genuine").as_deref() == Some(line.as_str())
    });
}

#[test]
fn a_recorded_session_replayed_is_refused() {
    let herd = hill_alone();
    let peer = herd.server("Hill").peer;
    let secret = herd.secret().as_bytes().to_vec();
    let mut smith = FakeNeighbour::join(peer, &secret, "Smith", "Hill").expect("welcomed");
    let first = at_line("recorded");
    let frame = smith.frame(1, &first);
    smith.send(&frame);
    let mut hill = herd.client("Hill");
    common::eventually("the recorded update to arrive", || {
        hill.at_line_of("recorded").is_some()
    });
    let recording = smith.sent.clone();
    drop(smith);

    // Later a newer report for the same client is made through Hill...
    let newer = hill.iamat("recorded", "+5+5");
    // ...and an eavesdropper replays the old session byte for byte.
    let mut replay = TcpStream::connect(peer).unwrap();
    replay
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = replay.write_all(&recording);
    let mut answer = Vec::new();
    let _ = replay.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HERD-WELCOME"),
        "replayed hello welcomed"
    );
    assert_eq!(hill.at_line_of("recorded").as_deref(), Some(newer.as_str()));
    common::eventually("Hill to log the refusal", || {
        herd.log("Hill")
            .contains("claiming to be Smith: authentication failed")
    });
}

#[test]
fn an_altered_or_repeated_frame_ends_the_link_and_is_not_applied() {
    let herd = hill_alone();
    let peer = herd.server("Hill").peer;
    let secret = herd.secret().as_bytes().to_vec();

    let mut smith = FakeNeighbour::join(peer, &secret, "Smith", "Hill").expect("welcomed");
    let mut frame = smith.frame(1, &at_line("altered"));
    // The client id is not to be found in the frame; change a byte of the
    // ciphertext instead.
    assert!(!frame.windows(7).any(|w| w == b"altered"));
    frame[10] ^= 0x20;
    smith.send(&frame);
    assert!(smith.is_closed());

    let mut smith = FakeNeighbour::join(peer, &secret, "Smith", "Hill").expect("welcomed");
    let first = smith.frame(1, &at_line("reordered"));
    let second = smith.frame(2, &at_line("reordered"));
    smith.send(&second);
    smith.send(&first);
    assert!(smith.is_closed());

    let mut smith = FakeNeighbour::join(peer, &secret, "Smith", "Hill").expect("welcomed");
    let line = at_line("repeated");
    let frame = smith.frame(1, &line);
    smith.send(&frame);
    smith.send(&frame); // the same frame again: its counter is stale
    assert!(smith.is_closed());

    let mut hill = herd.client("Hill");
    assert_eq!(hill.at_line_of("Altered"), None);
    assert_eq!(hill.at_line_of("altered"), None);
    assert_eq!(hill.at_line_of("reordered"), None);
    // The first copy of the repeated frame was genuine and applied.
    assert_eq!(hill.at_line_of("repeated").as_deref(), Some(line.as_str()));
}

#[test]
fn a_server_not_configured_as_a_neighbour_is_refused_even_with_the_secret() {
    let herd = Herd::start(&[
        ("Hill", &["Smith"]),
        ("Smith", &["Hill"]),
        ("Campbell", &[]),
    ]);
    let peer = herd.server("Hill").peer;
    assert!(FakeNeighbour::join(peer, herd.secret().as_bytes(), "Campbell", "Hill").is_none());
    assert!(FakeNeighbour::join(peer, herd.secret().as_bytes(), "Smith", "Jaquez").is_none());
    assert!(FakeNeighbour::join(peer, b"wrong secret", "Smith", "Hill").is_none());
    // Each refusal is told as what it is.
    for refusal in [
        ": wrong herd: Campbell is not a neighbour of Hill",
        " claiming to be Smith: wrong herd: its hello is for Jaquez, and this is Hill",
        " claiming to be Smith: authentication failed: it does not share this herd's secret",
    ] {
        common::eventually(refusal, || herd.log("Hill").contains(refusal));
    }
}

/// Reads one handshake line, without its `\n`; empty at the end.
fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    line.trim_end_matches('\n').to_owned()
}

#[test]
fn a_hello_of_another_protocol_version_is_refused_and_both_sides_say_so() {
    // Smith dials Hill speaking a version 5 that Hill does not know: its
    // hello names it second. Hill refuses and says why; Smith, which has
    // read Hill's challenge, knows Hill's version for its own log.
    let herd = hill_alone();
    let stream = TcpStream::connect(herd.server("Hill").peer).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let challenge = read_line(&mut reader);
    assert!(challenge.starts_with("HERD-CHALLENGE 4 "), "{challenge}");
    (&stream).write_all(b"HERD-HELLO 5 Smith Hill\n").unwrap();
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(!rest.contains("HERD-WELCOME"), "{rest}");
    let refusal =
        "claiming to be Smith: protocol version: it speaks peer protocol 5, this server 4";
    common::eventually("Hill to refuse Smith's version", || {
        herd.log("Hill").contains(refusal)
    });
}

#[test]
fn a_listener_of_another_protocol_version_is_told_ours_and_both_sides_say_so() {
    // Hill dials a Smith of version 5: it answers the challenge with a
    // hello of its own version, so that Smith can say why the link fails,
    // and says so itself.
    let mut herd = Herd::configure(PAIR, "");
    let smith = herd.take_listener("Smith");
    herd.launch("Hill");
    let (stream, _) = smith.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream)
        .write_all(format!("HERD-CHALLENGE 5 {}\n", "00".repeat(16)).as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_line(&mut reader), "HERD-HELLO 4 Hill Smith");
    assert_eq!(read_line(&mut reader), "", "Hill closes");
    let warning = format!(
        "WARN cannot link to Smith at {}: protocol version: Smith speaks peer protocol 5, this server 4",
        herd.server("Smith").peer
    );
    common::eventually("Hill to say Smith speaks another version", || {
        herd.log("Hill").contains(&warning)
    });
}

#[tokio::test(start_paused = true)]
async fn a_neighbour_that_links_in_is_dialled_back_at_once() {
    // SPEC §6: a server reconnects to a neighbour as soon as it comes back,
    // not at the end of a backoff that grew while it was away. On tokio's
    // paused clock: Hill's dials to Smith are refused until its backoff is
    // long; then Smith comes back and links in, and Hill dials it with the
    // clock held still, which no backoff timer could bring about.
    let (setup, mut ports) = common::setup(PAIR, "Hill", None);
    let secret = b"this test's secret".to_vec();
    setup.keyring.replace(&[&secret]).unwrap();
    let (_, smith) = ports.pop().unwrap();
    let (client, peer) = ports.pop().unwrap();
    let hill_peer = peer.address();
    let listen = |port: common::Port| tokio::net::TcpListener::from_std(port.listen()).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(herd::server::run(
        setup,
        listen(client),
        listen(peer),
        shutdown.clone(),
    ));
    // Smith's port is bound, not listening: refused, again and again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let smith = listen(smith);
    common::with_clock_held("Hill to dial Smith back", async {
        let joined = tokio::task::spawn_blocking(move || {
            FakeNeighbour::join(hill_peer, &secret, "Smith", "Hill").is_some()
        });
        smith.accept().await.unwrap();
        assert!(joined.await.unwrap(), "Smith welcomed");
    })
    .await;
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

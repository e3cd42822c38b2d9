//! What crosses a peer link is private: a relay between two servers sees
//! neither client ids nor coordinates, and what it recorded, played back,
//! links nothing and changes nothing (SPEC §6, docs/protocol.md).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Herd, Log, Port, RunningServer, eventually};

const PAIR: &[(&str, &[&str])] = &[("Hill", &["Smith"]), ("Smith", &["Hill"])];

/// Relays every connection to `target`, keeping what the dialler sent on
/// each.
fn recording_relay(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let kept = recorded.clone();
    thread::spawn(move || {
        for dialler in listener.incoming() {
            let Ok(mut dialler) = dialler else { return };
            let Ok(mut listener_side) = TcpStream::connect(target) else {
                continue;
            };
            let index = {
                let mut recorded = kept.lock().unwrap();
                recorded.push(Vec::new());
                recorded.len() - 1
            };
            let (mut back_from, mut back_to) = (
                listener_side.try_clone().unwrap(),
                dialler.try_clone().unwrap(),
            );
            thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(Shutdown::Both);
            });
            let kept = kept.clone();
            thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    match dialler.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            kept.lock().unwrap()[index].extend_from_slice(&buffer[..n]);
                            if listener_side.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = listener_side.shutdown(Shutdown::Both);
            });
        }
    });
    (address, recorded)
}

#[test]
fn a_peer_link_shows_no_client_id_or_coordinate_and_a_replay_changes_nothing() {
    // Hill runs; Smith runs with a config in which Hill's peer port is the
    // relay's, so Smith's link to Hill passes through it.
    let mut herd = Herd::configure(PAIR, "");
    herd.launch("Hill");
    let (relay, recorded) = recording_relay(herd.server("Hill").peer);
    let (client, peer) = (Port::any(), Port::any());
    let smith_client = client.address();
    let config = std::fs::read_to_string(&herd.config_path)
        .unwrap()
        .replace(&herd.server("Hill").peer.to_string(), &relay.to_string());
    let config = herd::config::HerdConfig::parse(&config, "relayed", herd.dir.path()).unwrap();
    let smith = RunningServer::start(
        &config,
        "Smith",
        herd.secret(),
        (client, peer),
        Log::default(),
    );

    let mut at_smith = common::LineClient::connect(smith_client);
    let at = at_smith.request("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503");
    let mut hill = herd.client("Hill");
    eventually("Hill to hold the report", || {
        hill.at_line_of("kiwi.cs.ucla.edu").is_some()
    });
    assert!(at.starts_with("AT Smith "), "{at}");

    let recording = recorded.lock().unwrap().concat();
    assert!(recording.starts_with(b"HERD-HELLO 4 Smith Hill "));
    for secret in [
        &b"kiwi"[..],
        b"ucla",
        b"34.0689",
        b"068930",
        b"118.445",
        b"445127",
        b"1621464827",
    ] {
        assert!(
            !recording.windows(secret.len()).any(|w| w == secret),
            "{} seen on the link",
            String::from_utf8_lossy(secret)
        );
    }
    smith.stop();

    // The recorded connection played back to Hill: refused, and Hill's
    // store keeps the client's report as it is, even after a newer one.
    let newer = hill.iamat("kiwi.cs.ucla.edu", "+1+1");
    let first = recorded.lock().unwrap()[0].clone();
    let mut replay = TcpStream::connect(herd.server("Hill").peer).unwrap();
    replay
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = replay.write_all(&first);
    let mut answer = Vec::new();
    let _ = replay.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("HERD-REFUSED secret"), "{answer}");
    assert!(!answer.contains("HERD-WELCOME"), "{answer}");
    assert_eq!(
        hill.at_line_of("kiwi.cs.ucla.edu").as_deref(),
        Some(newer.as_str())
    );
}

//! A herd moves to a new secret server by server while it runs, and no
//! report is lost (docs/deploy.md, "Rotating the herd secret"): every
//! server first accepts both secrets, then dials with the new one, then
//! forgets the old one. Links that are up keep the keys they agreed on;
//! every new handshake in between finds a key both ends hold.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::{DEFAULT_TOPOLOGY, Herd, LineClient, new_secret};

const ALL: &[&str] = &["Hill", "Jaquez", "Smith", "Campbell", "Singleton"];

#[test]
fn a_live_herd_rotates_its_secret_server_by_server_losing_nothing() {
    let mut herd = Herd::start(DEFAULT_TOPOLOGY);
    let old = herd.secret().to_owned();
    let new = new_secret();
    // Load: reports to every server but Smith (restarted below) in turn,
    // each acknowledged one kept.
    let addresses: Vec<_> = ALL
        .iter()
        .filter(|name| **name != "Smith")
        .map(|name| herd.server(name).client)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut clients: Vec<LineClient> =
                addresses.iter().map(|a| LineClient::connect(*a)).collect();
            let mut acknowledged = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 200 {
                let client_id = format!("walker-{}", n % 40);
                let at = clients[(n % 4) as usize].iamat(&client_id, "+1+1");
                acknowledged.push((client_id, at));
                n += 1;
            }
            acknowledged
        })
    };

    // 1. Every server accepts the new secret too, still dialling with the old.
    for name in ALL {
        herd.keyring(name).replace(&[&old, &new]).unwrap();
    }
    // 2. Every server dials with the new secret. Smith, the busiest, is
    // restarted instead, so that its links are all dialled afresh while its
    // neighbours hold the keys in either order.
    for name in ALL {
        if *name == "Smith" {
            herd.stop("Smith");
            herd.launch_with_secrets("Smith", &[&new, &old]);
        } else {
            herd.keyring(name).replace(&[&new, &old]).unwrap();
        }
    }
    // 3. The old secret is forgotten.
    for name in ALL {
        herd.keyring(name).replace(&[&new]).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = load.join().unwrap();
    herd.await_newest(ALL, &acknowledged);

    // Only the new secret is left: a server restarted with it links, and
    // its reports reach the whole herd.
    herd.stop("Campbell");
    herd.launch_with_secret("Campbell", &new);
    let marker = herd.client("Campbell").iamat("marker", "+2+2");
    herd.await_everywhere(ALL, "marker", &marker);
    // A server still on the old secret alone does not.
    herd.stop("Hill");
    herd.launch_with_secret("Hill", &old);
    common::eventually("Hill's neighbours to refuse its old key", || {
        herd.log("Jaquez")
            .contains("claiming to be Hill: authentication failed")
    });
}

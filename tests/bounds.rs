//! The store's bounds across a herd: a client not heard from for
//! `client_ttl_secs` is forgotten on every server, and past `max_clients`
//! every server refuses new clients alike while the herd still agrees.

mod common;

use common::{Herd, LineClient, eventually, now_text};

const PAIR: &[(&str, &[&str])] = &[("Hill", &["Smith"]), ("Smith", &["Hill"])];

/// Whether server `client`'s connection answers WHATSAT about `id` with
/// `?`, as for a client it never knew.
fn unknown(client: &mut LineClient, id: &str) -> bool {
    client.at_line_of(id).is_none()
}

#[test]
fn a_client_not_heard_from_for_its_time_is_forgotten_everywhere() {
    let mut herd = Herd::start_with(PAIR, "[storage]\nclient_ttl_secs = 1\n");
    let mut hill = herd.client("Hill");
    let mut smith = herd.client("Smith");
    // Until the link is up a report may not reach Smith within its second,
    // so kiwi reports again while it is waited for (as owl and kiwi do
    // below).
    let mut at = hill.iamat("kiwi", "+34.068930-118.445127");
    eventually("kiwi on both servers", || {
        let there = smith.at_line_of("kiwi").as_deref() == Some(at.as_str());
        if !there {
            at = hill.iamat("kiwi", "+34.068930-118.445127");
        }
        there
    });
    // A client that keeps reporting stays meanwhile; kiwi goes, on both
    // servers, without a word between them about it.
    let mut kept = hill.iamat("owl", "+1+1");
    eventually("kiwi to be forgotten on both servers", || {
        kept = hill.iamat("owl", "+1+1");
        unknown(&mut hill, "kiwi") && unknown(&mut smith, "kiwi")
    });
    assert_eq!(
        hill.request("WHATSAT kiwi 10 2"),
        "? WHATSAT kiwi 10 2",
        "answered as for a client never known"
    );
    herd.await_everywhere(&["Hill", "Smith"], "owl", &kept);
    // A restart reads the log back without the expired client, and the
    // catch-up with its neighbour does not bring it back. The link's
    // coming back up may take longer than a client's one second, so owl
    // and kiwi keep reporting while they are waited for.
    herd.stop("Smith");
    herd.restart("Smith");
    let mut smith = herd.client("Smith");
    kept = hill.iamat("owl", "+1+1");
    eventually("Smith linked again, owl's newest there", || {
        let there = smith.at_line_of("owl").as_deref() == Some(kept.as_str());
        if !there {
            kept = hill.iamat("owl", "+1+1");
        }
        there
    });
    assert!(unknown(&mut smith, "kiwi"));
    // A client forgotten comes back with its next report.
    let mut again = hill.iamat("kiwi", "+1+1");
    eventually("kiwi back on both servers", || {
        let back = [&mut hill, &mut smith]
            .into_iter()
            .all(|server| server.at_line_of("kiwi").as_deref() == Some(again.as_str()));
        if !back {
            again = hill.iamat("kiwi", "+1+1");
        }
        back
    });
}

#[test]
fn past_the_ceiling_every_server_refuses_new_clients_and_the_herd_agrees() {
    let herd = Herd::start_with(PAIR, "[limits]\nmax_clients = 3\n");
    let mut hill = herd.client("Hill");
    let mut smith = herd.client("Smith");
    let mut acknowledged = Vec::new();
    for id in ["a", "b"] {
        acknowledged.push((id.to_owned(), hill.iamat(id, "+1+1")));
    }
    acknowledged.push(("c".to_owned(), smith.iamat("c", "+1+1")));
    herd.await_newest(&["Hill", "Smith"], &acknowledged);
    // Both hold three: a new client is refused at either, with `?` and
    // the line, and known ones are still taken.
    for client in [&mut hill, &mut smith] {
        let line = format!("IAMAT newcomer +1+1 {}", now_text());
        assert_eq!(client.request(&line), format!("? {line}"));
        assert!(unknown(client, "newcomer"));
    }
    acknowledged.push(("a".to_owned(), smith.iamat("a", "+2+2")));
    herd.await_newest(&["Hill", "Smith"], &acknowledged);
    // Logged as a warning, once a minute at most however many are refused.
    for _ in 0..100 {
        let line = format!("IAMAT another +1+1 {}", now_text());
        assert_eq!(hill.request(&line), format!("? {line}"));
    }
    let warned = |name| {
        herd.log(name)
            .matches("the store holds max_clients")
            .count()
    };
    assert_eq!((warned("Hill"), warned("Smith")), (1, 1));
}

//! Routing around failure: with any one server of the default herd dead,
//! a report made at any live server reaches every other live server. How
//! fast is measured by the load tool (BENCHMARKS.md); here, that it arrives
//! while the server stays dead, and that the server catches up once back.

mod common;

use common::Herd;

#[test]
fn with_any_one_server_dead_every_report_reaches_every_live_server() {
    let mut herd = Herd::start_default();
    let names: Vec<String> = herd.servers.iter().map(|s| s.name.clone()).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let at = herd.client("Hill").iamat("warm", "+1+1");
    herd.await_everywhere(&all, "warm", &at);
    for dead in &all {
        herd.kill(dead);
        let live: Vec<&str> = all.iter().copied().filter(|n| n != dead).collect();
        let mut made = Vec::new();
        for origin in &live {
            let client = format!("without-{dead}-from-{origin}");
            let at = herd.client(origin).iamat(&client, "+2+2");
            herd.await_everywhere(&live, &client, &at);
            made.push((client, at));
        }
        herd.restart(dead);
        for (client, at) in &made {
            herd.await_everywhere(&[dead], client, at);
        }
    }
}

//! `herd status` against real `herd serve` processes: healthy (exit 0),
//! then with one server killed (non-zero, naming it and its links down).

mod common;

use std::process::{Command, Output};

use common::process::ProcessHerd;
use common::{DEFAULT_TOPOLOGY, eventually, herd_binary};

fn status(herd: &ProcessHerd, extra: &[&str]) -> Output {
    Command::new(herd_binary())
        .arg("status")
        .arg("--config")
        .arg(&herd.config_path)
        .args(extra)
        .output()
        .expect("running herd status")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn herd_status_passes_for_a_healthy_herd_and_names_a_killed_server_and_its_links() {
    let mut herd = ProcessHerd::start_with_admin(DEFAULT_TOPOLOGY, "");
    // Links come up a moment after the servers listen.
    let mut healthy = None;
    eventually("herd status to call the herd healthy", || {
        let output = status(&herd, &[]);
        let ok = output.status.success();
        healthy = Some(output);
        ok
    });
    let healthy = text(&healthy.expect("an output"));
    assert!(
        healthy.contains("healthy: all 5 servers answer and all 6 links are up"),
        "{healthy}"
    );
    for name in ["Hill", "Jaquez", "Smith", "Campbell", "Singleton"] {
        assert!(healthy.contains(name), "{healthy}");
    }

    let json = status(&herd, &["--json"]);
    assert!(json.status.success());
    let view: herd::admin::status::HerdView =
        serde_json::from_slice(&json.stdout).expect("herd status --json prints the herd view");
    assert_eq!(view.servers.len(), 5);
    assert!(view.links.iter().all(|link| link.state == "up"));

    herd.kill("Smith");
    let mut unhealthy = None;
    eventually("herd status to report Smith and its links", || {
        let output = status(&herd, &[]);
        let said = text(&output);
        let named = said.contains("Smith does not answer")
            && ["Hill–Smith", "Smith–Singleton", "Smith–Campbell"]
                .iter()
                .all(|link| said.contains(link));
        unhealthy = Some(output);
        named
    });
    let unhealthy = unhealthy.expect("an output");
    assert!(!unhealthy.status.success(), "{}", text(&unhealthy));
    let said = text(&unhealthy);
    // The other links stay up and are not named.
    assert!(!said.contains("Hill–Jaquez"), "{said}");
}

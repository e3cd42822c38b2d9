//! Test support: a herd of real servers inside the test process, on
//! listeners bound to port 0 before the config is written, for `herd-bench`
//! to load over TCP like any client.
//!
//! The servers are the `herd` library's (`server::run`), not processes: what
//! these tests check is the load tool, and a herd in the test's own runtime
//! needs no free-port guessing and is stopped by dropping it.

#![allow(dead_code)] // each test file uses a different part of this module

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use herd::config::HerdConfig;
use herd::server::{self, ServerSetup};
use tokio_util::sync::CancellationToken;

/// The five-server herd of SPEC §1.
pub const DEFAULT_TOPOLOGY: &[(&str, &[&str])] = &[
    ("Hill", &["Jaquez", "Smith"]),
    ("Jaquez", &["Hill", "Singleton"]),
    ("Smith", &["Hill", "Singleton", "Campbell"]),
    ("Campbell", &["Smith", "Singleton"]),
    ("Singleton", &["Jaquez", "Smith", "Campbell"]),
];

/// A herd running in this process; dropping it stops every server.
pub struct Herd {
    /// Each server's name and client address.
    clients: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Herd {
    /// Starts the five-server herd of SPEC §1.
    pub fn start_default() -> Herd {
        Herd::start(DEFAULT_TOPOLOGY)
    }

    /// Starts a herd with the given servers and neighbours, each server
    /// in memory only (no store on disk) with the embedded places data.
    /// Every server accepts clients once this returns: its listeners are
    /// bound (and listening) before it starts.
    pub fn start(topology: &[(&str, &[&str])]) -> Herd {
        let bind = || TcpListener::bind("127.0.0.1:0").expect("binding port 0 on loopback");
        let listeners: Vec<(TcpListener, TcpListener)> =
            topology.iter().map(|_| (bind(), bind())).collect();
        let address = |listener: &TcpListener| listener.local_addr().expect("a bound address");
        let mut config = String::from("[places]\nprovider = \"geonames\"\n");
        for ((name, neighbours), (client, peer)) in topology.iter().zip(&listeners) {
            config.push_str(&format!(
                "\n[[servers]]\nname = {name:?}\nclient = \"{}\"\npeer = \"{}\"\nneighbours = {neighbours:?}\n",
                address(client),
                address(peer),
            ));
        }
        let config = HerdConfig::parse(&config, "<test herd>", Path::new("."))
            .expect("the test herd's config is valid");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the test herd");
        let shutdown = CancellationToken::new();
        let mut clients = Vec::new();
        for ((name, _), (client, peer)) in topology.iter().zip(listeners) {
            clients.push(((*name).to_owned(), address(&client)));
            let places = herd::places::from_config(&config, name).expect("embedded places");
            let mut setup = ServerSetup::from_config(
                &config,
                name,
                std::sync::Arc::new(herd::peer::auth::Keyring::new(&["test secret"]).unwrap()),
                places,
            )
            .expect("a server of the config");
            setup.storage = None;
            let shutdown = shutdown.clone();
            runtime.spawn(async move {
                let as_tokio = |listener: TcpListener| {
                    listener
                        .set_nonblocking(true)
                        .expect("a non-blocking listener");
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
                };
                server::run(setup, as_tokio(client), as_tokio(peer), shutdown)
                    .await
                    .expect("a test server runs until it is stopped");
            });
        }
        Herd {
            clients,
            shutdown,
            runtime: Some(runtime),
        }
    }

    /// The client address of server `name`, as `herd-bench` takes it.
    pub fn address(&self, name: &str) -> String {
        self.clients
            .iter()
            .find(|(server, _)| server == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
            .1
            .to_string()
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Runs the `herd-bench` built with these tests and waits for it.
pub fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .args(args)
        .output()
        .expect("running herd-bench")
}

/// The JSON report `herd-bench --json` printed.
#[track_caller]
pub fn report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "herd-bench prints JSON ({error}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

//! A herd of real `herd serve` processes, for the tests where a separate
//! process is the point: the command line, SIGKILL and SIGSTOP, the log file
//! that `main.rs` wires, a server's own memory, the fault campaign.
//!
//! A process must be told its ports in its config before it binds them, so
//! these herds take ports found free by binding port 0 and letting go
//! (`free_address`); should another socket take one in between, the server
//! fails to bind, and the herd is started again on fresh ports. The herds
//! of `common` (servers in the test's own process, on listeners bound
//! before the config is written) have no such gap.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    DEFAULT_TOPOLOGY, LineClient, PATIENCE, config_text_with_admin, herd_binary, new_secret,
};

/// A free TCP port on 127.0.0.1, as far as the OS knows right now: for a
/// process that must be told its port before it binds it.
pub fn free_address() -> SocketAddr {
    use std::collections::HashSet;
    use std::sync::Mutex;
    // Tests of one binary run in parallel: never hand the same port to two
    // of them, even if the OS offers it again once released.
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    // Below the kernel's ephemeral range (32768 and up by default), so that
    // no outgoing connection takes the port while a server is restarting;
    // any port found bindable will do, else one the OS picks.
    let mut tries = 0;
    loop {
        tries += 1;
        let wanted = if tries < 100 {
            rand::random_range(15_000..32_000u16)
        } else {
            0
        };
        let Ok(address) = TcpListener::bind(("127.0.0.1", wanted)).and_then(|l| l.local_addr())
        else {
            continue;
        };
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given
            .get_or_insert_with(HashSet::new)
            .insert(address.port())
        {
            return address;
        }
    }
}

/// One server process of a test herd.
pub struct ServerProcess {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// The admin port, for a herd started with them.
    pub admin: Option<SocketAddr>,
    child: Option<Child>,
}

/// A herd of real server processes, stopped (by process id) when dropped.
pub struct ProcessHerd {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub servers: Vec<ServerProcess>,
    secret: String,
}

impl ProcessHerd {
    /// Starts the five-server herd of SPEC §1.
    pub fn start_default() -> ProcessHerd {
        ProcessHerd::start(DEFAULT_TOPOLOGY)
    }

    /// Starts a herd with the given servers and neighbours.
    pub fn start(topology: &[(&str, &[&str])]) -> ProcessHerd {
        ProcessHerd::start_with(topology, "")
    }

    /// Starts a herd, with `extra` TOML (top-level keys and tables such as
    /// `[limits]`) added to its config.
    pub fn start_with(topology: &[(&str, &[&str])], extra: &str) -> ProcessHerd {
        ProcessHerd::start_configured(topology, extra, false)
    }

    /// Starts a herd whose servers have admin ports too.
    pub fn start_with_admin(topology: &[(&str, &[&str])], extra: &str) -> ProcessHerd {
        ProcessHerd::start_configured(topology, extra, true)
    }

    fn start_configured(topology: &[(&str, &[&str])], extra: &str, admin: bool) -> ProcessHerd {
        for _ in 0..5 {
            let mut herd = ProcessHerd::configure_with(topology, extra, admin);
            if herd.launch_all() {
                return herd;
            }
        }
        panic!("could not start a herd on free ports five times in a row");
    }

    /// Writes a config on fresh free ports; starts nothing.
    pub fn configure(topology: &[(&str, &[&str])], extra: &str) -> ProcessHerd {
        ProcessHerd::configure_with(topology, extra, false)
    }

    /// `configure`, with admin ports if `admin`.
    pub fn configure_with(topology: &[(&str, &[&str])], extra: &str, admin: bool) -> ProcessHerd {
        let dir = tempfile::tempdir().expect("temporary folder");
        let servers: Vec<ServerProcess> = topology
            .iter()
            .map(|(name, _)| ServerProcess {
                name: (*name).to_owned(),
                client: free_address(),
                peer: free_address(),
                admin: admin.then(free_address),
                child: None,
            })
            .collect();
        let addresses: Vec<(SocketAddr, SocketAddr)> =
            servers.iter().map(|s| (s.client, s.peer)).collect();
        let admin: Vec<SocketAddr> = servers.iter().filter_map(|s| s.admin).collect();
        let config_path = dir.path().join("herd.toml");
        std::fs::write(
            &config_path,
            config_text_with_admin(topology, &addresses, &admin, extra),
        )
        .expect("writing the test config");
        ProcessHerd {
            dir,
            config_path,
            servers,
            secret: new_secret(),
        }
    }

    fn launch_all(&mut self) -> bool {
        let names: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        for name in &names {
            if !self.launch(name) {
                self.stop_all();
                return false;
            }
        }
        true
    }

    /// The herd's shared secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The command that runs server `name` of this herd.
    pub fn command(&self, name: &str) -> Command {
        self.command_with_config(name, &self.config_path)
    }

    /// The command that runs server `name` of this herd from its own config
    /// file `config` (the fault campaign gives each server one, in which its
    /// neighbours' peer addresses are those of fault-injecting proxies).
    pub fn command_with_config(&self, name: &str, config: &Path) -> Command {
        let mut command = Command::new(herd_binary());
        command
            .arg("serve")
            .arg(name)
            .arg("--config")
            .arg(config)
            .env("HERD_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts server `name` and waits until it accepts clients. Returns
    /// false if it exited instead (its port was taken, say).
    pub fn launch(&mut self, name: &str) -> bool {
        let config = self.config_path.clone();
        self.launch_with_config(name, &config)
    }

    /// `launch`, with the server reading its own config file `config`.
    pub fn launch_with_config(&mut self, name: &str, config: &Path) -> bool {
        let mut child = self
            .command_with_config(name, config)
            .spawn()
            .expect("spawning herd serve");
        let client = self.server(name).client;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if TcpStream::connect(client).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                eprintln!("{name} exited at start ({status}): {stderr}");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never listened on {client}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.server_mut(name).child = Some(child);
        true
    }

    pub fn server(&self, name: &str) -> &ServerProcess {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
    }

    fn server_mut(&mut self, name: &str) -> &mut ServerProcess {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
    }

    /// The process id of a running server.
    pub fn pid(&self, name: &str) -> Pid {
        let child = self.server(name).child.as_ref().expect("server is running");
        Pid::from_raw(child.id() as i32)
    }

    /// Sends `signal` to server `name` (its own process only).
    pub fn signal(&self, name: &str, signal: Signal) {
        kill(self.pid(name), signal).expect("signalling a server we started");
    }

    /// How server `name`'s process ended, if it has (reaping it), without
    /// waiting; `None` while it runs (or is stopped) or was never started.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let child = self.server_mut(name).child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGKILLs server `name` and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.server_mut(name).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs server `name` and waits until it has exited, successfully.
    pub fn terminate(&mut self, name: &str) {
        let mut child = self
            .server_mut(name)
            .child
            .take()
            .expect("server is running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let mut status = None;
        super::eventually(&format!("{name} to exit on SIGTERM"), || {
            status = child.try_wait().expect("waiting for a server");
            status.is_some()
        });
        let status = status.expect("exited");
        assert!(status.success(), "{name} exited with {status}");
    }

    /// Starts a stopped or killed server again on its own ports.
    pub fn restart(&mut self, name: &str) {
        assert!(
            self.launch(name),
            "{name} could not start again on its ports"
        );
    }

    /// A new client connection to server `name`.
    pub fn client(&self, name: &str) -> LineClient {
        LineClient::connect(self.server(name).client)
    }

    /// The text of server `name`'s log file.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until WHATSAT for `client_id` at every listed server shows the
    /// AT line `expected`.
    #[track_caller]
    pub fn await_everywhere(&self, names: &[&str], client_id: &str, expected: &str) {
        super::await_everywhere(|name| self.server(name).client, names, client_id, expected);
    }

    /// Waits until every listed server holds, for every client in
    /// `acknowledged` (client id, AT reply, in the order they were made),
    /// the last AT reply made for it.
    #[track_caller]
    pub fn await_newest(&self, names: &[&str], acknowledged: &[(String, String)]) {
        super::await_newest(|name| self.server(name).client, names, acknowledged);
    }

    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        for name in names {
            self.kill(&name);
        }
    }
}

impl Drop for ProcessHerd {
    fn drop(&mut self) {
        self.stop_all();
    }
}

//! `herd up`: every server of the herd on this machine, one `herd serve`
//! process each, supervised until Ctrl-C or SIGTERM.
//!
//! A server has started when it says so itself: each is given a notify
//! socket of its own (`$NOTIFY_SOCKET`, see `notify`) and sends `READY=1`
//! once its store is open and it listens. A server that fails to start
//! stops the herd; one that dies later is started again after a pause,
//! unless it keeps dying, which stops the herd too. Either way `herd up`
//! exits non-zero with the reason. The servers die with `herd up`, even
//! with a SIGKILL (see `serve::die_with_supervisor`).

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use herd::config::secret::read_or_create_secret;
use herd::config::{SECRET_ENV, ServerConfig};

use super::notify::{self, NOTIFY_SOCKET};
use super::{HerdArgs, cancel_on_signal, server_runtime};

/// Set by `herd up` for the servers it starts: its own process id, so that
/// a server can ask to die with it.
pub(crate) const SUPERVISOR_ENV: &str = "HERD_SUPERVISOR_PID";
/// Set by `herd up` for a server it starts again: why, for its log.
pub(crate) const RESTART_NOTE_ENV: &str = "HERD_RESTART_NOTE";
/// Set by `herd up` when its own standard error is a terminal: the server
/// writes the operator's events to its standard error as it would to a
/// terminal (see `herd::log::terminal`), and herd up passes them on.
pub(crate) const OPERATOR_LINES_ENV: &str = "HERD_OPERATOR_LINES";

/// How long a server may take to say it is ready (replaying a large store
/// takes a while) before it is taken for hung.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server gets to stop on SIGTERM before it is killed; a server
/// needs about a second.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// A server that dies more than `MAX_RESTARTS` times within
/// `RESTART_WINDOW` is given up on: it would only die again.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The pause before the first restart within the window, doubled for each
/// further one up to `MAX_RESTART_DELAY`.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Runs the herd of `args` until Ctrl-C or SIGTERM, or until a server
/// cannot be kept running.
pub(crate) fn up(args: &HerdArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    // With no secret in the config or the environment, one is made and
    // kept in a file, so that a server can also be run by hand (`herd serve
    // NAME` finds it) and a later `herd up` uses it again. Otherwise the
    // servers find their secrets as herd up did.
    let secret = if config.secrets_or_env().is_empty() {
        Some(read_or_create_secret(&config.secret_file())?)
    } else {
        None
    };
    let launch = Arc::new(Launch {
        exe: std::env::current_exe().context("finding the herd binary")?,
        config: args.config.clone(),
        log_dir: config.log_dir.clone(),
        secret,
    });
    // One thread: every server is spawned from it, and a server's death
    // signal (see `serve::die_with_supervisor`) follows the thread that
    // spawned it, not the process.
    server_runtime(1)?.block_on(async {
        // Before any server exists, so that Ctrl-C or SIGTERM always stops
        // them rather than killing this process alone.
        let stop = CancellationToken::new();
        tokio::spawn(cancel_on_signal(stop.clone()).context("handling signals")?);
        // A supervisor sends one event per start of its server, and waits
        // for room: room for one from each is plenty.
        let (events_sender, mut events) = mpsc::channel(config.servers.len().max(1));
        let mut supervisors = JoinSet::new();
        for (index, server) in config.servers.iter().enumerate() {
            supervisors.spawn(supervise(
                index,
                server.clone(),
                launch.clone(),
                events_sender.clone(),
                stop.clone(),
            ));
        }
        drop(events_sender);
        let mut pids: Vec<Option<u32>> = vec![None; config.servers.len()];
        let mut all_up = false;
        let outcome = loop {
            tokio::select! {
                Some(Ready { index, pid, restart }) = events.recv() => {
                    let name = &config.servers[index].name;
                    if restart > 0 {
                        println!("{name:<10} pid {pid:<8} up again (restart {restart})");
                    }
                    pids[index] = Some(pid);
                    if !all_up && pids.iter().all(Option::is_some) {
                        all_up = true;
                        for (server, pid) in config.servers.iter().zip(&pids) {
                            let clients = match (&server.client, &server.client_tls) {
                                (Some(plain), None) => plain.clone(),
                                (None, Some(tls)) => format!("{tls} (TLS)"),
                                (Some(plain), Some(tls)) => format!("{plain}, {tls} (TLS)"),
                                (None, None) => "-".to_owned(),
                            };
                            println!(
                                "{:<10} pid {:<8} clients {:<21} peers {:<21} admin {:<21} log {}",
                                server.name,
                                pid.expect("every server is up"),
                                clients,
                                server.peer,
                                server.admin.as_deref().unwrap_or("-"),
                                config.log_dir.join(format!("{}.log", server.name)).display()
                            );
                        }
                        if config.servers.iter().all(|server| server.admin.is_some()) {
                            await_links(&config).await;
                        }
                        println!("herd of {} servers is up; Ctrl-C stops it", pids.len());
                        // herd up run by systemd (Type=notify) is ready now.
                        let _ = notify::notify("READY=1");
                    }
                }
                Some(joined) = supervisors.join_next() => {
                    match joined {
                        Ok(Ok(())) => {}
                        Ok(Err(reason)) => break Err(reason),
                        Err(join) => std::panic::resume_unwind(join.into_panic()),
                    }
                }
                else => break Ok(()),
            }
        };
        // Whatever ended it, every server stops now; a supervisor with an
        // event to tell must not wait for room that will never come.
        drop(events);
        stop.cancel();
        while supervisors.join_next().await.is_some() {}
        outcome.map_err(anyhow::Error::msg)
    })
}

/// Waits, for at most 5 s, until every server answers on its admin port
/// and every link is up both ways, as `herd status` checks, and says so.
async fn await_links(config: &herd::config::HerdConfig) {
    let herd = herd::admin::HerdMap::from_config(config, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = herd::admin::status::herd_view(&herd, None, Duration::from_secs(1)).await;
        match super::status::problems(&view) {
            None => {
                println!("all {} links are up", view.links.len());
                return;
            }
            Some(problems) if tokio::time::Instant::now() > deadline => {
                eprintln!("herd: not healthy after 5 s: {problems}");
                return;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A server has said it is ready (`restart` 0 the first time).
struct Ready {
    index: usize,
    pid: u32,
    restart: usize,
}

/// What every server of this herd is started with.
struct Launch {
    exe: PathBuf,
    config: Option<PathBuf>,
    log_dir: PathBuf,
    /// The secret herd up made, if it made one.
    secret: Option<String>,
}

impl Launch {
    fn spawn(&self, name: &str, notify_socket: &str, note: Option<&str>) -> std::io::Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .arg(name)
            // All the servers share this machine: one thread each keeps
            // their tasks from waking each other across CPUs.
            .arg("--threads")
            .arg("1")
            .arg("--log-dir")
            .arg(&self.log_dir)
            .env(SUPERVISOR_ENV, std::process::id().to_string())
            .env(NOTIFY_SOCKET, notify_socket)
            // A process group of its own: Ctrl-C in the terminal reaches
            // herd up alone, which stops the servers in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.config {
            command.arg("--config").arg(path);
        }
        if let Some(secret) = &self.secret {
            command.env(SECRET_ENV, secret);
        }
        match note {
            Some(note) => command.env(RESTART_NOTE_ENV, note),
            None => command.env_remove(RESTART_NOTE_ENV),
        };
        if std::io::stderr().is_terminal() {
            command.env(OPERATOR_LINES_ENV, "1");
        } else {
            command.env_remove(OPERATOR_LINES_ENV);
        }
        command.spawn()
    }
}

/// Keeps server `index` running until `stop`: starts it, waits for it to
/// say it is ready, and starts it again when it dies. Returns why the herd
/// must stop, if it must: the server did not start, or keeps dying.
async fn supervise(
    index: usize,
    server: ServerConfig,
    launch: Arc<Launch>,
    events: mpsc::Sender<Ready>,
    stop: CancellationToken,
) -> Result<(), String> {
    let name = server.name.as_str();
    // In Linux's abstract namespace: nothing to clean up, no path length.
    let notify_name = format!("@herd-up-{}-{index}", std::process::id());
    let socket = bind_notify_socket(&notify_name)
        .map_err(|error| format!("{name}: cannot make its notify socket: {error}"))?;
    let mut policy = RestartPolicy::default();
    let mut restart = 0;
    let mut note = None;
    loop {
        // A notification its last run sent is no news of this one.
        let mut scratch = [0u8; 512];
        while socket.try_recv(&mut scratch).is_ok() {}
        let child = launch
            .spawn(name, &notify_name, note.as_deref())
            .map_err(|error| format!("{name}: cannot start herd serve: {error}"))?;
        let mut running = Running::new(name, child);
        let started = tokio::select! {
            () = stop.cancelled() => {
                running.stop().await;
                return Ok(());
            }
            ready = await_ready(&socket, running.pid) => ready.map_err(|error| {
                format!("its notify socket failed: {error}")
            }),
            status = running.child.wait() => Err(running.describe_exit(status).await),
            () = tokio::time::sleep(START_TIMEOUT) => {
                running.stop().await;
                Err(format!("did not say it was ready within {} s", START_TIMEOUT.as_secs()))
            }
        };
        let death = match started {
            Ok(()) => {
                let _ = events
                    .send(Ready {
                        index,
                        pid: running.pid,
                        restart,
                    })
                    .await;
                tokio::select! {
                    () = stop.cancelled() => {
                        running.stop().await;
                        return Ok(());
                    }
                    status = running.child.wait() => running.describe_exit(status).await,
                }
            }
            Err(failure) if restart == 0 => return Err(format!("{name} did not start: {failure}")),
            Err(failure) => failure,
        };
        let Some(delay) = policy.next_delay(Instant::now()) else {
            return Err(format!(
                "{name} keeps dying ({MAX_RESTARTS} restarts within {} s), the last time: {death}; stopping the herd",
                RESTART_WINDOW.as_secs()
            ));
        };
        restart += 1;
        eprintln!(
            "herd: {name} {death}; starting it again in {delay:?} (restart {restart}; more than {MAX_RESTARTS} within {} s stop the herd)",
            RESTART_WINDOW.as_secs()
        );
        note = Some(format!("restart {restart}; the last run {death}"));
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn bind_notify_socket(name: &str) -> std::io::Result<UnixDatagram> {
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&notify::socket_address(name)?)?;
    // The kernel names each datagram's sender: any local process may send
    // to a name in the abstract namespace, and only the server's own word
    // counts.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)?;
    socket.set_nonblocking(true)?;
    UnixDatagram::from_std(socket)
}

/// Waits for a `READY=1` on `socket` from process `pid`.
async fn await_ready(socket: &UnixDatagram, pid: u32) -> std::io::Result<()> {
    let mut buffer = [0u8; 512];
    loop {
        socket.readable().await?;
        let received = socket.try_io(tokio::io::Interest::READABLE, || {
            receive_with_sender(socket, &mut buffer)
        });
        match received {
            Ok((read, sender)) => {
                if says_ready_itself(&buffer[..read], sender, pid) {
                    return Ok(());
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// Whether `datagram`, sent by process `sender`, is process `pid` saying
/// it is ready.
fn says_ready_itself(datagram: &[u8], sender: Option<i32>, pid: u32) -> bool {
    sender.is_some() && sender == i32::try_from(pid).ok() && notify::says_ready(datagram)
}

/// One datagram from `socket` into `buffer`: its length, and the process id
/// the kernel gives for its sender.
fn receive_with_sender(
    socket: &UnixDatagram,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Option<i32>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    use std::os::fd::AsRawFd;
    let mut parts = [std::io::IoSliceMut::new(buffer)];
    let mut control = nix::cmsg_space!(UnixCredentials);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut parts,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let sender = message.cmsgs()?.find_map(|part| match part {
        ControlMessageOwned::ScmCredentials(credentials) => Some(credentials.pid()),
        _ => None,
    });
    Ok((message.bytes, sender))
}

/// One run of a server: its process, and the task that passes on what it
/// writes to standard error.
struct Running {
    name: String,
    pid: u32,
    child: Child,
    /// Ends at the end of the server's standard error, with the last line
    /// the server said as `herd: ...` (its error, when it fails).
    stderr: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl Running {
    fn new(name: &str, mut child: Child) -> Self {
        let stderr = child.stderr.take().map(|stderr| {
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut last = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    // The operator's events name their server already
                    // (`WARN [Hill] ...`): passed on as they are.
                    let Some(said) = line.strip_prefix("herd: ") else {
                        eprintln!("{line}");
                        continue;
                    };
                    // A server's own errors and warnings start "herd: NAME: "
                    // or "herd: "; said here with the server named once.
                    let said = said
                        .strip_prefix(name.as_str())
                        .and_then(|rest| rest.strip_prefix(": "))
                        .unwrap_or(said)
                        .to_owned();
                    eprintln!("herd: {name}: {said}");
                    last = Some(said);
                }
                last
            })
        });
        Self {
            name: name.to_owned(),
            pid: child
                .id()
                .expect("a child just spawned has not been reaped"),
            child,
            stderr,
        }
    }

    /// How the server ended, with its last word on standard error when it
    /// exited with an error.
    async fn describe_exit(&mut self, status: std::io::Result<ExitStatus>) -> String {
        let last_line = match self.stderr.take() {
            // It has exited, so its standard error ends soon.
            Some(task) => tokio::time::timeout(STOP_GRACE, task)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            None => None,
        };
        let status = match status {
            Ok(status) => status,
            Err(error) => return format!("could not be waited for: {error}"),
        };
        match (status.code(), status.signal()) {
            (Some(code), _) => match last_line {
                Some(line) if code != 0 => format!("exited with status {code}: {line}"),
                _ => format!("exited with status {code}"),
            },
            (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(signal) => format!("was killed by {signal}"),
                Err(_) => format!("was killed by signal {signal}"),
            },
            (None, None) => format!("ended ({status})"),
        }
    }

    /// SIGTERM, and SIGKILL if that does not stop it in time.
    async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            eprintln!("herd: {} did not stop; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// When to start a dead server again, and when to give up on it.
#[derive(Default)]
struct RestartPolicy {
    /// When the restarts within the window were decided, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartPolicy {
    /// The pause before starting again a server that died at `now`, or
    /// `None` if it has been started again `MAX_RESTARTS` times within
    /// `RESTART_WINDOW` already.
    fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_RESTARTS {
            return None;
        }
        let doublings = u32::try_from(self.recent.len()).unwrap_or(u32::MAX).min(16);
        self.recent.push_back(now);
        Some((FIRST_RESTART_DELAY * 2u32.pow(doublings)).min(MAX_RESTART_DELAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_a_crash_loop_is_given_up() {
        let mut policy = RestartPolicy::default();
        let start = Instant::now();
        let delays: Vec<Option<Duration>> = (0..=MAX_RESTARTS)
            .map(|i| policy.next_delay(start + Duration::from_secs(i as u64)))
            .collect();
        assert_eq!(delays[0], Some(FIRST_RESTART_DELAY));
        assert_eq!(delays[1], Some(FIRST_RESTART_DELAY * 2));
        assert_eq!(delays[2], Some(FIRST_RESTART_DELAY * 4));
        assert!(delays[..MAX_RESTARTS].iter().all(Option::is_some));
        assert_eq!(delays[MAX_RESTARTS], None, "one restart too many");
        // Once the first restart is out of the window, one more is allowed.
        let later = start + RESTART_WINDOW + Duration::from_secs(1);
        assert!(policy.next_delay(later).is_some());
        // A server that ran well for a long while starts again at once.
        let mut policy = RestartPolicy::default();
        policy.next_delay(start);
        policy.next_delay(start + Duration::from_secs(1));
        assert_eq!(
            policy.next_delay(start + 3 * RESTART_WINDOW),
            Some(FIRST_RESTART_DELAY)
        );
    }

    #[test]
    fn only_the_server_itself_can_say_it_is_ready() {
        assert!(says_ready_itself(b"READY=1\nMAINPID=7\n", Some(7), 7));
        assert!(
            !says_ready_itself(b"READY=1\n", Some(8), 7),
            "another process"
        );
        assert!(
            !says_ready_itself(b"READY=1\n", None, 7),
            "a sender unknown"
        );
        assert!(!says_ready_itself(b"STOPPING=1\n", Some(7), 7));
    }

    #[tokio::test]
    async fn the_kernel_names_the_sender_of_a_notification() {
        let name = format!("@herd-up-unit-test-{}", std::process::id());
        let socket = bind_notify_socket(&name).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender
            .send_to_addr(b"READY=1\n", &notify::socket_address(&name).unwrap())
            .unwrap();
        let mut buffer = [0u8; 64];
        socket.readable().await.unwrap();
        let (read, pid) = receive_with_sender(&socket, &mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"READY=1\n");
        assert_eq!(pid, i32::try_from(std::process::id()).ok());
        // And so readiness from this process, as the server, is taken.
        sender
            .send_to_addr(b"READY=1\n", &notify::socket_address(&name).unwrap())
            .unwrap();
        await_ready(&socket, std::process::id()).await.unwrap();
    }

    #[test]
    fn pauses_stop_growing() {
        let mut policy = RestartPolicy::default();
        let start = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..MAX_RESTARTS {
            last = policy
                .next_delay(start + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert!(last <= MAX_RESTART_DELAY);
    }
}

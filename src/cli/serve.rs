//! `herd serve NAME`: one server of the herd, in this process.

use std::path::Path;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use std::sync::Arc;

use herd::client::tls::ClientTls;
use herd::config::SECRET_ENV;
use herd::peer::auth::Keyring;
use herd::server::{self, Listeners, ServerSetup};

use super::up::{RESTART_NOTE_ENV, SUPERVISOR_ENV};
use super::{HerdArgs, notify, server_runtime};

pub(crate) fn serve(name: &str, args: &HerdArgs, threads: usize) -> anyhow::Result<()> {
    die_with_supervisor()?;
    let config = args.load()?;
    let server_config = config.server(name)?.clone();
    let secrets = config.find_secrets()?;
    if secrets.is_empty() {
        bail!(
            "no herd secret: set `secret` in the config or ${SECRET_ENV} (the same for every server), or run `herd up` once, which keeps one in {}",
            config.secret_file().display()
        );
    }
    let keyring = Arc::new(Keyring::new(&secrets).context("reading the herd secrets")?);
    let rotation = (config.logging.max_file_mb > 0).then(|| herd::log::Rotation {
        max_bytes: config.logging.max_file_mb.saturating_mul(1 << 20),
        keep_files: config.logging.keep_files,
    });
    let _log_guard = init_logging(&config.log_dir, name, rotation)?;
    for warning in &config.warnings {
        // At start, to the journal or terminal as well as the log.
        eprintln!("herd: warning: {warning}");
        tracing::warn!(target: herd::log::OPERATOR, "{warning}");
    }
    if let Ok(note) = std::env::var(RESTART_NOTE_ENV) {
        warn!(%note, "started again by herd up");
    }
    raise_open_file_limit();
    let places = herd::places::from_config(&config, name)?;
    let mut setup = ServerSetup::from_config(&config, name, keyring.clone(), places)?;
    // Read before anything listens, so that a bad certificate stops the
    // start with the file's name rather than every handshake later.
    setup.client_tls = match config.tls_for(name) {
        Some(files) => Some(Arc::new(
            ClientTls::load(files).with_context(|| format!("{name}: the TLS certificate"))?,
        )),
        None => None,
    };
    server_runtime(threads)?.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = super::cancel_on_signal(shutdown.clone()).context("handling signals")?;
        // Taken over before any port is open: SIGHUP's default would kill
        // a server that a client can already reach.
        let reload = Reload {
            args: args.clone(),
            name: name.to_owned(),
            keyring,
            client_tls: setup.client_tls.clone(),
        };
        let on_hangup = reload_on_hangup(reload).context("handling SIGHUP")?;
        if let Some(tls) = setup.client_tls.clone() {
            let name = name.to_owned();
            // At the start and once a day: a server may run for longer
            // than its certificate lasts.
            tokio::spawn(async move {
                let mut every = tokio::time::interval(EXPIRY_CHECK_EVERY);
                loop {
                    every.tick().await;
                    warn_if_expiring(&tls, &name);
                }
            });
        }
        let client = match &server_config.client {
            Some(address) => Some(
                listen(address)
                    .await
                    .with_context(|| format!("{name}: cannot listen for clients on {address}"))?,
            ),
            None => None,
        };
        let client_tls =
            match &server_config.client_tls {
                Some(address) => Some(listen(address).await.with_context(|| {
                    format!("{name}: cannot listen for TLS clients on {address}")
                })?),
                None => None,
            };
        let peer = listen(&server_config.peer).await.with_context(|| {
            format!(
                "{name}: cannot listen for neighbours on {}",
                server_config.peer
            )
        })?;
        let admin = match &server_config.admin {
            Some(address) => Some(listen(address).await.with_context(|| {
                format!("{name}: cannot listen for the admin port on {address}")
            })?),
            None => None,
        };
        tokio::spawn(on_signal);
        tokio::spawn(on_hangup);
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        setup.ready = Some(ready);
        tokio::spawn(tell_readiness(is_ready, shutdown.clone()));
        let listeners = Listeners {
            client,
            client_tls,
            peer,
            admin,
        };
        server::serve(setup, listeners, shutdown).await?;
        Ok(())
    })
}

/// Under `herd up` (which sets `$HERD_SUPERVISOR_PID`), has the kernel send
/// this process SIGTERM when `herd up` dies, however it dies, so that no
/// server outlives it holding its ports and data folder.
fn die_with_supervisor() -> anyhow::Result<()> {
    let Ok(supervisor) = std::env::var(SUPERVISOR_ENV) else {
        return Ok(());
    };
    let supervisor: i32 = supervisor
        .parse()
        .with_context(|| format!("${SUPERVISOR_ENV} is not a process id: {supervisor:?}"))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("asking to be stopped with herd up")?;
    // herd up may have died before the signal was asked for, and then none
    // will come: this process has been handed to another parent already.
    if nix::unistd::getppid().as_raw() != supervisor {
        bail!("herd up (process {supervisor}) is gone");
    }
    Ok(())
}

/// Says `READY=1` on `$NOTIFY_SOCKET` (see `notify`) once the server is
/// ready, and `STOPPING=1` once it is asked to stop.
async fn tell_readiness(is_ready: tokio::sync::oneshot::Receiver<()>, shutdown: CancellationToken) {
    if is_ready.await.is_err() {
        return;
    }
    if let Err(error) = notify::notify("READY=1") {
        warn!(%error, "could not say the server is ready on $NOTIFY_SOCKET");
    }
    shutdown.cancelled().await;
    let _ = notify::notify("STOPPING=1");
}

/// Binds `address` with a listen backlog deep enough for bursts of
/// thousands of connections (the usual 1024 overflows into SYN retries).
async fn listen(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(address).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // So that a restarted server binds again at once (SPEC §8).
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved).and_then(|()| socket.listen(8192)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Lets a server hold as many connections as its limits allow: raises the
/// soft limit on open files to the hard one (or higher, when allowed).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // Root may raise the hard limit too; anyone may raise soft to hard.
    let wanted = hard.max(1 << 20);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() && soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// What SIGHUP reads again, for one server.
struct Reload {
    args: HerdArgs,
    name: String,
    keyring: Arc<Keyring>,
    client_tls: Option<Arc<ClientTls>>,
}

/// On SIGHUP, reads the config again and takes from it the herd secrets
/// (and `$HERD_SECRET`) and the TLS certificate, each used from the next
/// handshake on: how a running server moves to a new secret
/// (docs/deploy.md) or certificate (docs/tls.md). Links and client
/// connections that are up stay up; whatever no longer loads is kept as
/// it was, and the log says why.
fn reload_on_hangup(reload: Reload) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            let config = match reload.args.load() {
                Ok(config) => config,
                Err(error) => {
                    let certificate = if reload.client_tls.is_some() {
                        " and TLS certificate"
                    } else {
                        ""
                    };
                    tracing::warn!(
                        target: herd::log::OPERATOR,
                        "config not reloaded, keeping the herd secrets{certificate} in use: {error:#}"
                    );
                    continue;
                }
            };
            reload_secrets(&reload.keyring, &config);
            if let Some(tls) = &reload.client_tls {
                reload_certificate(tls, &config, &reload.name);
            }
        }
    })
}

fn reload_secrets(keyring: &Keyring, config: &herd::config::HerdConfig) {
    let reloaded = config
        .find_secrets()
        .map_err(anyhow::Error::from)
        .and_then(|secrets| Ok(keyring.replace(&secrets)?));
    match reloaded {
        Ok(()) => {
            let keys = keyring.keys().ids();
            let ids: Vec<String> = keys.iter().map(ToString::to_string).collect();
            tracing::info!(
                target: herd::log::OPERATOR,
                "herd secrets reloaded: dialling with key {}, accepting {}",
                ids[0],
                ids.join(", ")
            );
        }
        Err(error) => tracing::warn!(
            target: herd::log::OPERATOR,
            "herd secrets not reloaded, keeping those in use: {error:#}"
        ),
    }
}

/// How often a running server looks at its certificate's end.
const EXPIRY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Says so, to the operator, when the certificate in use is close to its
/// end or past it.
fn warn_if_expiring(tls: &ClientTls, name: &str) {
    let now = std::time::SystemTime::now();
    if let Some(warning) = tls
        .not_after()
        .and_then(|not_after| herd::client::tls::expiry_warning(not_after, now))
    {
        tracing::warn!(target: herd::log::OPERATOR, "{name}'s TLS certificate {warning}");
    }
}

/// The TLS port itself is not moved or opened by a reload: that takes a
/// restart.
fn reload_certificate(tls: &ClientTls, config: &herd::config::HerdConfig, name: &str) {
    let Some(files) = config.tls_for(name) else {
        tracing::warn!(
            target: herd::log::OPERATOR,
            "the config no longer gives {name} a client_tls port and certificate: keeping the certificate in use until a restart"
        );
        return;
    };
    match tls.reload(files) {
        Ok(()) => {
            tracing::info!(
                target: herd::log::OPERATOR,
                "TLS certificate reloaded from {}",
                files.cert.display()
            );
            warn_if_expiring(tls, name);
        }
        Err(error) => tracing::warn!(
            target: herd::log::OPERATOR,
            "TLS certificate not reloaded, keeping the one in use: {error}"
        ),
    }
}

/// Sends every event to `LOG_DIR/NAME.log` through a background writer, so
/// that logging every message costs the hot path a formatted line and one
/// short lock, not a write; and, when standard error is a terminal, the
/// operator's events there too.
fn init_logging(
    log_dir: &Path,
    name: &str,
    rotation: Option<herd::log::Rotation>,
) -> anyhow::Result<herd::log::FlushGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("creating log folder {}", log_dir.display()))?;
    let path = log_dir.join(format!("{name}.log"));
    let (layer, guard) = herd::log::FileLayer::open(&path, rotation)
        .with_context(|| format!("opening log file {}", path.display()))?;
    layer.take_message_lines();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| "info".into());
    // herd up in a terminal reads each server's standard error (a pipe)
    // and passes it on, so a pipe read there is as good as a terminal.
    let operator_reads = std::io::stderr().is_terminal()
        || std::env::var_os(super::up::OPERATOR_LINES_ENV).is_some();
    let terminal = operator_reads.then(|| {
        herd::log::terminal::TerminalLayer::new(name).with_filter(
            tracing_subscriber::filter::filter_fn(herd::log::terminal::TerminalLayer::wants),
        )
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .with(terminal)
        .init();
    Ok(guard)
}

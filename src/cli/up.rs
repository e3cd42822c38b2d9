//! `herd up`: every server of the herd on this machine, one process each,
//! supervised until Ctrl-C.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use herd::config::SECRET_ENV;

use super::serve::cancel_on_signal;
use super::{HerdArgs, runtime};

/// Runs the herd of `args` until Ctrl-C or SIGTERM.
pub(crate) fn up(args: &HerdArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let secret = config.secret_or_env().unwrap_or_else(|| {
        let bytes: [u8; 32] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let exe = std::env::current_exe().context("finding the herd binary")?;
    runtime()?.block_on(async {
        // Before any child exists, so that Ctrl-C or SIGTERM always stops
        // them rather than killing this process alone.
        let stop = CancellationToken::new();
        tokio::spawn(cancel_on_signal(stop.clone()).context("handling signals")?);
        let mut children = Vec::new();
        for server in &config.servers {
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("serve")
                .arg(&server.name)
                // All the servers share this machine: one thread each keeps
                // their tasks from waking each other across CPUs.
                .arg("--threads")
                .arg("1")
                .env(SECRET_ENV, &secret);
            if let Some(path) = &args.config {
                command.arg("--config").arg(path);
            }
            command.arg("--log-dir").arg(&config.log_dir);
            let child = command
                .spawn()
                .with_context(|| format!("starting {}", server.name))?;
            children.push((server, child));
        }
        // Report each server once it answers on its client port.
        let mut ready = true;
        for (server, child) in &mut children {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if TcpStream::connect(&server.client).await.is_ok() {
                    println!(
                        "{:<10} clients {:<21} peers {:<21} admin {:<21} log {}",
                        server.name,
                        server.client,
                        server.peer,
                        server.admin.as_deref().unwrap_or("-"),
                        config
                            .log_dir
                            .join(format!("{}.log", server.name))
                            .display()
                    );
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("herd: {} exited at start ({status})", server.name);
                    ready = false;
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    eprintln!(
                        "herd: {} is not listening on {} after 5 s",
                        server.name, server.client
                    );
                    ready = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if ready && config.servers.iter().all(|server| server.admin.is_some()) {
            // What `herd status` checks: every server answers and every
            // link is up, both ways.
            let herd = herd::admin::HerdMap::from_config(&config, None);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let view =
                    herd::admin::status::herd_view(&herd, None, Duration::from_secs(1)).await;
                match super::status::problems(&view) {
                    None => {
                        println!("all {} links are up", view.links.len());
                        break;
                    }
                    Some(problems) if tokio::time::Instant::now() > deadline => {
                        eprintln!("herd: not healthy after 5 s: {problems}");
                        break;
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        if ready {
            println!("herd of {} servers is up; Ctrl-C stops it", children.len());
            let _ = std::io::stdout().flush();
            let mut watch = tokio::time::interval(Duration::from_millis(200));
            let mut exited = vec![false; children.len()];
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = watch.tick() => {}
                }
                for (i, (server, child)) in children.iter_mut().enumerate() {
                    if !exited[i]
                        && let Ok(Some(status)) = child.try_wait()
                    {
                        eprintln!(
                            "herd: {} exited ({status}); the others keep running",
                            server.name
                        );
                        exited[i] = true;
                    }
                }
            }
        }
        for (_, child) in &children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for (server, child) in &mut children {
            match tokio::time::timeout(Duration::from_secs(3), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("herd: {} did not stop; killing it", server.name);
                    let _ = child.kill().await;
                }
            }
        }
        if ready {
            Ok(())
        } else {
            bail!("the herd did not start")
        }
    })
}

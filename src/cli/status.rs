//! `herd status`: asks every server of the herd through its admin port and
//! prints one table; fails unless every server answers and every link is
//! up, so that scripts can wait on it.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};

use herd::admin::HerdMap;
use herd::admin::status::{HerdView, herd_view};

use super::{HerdArgs, runtime};

/// How long each server gets to answer.
const PATIENCE: Duration = Duration::from_secs(2);
/// How often `--watch` asks again.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub(crate) fn status(args: &HerdArgs, watch: bool, json: bool) -> anyhow::Result<()> {
    let config = args.load()?;
    let herd = HerdMap::from_config(&config, None);
    if herd.servers.iter().all(|server| server.admin.is_none()) {
        bail!("no server of the herd has an admin address (`admin = \"HOST:PORT\"`)");
    }
    runtime()?.block_on(async {
        loop {
            let view = herd_view(&herd, None, PATIENCE).await;
            let problems = problems(&view);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).context("writing JSON")?
                );
            } else {
                if watch {
                    // Clear the screen and go home, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", table(&view));
                match &problems {
                    None => println!(
                        "healthy: all {} servers answer and all {} links are up",
                        view.servers.len(),
                        view.links.len()
                    ),
                    Some(problems) => println!("unhealthy: {problems}"),
                }
            }
            if !watch {
                return match problems {
                    None => Ok(()),
                    Some(problems) => bail!("{problems}"),
                };
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    })
}

/// What is wrong with the herd, in one line; `None` when nothing is.
pub(crate) fn problems(view: &HerdView) -> Option<String> {
    let mut problems = Vec::new();
    let silent: Vec<String> = view
        .servers
        .iter()
        .filter(|server| !server.reachable)
        .map(|server| {
            format!(
                "{} does not answer ({})",
                server.name,
                server.error.as_deref().unwrap_or("unknown")
            )
        })
        .collect();
    problems.extend(silent);
    let down: Vec<String> = view
        .links
        .iter()
        .filter(|link| link.state != "up")
        .map(|link| format!("{}–{} ({})", link.a, link.b, link.state))
        .collect();
    if !down.is_empty() {
        problems.push(format!("links down: {}", down.join(", ")));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// The table: one line per server.
fn table(view: &HerdView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:>10} {:>8}  {:<24} {:>8} {:>9} {:>9}",
        "server", "reachable", "clients", "links", "down", "backlog", "iamat/s", "updates/s"
    );
    for server in &view.servers {
        let links: Vec<_> = view
            .links
            .iter()
            .filter(|link| link.a == server.name || link.b == server.name)
            .collect();
        let up = links.iter().filter(|link| link.state == "up").count();
        let down: Vec<&str> = links
            .iter()
            .filter(|link| link.state != "up")
            .map(|link| {
                if link.a == server.name {
                    link.b.as_str()
                } else {
                    link.a.as_str()
                }
            })
            .collect();
        let down = if down.is_empty() {
            "-".to_owned()
        } else {
            down.join(",")
        };
        let links = format!("{up}/{}", links.len());
        match &server.status {
            Some(status) => {
                let backlog: u64 = status.neighbours.iter().map(|n| n.backlog).sum();
                let _ = writeln!(
                    out,
                    "{:<12} {:<9} {:>10} {:>8}  {:<24} {:>8} {:>9.1} {:>9.1}",
                    server.name,
                    "yes",
                    status.clients_held,
                    links,
                    down,
                    backlog,
                    status.rates.iamat,
                    status.rates.updates_received,
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<12} {:<9} {:>10} {:>8}  {:<24} {:>8} {:>9} {:>9}",
                    server.name, "NO", "-", links, down, "-", "-", "-"
                );
            }
        }
    }
    out
}

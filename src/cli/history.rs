//! `herd history`: a client's archived reports, the clients seen near a
//! place, and erasure, from the core database of `[history]`.

use anyhow::{Context, bail};

use herd::history::{self, Report, Subject};

use super::HerdArgs;

/// What `herd history` was asked.
#[derive(clap::Args)]
pub(crate) struct Query {
    /// The client id whose reports to list.
    pub client: Option<String>,
    /// Only reports whose client time is at or after this POSIX time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only reports whose client time is at or before this POSIX time.
    #[arg(long)]
    pub until: Option<String>,
    /// Reports listed at most.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// List the reports within --radius of LAT,LNG instead.
    #[arg(
        long,
        value_name = "LAT,LNG",
        conflicts_with = "client",
        allow_hyphen_values = true
    )]
    pub near: Option<String>,
    /// The radius of --near, in kilometres.
    #[arg(long = "radius", value_name = "KM", requires = "near")]
    pub radius_km: Option<f64>,
    /// Delete every archived report of this client, and say how many.
    #[arg(long, alias = "erase", value_name = "CLIENT", conflicts_with_all = ["client", "near"])]
    pub forget: Option<String>,
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn history(herd: &HerdArgs, query: &Query) -> anyhow::Result<()> {
    let config = herd.load()?;
    let Some(history_config) = &config.history else {
        bail!("the herd config has no [history] table: nothing is archived");
    };
    let mut database = history::open(history_config).context("opening the core database")?;
    if let Some(client) = &query.forget {
        let gone = database.forget(client.as_bytes())?;
        println!("forgot {client}: {gone} reports deleted from the core database");
        return Ok(());
    }
    let window = history::parse_window(query.since.as_deref(), query.until.as_deref())?;
    let subject = match (&query.client, &query.near) {
        (Some(client), None) => Subject::Client(client.as_bytes().to_vec()),
        (None, Some(near)) => Subject::Near(
            history::parse_circle(near, query.radius_km)
                .with_context(|| format!("--near {near} --radius KM"))?,
        ),
        _ => bail!("give a CLIENT, or --near LAT,LNG --radius KM, or --forget CLIENT"),
    };
    let reports = subject.reports(database.as_mut(), window, query.limit)?;
    print(&reports, query.json)
}

fn print(reports: &[Report], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(reports)?);
        return Ok(());
    }
    for report in reports {
        let client_id = String::from_utf8_lossy(&report.client_id);
        println!(
            "{}  {}  {}  {}  skew {}",
            report.client_time, client_id, report.location, report.server, report.skew
        );
    }
    Ok(())
}

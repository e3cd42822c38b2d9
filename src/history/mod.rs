//! The core database: every report a server accepts from its own clients,
//! archived off the client's path, and the queries over it (`herd
//! history`).
//!
//! The archiver (`archiver.rs`) reads this server's own store log behind
//! the writer and writes its own clients' reports to the database in
//! batches, each in one transaction with the cursor that says how far it
//! has read. The database sits behind [`CoreDatabase`]: `sqlite.rs` (a
//! file, the default) and `postgres.rs` (a server, for a herd across
//! hosts). Only `server`, `admin` (its queries) and the binary use this
//! wing; the replica knows nothing of it beyond keeping its log in order
//! and its unread segments (see `docs/history.md`).

pub mod archiver;
pub mod postgres;
pub mod sqlite;

use std::path::PathBuf;

use crate::config::{HistoryConfig, HistoryDatabase};
use crate::protocol::{self, time::Timestamp};
use crate::replica::Cursor;

/// Why the core database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("core database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("core database {target}: {message}")]
    Postgres { target: String, message: String },
    #[error("the core database's password: {from}")]
    Password { from: String },
    /// Another process moved this server's archive cursor: two servers of
    /// one name archive to one database, or one restarted over another.
    #[error("the archive cursor of {server} moved under this server")]
    CursorMoved { server: String },
    #[error("core database schema version {found} is newer than this herd knows ({known})")]
    TooNew { found: i64, known: i64 },
}

/// One archived report: the AT line taken apart, its texts as sent.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    #[serde(serialize_with = "lossy")]
    pub client_id: Vec<u8>,
    /// The server that received it from the client.
    pub server: String,
    /// The skew field, as in the AT line.
    pub skew: String,
    /// The location field, as in the AT line.
    pub location: String,
    pub lat: f64,
    pub lng: f64,
    /// The client's time, as in the AT line.
    pub client_time: String,
    /// The client's time and the server's receipt time in nanoseconds
    /// since 1970 (receipt = client time + skew), for windows and retention.
    pub client_nanos: i64,
    pub received_nanos: i64,
}

fn lossy<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

impl Report {
    /// The report of a stored AT line; `None` if it does not parse (the
    /// store holds only lines that do).
    pub fn from_at_line(line: &[u8]) -> Option<Report> {
        let at = protocol::parse_at_line(line)?;
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let text = |i: usize| String::from_utf8_lossy(fields[i]).into_owned();
        let client_nanos = at.client_time.as_nanos();
        let skew_nanos = skew_nanos(fields[2])?;
        let clamp = |nanos: i128| i64::try_from(nanos).unwrap_or(i64::MAX);
        Some(Report {
            client_id: at.client_id.to_vec(),
            server: text(1),
            skew: text(2),
            location: text(4),
            lat: at.location.lat,
            lng: at.location.lng,
            client_time: text(5),
            client_nanos: clamp(client_nanos),
            received_nanos: clamp(client_nanos.saturating_add(skew_nanos)),
        })
    }
}

/// `[+-]digits.digits` as nanoseconds.
fn skew_nanos(text: &[u8]) -> Option<i128> {
    let (&sign, rest) = text.split_first()?;
    let magnitude = Timestamp::parse(rest)?.as_nanos();
    match sign {
        b'+' => Some(magnitude),
        b'-' => Some(-magnitude),
        _ => None,
    }
}

/// A window of client times, both ends inclusive, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub since: i64,
    pub until: i64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            since: i64::MIN,
            until: i64::MAX,
        }
    }
}

/// What a history query is about: a client's reports, or the reports
/// within a circle.
#[derive(Clone, Debug)]
pub enum Subject {
    Client(Vec<u8>),
    Near(Circle),
}

impl Subject {
    /// Its reports in `window`, newest first, at most `limit`.
    pub fn reports(
        &self,
        database: &mut dyn CoreDatabase,
        window: Window,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError> {
        match self {
            Subject::Client(client) => database.client_history(client, window, limit),
            Subject::Near(circle) => database.near(*circle, window, limit),
        }
    }
}

/// A circle on the Earth.
#[derive(Clone, Copy, Debug)]
pub struct Circle {
    pub lat: f64,
    pub lng: f64,
    pub radius_km: f64,
}

/// What a core database does, whatever its kind. Calls block: the
/// archiver runs on a thread of its own, the binary calls it directly.
pub trait CoreDatabase: Send {
    /// How far `server` has archived its own log, if it ever has.
    fn cursor(&mut self, server: &str) -> Result<Option<Cursor>, HistoryError>;
    /// Writes `reports` and moves `server`'s cursor from `from` to `to` in
    /// one transaction; `CursorMoved` (and nothing written) if the cursor
    /// is no longer `from`.
    fn archive(
        &mut self,
        server: &str,
        from: Option<Cursor>,
        to: Cursor,
        reports: &[Report],
    ) -> Result<(), HistoryError>;
    /// A client's reports in `window`, newest first, at most `limit`.
    fn client_history(
        &mut self,
        client_id: &[u8],
        window: Window,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError>;
    /// Reports in `circle` and `window`, newest first, at most `limit`.
    fn near(
        &mut self,
        circle: Circle,
        window: Window,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError>;
    /// Deletes every report of `client_id`; how many there were.
    fn forget(&mut self, client_id: &[u8]) -> Result<u64, HistoryError>;
    /// Deletes at most `batch` reports received before `before_nanos`;
    /// how many went.
    fn expire(&mut self, before_nanos: i64, batch: usize) -> Result<u64, HistoryError>;
    /// Whether the connection is gone for good, so that only a new one
    /// can serve (a database server that went away); an error on a
    /// connection that is not broken is worth retrying on it.
    fn broken(&self) -> bool {
        false
    }
}

/// Opens (creating and migrating if needed) the database `config` names.
pub fn open(config: &HistoryConfig) -> Result<Box<dyn CoreDatabase>, HistoryError> {
    match config.database {
        HistoryDatabase::Sqlite => {
            let path = config
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("history.sqlite"));
            Ok(Box::new(sqlite::Sqlite::open(&path)?))
        }
        HistoryDatabase::Postgres => Ok(Box::new(postgres::Postgres::connect(config)?)),
    }
}

/// Why a query's arguments are not usable; the message says what to give.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub String);

/// POSIX time in seconds, as in IAMAT (`1795311039.489223042`), in
/// nanoseconds.
pub fn parse_time(text: &str) -> Result<i64, BadQuery> {
    let time = Timestamp::parse(text.as_bytes())
        .ok_or_else(|| BadQuery(format!("{text:?} is not a POSIX time in seconds")))?;
    Ok(i64::try_from(time.as_nanos()).unwrap_or(i64::MAX))
}

/// The window between two optional POSIX times, both included.
pub fn parse_window(since: Option<&str>, until: Option<&str>) -> Result<Window, BadQuery> {
    Ok(Window {
        since: since.map_or(Ok(i64::MIN), parse_time)?,
        until: until.map_or(Ok(i64::MAX), parse_time)?,
    })
}

/// The circle of `LAT,LNG` in degrees and a radius in kilometres.
pub fn parse_circle(near: &str, radius_km: Option<f64>) -> Result<Circle, BadQuery> {
    let Some(radius_km) = radius_km.filter(|r| r.is_finite() && *r > 0.0) else {
        return Err(BadQuery(
            "near needs a radius in kilometres, greater than zero".into(),
        ));
    };
    let (lat, lng) = near
        .split_once(',')
        .and_then(|(lat, lng)| Some((lat.trim().parse().ok()?, lng.trim().parse().ok()?)))
        .filter(|&(lat, lng): &(f64, f64)| lat.abs() <= 90.0 && lng.abs() <= 180.0)
        .ok_or_else(|| {
            BadQuery(format!(
                "near takes LAT,LNG in degrees, e.g. 34.07,-118.44, not {near:?}"
            ))
        })?;
    Ok(Circle {
        lat,
        lng,
        radius_km,
    })
}

/// Whether the great-circle distance puts (`lat`, `lng`) inside `circle`.
pub fn within(circle: Circle, lat: f64, lng: f64) -> bool {
    crate::places::sphere::haversine_m(circle.lat, circle.lng, lat, lng)
        <= circle.radius_km * 1000.0
}

/// A latitude and longitude box that holds `circle`: (south, north, west,
/// east); west > east when it crosses the antimeridian.
pub fn bounding_box(circle: Circle) -> (f64, f64, f64, f64) {
    let radius_m = circle.radius_km * 1000.0;
    let degrees = (radius_m / crate::places::sphere::EARTH_RADIUS_M).to_degrees();
    let south = (circle.lat - degrees).max(-90.0);
    let north = (circle.lat + degrees).min(90.0);
    // Near a pole every longitude is within reach.
    if south <= -90.0 || north >= 90.0 {
        return (south, north, -180.0, 180.0);
    }
    let widest = circle.lat.abs().max(south.abs()).max(north.abs());
    let spread = degrees / widest.to_radians().cos();
    if spread >= 180.0 {
        return (south, north, -180.0, 180.0);
    }
    let wrap = |lng: f64| {
        if lng > 180.0 {
            lng - 360.0
        } else if lng < -180.0 {
            lng + 360.0
        } else {
            lng
        }
    };
    (
        south,
        north,
        wrap(circle.lng - spread),
        wrap(circle.lng + spread),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_keeps_its_texts_and_knows_when_it_was_received() {
        let report =
            Report::from_at_line(b"AT Hill -0.500000000 kiwi +34.068930-118.445127 100.25")
                .unwrap();
        assert_eq!(report.client_id, b"kiwi");
        assert_eq!(report.server, "Hill");
        assert_eq!(report.location, "+34.068930-118.445127");
        assert_eq!(report.client_time, "100.25");
        assert_eq!(report.client_nanos, 100_250_000_000);
        assert_eq!(report.received_nanos, 99_750_000_000);
        assert!(Report::from_at_line(b"AT Hill x kiwi +1+1 1").is_none());
    }

    #[test]
    fn the_bounding_box_holds_the_circle_even_across_the_antimeridian() {
        let circle = Circle {
            lat: 10.0,
            lng: 179.9,
            radius_km: 50.0,
        };
        let (south, north, west, east) = bounding_box(circle);
        assert!(south < 10.0 && north > 10.0);
        assert!(west > east, "wraps: {west} {east}");
        assert!(within(circle, 10.0, -179.9));
        let polar = bounding_box(Circle {
            lat: 89.9,
            lng: 0.0,
            radius_km: 50.0,
        });
        assert_eq!((polar.2, polar.3), (-180.0, 180.0));
    }
}

//! The core database in PostgreSQL, shared by the servers of a herd that
//! spans hosts. With the PostGIS extension each report also holds its
//! position as a `geography` point under a GiST index, and `near` asks
//! the index; without it, `near` narrows by a latitude and longitude box
//! and keeps what is within the great circle, as SQLite does.
//!
//! The connection is `postgres`' blocking client: the archiver has a
//! thread of its own, and the binary and the admin port call from
//! threads that may block.

use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::SslMode;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::info;

use super::{Circle, CoreDatabase, HistoryError, Report, Window, bounding_box, within};
use crate::config::HistoryConfig;
use crate::replica::Cursor;

/// The schema, one step per version; a database records the steps it has
/// had in `schema_versions`, and a step is never changed once released.
const MIGRATIONS: &[&str] = &[
    // 1: reports, by client and time, and each server's archive cursor.
    "CREATE TABLE reports (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        client_id BYTEA NOT NULL,
        server TEXT NOT NULL,
        skew TEXT NOT NULL,
        location TEXT NOT NULL,
        lat DOUBLE PRECISION NOT NULL,
        lng DOUBLE PRECISION NOT NULL,
        client_time TEXT NOT NULL,
        client_nanos BIGINT NOT NULL,
        received_nanos BIGINT NOT NULL
    );
    CREATE INDEX reports_by_client ON reports (client_id, client_nanos);
    CREATE INDEX reports_by_time ON reports (client_nanos);
    CREATE INDEX reports_by_receipt ON reports (received_nanos);
    CREATE INDEX reports_by_place ON reports (lat, lng);
    CREATE TABLE archive_cursors (
        server TEXT PRIMARY KEY,
        run BIGINT NOT NULL,
        seq BIGINT NOT NULL
    );",
    // 2: `near` without PostGIS walks the time index newest first,
    // filtering by box and circle: an index in the order of places, which
    // every insert lands somewhere random in, is not worth its cost to the
    // archive.
    "DROP INDEX IF EXISTS reports_by_place;",
];

/// The spatial step, taken whenever PostGIS can be had and has not been
/// yet: it depends on the database server's packages, not on herd's
/// version, so it is not one of the numbered steps. The position is
/// computed from the columns, so that writes stay the same either way.
const SPATIAL: &str = "
    CREATE EXTENSION IF NOT EXISTS postgis;
    ALTER TABLE reports ADD COLUMN IF NOT EXISTS position geography(Point, 4326)
        GENERATED ALWAYS AS (ST_SetSRID(ST_MakePoint(lng, lat), 4326)::geography) STORED;
    CREATE INDEX IF NOT EXISTS reports_by_position ON reports USING GIST (position);
    DROP INDEX IF EXISTS reports_by_place;";

/// Held (for a transaction) by whoever migrates, so that the servers of a
/// herd starting together migrate one after the other.
const SCHEMA_LOCK: i64 = 0x6865_7264_5f73_6368;

/// How long a connection may take when the connection string does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sent data may go unacknowledged before the connection counts
/// as broken, when the connection string does not say: a database host
/// that vanished must not hold the archiver for ever.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

const COLUMNS: &str =
    "client_id, server, skew, location, lat, lng, client_time, client_nanos, received_nanos";
/// The types of `COLUMNS`, in order, for COPY.
const COLUMN_TYPES: [Type; 9] = [
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
];

/// A connection to the PostgreSQL core database.
pub struct Postgres {
    /// Who, where and which database, for messages: never the password.
    target: String,
    client: Client,
    /// Whether `reports` has the PostGIS `position` column.
    spatial: bool,
}

impl Postgres {
    /// Connects as `config` says and brings the schema up to date.
    pub fn connect(config: &HistoryConfig) -> Result<Postgres, HistoryError> {
        let url = config.url.as_deref().unwrap_or_default();
        let mut options: postgres::Config =
            url.parse().map_err(|error| HistoryError::Postgres {
                target: "(history.url)".into(),
                message: chain(&error),
            })?;
        let target = describe(&options);
        if let Some(password) = password(config)? {
            options.password(password);
        }
        if options.get_connect_timeout().is_none() {
            options.connect_timeout(CONNECT_TIMEOUT);
        }
        if options.get_tcp_user_timeout().is_none() {
            options.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if options.get_application_name().is_none() {
            options.application_name("herd");
        }
        let error = |source: postgres::Error| HistoryError::Postgres {
            target: target.clone(),
            message: chain(&source),
        };
        // TLS as the URL's sslmode says: libpq's default, `prefer`, takes it
        // whenever the server offers it (never over a Unix socket), and a
        // certificate that does not check out is an error, not a fallback.
        let client = if options.get_ssl_mode() == SslMode::Disable {
            options.connect(NoTls)
        } else {
            let identity = config
                .tls_cert
                .as_deref()
                .zip(config.tls_key.as_deref())
                .map(|(cert, key)| crate::tls::Identity { cert, key });
            let trust =
                crate::tls::client_config(config.tls_ca.as_deref(), identity).map_err(|error| {
                    HistoryError::Postgres {
                        target: target.clone(),
                        message: format!("history TLS: {error}"),
                    }
                })?;
            options.connect(MakeRustlsConnect::new(trust))
        }
        .map_err(error)?;
        let mut postgres = Postgres {
            target,
            client,
            spatial: false,
        };
        postgres.migrate()?;
        postgres.spatial = postgres.enable_spatial()?;
        Ok(postgres)
    }

    /// Whether positions are PostGIS points under a spatial index.
    pub fn spatial(&self) -> bool {
        self.spatial
    }

    fn error(&self) -> impl Fn(postgres::Error) -> HistoryError + '_ {
        |source| HistoryError::Postgres {
            target: self.target.clone(),
            message: chain(&source),
        }
    }

    fn migrate(&mut self) -> Result<(), HistoryError> {
        let mut run = || -> Result<Result<(), HistoryError>, postgres::Error> {
            let mut transaction = self.client.transaction()?;
            transaction.query("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            transaction.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (version INTEGER PRIMARY KEY)",
            )?;
            let found: i32 = transaction
                .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_versions", &[])?
                .get(0);
            let known = i32::try_from(MIGRATIONS.len()).expect("a handful of migrations");
            if found > known {
                return Ok(Err(HistoryError::TooNew {
                    found: found.into(),
                    known: known.into(),
                }));
            }
            for (version, step) in (1..).zip(MIGRATIONS).skip_while(|(v, _)| *v <= found) {
                transaction.batch_execute(step)?;
                transaction.execute(
                    "INSERT INTO schema_versions (version) VALUES ($1)",
                    &[&version],
                )?;
            }
            transaction.commit()?;
            Ok(Ok(()))
        };
        let result = run();
        result.map_err(self.error())?
    }

    /// Adds the PostGIS column and index if the extension can be had;
    /// whether the table has them.
    fn enable_spatial(&mut self) -> Result<bool, HistoryError> {
        let has_column = |client: &mut Client| -> Result<bool, postgres::Error> {
            Ok(client
                .query_opt(
                    "SELECT 1 FROM information_schema.columns
                     WHERE table_schema = current_schema()
                       AND table_name = 'reports' AND column_name = 'position'",
                    &[],
                )?
                .is_some())
        };
        let available = |client: &mut Client| -> Result<bool, postgres::Error> {
            Ok(client
                .query_opt(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'",
                    &[],
                )?
                .is_some())
        };
        let client = &mut self.client;
        let found = has_column(client).and_then(|has| Ok((has, has || available(client)?)));
        let (has, available) = found.map_err(self.error())?;
        if has || !available {
            return Ok(has);
        }
        let mut add = || -> Result<(), postgres::Error> {
            let mut transaction = self.client.transaction()?;
            transaction.query("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            transaction.batch_execute(SPATIAL)?;
            transaction.commit()
        };
        match add() {
            Ok(()) => {
                info!(database = %self.target, "PostGIS enabled: positions are geography points under a spatial index");
                Ok(true)
            }
            // Creating an extension takes rights an archiving role need not
            // have: plain columns serve, only slower for --near.
            Err(error) if error.as_db_error().is_some() => {
                info!(database = %self.target, error = %chain(&error), "PostGIS is installed but could not be enabled; --near uses plain columns");
                Ok(false)
            }
            Err(error) => Err(self.error()(error)),
        }
    }

    fn reports(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        keep: impl Fn(&Report) -> bool,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError> {
        let mut run = || -> Result<Vec<Report>, postgres::Error> {
            let mut rows = self.client.query_raw(sql, params.iter().copied())?;
            let mut reports = Vec::new();
            while reports.len() < limit
                && let Some(row) = rows.next()?
            {
                let report = report(&row)?;
                if keep(&report) {
                    reports.push(report);
                }
            }
            Ok(reports)
        };
        let result = run();
        result.map_err(self.error())
    }
}

fn report(row: &Row) -> Result<Report, postgres::Error> {
    Ok(Report {
        client_id: row.try_get(0)?,
        server: row.try_get(1)?,
        skew: row.try_get(2)?,
        location: row.try_get(3)?,
        lat: row.try_get(4)?,
        lng: row.try_get(5)?,
        client_time: row.try_get(6)?,
        client_nanos: row.try_get(7)?,
        received_nanos: row.try_get(8)?,
    })
}

/// `user@host:port/dbname` as far as the connection string says.
fn describe(options: &postgres::Config) -> String {
    let hosts: Vec<String> = options
        .get_hosts()
        .iter()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = options.get_ports().iter().map(u16::to_string).collect();
    let mut target = String::from("postgres ");
    if let Some(user) = options.get_user() {
        target.push_str(user);
        target.push('@');
    }
    target.push_str(&hosts.join(","));
    if !ports.is_empty() {
        target.push(':');
        target.push_str(&ports.join(","));
    }
    if let Some(dbname) = options.get_dbname() {
        target.push('/');
        target.push_str(dbname);
    }
    target
}

/// An error and its causes on one line: `postgres` says what kind of
/// error it was, its source says what happened.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    crate::log::with_causes(error.to_string(), error.source())
}

/// The password from `password_file` or `password_env`, if one is named.
fn password(config: &HistoryConfig) -> Result<Option<String>, HistoryError> {
    if let Some(file) = &config.password_file {
        let text = std::fs::read_to_string(file).map_err(|error| HistoryError::Password {
            from: format!("password_file {}: {error}", file.display()),
        })?;
        let line = text.lines().next().unwrap_or_default();
        return Ok(Some(line.to_owned()));
    }
    if let Some(variable) = &config.password_env {
        let value = std::env::var(variable).map_err(|error| HistoryError::Password {
            from: format!("password_env {variable}: {error}"),
        })?;
        return Ok(Some(value));
    }
    Ok(None)
}

impl CoreDatabase for Postgres {
    fn cursor(&mut self, server: &str) -> Result<Option<Cursor>, HistoryError> {
        let row = self
            .client
            .query_opt(
                "SELECT run, seq FROM archive_cursors WHERE server = $1",
                &[&server],
            )
            .map_err(self.error())?;
        Ok(row.map(|row| Cursor {
            run: row.get::<_, i64>(0).cast_unsigned(),
            seq: row.get::<_, i64>(1).cast_unsigned(),
        }))
    }

    fn archive(
        &mut self,
        server: &str,
        from: Option<Cursor>,
        to: Cursor,
        reports: &[Report],
    ) -> Result<(), HistoryError> {
        let mut write = || -> Result<bool, postgres::Error> {
            let mut transaction = self.client.transaction()?;
            let (run, seq) = (to.run.cast_signed(), to.seq.cast_signed());
            // The cursor moves only from where this server last left it;
            // a second writer waits for the first's row lock, then finds
            // the cursor moved and writes nothing.
            let moved = match from {
                Some(from) => transaction.execute(
                    "UPDATE archive_cursors SET run = $1, seq = $2
                     WHERE server = $3 AND run = $4 AND seq = $5",
                    &[
                        &run,
                        &seq,
                        &server,
                        &from.run.cast_signed(),
                        &from.seq.cast_signed(),
                    ],
                )?,
                None => transaction.execute(
                    "INSERT INTO archive_cursors (server, run, seq) VALUES ($1, $2, $3)
                     ON CONFLICT (server) DO NOTHING",
                    &[&server, &run, &seq],
                )?,
            };
            if moved != 1 {
                return Ok(false);
            }
            if !reports.is_empty() {
                // COPY in binary: the cheapest way in for the server, which
                // neither parses text nor plans a statement per batch.
                let sink = transaction.copy_in(&format!(
                    "COPY reports ({COLUMNS}) FROM STDIN (FORMAT binary)"
                ))?;
                let mut rows = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
                for r in reports {
                    rows.write(&[
                        &r.client_id,
                        &r.server,
                        &r.skew,
                        &r.location,
                        &r.lat,
                        &r.lng,
                        &r.client_time,
                        &r.client_nanos,
                        &r.received_nanos,
                    ])?;
                }
                rows.finish()?;
            }
            transaction.commit()?;
            Ok(true)
        };
        let written = write();
        match written.map_err(self.error())? {
            true => Ok(()),
            false => Err(HistoryError::CursorMoved {
                server: server.to_owned(),
            }),
        }
    }

    fn client_history(
        &mut self,
        client_id: &[u8],
        window: Window,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError> {
        let limit_rows = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reports(
            &format!(
                "SELECT {COLUMNS} FROM reports
                 WHERE client_id = $1 AND client_nanos BETWEEN $2 AND $3
                 ORDER BY client_nanos DESC, id DESC
                 LIMIT $4"
            ),
            &[&client_id, &window.since, &window.until, &limit_rows],
            |_| true,
            limit,
        )
    }

    fn near(
        &mut self,
        circle: Circle,
        window: Window,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError> {
        if self.spatial {
            let radius_m = circle.radius_km * 1000.0;
            let limit_rows = i64::try_from(limit).unwrap_or(i64::MAX);
            // On the sphere (`false`), as the great-circle test elsewhere.
            return self.reports(
                &format!(
                    "SELECT {COLUMNS} FROM reports
                     WHERE ST_DWithin(position,
                             ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, $3, false)
                       AND client_nanos BETWEEN $4 AND $5
                     ORDER BY client_nanos DESC, id DESC
                     LIMIT $6"
                ),
                &[
                    &circle.lng,
                    &circle.lat,
                    &radius_m,
                    &window.since,
                    &window.until,
                    &limit_rows,
                ],
                |_| true,
                limit,
            );
        }
        // Newest first through the time index until `limit` are found;
        // the box is a cheap first test, the great circle decides.
        let (south, north, west, east) = bounding_box(circle);
        let longitudes = if west <= east {
            "lng BETWEEN $3 AND $4"
        } else {
            "(lng >= $3 OR lng <= $4)"
        };
        self.reports(
            &format!(
                "SELECT {COLUMNS} FROM reports
                 WHERE client_nanos BETWEEN $5 AND $6
                   AND lat BETWEEN $1 AND $2 AND {longitudes}
                 ORDER BY client_nanos DESC, id DESC"
            ),
            &[&south, &north, &west, &east, &window.since, &window.until],
            |report| within(circle, report.lat, report.lng),
            limit,
        )
    }

    fn forget(&mut self, client_id: &[u8]) -> Result<u64, HistoryError> {
        self.client
            .execute("DELETE FROM reports WHERE client_id = $1", &[&client_id])
            .map_err(self.error())
    }

    fn expire(&mut self, before_nanos: i64, batch: usize) -> Result<u64, HistoryError> {
        // A bounded delete per transaction holds its row locks briefly.
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        self.client
            .execute(
                "DELETE FROM reports WHERE id IN
                   (SELECT id FROM reports WHERE received_nanos < $1 LIMIT $2)",
                &[&before_nanos, &batch],
            )
            .map_err(self.error())
    }

    fn broken(&self) -> bool {
        self.client.is_closed()
    }
}

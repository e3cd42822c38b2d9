//! The core database in one SQLite file, shared by the servers of one
//! machine: WAL, so that readers never wait for the archivers, and a busy
//! timeout, so that the servers take turns at writing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Circle, CoreDatabase, HistoryError, Report, Window, bounding_box, within};
use crate::replica::Cursor;

/// The schema, one step per version; a database records the steps it has
/// had in `schema_versions`, and a step is never changed once released.
const MIGRATIONS: &[&str] = &[
    // 1: reports, by client and time, and each server's archive cursor.
    "CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        client_id BLOB NOT NULL,
        server TEXT NOT NULL,
        skew TEXT NOT NULL,
        location TEXT NOT NULL,
        lat REAL NOT NULL,
        lng REAL NOT NULL,
        client_time TEXT NOT NULL,
        client_nanos INTEGER NOT NULL,
        received_nanos INTEGER NOT NULL
    );
    CREATE INDEX reports_by_client ON reports (client_id, client_nanos);
    CREATE INDEX reports_by_time ON reports (client_nanos);
    CREATE INDEX reports_by_receipt ON reports (received_nanos);
    CREATE INDEX reports_by_place ON reports (lat, lng);
    CREATE TABLE archive_cursors (
        server TEXT PRIMARY KEY,
        run INTEGER NOT NULL,
        seq INTEGER NOT NULL
    );",
    // 2: `near` walks the time index newest first, filtering by box and
    // circle: an index in the order of places, which every insert lands
    // somewhere random in, is not worth its cost to the archive.
    "DROP INDEX reports_by_place;",
];

/// A connection to the SQLite core database.
pub struct Sqlite {
    path: PathBuf,
    connection: Connection,
}

impl Sqlite {
    /// Opens `path`, creating it and its folder if needed, and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Sqlite, HistoryError> {
        if let Some(folder) = path.parent()
            && !folder.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(folder);
        }
        let connection = Connection::open(path).map_err(error_in(path))?;
        let mut sqlite = Sqlite {
            path: path.to_owned(),
            connection,
        };
        sqlite.set_up().map_err(error_in(path))??;
        Ok(sqlite)
    }

    fn set_up(&mut self) -> rusqlite::Result<Result<(), HistoryError>> {
        let connection = &mut self.connection;
        // Waits this long for another writer before failing; the archiver
        // tries again at its next round.
        connection.busy_timeout(Duration::from_secs(1))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // A committed batch and its cursor survive power loss, so the log
        // segments behind the cursor may be deleted.
        connection.pragma_update(None, "synchronous", "FULL")?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (version INTEGER PRIMARY KEY)",
            [],
        )?;
        let found: i64 = transaction.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_versions",
            [],
            |row| row.get(0),
        )?;
        let known = i64::try_from(MIGRATIONS.len()).expect("a handful of migrations");
        if found > known {
            return Ok(Err(HistoryError::TooNew { found, known }));
        }
        for (version, step) in (1..).zip(MIGRATIONS).skip_while(|(v, _)| *v <= found) {
            transaction.execute_batch(step)?;
            transaction.execute(
                "INSERT INTO schema_versions (version) VALUES (?1)",
                [version],
            )?;
        }
        transaction.commit()?;
        Ok(Ok(()))
    }

    fn error(&self) -> impl FnOnce(rusqlite::Error) -> HistoryError + '_ {
        error_in(&self.path)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        keep: impl Fn(&Report) -> bool,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError> {
        let path = self.path.clone();
        let run = || -> rusqlite::Result<Vec<Report>> {
            let mut statement = self.connection.prepare_cached(sql)?;
            let mut rows = statement.query(params)?;
            let mut reports = Vec::new();
            while reports.len() < limit
                && let Some(row) = rows.next()?
            {
                let report = Report {
                    client_id: row.get(0)?,
                    server: row.get(1)?,
                    skew: row.get(2)?,
                    location: row.get(3)?,
                    lat: row.get(4)?,
                    lng: row.get(5)?,
                    client_time: row.get(6)?,
                    client_nanos: row.get(7)?,
                    received_nanos: row.get(8)?,
                };
                if keep(&report) {
                    reports.push(report);
                }
            }
            Ok(reports)
        };
        run().map_err(error_in(&path))
    }
}

fn error_in(path: &Path) -> impl FnOnce(rusqlite::Error) -> HistoryError + '_ {
    move |source| HistoryError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

const COLUMNS: &str =
    "client_id, server, skew, location, lat, lng, client_time, client_nanos, received_nanos";

impl CoreDatabase for Sqlite {
    fn cursor(&mut self, server: &str) -> Result<Option<Cursor>, HistoryError> {
        self.connection
            .query_row(
                "SELECT run, seq FROM archive_cursors WHERE server = ?1",
                [server],
                |row| {
                    Ok(Cursor {
                        run: row.get::<_, i64>(0)?.cast_unsigned(),
                        seq: row.get::<_, i64>(1)?.cast_unsigned(),
                    })
                },
            )
            .optional()
            .map_err(self.error())
    }

    fn archive(
        &mut self,
        server: &str,
        from: Option<Cursor>,
        to: Cursor,
        reports: &[Report],
    ) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let mut write = || -> rusqlite::Result<bool> {
            let transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (run, seq) = (to.run.cast_signed(), to.seq.cast_signed());
            // The cursor moves only from where this server last left it.
            let moved = match from {
                Some(from) => transaction.execute(
                    "UPDATE archive_cursors SET run = ?1, seq = ?2
                     WHERE server = ?3 AND run = ?4 AND seq = ?5",
                    params![
                        run,
                        seq,
                        server,
                        from.run.cast_signed(),
                        from.seq.cast_signed()
                    ],
                )?,
                None => transaction.execute(
                    "INSERT INTO archive_cursors (server, run, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (server) DO NOTHING",
                    params![server, run, seq],
                )?,
            };
            if moved != 1 {
                return Ok(false);
            }
            {
                let mut insert = transaction.prepare_cached(&format!(
                    "INSERT INTO reports ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ))?;
                for r in reports {
                    insert.execute(params![
                        r.client_id,
                        r.server,
                        r.skew,
                        r.location,
                        r.lat,
                        r.lng,
                        r.client_time,
                        r.client_nanos,
                        r.received_nanos
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(true)
        };
        match write() {
            Ok(true) => Ok(()),
            Ok(false) => Err(HistoryError::CursorMoved {
                server: server.to_owned(),
            }),
            Err(source) => Err(HistoryError::Sqlite { path, source }),
        }
    }

    fn client_history(
        &mut self,
        client_id: &[u8],
        window: Window,
        limit: usize,
    ) -> Result<Vec<Report>, HistoryError> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM reports
                 WHERE client_id = ?1 AND client_nanos BETWEEN ?2 AND ?3
                 ORDER BY client_nanos DESC, id DESC"
            ),
            &[&client_id, &window.since, &window.until],
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
        // Newest first through the time index until `limit` are found;
        // the box is a cheap first test, the great circle decides.
        let (south, north, west, east) = bounding_box(circle);
        let longitudes = if west <= east {
            "lng BETWEEN ?3 AND ?4"
        } else {
            "(lng >= ?3 OR lng <= ?4)"
        };
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM reports
                 WHERE client_nanos BETWEEN ?5 AND ?6
                   AND lat BETWEEN ?1 AND ?2 AND {longitudes}
                 ORDER BY client_nanos DESC, id DESC"
            ),
            &[&south, &north, &west, &east, &window.since, &window.until],
            |report| within(circle, report.lat, report.lng),
            limit,
        )
    }

    fn forget(&mut self, client_id: &[u8]) -> Result<u64, HistoryError> {
        let gone = self
            .connection
            .execute("DELETE FROM reports WHERE client_id = ?1", [client_id])
            .map_err(error_in(&self.path))?;
        Ok(gone as u64)
    }

    fn expire(&mut self, before_nanos: i64, batch: usize) -> Result<u64, HistoryError> {
        // A bounded delete per transaction holds the write lock briefly.
        let gone = self
            .connection
            .execute(
                "DELETE FROM reports WHERE id IN
                   (SELECT id FROM reports WHERE received_nanos < ?1 LIMIT ?2)",
                params![before_nanos, i64::try_from(batch).unwrap_or(i64::MAX)],
            )
            .map_err(error_in(&self.path))?;
        Ok(gone as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(client: &str, server: &str, location: &str, time: &str) -> Report {
        Report::from_at_line(
            format!("AT {server} +1.000000000 {client} {location} {time}").as_bytes(),
        )
        .unwrap()
    }

    fn cursor(seq: u64) -> Cursor {
        Cursor {
            run: u64::MAX - 1,
            seq,
        }
    }

    #[test]
    fn the_cursor_moves_only_from_where_it_was_with_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&dir.path().join("h.sqlite")).unwrap();
        assert_eq!(db.cursor("Hill").unwrap(), None);
        let first = [report("kiwi", "Hill", "+1+1", "10")];
        db.archive("Hill", None, cursor(5), &first).unwrap();
        assert_eq!(db.cursor("Hill").unwrap(), Some(cursor(5)));
        // A second writer that read the same cursor loses, and writes nothing.
        let moved = db.archive("Hill", None, cursor(9), &first);
        assert!(matches!(moved, Err(HistoryError::CursorMoved { .. })));
        let moved = db.archive("Hill", Some(cursor(4)), cursor(9), &first);
        assert!(matches!(moved, Err(HistoryError::CursorMoved { .. })));
        let all = db.client_history(b"kiwi", Window::default(), 100).unwrap();
        assert_eq!(all.len(), 1);
        // Reopening keeps everything and migrates nothing again.
        drop(db);
        let mut db = Sqlite::open(&dir.path().join("h.sqlite")).unwrap();
        assert_eq!(db.cursor("Hill").unwrap(), Some(cursor(5)));
    }

    #[test]
    fn a_database_of_the_first_schema_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        {
            let connection = Connection::open(&path).unwrap();
            connection
                .execute_batch(&format!(
                    "CREATE TABLE schema_versions (version INTEGER PRIMARY KEY);
                     INSERT INTO schema_versions (version) VALUES (1);
                     {}
                     INSERT INTO reports ({COLUMNS})
                       VALUES (x'6b697769', 'Hill', '+1.0', '+1+1', 1.0, 1.0, '10', 10, 11);",
                    MIGRATIONS[0]
                ))
                .unwrap();
        }
        let mut db = Sqlite::open(&path).unwrap();
        let indexes: Vec<String> = db
            .connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'reports'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !indexes.contains(&"reports_by_place".to_owned()),
            "{indexes:?}"
        );
        assert!(
            indexes.contains(&"reports_by_time".to_owned()),
            "{indexes:?}"
        );
        let version: i64 = db
            .connection
            .query_row("SELECT MAX(version) FROM schema_versions", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(version, 2);
        let kept = db.client_history(b"kiwi", Window::default(), 10).unwrap();
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn history_is_newest_first_within_the_window_and_forgetting_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&dir.path().join("h.sqlite")).unwrap();
        let reports: Vec<Report> = (1..=5)
            .map(|t| report("kiwi", "Hill", "+1+1", &t.to_string()))
            .chain([report("pear", "Smith", "+1+1", "3")])
            .collect();
        db.archive("Hill", None, cursor(6), &reports).unwrap();
        let window = Window {
            since: 2_000_000_000,
            until: 4_000_000_000,
        };
        let times: Vec<String> = db
            .client_history(b"kiwi", window, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.client_time)
            .collect();
        assert_eq!(times, ["4", "3", "2"]);
        assert_eq!(
            db.client_history(b"kiwi", Window::default(), 2)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(db.forget(b"kiwi").unwrap(), 5);
        assert!(
            db.client_history(b"kiwi", Window::default(), 100)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            db.client_history(b"pear", Window::default(), 100)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn near_keeps_what_is_within_the_great_circle_and_retention_drops_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&dir.path().join("h.sqlite")).unwrap();
        let reports = [
            // UCLA, about 1 km from the centre.
            report("near", "Hill", "+34.068930-118.445127", "100"),
            // Inside the box, outside the circle: its corner.
            report("corner", "Hill", "+34.150000-118.540000", "100"),
            // Downtown Los Angeles, 16 km away.
            report("far", "Hill", "+34.052200-118.243700", "100"),
            report("late", "Hill", "+34.068930-118.445127", "900"),
        ];
        db.archive("Hill", None, cursor(4), &reports).unwrap();
        let circle = Circle {
            lat: 34.07,
            lng: -118.45,
            radius_km: 10.0,
        };
        let window = Window {
            since: 0,
            until: 500_000_000_000,
        };
        let clients: Vec<Vec<u8>> = db
            .near(circle, window, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.client_id)
            .collect();
        assert_eq!(clients, [b"near".to_vec()]);
        // Received at 101 s and 901 s: expire what came before 500 s.
        assert_eq!(db.expire(500_000_000_000, 2).unwrap(), 2);
        assert_eq!(db.expire(500_000_000_000, 2).unwrap(), 1);
        assert_eq!(db.expire(500_000_000_000, 2).unwrap(), 0);
        assert_eq!(
            db.client_history(b"late", Window::default(), 10)
                .unwrap()
                .len(),
            1
        );
    }
}

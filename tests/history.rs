//! The core database: every report a server accepts from its own clients
//! is archived once, whatever happens to the server or the database, and
//! `herd history` answers from it.

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::process::Command;

use common::pki::Pki;
use common::postgres::PgServer;
use common::process::ProcessHerd;
use common::{Herd, eventually, herd_binary};

/// Where a test herd archives: the SQLite file of its data folder, or a
/// PostgreSQL server the test started.
enum Backend {
    Sqlite,
    Postgres(Box<Pg>),
}

/// A PostgreSQL server and how herd and the test reach it.
struct Pg {
    server: PgServer,
    /// The role and the database herd uses.
    role: String,
    database: String,
    /// The test's own connection, made again after an outage.
    client: RefCell<Option<postgres::Client>>,
}

impl Backend {
    /// A PostgreSQL server archived to as its superuser (PostGIS is
    /// enabled where installed); `None` where PostgreSQL is missing.
    fn postgres() -> Option<Backend> {
        let server = PgServer::start()?;
        Some(Backend::Postgres(Box::new(Pg {
            server,
            role: "herd".into(),
            database: "postgres".into(),
            client: RefCell::new(None),
        })))
    }

    /// A PostgreSQL server archived to by a role that may not create
    /// extensions, so with plain columns even where PostGIS is installed.
    fn postgres_plain() -> Option<Backend> {
        let server = PgServer::start()?;
        server.add_role("archivist");
        Some(Backend::Postgres(Box::new(Pg {
            server,
            role: "archivist".into(),
            database: "archivist".into(),
            client: RefCell::new(None),
        })))
    }

    /// The config's `[history]` table, with `extra` keys.
    fn table(&self, extra: &str) -> String {
        match self {
            Backend::Sqlite => format!("[history]\n{extra}"),
            Backend::Postgres(pg) => pg.server.history_table_for(&pg.role, &pg.database, extra),
        }
    }

    fn pg(&self) -> &PgServer {
        match self {
            Backend::Postgres(pg) => &pg.server,
            Backend::Sqlite => panic!("not a PostgreSQL backend"),
        }
    }

    fn pg_mut(&mut self) -> &mut PgServer {
        match self {
            Backend::Postgres(pg) => &mut pg.server,
            Backend::Sqlite => panic!("not a PostgreSQL backend"),
        }
    }

    /// Whether `reports` has the PostGIS position column.
    fn spatial(&self) -> bool {
        let Backend::Postgres(pg) = self else {
            return false;
        };
        pg.server
            .client_of(&pg.database)
            .query_opt(
                "SELECT 1 FROM information_schema.columns
                 WHERE table_name = 'reports' AND column_name = 'position'",
                &[],
            )
            .expect("asking for the position column")
            .is_some()
    }

    /// Every archived report of `server`, oldest first: (client id,
    /// client time); none while the database cannot be read. `dir` is the
    /// herd's folder.
    fn archived(&self, dir: &Path, server: &str) -> Vec<(String, String)> {
        match self {
            Backend::Sqlite => archived_sqlite(&dir.join("data/history.sqlite"), server),
            Backend::Postgres(pg) => {
                let mut client = pg.client.borrow_mut();
                if client.is_none() {
                    *client = pg.server.connect_to(&pg.database).ok();
                }
                let Some(connection) = client.as_mut() else {
                    return Vec::new();
                };
                match connection.query(
                    "SELECT convert_from(client_id, 'UTF8'), client_time
                     FROM reports WHERE server = $1 ORDER BY id",
                    &[&server],
                ) {
                    Ok(rows) => rows.iter().map(|row| (row.get(0), row.get(1))).collect(),
                    // No table yet, or the server went away.
                    Err(_) => {
                        *client = None;
                        Vec::new()
                    }
                }
            }
        }
    }
}

/// Every archived report of `server` in the SQLite file `database`.
fn archived_sqlite(database: &Path, server: &str) -> Vec<(String, String)> {
    let Ok(connection) = rusqlite::Connection::open(database) else {
        return Vec::new();
    };
    let Ok(mut statement) = connection.prepare(
        "SELECT CAST(client_id AS TEXT), client_time FROM reports WHERE server = ?1 ORDER BY id",
    ) else {
        return Vec::new();
    };
    statement
        .query_map([server], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(|rows| rows.collect())
        .unwrap_or_default()
}

/// (client id, client time) of an AT reply.
fn sent(reply: &str) -> (String, String) {
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(fields.len(), 6, "not an AT line: {reply:?}");
    (fields[3].to_owned(), fields[5].to_owned())
}

/// Waits until `server`'s archive holds exactly `expected`, in any order,
/// and checks that nothing in it is there twice.
#[track_caller]
fn await_archive(backend: &Backend, dir: &Path, server: &str, expected: &[(String, String)]) {
    let mut want = expected.to_vec();
    want.sort();
    let mut got = Vec::new();
    eventually(
        &format!("{server}'s {} reports archived", want.len()),
        || {
            got = backend.archived(dir, server);
            got.len() >= want.len()
        },
    );
    got.sort();
    assert_eq!(got, want, "every report once, none twice, none lost");
}

const TWO: &[(&str, &[&str])] = &[("Hill", &["Smith"]), ("Smith", &[])];

fn a_sigkill_mid_archive_and_a_restart(backend: &Backend) {
    let table = backend.table("batch_size = 3\ninterval_ms = 5\n");
    let mut herd = ProcessHerd::start_with(TWO, &table);
    let dir = herd.dir.path().to_owned();
    let mut hill = Vec::new();
    let mut smith = Vec::new();
    {
        let (mut to_hill, mut to_smith) = (herd.client("Hill"), herd.client("Smith"));
        for i in 0..300 {
            // Clients report again and again: superseded reports are
            // history too.
            hill.push(sent(&to_hill.iamat(&format!("h{}", i % 7), "+10+10")));
            if i % 5 == 0 {
                smith.push(sent(&to_smith.iamat(&format!("s{}", i % 3), "+20+20")));
            }
        }
    }
    eventually("Hill's archive to start", || {
        !backend.archived(&dir, "Hill").is_empty()
    });
    herd.kill("Hill");
    let at_kill = backend.archived(&dir, "Hill").len();
    herd.restart("Hill");
    let mut to_hill = herd.client("Hill");
    for i in 0..30 {
        hill.push(sent(&to_hill.iamat(&format!("h{}", i % 7), "+10+10")));
    }
    await_archive(backend, &dir, "Hill", &hill);
    // Smith archives its own clients' reports; Hill never archives them.
    await_archive(backend, &dir, "Smith", &smith);
    eprintln!("Hill had archived {at_kill} of 300 reports when killed");
    if let Backend::Postgres(pg) = backend {
        for name in ["Hill", "Smith"] {
            assert!(
                !herd.log(name).contains(&pg.server.password),
                "{name} logged the database's password"
            );
        }
    }
}

#[test]
fn a_sigkill_mid_archive_and_a_restart_lose_nothing_and_write_nothing_twice() {
    a_sigkill_mid_archive_and_a_restart(&Backend::Sqlite);
}

#[test]
fn on_postgres_a_sigkill_mid_archive_and_a_restart_lose_nothing_and_write_nothing_twice() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    a_sigkill_mid_archive_and_a_restart(&backend);
}

#[test]
fn replies_flow_while_the_database_is_locked_and_the_archive_catches_up() {
    let mut herd = Herd::start_with(
        &[("Hill", &[])],
        "[history]\nbatch_size = 50\ninterval_ms = 5\n",
    );
    let database = herd.dir.path().join("data/history.sqlite");
    let dir = herd.dir.path().to_owned();
    let mut client = herd.client("Hill");
    let mut reports = vec![sent(&client.iamat("first", "+1+1"))];
    await_archive(&Backend::Sqlite, &dir, "Hill", &reports);

    // Another writer holds the database: the archiver cannot write.
    let locker = rusqlite::Connection::open(&database).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..500 {
        let reply = client.iamat(&format!("c{}", i % 50), "+2+2");
        assert!(reply.starts_with("AT Hill "), "{reply}");
        reports.push(sent(&reply));
    }
    let held: i64 = locker
        .query_row("SELECT COUNT(*) FROM reports", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        held, 1,
        "nothing was archived while the database was locked"
    );
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    await_archive(&Backend::Sqlite, &dir, "Hill", &reports);

    // And after a restart, nothing is archived again.
    herd.stop("Hill");
    herd.restart("Hill");
    let mut client = herd.client("Hill");
    reports.push(sent(&client.iamat("last", "+3+3")));
    await_archive(&Backend::Sqlite, &dir, "Hill", &reports);
}

/// Runs `herd history ARGUMENTS --config CONFIG`.
fn run_history(config: &Path, arguments: &[&str]) -> std::process::Output {
    Command::new(herd_binary())
        .arg("history")
        .args(arguments)
        .arg("--config")
        .arg(config)
        .output()
        .expect("running herd history")
}

fn history(config: &Path, arguments: &[&str]) -> String {
    let output = run_history(config, arguments);
    assert!(
        output.status.success(),
        "herd history {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `herd history ARGUMENTS --config CONFIG`, which must fail: what it
/// said on standard error.
fn history_fails(config: &Path, arguments: &[&str]) -> String {
    let output = run_history(config, arguments);
    assert!(
        !output.status.success(),
        "herd history {arguments:?} did not fail"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a config for `herd history` to `path`: the `[history]` table
/// `table`, and one server.
fn history_config_file(path: &Path, table: &str) -> std::path::PathBuf {
    std::fs::write(
        path,
        format!("{table}\n[[servers]]\nname = \"Hill\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n"),
    )
    .expect("writing the config");
    path.to_owned()
}

/// A `[history]` table for the TLS port of `server`, trusting `ca`, with
/// the password in a file of `pki`'s folder and `extra` keys.
fn tls_table(server: &PgServer, pki: &Pki, ca: &Path, extra: &str) -> String {
    let password_file = pki.path("password");
    std::fs::write(&password_file, format!("{}\n", server.password)).expect("password file");
    format!(
        "[history]\ndatabase = \"postgres\"\nurl = \"{}\"\npassword_file = {password_file:?}\n\
         tls_ca = {ca:?}\n{extra}\n",
        server.tcp_url_for("herd", "postgres")
    )
}

fn json(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(text).unwrap()
}

fn history_and_near_answer_from_the_reports_sent_and_forget_erases(backend: &Backend) {
    let herd = Herd::start_with(TWO, &backend.table("interval_ms = 5\n"));
    let dir = herd.dir.path();
    let (mut hill, mut smith) = (herd.client("Hill"), herd.client("Smith"));
    let kiwi: Vec<String> = (1..=4)
        .map(|i| {
            let line = format!("IAMAT kiwi +34.068930-118.445127 {i}00.5");
            let client = if i % 2 == 0 { &mut hill } else { &mut smith };
            client.request(&line)
        })
        .collect();
    // UCLA and Westwood are within 5 km of each other; downtown is not.
    let westwood = hill.request("IAMAT pear +34.056120-118.430630 250");
    hill.request("IAMAT plum +34.052200-118.243700 250");
    eventually("all six archived", || {
        backend.archived(dir, "Hill").len() + backend.archived(dir, "Smith").len() == 6
    });
    let config = &herd.config_path;

    let all = json(&history(config, &["kiwi", "--json"]));
    let times: Vec<&str> = all
        .iter()
        .map(|r| r["client_time"].as_str().unwrap())
        .collect();
    assert_eq!(times, ["400.5", "300.5", "200.5", "100.5"], "newest first");
    for report in &all {
        let time = report["client_time"].as_str().unwrap();
        let reply = kiwi.iter().find(|at| at.ends_with(time)).unwrap();
        let fields: Vec<&str> = reply.split(' ').collect();
        assert_eq!(report["server"], fields[1], "the receiving server");
        assert_eq!(report["skew"], fields[2]);
        assert_eq!(report["location"], "+34.068930-118.445127");
    }
    let window = json(&history(
        config,
        &["kiwi", "--since", "200", "--until", "300.5", "--json"],
    ));
    assert_eq!(window.len(), 2);
    assert_eq!(
        json(&history(config, &["kiwi", "--limit", "1", "--json"])).len(),
        1
    );
    let text = history(config, &["kiwi", "--limit", "1"]);
    assert!(
        text.starts_with("400.5  kiwi  +34.068930-118.445127  Hill  skew "),
        "{text}"
    );

    let near = json(&history(
        config,
        &[
            "--near",
            "34.07,-118.44",
            "--radius",
            "5",
            "--since",
            "200",
            "--json",
        ],
    ));
    let clients: Vec<&str> = near
        .iter()
        .map(|r| r["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(clients, ["kiwi", "kiwi", "pear", "kiwi"], "{near:?}");
    assert!(westwood.contains(" pear "));

    let forgot = history(config, &["--erase", "kiwi"]);
    assert!(forgot.contains("4 reports deleted"), "{forgot}");
    assert!(json(&history(config, &["kiwi", "--json"])).is_empty());
    assert_eq!(json(&history(config, &["pear", "--json"])).len(), 1);
}

#[test]
fn history_and_near_answer_from_the_reports_sent_and_forget_erases_a_client() {
    history_and_near_answer_from_the_reports_sent_and_forget_erases(&Backend::Sqlite);
}

#[test]
fn on_postgres_history_and_near_answer_from_the_reports_sent_and_erase_works() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    history_and_near_answer_from_the_reports_sent_and_forget_erases(&backend);
    // PostGIS answered --near where it is installed.
    assert_eq!(backend.spatial(), backend.pg().has_postgis());
    if !backend.spatial() {
        eprintln!("PostGIS is not installed: --near was answered from plain columns");
    }
}

#[test]
fn on_postgres_without_rights_to_postgis_near_uses_plain_columns() {
    let Some(backend) = Backend::postgres_plain() else {
        return;
    };
    history_and_near_answer_from_the_reports_sent_and_forget_erases(&backend);
    assert!(!backend.spatial());
}

/// `GET path` on `address`: (status code, body).
fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connecting to the admin port");
    stream
        .set_read_timeout(Some(common::PATIENCE))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending a request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (code, body.to_owned())
}

/// `http_get`, once the server is ready (the admin port answers 503
/// while the store is read back).
fn ready_get(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut answer = (0, String::new());
    eventually("the admin port to be ready", || {
        answer = http_get(admin, path);
        answer.0 != 503 || !answer.1.starts_with("not ready")
    });
    answer
}

fn admin_history_answers_as_herd_history_json(backend: &Backend) {
    let herd = Herd::start_with_admin(TWO, &backend.table("interval_ms = 5\n"));
    let dir = herd.dir.path();
    let admin = herd.server("Smith").admin.expect("an admin port");
    let mut hill = herd.client("Hill");
    let sent: Vec<(String, String)> = (1..=3)
        .map(|i| sent(&hill.request(&format!("IAMAT fig +34.068930-118.445127 {i}0"))))
        .collect();
    hill.request("IAMAT date +10.000000+010.000000 20");
    eventually("all four archived", || {
        backend.archived(dir, "Hill").len() == 4
    });
    // Any server of the herd answers from the shared database.
    let (code, body) = ready_get(admin, "/history?client=fig");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cli: serde_json::Value =
        serde_json::from_str(&history(&herd.config_path, &["fig", "--json"])).unwrap();
    assert_eq!(answer, cli, "the same rows as herd history --json");
    let times: Vec<&str> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client_time"].as_str().unwrap())
        .collect();
    assert_eq!(times, ["30", "20", "10"]);
    assert_eq!(sent.len(), 3);

    let (code, body) = http_get(admin, "/history?client=fig&since=15&until=25&limit=5");
    assert_eq!(code, 200, "{body}");
    let window: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["client_time"], "20");

    let (code, body) = http_get(admin, "/history?near=10.01,10.01&radius=5");
    assert_eq!(code, 200, "{body}");
    let near: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let clients: Vec<&str> = near
        .iter()
        .map(|r| r["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(clients, ["date"]);

    for (path, says) in [
        ("/history", "give client=ID"),
        ("/history?client=fig&limit=lots", "limit is a number"),
        ("/history?client=fig&since=noon", "not a POSIX time"),
        ("/history?near=10,10", "needs a radius"),
        ("/history?near=north&radius=3", "LAT,LNG"),
        ("/history?client=fig&who=me", "unknown parameter"),
    ] {
        let (code, body) = http_get(admin, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
}

#[test]
fn the_admin_port_answers_history_as_herd_history_json_does() {
    admin_history_answers_as_herd_history_json(&Backend::Sqlite);
}

#[test]
fn on_postgres_the_admin_port_answers_history_as_herd_history_json_does() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    admin_history_answers_as_herd_history_json(&backend);
}

#[test]
fn the_admin_port_says_when_nothing_is_archived() {
    let herd = Herd::start_with_admin(&[("Hill", &[])], "");
    let admin = herd.server("Hill").admin.expect("an admin port");
    let (code, body) = ready_get(admin, "/history?client=fig");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no [history]"), "{body}");
}

/// A counter of `/metrics` by the end of its name.
fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            series.ends_with(name).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn replies_flow_while_postgres_is_down_and_the_archive_catches_up_exactly_once() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let Some(mut backend) = Backend::postgres() else {
        return;
    };
    let herd = Herd::start_with_admin(
        &[("Hill", &[])],
        &backend.table("batch_size = 20\ninterval_ms = 5\n"),
    );
    let dir = herd.dir.path().to_owned();
    let admin = herd.server("Hill").admin.expect("an admin port");
    let address = herd.server("Hill").client;

    // A client reports without pause throughout.
    let replies = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (replies, count, done) = (replies.clone(), count.clone(), done.clone());
        std::thread::spawn(move || {
            let mut client = common::LineClient::connect(address);
            let mut i = 0;
            while !done.load(Ordering::Acquire) {
                let reply = client.iamat(&format!("c{}", i % 40), "+3+3");
                assert!(reply.starts_with("AT Hill "), "{reply}");
                replies.lock().unwrap().push(sent(&reply));
                count.fetch_add(1, Ordering::Release);
                i += 1;
            }
        })
    };
    let replied = || count.load(Ordering::Acquire);
    eventually("the archive to begin under load", || {
        backend.archived(&dir, "Hill").len() >= 50
    });

    backend.pg_mut().stop();
    let at_stop = replied();
    eventually("200 replies while the database is down", || {
        replied() >= at_stop + 200
    });
    ready_get(admin, "/metrics");
    eventually("the outage to be counted", || {
        metric(admin, "history_archive_failures_total") >= 1.0
    });
    let down_for = replied() - at_stop;

    backend.pg_mut().start_again();
    let at_start = replied();
    eventually("200 replies after the database is back", || {
        replied() >= at_start + 200
    });
    done.store(true, Ordering::Release);
    load.join().expect("the client thread");

    let acknowledged = replies.lock().unwrap().clone();
    await_archive(&backend, &dir, "Hill", &acknowledged);
    let log = herd.log("Hill");
    assert_eq!(
        log.matches("archiving to the core database failed").count(),
        1,
        "an outage is logged once:\n{log}"
    );
    assert!(log.contains("core database reachable again"), "{log}");
    assert!(
        !log.contains(&backend.pg().password),
        "the password was logged"
    );
    eprintln!(
        "{} reports acknowledged, {down_for} while PostgreSQL was down, each archived once",
        acknowledged.len()
    );
}

/// What every core database does, checked through the trait.
fn the_core_database_contract(database: &mut dyn herd::history::CoreDatabase) {
    use herd::history::{Circle, HistoryError, Report, Window};
    use herd::replica::Cursor;
    let report = |client: &str, location: &str, time: &str| {
        Report::from_at_line(format!("AT Hill +1.000000000 {client} {location} {time}").as_bytes())
            .unwrap()
    };
    let cursor = |seq| Cursor { run: 7, seq };
    assert_eq!(database.cursor("Hill").unwrap(), None);
    let batch: Vec<Report> = (1..=5)
        .map(|t| report("kiwi", "+34.068930-118.445127", &format!("{t}00")))
        .chain([
            report("far", "+34.052200-118.243700", "300"),
            report("edge", "+10.000000+179.990000", "300"),
        ])
        .collect();
    database.archive("Hill", None, cursor(9), &batch).unwrap();
    assert_eq!(database.cursor("Hill").unwrap(), Some(cursor(9)));
    // The cursor moves only from where it is; a stale writer writes nothing.
    for from in [None, Some(cursor(8))] {
        let moved = database.archive("Hill", from, cursor(12), &batch);
        assert!(
            matches!(moved, Err(HistoryError::CursorMoved { .. })),
            "{moved:?}"
        );
    }
    database
        .archive("Hill", Some(cursor(9)), cursor(10), &[])
        .unwrap();
    assert_eq!(database.cursor("Hill").unwrap(), Some(cursor(10)));

    let window = Window {
        since: 200_000_000_000,
        until: 400_000_000_000,
    };
    let times = |reports: Vec<Report>| -> Vec<String> {
        reports.into_iter().map(|r| r.client_time).collect()
    };
    assert_eq!(
        times(database.client_history(b"kiwi", window, 100).unwrap()),
        ["400", "300", "200"]
    );
    assert_eq!(
        times(
            database
                .client_history(b"kiwi", Window::default(), 2)
                .unwrap()
        ),
        ["500", "400"]
    );
    let all = database
        .client_history(b"kiwi", Window::default(), 100)
        .unwrap();
    assert_eq!(all[0], batch[4], "a report reads back as written");

    let ucla = Circle {
        lat: 34.07,
        lng: -118.45,
        radius_km: 10.0,
    };
    let near: Vec<Vec<u8>> = database
        .near(ucla, window, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.client_id)
        .collect();
    assert_eq!(near, vec![b"kiwi".to_vec(); 3]);
    // Across the antimeridian.
    let pacific = Circle {
        lat: 10.0,
        lng: -179.99,
        radius_km: 5.0,
    };
    let near = database.near(pacific, Window::default(), 100).unwrap();
    assert_eq!(near.len(), 1);
    assert_eq!(near[0].client_id, b"edge");

    // Received 1 s before the client's time (skew +1): 99, 199, … s.
    assert_eq!(database.expire(350_000_000_000, 2).unwrap(), 2);
    assert_eq!(database.expire(350_000_000_000, 2).unwrap(), 2);
    assert_eq!(database.expire(350_000_000_000, 2).unwrap(), 1);
    assert_eq!(database.expire(350_000_000_000, 2).unwrap(), 0);
    assert_eq!(
        times(
            database
                .client_history(b"kiwi", Window::default(), 100)
                .unwrap()
        ),
        ["500", "400"]
    );
    assert_eq!(database.forget(b"kiwi").unwrap(), 2);
    assert_eq!(database.forget(b"kiwi").unwrap(), 0);
    assert!(
        database
            .client_history(b"kiwi", Window::default(), 100)
            .unwrap()
            .is_empty()
    );
}

fn history_config(backend: &Backend) -> herd::config::HistoryConfig {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[servers]]\nname = \"Hill\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n",
        backend.table("")
    );
    herd::config::HerdConfig::parse(&text, "test", dir.path())
        .unwrap()
        .history
        .unwrap()
}

#[test]
fn sqlite_keeps_the_core_database_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut database = herd::history::sqlite::Sqlite::open(&dir.path().join("h.sqlite")).unwrap();
    the_core_database_contract(&mut database);
}

#[test]
fn postgres_keeps_the_core_database_contract_with_and_without_postgis() {
    for backend in [Backend::postgres(), Backend::postgres_plain()] {
        let Some(backend) = backend else {
            return;
        };
        let config = history_config(&backend);
        let mut database = herd::history::postgres::Postgres::connect(&config).unwrap();
        let spatial = database.spatial();
        the_core_database_contract(&mut database);
        drop(database);
        // Connecting again migrates nothing and keeps the cursor.
        let mut again = herd::history::postgres::Postgres::connect(&config).unwrap();
        assert_eq!(again.spatial(), spatial);
        assert!(
            herd::history::CoreDatabase::cursor(&mut again, "Hill")
                .unwrap()
                .is_some()
        );
        eprintln!("PostgreSQL contract kept, PostGIS: {spatial}");
    }
}

#[test]
fn a_wrong_postgres_password_is_a_clear_error_that_does_not_show_it() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-password-4f2a";
    std::fs::write(dir.path().join("pw"), wrong).unwrap();
    let config = history_config_file(
        &dir.path().join("herd.toml"),
        &format!(
            "[history]\ndatabase = \"postgres\"\nurl = \"{}\"\npassword_file = \"pw\"\n",
            backend.pg().url()
        ),
    );
    let stderr = history_fails(&config, &["kiwi"]);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("user=herd") || stderr.contains("herd@"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");
}

/// Across a network the archive goes over TLS: the archiver checks
/// PostgreSQL's certificate against `tls_ca`, and a certificate it cannot
/// trust is refused, with the reason.
#[test]
fn on_postgres_over_tcp_the_archive_goes_over_tls_checked_against_tls_ca() {
    let pki = Pki::new();
    let Some(server) = PgServer::start_tls(&pki.issue_local()) else {
        return;
    };
    let table = |ca: &Path| tls_table(&server, &pki, ca, "interval_ms = 5");
    let herd = Herd::start_with(&[("Hill", &[])], &table(&pki.ca_file));
    let mut client = herd.client("Hill");
    client.iamat("kiwi", "+1+1");
    client.iamat("pear", "+2+2");
    // The test looks through the Unix socket, which never takes TLS.
    let mut check = server.client();
    eventually("both reports archived", || {
        check
            .query_one("SELECT count(*) FROM reports", &[])
            .is_ok_and(|row| row.get::<_, i64>(0) == 2)
    });
    let row = check
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'herd'",
            &[],
        )
        .unwrap();
    let (over_tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(over_tls >= 1, "the archiver's connection is not TLS");
    assert_eq!(plain, 0, "a connection of herd's without TLS");

    let config = |name: &str, ca: &Path| history_config_file(&pki.path(name), &table(ca));
    let answer = history(&config("right.toml", &pki.ca_file), &["kiwi"]);
    assert!(answer.contains("kiwi"), "{answer}");
    // A CA that did not issue the server's certificate.
    let other = Pki::new();
    let stderr = history_fails(&config("wrong.toml", &other.ca_file), &["kiwi"]);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(!stderr.contains(&server.password), "{stderr}");
}

/// A PostgreSQL that asks for a client certificate gets the one
/// `tls_cert`/`tls_key` name; without it, the refusal says why.
#[test]
fn on_postgres_a_client_certificate_is_shown_when_the_server_asks_for_one() {
    let pki = Pki::new();
    let Some(server) = PgServer::start_tls_asking_certificates(&pki.issue_local(), &pki.ca_file)
    else {
        return;
    };
    let client = pki.issue(&["herd"], false);
    std::fs::write(pki.path("client.crt"), &client.cert).unwrap();
    std::fs::write(pki.path("client.key"), &client.key).unwrap();
    let config = |name: &str, identity: &str| {
        history_config_file(
            &pki.path(name),
            &tls_table(&server, &pki, &pki.ca_file, identity),
        )
    };
    let identity = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        pki.path("client.crt"),
        pki.path("client.key")
    );
    let shown = history(&config("with.toml", &identity), &["kiwi", "--json"]);
    assert_eq!(json(&shown).len(), 0, "{shown}");
    let stderr = history_fails(&config("without.toml", ""), &["kiwi"]);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains(&server.password), "{stderr}");
}

//! A real PostgreSQL for the tests that need one: `initdb` into a
//! temporary folder, then `postgres` listening on a Unix socket in that
//! folder only (no TCP port, so no port to race for), with password
//! authentication, as the user `nobody` when the tests run as root
//! (PostgreSQL refuses to run as root). It stops, by its pid, when
//! dropped.
//!
//! Needs Debian's `postgresql` package (`.ci/run` installs it); where the
//! binaries are missing, `PgServer::start` says why and the test skips.
//! PostGIS tests need `postgresql-15-postgis-3` as well.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::eventually;

/// Where Debian puts each major version's server binaries.
const DEBIAN_BINARIES: &str = "/usr/lib/postgresql";
/// The role and database the tests' servers have.
const USER: &str = "herd";

/// One PostgreSQL server of a test.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Whom the server runs as, when the tests run as root.
    owner: Option<(u32, u32)>,
    port: u16,
    /// Its certificate and key, when it takes TLS on the loopback address.
    tls: Option<(PathBuf, PathBuf)>,
    /// The CA whose client certificates it asks for over TCP, and the
    /// pg_hba.conf that asks for them.
    client_ca: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
    pub password: String,
}

/// The newest server binaries installed, if any.
fn binaries() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("HERD_TEST_PG_BIN") {
        let bin = PathBuf::from(bin);
        return bin.join("initdb").exists().then_some(bin);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_BINARIES)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"nobody"))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
                .flatten()
        })
        .unwrap_or((65534, 65534))
}

impl PgServer {
    /// A new server, running and accepting connections; `None`, having
    /// said why, where PostgreSQL is not installed.
    pub fn start() -> Option<PgServer> {
        Self::start_with(None, None)
    }

    /// A new server that also listens on 127.0.0.1 (on a free port) and
    /// takes TLS there, showing `issued`; see `tcp_url_for`.
    pub fn start_tls(issued: &super::pki::Issued) -> Option<PgServer> {
        Self::start_with(Some(issued), None)
    }

    /// As `start_tls`, and over TCP it also asks for a client certificate
    /// issued by the CA in the PEM file `client_ca` (and the password).
    pub fn start_tls_asking_certificates(
        issued: &super::pki::Issued,
        client_ca: &Path,
    ) -> Option<PgServer> {
        Self::start_with(Some(issued), Some(client_ca))
    }

    fn start_with(tls: Option<&super::pki::Issued>, client_ca: Option<&Path>) -> Option<PgServer> {
        let Some(bin) = binaries() else {
            eprintln!(
                "skipping: PostgreSQL's server binaries are missing \
                 (no {DEBIAN_BINARIES}/*/bin/initdb, nor HERD_TEST_PG_BIN/initdb; \
                 apt-get install postgresql)"
            );
            return None;
        };
        // Short, for the socket's path (at most 107 bytes).
        let dir = tempfile::Builder::new()
            .prefix("herd-pg")
            .tempdir_in("/tmp")
            .expect("a temporary folder");
        // /proc/self belongs to the process's effective user.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let owner = root.then(nobody);
        let password = super::new_secret();
        let password_file = dir.path().join("initdb-password");
        std::fs::write(&password_file, &password).expect("writing the password file");
        std::fs::create_dir(dir.path().join("socket")).expect("the socket folder");
        if let Some((uid, gid)) = owner {
            for path in [dir.path(), &password_file, &dir.path().join("socket")] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to nobody");
            }
        }
        let tls = tls.map(|issued| {
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert, &issued.cert).expect("writing the certificate");
            std::fs::write(&key, &issued.key).expect("writing the key");
            // PostgreSQL takes a key only its owner can read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the key");
            if let Some((uid, gid)) = owner {
                for path in [&cert, &key] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to nobody");
                }
            }
            (cert, key)
        });
        let client_ca = client_ca.map(|ca| {
            let (copy, hba) = (
                dir.path().join("client-ca.pem"),
                dir.path().join("pg_hba.conf"),
            );
            std::fs::copy(ca, &copy).expect("copying the client CA");
            std::fs::write(
                &hba,
                "local all all scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
            )
            .expect("writing pg_hba.conf");
            if let Some((uid, gid)) = owner {
                for path in [&copy, &hba] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to nobody");
                }
            }
            (copy, hba)
        });
        let mut server = PgServer {
            port: super::process::free_address().port(),
            dir,
            bin,
            owner,
            tls,
            client_ca,
            child: None,
            password,
        };
        let output = server
            .command("initdb")
            .arg("--pgdata")
            .arg(server.data())
            .args(["--username", USER, "--encoding", "UTF8", "--no-sync"])
            .args([
                "--auth-local",
                "scram-sha-256",
                "--auth-host",
                "scram-sha-256",
            ])
            .arg("--pwfile")
            .arg(&password_file)
            .output()
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let _ = std::fs::remove_file(&password_file);
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder of the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// A command of the server's binaries, run as the server's owner.
    fn command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.current_dir(self.dir.path());
        command
    }

    /// Starts the server (again, after `stop`) and waits until it takes
    /// connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("the server's log file");
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()]);
        match &self.tls {
            // No TCP at all: the socket in the folder is the only way in.
            None => command.args(["-c", "listen_addresses="]),
            Some((cert, key)) => command
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display())),
        };
        if let Some((ca, hba)) = &self.client_ca {
            command
                .arg("-c")
                .arg(format!("ssl_ca_file={}", ca.display()))
                .arg("-c")
                .arg(format!("hba_file={}", hba.display()));
        }
        let child = command
            // A test never outlives the machine's page cache.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=40"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        self.child = Some(child);
        eventually("PostgreSQL to take connections", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited ({status}): {}", self.log());
            }
            self.try_client().is_ok()
        });
    }

    /// Stops the server (a fast shutdown: sessions are ended, nothing
    /// committed is lost) and waits until it has exited.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + super::PATIENCE;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postgres did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The connection string herd is given (the password apart) to
    /// reach `database` as `role`.
    pub fn url_for(&self, role: &str, database: &str) -> String {
        format!(
            "host={} port={} user={role} dbname={database}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The connection string of `database` as `role` over TCP to the
    /// loopback address, TLS required (a server from `start_tls`).
    pub fn tcp_url_for(&self, role: &str, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={role} dbname={database} sslmode=require",
            self.port
        )
    }

    /// The connection string of the superuser's database.
    pub fn url(&self) -> String {
        self.url_for(USER, "postgres")
    }

    /// A `[history]` table archiving to this server as the superuser,
    /// with the password in a file of its own; `extra` adds keys.
    pub fn history_table(&self, extra: &str) -> String {
        self.history_table_for(USER, "postgres", extra)
    }

    /// A `[history]` table archiving to `database` as `role` (made by
    /// `add_role`).
    pub fn history_table_for(&self, role: &str, database: &str, extra: &str) -> String {
        let password_file = self.dir.path().join("password");
        std::fs::write(&password_file, format!("{}\n", self.password)).expect("password file");
        format!(
            "[history]\ndatabase = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n{extra}\n",
            self.url_for(role, database),
            password_file.display()
        )
    }

    /// A role with no special rights (it cannot create extensions), with
    /// the server's password and a database of its own, both named `name`.
    pub fn add_role(&self, name: &str) {
        let mut client = self.client();
        client
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{}'",
                self.password
            ))
            .expect("creating a role");
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
            .expect("creating the role's database");
    }

    fn try_client_of(&self, database: &str) -> Result<postgres::Client, postgres::Error> {
        let mut config: postgres::Config = self.url_for(USER, database).parse()?;
        config.password(&self.password);
        config.connect(postgres::NoTls)
    }

    fn try_client(&self) -> Result<postgres::Client, postgres::Error> {
        self.try_client_of("postgres")
    }

    /// A superuser's connection to the server's own database.
    pub fn client(&self) -> postgres::Client {
        self.client_of("postgres")
    }

    /// A superuser's connection to `database`, for the test's own queries.
    pub fn client_of(&self, database: &str) -> postgres::Client {
        self.try_client_of(database)
            .expect("connecting to the test's PostgreSQL")
    }

    /// `client_of`, or the error while the server is down.
    pub fn connect_to(&self, database: &str) -> Result<postgres::Client, postgres::Error> {
        self.try_client_of(database)
    }

    /// Whether PostGIS is installed for this server.
    pub fn has_postgis(&self) -> bool {
        self.client()
            .query_opt(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'",
                &[],
            )
            .expect("asking for PostGIS")
            .is_some()
    }

    /// The temporary folder the server lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
            // Immediate shutdown: the folder is deleted next.
            let _ = kill(pid, Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

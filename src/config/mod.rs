//! The herd file: servers, their addresses and neighbours, the places
//! provider, the log directory and the limits; and the embedded default
//! five-server herd of SPEC §1.
//!
//! Loading checks everything a server would otherwise trip over later, and
//! names the line of the problem.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::replica::storage::Durability;

pub mod secret;
pub mod shape;

/// The embedded default herd: SPEC §1 on 127.0.0.1, client ports
/// 12000–12004, peer ports 12010–12014.
pub const DEFAULT_CONFIG: &str = include_str!("default_herd.toml");

/// The environment variable that holds the herd's shared secret when the
/// config does not.
pub const SECRET_ENV: &str = "HERD_SECRET";

/// A problem with a herd file, naming where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<embedded default>`.
    pub origin: String,
    /// The 1-based line of the problem, when it has one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Something in a herd file that works but is most likely a mistake,
/// naming where it is. The server starts, and says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file, or `<embedded default>`.
    pub origin: String,
    /// The 1-based line it is about.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.origin, self.line, self.message)
    }
}

/// A server name the herd config does not have.
#[derive(Debug, thiserror::Error)]
#[error("no server {name:?} in the herd; it has {known}")]
pub struct UnknownServer {
    pub name: String,
    /// The names it has, comma-separated.
    pub known: String,
}

/// Which places provider answers WHATSAT, for the whole herd (`[places]`)
/// or one server (`[servers.places]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(tag = "provider", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PlacesConfig {
    /// The embedded GeoNames cities1000 data set: offline, no key.
    #[default]
    Geonames,
    /// Google Places Nearby Search (legacy).
    Google(RemotePlacesConfig),
    /// Google Places API (New) Nearby Search, answered in the legacy shape.
    GoogleNew(RemotePlacesConfig),
    /// A places database imported from OpenStreetMap by `herd places import`.
    Osm(OsmPlacesConfig),
}

/// How to reach a remote places API and how to treat it. Its `Debug` hides
/// the key.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemotePlacesConfig {
    /// The API's base URL; else `$HERD_PLACES_URL`, else Google's.
    pub base_url: Option<String>,
    /// The API key; else `$HERD_PLACES_KEY`.
    pub key: Option<String>,
    /// The whole budget of one upstream call, retries included.
    pub timeout_ms: u64,
    /// Requests per call at most; transient failures are retried.
    pub max_attempts: u32,
    /// Requests in flight toward the API at most.
    pub max_concurrent: usize,
    /// How long an answer is reused, in seconds; 0 turns the cache off.
    pub cache_ttl_secs: u64,
    /// Answers cached at most.
    pub cache_max_entries: usize,
    /// Transient failures in a row that open the circuit breaker; 0 never.
    pub breaker_failures: u32,
    /// How long the open breaker answers UNKNOWN_ERROR before a new try.
    pub breaker_cooldown_ms: u64,
    /// How often the counters are logged (when they changed); 0 never.
    pub stats_interval_secs: u64,
    /// Places API (New) only: `pro`, or `enterprise` for ratings, price
    /// level and opening hours at the higher price.
    pub fields: FieldTier,
}

impl Default for RemotePlacesConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            key: None,
            timeout_ms: 5_000,
            max_attempts: 3,
            max_concurrent: 32,
            cache_ttl_secs: 60,
            cache_max_entries: 2_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
            stats_interval_secs: 60,
            fields: FieldTier::Pro,
        }
    }
}

impl fmt::Debug for RemotePlacesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemotePlacesConfig")
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "<hidden>"))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("max_concurrent", &self.max_concurrent)
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("cache_max_entries", &self.cache_max_entries)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown_ms", &self.breaker_cooldown_ms)
            .field("stats_interval_secs", &self.stats_interval_secs)
            .field("fields", &self.fields)
            .finish()
    }
}

/// Which fields Google Places API (New) is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldTier {
    /// Names, places, types, addresses, status, plus codes, icons.
    #[default]
    Pro,
    /// Also ratings, price level and whether it is open now.
    Enterprise,
}

/// Where the OpenStreetMap places database is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsmPlacesConfig {
    /// The file `herd places import` wrote; relative to the config's folder.
    pub database: PathBuf,
}

impl PlacesConfig {
    /// Makes relative paths relative to `base` and checks the numbers.
    fn prepare(&mut self, base: &Path) -> Result<(), String> {
        match self {
            PlacesConfig::Geonames => Ok(()),
            PlacesConfig::Google(remote) | PlacesConfig::GoogleNew(remote) => {
                if remote.timeout_ms == 0 || remote.max_attempts == 0 || remote.max_concurrent == 0
                {
                    return Err(
                        "places.timeout_ms, max_attempts and max_concurrent must be greater than zero"
                            .into(),
                    );
                }
                Ok(())
            }
            PlacesConfig::Osm(osm) => {
                osm.database = base.join(&osm.database);
                Ok(())
            }
        }
    }
}

/// Bounds on what one server holds for its clients.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The longest client line, in bytes (SPEC §2).
    pub max_line_bytes: usize,
    /// The most client connections a server holds at once; more wait in
    /// the listen backlog.
    pub max_connections: usize,
    /// The most client connections from one IP address; more are closed
    /// as soon as they are accepted.
    pub max_connections_per_ip: usize,
    /// A connection that completes no line for this long is closed, and so
    /// is one whose replies cannot be written for this long.
    pub idle_timeout_secs: u64,
    /// Replies held for a connection before the server stops reading its
    /// requests until the client reads (one reply is always allowed).
    pub max_unsent_bytes: usize,
    /// A link to a neighbour that has been silent this long is dropped and
    /// dialled again; each direction says it is alive six times as often.
    pub link_silence_ms: u64,
    /// The most clients a server takes new ones from its own clients up
    /// to: past it, an IAMAT about a client it does not hold is answered
    /// `? ` (docs/storage.md, "Bounds"); 0: no ceiling.
    pub max_clients: usize,
}

impl Limits {
    /// How long a silent link is kept.
    pub fn link_silence(&self) -> Duration {
        Duration::from_millis(self.link_silence_ms)
    }

    /// How often an idle link says it is alive, each way.
    pub fn link_heartbeat(&self) -> Duration {
        self.link_silence() / 6
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 1024 * 1024,
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            idle_timeout_secs: 300,
            max_unsent_bytes: 64 * 1024,
            link_silence_ms: 3_000,
            max_clients: 10_000_000,
        }
    }
}

/// How each server's log file is kept from filling the disk.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// A log file is rotated before it grows past this many MiB; 0 never
    /// rotates it (for an outside logrotate).
    pub max_file_mb: u64,
    /// Rotated files kept per server; older ones are removed.
    pub keep_files: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            max_file_mb: 256,
            keep_files: 4,
        }
    }
}

/// Where and how each server keeps its store on disk.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Each server keeps its files in `data_dir/NAME/`.
    pub data_dir: PathBuf,
    /// What an AT reply promises about the update it acknowledges.
    pub durability: Durability,
    /// How often `batched` fsyncs and `none` writes, in milliseconds.
    pub sync_interval_ms: u64,
    /// A client whose newest report was received this many seconds ago is
    /// forgotten, on every server alike; 0 keeps clients for ever.
    pub client_ttl_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            durability: Durability::Batched,
            sync_interval_ms: 100,
            client_ttl_secs: 0,
        }
    }
}

/// The core database that keeps every report a server accepts from its
/// own clients (`[history]`; absent, nothing is archived).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Which database: `sqlite` or `postgres`.
    pub database: HistoryDatabase,
    /// The SQLite file, shared by the servers of this machine; relative to
    /// the config's folder. Absent: `history.sqlite` in `storage.data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// PostgreSQL's connection string, as a URL
    /// (`postgresql://herd@db.example:5432/herd`) or as `key=value` pairs
    /// (`host=/run/postgresql dbname=herd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file whose first line is PostgreSQL's password, relative to the
    /// config's folder; kept out of the config and never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding PostgreSQL's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The CA certificates (PEM) to check PostgreSQL's certificate
    /// against, relative to the config's folder; absent, the Mozilla roots.
    /// TLS is used as the URL's `sslmode` says (libpq's default `prefer`:
    /// whenever the server offers it over TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for a PostgreSQL that asks
    /// for one (`clientcert` in its pg_hba.conf); both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Reports received longer ago than this many days are deleted; 0
    /// keeps them for ever.
    pub retention_days: u64,
    /// Reports written to the database in one transaction, at most.
    pub batch_size: usize,
    /// How often a server looks for new reports to archive, in
    /// milliseconds; also how soon it tries again after a failure.
    pub interval_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            database: HistoryDatabase::Sqlite,
            path: None,
            url: None,
            password_file: None,
            password_env: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            retention_days: 0,
            batch_size: 1_000,
            interval_ms: 200,
        }
    }
}

impl HistoryConfig {
    /// Checks that the keys fit the database, and makes paths relative to
    /// the config's folder `base`.
    fn prepare(&mut self, base: &Path, data_dir: &Path) -> Result<(), String> {
        match self.database {
            HistoryDatabase::Sqlite => {
                if self.url.is_some()
                    || self.password_file.is_some()
                    || self.password_env.is_some()
                    || self.tls_ca.is_some()
                    || self.tls_cert.is_some()
                    || self.tls_key.is_some()
                {
                    return Err(
                        "history.url, password_file/password_env and tls_ca/tls_cert/tls_key are for database = \"postgres\""
                            .into(),
                    );
                }
                self.path = Some(match &self.path {
                    Some(path) => base.join(path),
                    None => data_dir.join("history.sqlite"),
                });
            }
            HistoryDatabase::Postgres => {
                if self.path.is_some() {
                    return Err(
                        "history.path is the SQLite file: PostgreSQL takes history.url".into(),
                    );
                }
                if self.url.as_deref().is_none_or(|url| url.trim().is_empty()) {
                    return Err(
                        "database = \"postgres\" needs history.url, e.g. \"postgresql://herd@localhost/herd\""
                            .into(),
                    );
                }
                let url = self.url.as_deref().unwrap_or_default();
                if let Err(error) = url.parse::<postgres::Config>() {
                    // The text may hold a password: say what is wrong, not what it is.
                    let why = std::error::Error::source(&error)
                        .map_or_else(|| error.to_string(), ToString::to_string);
                    return Err(format!(
                        "history.url is not a PostgreSQL connection string: {why}"
                    ));
                }
                if self.password_file.is_some() && self.password_env.is_some() {
                    return Err("history takes password_file or password_env, not both".into());
                }
                if self.tls_cert.is_some() != self.tls_key.is_some() {
                    return Err("history takes tls_cert and tls_key together".into());
                }
                for file in [
                    &mut self.password_file,
                    &mut self.tls_ca,
                    &mut self.tls_cert,
                    &mut self.tls_key,
                ]
                .into_iter()
                .flatten()
                {
                    *file = base.join(&*file);
                }
            }
        }
        Ok(())
    }
}

/// The kinds of core database herd can archive to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryDatabase {
    #[default]
    Sqlite,
    #[serde(alias = "postgresql")]
    Postgres,
}

/// The certificate and key a server shows clients on its `client_tls`
/// port: the herd's `[tls]`, or a server's own `tls`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's own certificate first;
    /// relative to the config's folder.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1); relative to the
    /// config's folder.
    pub key: PathBuf,
}

impl TlsFiles {
    fn prepare(&mut self, base: &Path) {
        self.cert = base.join(&self.cert);
        self.key = base.join(&self.key);
    }
}

/// One server of the herd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    pub name: String,
    /// `host:port` where clients connect in plain TCP; none for a server
    /// that takes clients over TLS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `host:port` where clients connect over TLS, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<String>,
    /// `host:port` where neighbours connect.
    pub peer: String,
    /// `host:port` of the admin HTTP port (metrics, health, status, the
    /// dashboard); none without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The servers this one links with. Links are bidirectional: a server
    /// named in either side's list is a neighbour of both.
    pub neighbours: Vec<String>,
    /// This server's own places provider, instead of the herd's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub places: Option<PlacesConfig>,
    /// This server's own certificate for `client_tls`, instead of the
    /// herd's `[tls]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// A whole herd. Written back as TOML by `Serialize` (values before
/// tables, as TOML wants them).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HerdConfig {
    /// Where each server writes `NAME.log`.
    pub log_dir: PathBuf,
    /// The shared secret from the file, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Secrets still accepted from neighbours, after `secret` (or
    /// `$HERD_SECRET`): what a herd moving to a new secret keeps for a
    /// while.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub old_secrets: Vec<String>,
    /// Every secret accepted, the first the one to dial with; instead of
    /// `secret` and `old_secrets`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    pub places: PlacesConfig,
    pub limits: Limits,
    pub storage: StorageConfig,
    /// The core database; `None` archives nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryConfig>,
    pub logging: LoggingConfig,
    /// The certificate servers with a `client_tls` port show, unless they
    /// have their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    pub servers: Vec<ServerConfig>,
    /// What looks like a mistake, for each server to say as it starts.
    #[serde(skip)]
    pub warnings: Vec<ConfigWarning>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    log_dir: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    old_secrets: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    places: PlacesConfig,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    storage: StorageConfig,
    history: Option<HistoryConfig>,
    #[serde(default)]
    logging: LoggingConfig,
    tls: Option<TlsFiles>,
    servers: Vec<Spanned<RawServer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    client: Option<Spanned<String>>,
    client_tls: Option<Spanned<String>>,
    peer: Spanned<String>,
    admin: Option<Spanned<String>>,
    #[serde(default)]
    neighbours: Vec<Spanned<String>>,
    places: Option<PlacesConfig>,
    tls: Option<TlsFiles>,
}

impl HerdConfig {
    /// The embedded default herd, logging under `./logs`.
    pub fn embedded() -> Self {
        Self::parse(DEFAULT_CONFIG, "<embedded default>", Path::new("."))
            .expect("the embedded default config is valid (checked by a test)")
    }

    /// Reads a herd file. Relative paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            origin: origin.clone(),
            line: None,
            message: format!("cannot read: {error}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &origin, base)
    }

    /// Parses herd-file text; `base` is the folder relative paths start from.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let error_at = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            origin: origin.to_owned(),
            line: span.map(|span| line_of(text, span.start)),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            // Quote the offending line: toml's messages do not name the key.
            let quoted = error
                .span()
                .and_then(|span| text.lines().nth(line_of(text, span.start) - 1))
                .map(|line| format!(" (in `{}`)", line.trim()))
                .unwrap_or_default();
            error_at(error.span(), format!("{}{quoted}", error.message()))
        })?;
        if raw.servers.is_empty() {
            return Err(error_at(
                None,
                "no [[servers]]: a herd needs at least one".into(),
            ));
        }
        let limits = &raw.limits;
        if [
            limits.max_line_bytes,
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_unsent_bytes,
        ]
        .contains(&0)
            || limits.idle_timeout_secs == 0
            || limits.link_silence_ms == 0
        {
            return Err(error_at(None, "limits must be greater than zero".into()));
        }
        if raw.storage.sync_interval_ms == 0 {
            return Err(error_at(
                None,
                "storage.sync_interval_ms must be greater than zero".into(),
            ));
        }

        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<&str, &str> = HashMap::new();
        for (i, server) in raw.servers.iter().enumerate() {
            let server = server.get_ref();
            let name = server.name.get_ref().as_str();
            if name.is_empty() || name.bytes().any(|b| !(b.is_ascii_graphic())) {
                return Err(error_at(
                    Some(server.name.span()),
                    format!("server name {name:?} must be printable ASCII without spaces"),
                ));
            }
            if index.insert(name, i).is_some() {
                return Err(error_at(
                    Some(server.name.span()),
                    format!("duplicate server name {name:?}"),
                ));
            }
            if server.client.is_none() && server.client_tls.is_none() {
                return Err(error_at(
                    Some(server.name.span()),
                    format!(
                        "{name} takes no clients: give it `client` (plain TCP), `client_tls` (TLS) or both"
                    ),
                ));
            }
            if let Some(client_tls) = &server.client_tls
                && server.tls.is_none()
                && raw.tls.is_none()
            {
                return Err(error_at(
                    Some(client_tls.span()),
                    format!(
                        "{name} has `client_tls` but no certificate: add a [tls] table with `cert` and `key` (PEM files), or `tls = {{ cert = \"…\", key = \"…\" }}` in its entry"
                    ),
                ));
            }
            for address in server
                .client
                .iter()
                .chain(&server.client_tls)
                .chain([&server.peer])
                .chain(&server.admin)
            {
                check_address(address.get_ref())
                    .map_err(|message| error_at(Some(address.span()), message))?;
                if let Some(other) = addresses.insert(address.get_ref(), name) {
                    return Err(error_at(
                        Some(address.span()),
                        format!(
                            "address {} is used twice (by {other} and {name})",
                            address.get_ref()
                        ),
                    ));
                }
            }
        }

        // Links are bidirectional: collect both directions.
        let mut neighbours: Vec<Vec<String>> = vec![Vec::new(); raw.servers.len()];
        for (i, server) in raw.servers.iter().enumerate() {
            let server = server.get_ref();
            for neighbour in &server.neighbours {
                let other = neighbour.get_ref().as_str();
                let Some(&j) = index.get(other) else {
                    return Err(error_at(
                        Some(neighbour.span()),
                        format!("unknown neighbour {other:?} of {}", server.name.get_ref()),
                    ));
                };
                if i == j {
                    return Err(error_at(
                        Some(neighbour.span()),
                        format!("{other} cannot be its own neighbour"),
                    ));
                }
                for (from, to) in [(i, j), (j, i)] {
                    let to_name = raw.servers[to].get_ref().name.get_ref();
                    if !neighbours[from].contains(to_name) {
                        neighbours[from].push(to_name.clone());
                    }
                }
            }
        }

        // A server with no link at all floods nothing and hears nothing:
        // in a herd of one that is the point, in a larger one an oversight.
        let warnings = if raw.servers.len() > 1 {
            raw.servers
                .iter()
                .zip(&neighbours)
                .filter(|(_, neighbours)| neighbours.is_empty())
                .map(|(server, _)| {
                    let name = &server.get_ref().name;
                    ConfigWarning {
                        origin: origin.to_owned(),
                        line: line_of(text, name.span().start),
                        message: format!(
                            "{} has no neighbours: no report reaches it from the herd, and none of its own leaves it",
                            name.get_ref()
                        ),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };

        if !raw.secrets.is_empty() && (raw.secret.is_some() || !raw.old_secrets.is_empty()) {
            return Err(error_at(
                None,
                "`secrets` lists every secret, the one to use first: drop `secret` and `old_secrets`".into(),
            ));
        }
        if raw
            .secrets
            .iter()
            .chain(&raw.old_secrets)
            .chain(&raw.secret)
            .any(String::is_empty)
        {
            return Err(error_at(None, "a herd secret may not be empty".into()));
        }
        let mut places = raw.places;
        places
            .prepare(base)
            .map_err(|message| error_at(None, message))?;
        let log_dir = base.join(raw.log_dir.as_deref().unwrap_or("logs"));
        let mut tls = raw.tls;
        if let Some(tls) = &mut tls {
            tls.prepare(base);
        }
        let mut storage = raw.storage;
        storage.data_dir = base.join(&storage.data_dir);
        let mut history = raw.history;
        if let Some(history) = &mut history {
            if history.batch_size == 0 || history.interval_ms == 0 {
                return Err(error_at(
                    None,
                    "history.batch_size and interval_ms must be greater than zero".into(),
                ));
            }
            history
                .prepare(base, &storage.data_dir)
                .map_err(|message| error_at(None, message))?;
        }
        let servers = raw
            .servers
            .into_iter()
            .zip(neighbours)
            .map(|(server, neighbours)| {
                let server = server.into_inner();
                let mut places = server.places;
                if let Some(places) = &mut places {
                    places.prepare(base)?;
                }
                let mut tls = server.tls;
                if let Some(tls) = &mut tls {
                    tls.prepare(base);
                }
                Ok(ServerConfig {
                    name: server.name.into_inner(),
                    client: server.client.map(Spanned::into_inner),
                    client_tls: server.client_tls.map(Spanned::into_inner),
                    peer: server.peer.into_inner(),
                    admin: server.admin.map(Spanned::into_inner),
                    neighbours,
                    places,
                    tls,
                })
            })
            .collect::<Result<_, String>>()
            .map_err(|message| error_at(None, message))?;
        Ok(Self {
            servers,
            log_dir,
            secret: raw.secret,
            old_secrets: raw.old_secrets,
            secrets: raw.secrets,
            places,
            limits: raw.limits,
            storage,
            history,
            logging: raw.logging,
            tls,
            warnings,
        })
    }

    /// The server called `name`, or an error listing the names there are.
    pub fn server(&self, name: &str) -> Result<&ServerConfig, UnknownServer> {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| UnknownServer {
                name: name.to_owned(),
                known: self
                    .servers
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The shared secret to dial with: the first of `secrets`, else
    /// `secret`, else `$HERD_SECRET`.
    pub fn secret_or_env(&self) -> Option<String> {
        self.secrets
            .first()
            .or(self.secret.as_ref())
            .cloned()
            .or_else(|| std::env::var(SECRET_ENV).ok())
            .filter(|s| !s.is_empty())
    }

    /// Every secret a server accepts, the one to dial with first: `secrets`,
    /// or [`HerdConfig::secret_or_env`] and then `old_secrets`. Empty when
    /// there is no secret to dial with.
    pub fn secrets_or_env(&self) -> Vec<String> {
        if !self.secrets.is_empty() {
            return self.secrets.clone();
        }
        let Some(current) = self.secret_or_env() else {
            return Vec::new();
        };
        let mut secrets = vec![current];
        for old in &self.old_secrets {
            if !secrets.contains(old) {
                secrets.push(old.clone());
            }
        }
        secrets
    }

    /// Where `herd up` keeps the secret it makes: `DATA_DIR/secret`.
    pub fn secret_file(&self) -> PathBuf {
        self.storage.data_dir.join(secret::SECRET_FILE)
    }

    /// Every secret a server accepts, [`HerdConfig::secrets_or_env`], or
    /// when there are none the one `herd up` keeps in
    /// [`HerdConfig::secret_file`]. Empty when there is no secret at all.
    pub fn find_secrets(&self) -> Result<Vec<String>, secret::SecretError> {
        let secrets = self.secrets_or_env();
        if !secrets.is_empty() {
            return Ok(secrets);
        }
        Ok(secret::read_secret(&self.secret_file())?
            .into_iter()
            .collect())
    }

    /// The config as TOML text, which [`HerdConfig::parse`] reads back
    /// (paths are written as they are, so absolute ones stay absolute).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a herd config is always representable in TOML")
    }

    /// The certificate server `name` shows on its `client_tls` port: its
    /// own, else the herd's; `None` for a server without one.
    pub fn tls_for(&self, name: &str) -> Option<&TlsFiles> {
        let server = self.servers.iter().find(|s| s.name == name)?;
        server.client_tls.as_ref()?;
        server.tls.as_ref().or(self.tls.as_ref())
    }

    /// The places provider of server `name`: its own, else the herd's.
    pub fn places_for(&self, name: &str) -> &PlacesConfig {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.places.as_ref())
            .unwrap_or(&self.places)
    }
}

/// `host:port` with a numeric port; the host is resolved when used.
fn check_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("address {address:?} must be host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "address {address:?} must be host:port with a port from 0 to 65535"
        ));
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HerdConfig, ConfigError> {
        HerdConfig::parse(text, "test.toml", Path::new("/etc/herd"))
    }

    #[test]
    fn embedded_default_is_the_five_server_herd() {
        let config = HerdConfig::embedded();
        let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Hill", "Jaquez", "Smith", "Campbell", "Singleton"]);
        let neighbours = |name: &str| {
            let mut n = config.server(name).unwrap().neighbours.clone();
            n.sort();
            n
        };
        assert_eq!(neighbours("Hill"), ["Jaquez", "Smith"]);
        assert_eq!(neighbours("Jaquez"), ["Hill", "Singleton"]);
        assert_eq!(neighbours("Smith"), ["Campbell", "Hill", "Singleton"]);
        assert_eq!(neighbours("Campbell"), ["Singleton", "Smith"]);
        assert_eq!(neighbours("Singleton"), ["Campbell", "Jaquez", "Smith"]);
        assert_eq!(
            config.server("Hill").unwrap().client.as_deref(),
            Some("127.0.0.1:12000")
        );
        let admin: Vec<_> = config.servers.iter().map(|s| s.admin.as_deref()).collect();
        assert_eq!(
            admin,
            [12020, 12021, 12022, 12023, 12024]
                .map(|port| Some(format!("127.0.0.1:{port}")))
                .iter()
                .map(Option::as_deref)
                .collect::<Vec<_>>()
        );
        assert_eq!(config.limits.max_line_bytes, 1 << 20);
        assert_eq!(config.places, PlacesConfig::Geonames);
    }

    #[test]
    fn round_trips_through_toml() {
        let config = HerdConfig::embedded();
        let again = HerdConfig::parse(&config.to_toml(), "again", Path::new("/")).unwrap();
        assert_eq!(again.servers, config.servers);
        assert_eq!(again.limits, config.limits);
        assert_eq!(again.storage.durability, config.storage.durability);
        assert_eq!(
            again.storage.sync_interval_ms,
            config.storage.sync_interval_ms
        );
        // Relative folders are relative to the file they are read from.
        assert_eq!(again.storage.data_dir, Path::new("/./data"));
    }

    #[track_caller]
    fn fails(text: &str, line: usize, needle: &str) {
        let error = parse(text).expect_err(text);
        assert_eq!(error.line, Some(line), "{error}");
        assert!(error.to_string().contains(needle), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("test.toml:{line}: ")),
            "{error}"
        );
    }

    const TWO: &str = "[[servers]]\nname = \"A\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\nneighbours = [\"B\"]\n\n[[servers]]\nname = \"B\"\nclient = \"127.0.0.1:3\"\npeer = \"127.0.0.1:4\"\n";

    #[test]
    fn links_are_bidirectional() {
        let config = parse(TWO).unwrap();
        assert_eq!(config.server("B").unwrap().neighbours, ["A"]);
        assert_eq!(config.log_dir, Path::new("/etc/herd/logs"));
        assert!(config.server("C").unwrap_err().to_string().contains("A, B"));
    }

    #[test]
    fn bad_configs_name_the_line() {
        fails(
            &TWO.replace("[\"B\"]", "[\"C\"]"),
            5,
            "unknown neighbour \"C\"",
        );
        fails(&TWO.replace("[\"B\"]", "[\"A\"]"), 5, "its own neighbour");
        fails(
            &TWO.replace("name = \"B\"", "name = \"A\""),
            8,
            "duplicate server name",
        );
        fails(&TWO.replace("127.0.0.1:3", "127.0.0.1:1"), 9, "used twice");
        fails(
            &TWO.replace(
                "peer = \"127.0.0.1:4\"",
                "peer = \"127.0.0.1:4\"\nadmin = \"127.0.0.1:2\"",
            ),
            11,
            "used twice",
        );
        fails(
            &TWO.replace(
                "peer = \"127.0.0.1:4\"",
                "peer = \"127.0.0.1:4\"\nadmin = \"nowhere\"",
            ),
            11,
            "host:port",
        );
        fails(
            &TWO.replace("127.0.0.1:4", "127.0.0.1:99999"),
            10,
            "port from 0 to 65535",
        );
        fails(&TWO.replace("127.0.0.1:4", "localhost"), 10, "host:port");
        fails(
            &TWO.replace("neighbours = [\"B\"]", "neighbors = [\"B\"]"),
            5,
            "unknown field",
        );
        fails(
            &TWO.replace("client = \"127.0.0.1:3\"", "client = 3"),
            9,
            "string",
        );
        fails(
            &format!("{TWO}\n[places]\nprovider = \"bing\"\n"),
            13,
            "bing",
        );
        fails(
            &format!("{TWO}\n[limits]\nmax_line_bytes = -1\n"),
            13,
            "max_line_bytes",
        );
        fails("this is not toml", 1, "");
    }

    #[test]
    fn zero_limits_are_refused_and_link_timing_follows_its_setting() {
        for key in ["max_connections", "idle_timeout_secs", "link_silence_ms"] {
            let error = parse(&format!("{TWO}\n[limits]\n{key} = 0\n")).unwrap_err();
            assert!(
                error.to_string().contains("greater than zero"),
                "{key}: {error}"
            );
        }
        let herd = parse(&format!("{TWO}\n[limits]\nlink_silence_ms = 600\n")).unwrap();
        assert_eq!(herd.limits.link_silence(), Duration::from_millis(600));
        assert_eq!(herd.limits.link_heartbeat(), Duration::from_millis(100));
        let default = parse(TWO).unwrap();
        assert_eq!(default.limits.link_silence(), Duration::from_secs(3));
    }

    #[test]
    fn store_bounds_default_to_keeping_clients_under_a_ceiling_and_zero_means_none() {
        let default = parse(TWO).unwrap();
        assert_eq!(default.storage.client_ttl_secs, 0, "kept for ever");
        assert_eq!(default.limits.max_clients, 10_000_000);
        let set = parse(&format!(
            "{TWO}\n[limits]\nmax_clients = 0\n[storage]\nclient_ttl_secs = 86400\n"
        ))
        .unwrap();
        assert_eq!(set.limits.max_clients, 0);
        assert_eq!(set.storage.client_ttl_secs, 86_400);
        let error = parse(&format!("{TWO}\n[storage]\nclient_ttl_secs = -1\n")).unwrap_err();
        assert!(error.to_string().contains("client_ttl_secs"), "{error}");
    }

    #[test]
    fn a_server_with_no_neighbours_in_a_larger_herd_is_a_warning() {
        assert!(parse(TWO).unwrap().warnings.is_empty());
        let lonely = format!(
            "{TWO}\n[[servers]]\nname = \"C\"\nclient = \"127.0.0.1:5\"\npeer = \"127.0.0.1:6\"\n"
        );
        let warnings = parse(&lonely).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].line, 13);
        assert!(
            warnings[0]
                .to_string()
                .starts_with("test.toml:13: C has no neighbours"),
            "{}",
            warnings[0]
        );
        // Named by another is a neighbour too.
        let linked = lonely.replace("neighbours = [\"B\"]", "neighbours = [\"B\", \"C\"]");
        assert!(parse(&linked).unwrap().warnings.is_empty());
        // A herd of one has nobody to link to.
        let one = "[[servers]]\nname = \"A\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n";
        assert!(parse(one).unwrap().warnings.is_empty());
        assert!(HerdConfig::embedded().warnings.is_empty());
    }

    #[test]
    fn logging_rotates_by_default_and_can_be_told_otherwise() {
        let default = parse(TWO).unwrap().logging;
        assert_eq!(default, LoggingConfig::default());
        assert!(default.max_file_mb > 0 && default.keep_files > 0);
        let set = parse(&format!(
            "{TWO}\n[logging]\nmax_file_mb = 0\nkeep_files = 2\n"
        ))
        .unwrap();
        assert_eq!(
            set.logging,
            LoggingConfig {
                max_file_mb: 0,
                keep_files: 2
            }
        );
        let again = HerdConfig::parse(&set.to_toml(), "again", Path::new("/")).unwrap();
        assert_eq!(again.logging, set.logging);
        fails(
            &format!("{TWO}\n[logging]\nmax_size = 1\n"),
            13,
            "unknown field",
        );
    }

    #[test]
    fn a_tls_client_port_takes_the_herds_certificate_or_its_own() {
        let tls = TWO.replace(
            "peer = \"127.0.0.1:4\"",
            "peer = \"127.0.0.1:4\"\nclient_tls = \"127.0.0.1:5\"",
        );
        let herds = format!("[tls]\ncert = \"tls/herd.crt\"\nkey = \"tls/herd.key\"\n\n{tls}");
        let config = parse(&herds).unwrap();
        let files = |cert: &str, key: &str| TlsFiles {
            cert: cert.into(),
            key: key.into(),
        };
        // Relative to the config's folder, as every path in it.
        let shared = files("/etc/herd/tls/herd.crt", "/etc/herd/tls/herd.key");
        assert_eq!(config.tls_for("B"), Some(&shared));
        assert_eq!(
            config.server("B").unwrap().client_tls.as_deref(),
            Some("127.0.0.1:5")
        );
        // A server without a TLS port shows no certificate.
        assert_eq!(config.tls_for("A"), None);
        let again = HerdConfig::parse(&config.to_toml(), "again", Path::new("/")).unwrap();
        assert_eq!(again.servers, config.servers);
        assert_eq!(again.tls_for("B"), Some(&shared));

        let own = herds.replace(
            "client_tls = \"127.0.0.1:5\"",
            "client_tls = \"127.0.0.1:5\"\ntls = { cert = \"b.crt\", key = \"/keys/b.key\" }",
        );
        assert_eq!(
            parse(&own).unwrap().tls_for("B"),
            Some(&files("/etc/herd/b.crt", "/keys/b.key"))
        );
        // Its own certificate is enough without the herd's.
        let own_only = own.replace(
            "[tls]\ncert = \"tls/herd.crt\"\nkey = \"tls/herd.key\"\n",
            "",
        );
        assert!(parse(&own_only).unwrap().tls.is_none());
        assert_eq!(
            parse(&own_only).unwrap().tls_for("B"),
            Some(&files("/etc/herd/b.crt", "/keys/b.key"))
        );
    }

    #[test]
    fn plain_clients_can_be_turned_off_but_a_server_takes_clients_somehow() {
        let tls_only = format!(
            "[tls]\ncert = \"c\"\nkey = \"k\"\n\n{}",
            TWO.replace("client = \"127.0.0.1:3\"", "client_tls = \"127.0.0.1:3\"")
        );
        let config = parse(&tls_only).unwrap();
        let b = config.server("B").unwrap();
        assert_eq!(
            (b.client.as_deref(), b.client_tls.as_deref()),
            (None, Some("127.0.0.1:3"))
        );
        let again = HerdConfig::parse(&config.to_toml(), "again", Path::new("/")).unwrap();
        assert_eq!(again.servers, config.servers);

        fails(
            &TWO.replace("client = \"127.0.0.1:3\"\n", ""),
            8,
            "B takes no clients: give it `client` (plain TCP), `client_tls` (TLS) or both",
        );
        let no_certificate =
            TWO.replace("client = \"127.0.0.1:3\"", "client_tls = \"127.0.0.1:3\"");
        fails(
            &no_certificate,
            9,
            "B has `client_tls` but no certificate: add a [tls] table",
        );
        fails(
            &tls_only.replace("127.0.0.1:3", "127.0.0.1:4"),
            14,
            "used twice",
        );
        fails(&tls_only.replace("127.0.0.1:3", "nowhere"), 13, "host:port");
        let error = parse(&tls_only.replace("key = \"k\"\n", "")).unwrap_err();
        assert!(error.to_string().contains("missing field `key`"), "{error}");
        let error =
            parse(&tls_only.replace("key = \"k\"", "key = \"k\"\nchain = \"x\"")).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `chain`"),
            "{error}"
        );
    }

    #[test]
    fn empty_herd_is_refused() {
        assert!(
            parse("servers = []")
                .unwrap_err()
                .to_string()
                .contains("at least one")
        );
    }

    #[test]
    fn a_postgres_history_needs_a_url_and_keys_fit_the_database() {
        let server =
            "\n[[servers]]\nname = \"Hill\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n";
        let with = |table: &str| parse(&format!("[history]\n{table}\n{server}"));
        let config = with(
            "database = \"postgres\"\nurl = \"postgresql://herd@db:5433/herd\"\npassword_file = \"pw\"\ntls_ca = \"ca.pem\"",
        )
        .unwrap();
        let history = config.history.unwrap();
        assert_eq!(history.database, HistoryDatabase::Postgres);
        assert_eq!(history.password_file, Some(PathBuf::from("/etc/herd/pw")));
        assert_eq!(history.tls_ca, Some(PathBuf::from("/etc/herd/ca.pem")));
        assert_eq!(history.path, None);
        assert!(with("database = \"postgresql\"\nurl = \"host=/run/postgresql\"").is_ok());
        for (table, says) in [
            ("database = \"postgres\"", "needs history.url"),
            (
                "database = \"postgres\"\nurl = \"host=db\"\npath = \"x\"",
                "takes history.url",
            ),
            ("url = \"host=db\"", "are for database = \"postgres\""),
            ("tls_ca = \"ca.pem\"", "are for database = \"postgres\""),
            (
                "database = \"postgres\"\nurl = \"host=db\"\ntls_cert = \"c.pem\"",
                "tls_cert and tls_key together",
            ),
            (
                "database = \"postgres\"\nurl = \"host=db\"\npassword_file = \"a\"\npassword_env = \"B\"",
                "not both",
            ),
        ] {
            let error = with(table).unwrap_err().to_string();
            assert!(error.contains(says), "{table}: {error}");
        }
        // What is wrong with a URL is said without repeating it: it may
        // hold a password.
        let error = with("database = \"postgres\"\nurl = \"postgresql://u:s3cret@h:port/db\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a PostgreSQL connection string"),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
    }
}

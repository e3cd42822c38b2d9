//! The dashboard in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver) by fantoccini, against a herd of `herd serve`
//! processes. The page must load with no console errors, show five servers
//! and six links up, show a killed server and its links down, and put a
//! new report on the map. It saves a screenshot (`HERD_SCREENSHOT` names
//! where; `docs/dashboard.png` is the README's).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them when it runs as root); without them the test says so and passes.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{ProcessHerd, free_address};
use common::{DEFAULT_TOPOLOGY, PATIENCE, now_text};
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Cities to report from, so that the map has something to show.
const CITIES: &[(&str, &str)] = &[
    ("los-angeles", "+34.068930-118.445127"),
    ("new-york", "+40.7128-074.0060"),
    ("sao-paulo", "-23.5505-046.6333"),
    ("london", "+51.5074-000.1278"),
    ("helsinki", "+60.1699+024.9384"),
    ("lagos", "+06.5244+003.3792"),
    ("nairobi", "-01.2921+036.8219"),
    ("mumbai", "+19.0760+072.8777"),
    ("beijing", "+39.9042+116.4074"),
    ("tokyo", "+35.6762+139.6503"),
    ("sydney", "-33.8688+151.2093"),
    ("mexico-city", "+19.4326-099.1332"),
    ("cairo", "+30.0444+031.2357"),
    ("jakarta", "-06.2088+106.8456"),
    ("moscow", "+55.7558+037.6173"),
    ("buenos-aires", "-34.6037-058.3816"),
];

/// A chromedriver process, stopped (by its id) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let address = free_address();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={}", address.port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver {
        child,
        url: format!("http://{address}/"),
    };
    common::eventually("chromedriver to listen", || {
        TcpStream::connect(address).is_ok()
    });
    driver
}

/// The browser's console, through chromedriver's log endpoint.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// The console's errors since last asked.
async fn console_errors(client: &Client) -> Vec<String> {
    let entries = client
        .issue_cmd(BrowserLog)
        .await
        .expect("chromedriver's browser log");
    entries
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| entry["level"] == "SEVERE")
                .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `script` in the page and returns what it returns.
async fn run(client: &Client, script: &str) -> Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|error| panic!("running {script:?}: {error}"))
}

/// Waits (at most `PATIENCE`) until `script` returns `true` in the page,
/// doing `meanwhile` before each look.
async fn until(client: &Client, what: &str, script: &str, mut meanwhile: impl FnMut()) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        meanwhile();
        if run(client, script).await == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(selector: &str) -> String {
    format!("document.querySelectorAll('{selector}').length")
}

#[test]
fn the_dashboard_shows_the_herd_live_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "SKIPPED the_dashboard_shows_the_herd_live_in_a_real_browser: {CHROMIUM} or \
             {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let mut herd = ProcessHerd::start_with_admin(DEFAULT_TOPOLOGY, "");
    let driver = start_driver();
    let profile = tempfile::tempdir().expect("a browser profile folder");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session");

        let hill = herd.server("Hill").admin.expect("admin ports");
        client
            .goto(&format!("http://{hill}/"))
            .await
            .expect("loading the dashboard");

        until(
            &client,
            "five servers and six links up",
            &format!(
                "return {} === 5 && {} === 6",
                count(".node[data-state=\"up\"]"),
                count(".link[data-state=\"up\"]")
            ),
            || {},
        )
        .await;
        until(
            &client,
            "the map's dots",
            "return document.getElementById('land').getAttribute('d').length > 1000",
            || {},
        )
        .await;

        // Reports from around the world, to every server, until each
        // server's IAMAT rate shows.
        let mut clients: Vec<_> = herd
            .servers
            .iter()
            .map(|server| common::LineClient::connect(server.client))
            .collect();
        let mut round = 0;
        until(
            &client,
            "an IAMAT rate at every server",
            "return [...document.querySelectorAll('#servers tr')].every(row => \
             row.querySelectorAll('.spark polyline').length === 2 && \
             parseFloat(row.children[2].textContent) > 0 && \
             parseFloat(row.children[3].textContent) > 0)",
            || {
                round += 1;
                for (i, line_client) in clients.iter_mut().enumerate() {
                    for n in 0..20 {
                        let (city, location) = CITIES[(i * 3 + n) % CITIES.len()];
                        line_client.send_line(&format!(
                            "IAMAT {city}-{i}-{n}-{round} {location} {}",
                            now_text()
                        ));
                    }
                    for _ in 0..20 {
                        line_client.read_line();
                    }
                    // Nearby places for some, asked twice: the second
                    // answer comes from the cache.
                    for n in 0..4 {
                        line_client.send_line(&format!("WHATSAT {}-{i}-{}-{round} 10 3", CITIES[(i * 3 + n / 2) % CITIES.len()].0, n / 2));
                        let (at, _) = line_client.read_answer();
                        assert!(at.starts_with("AT "), "{at}");
                    }
                }
            },
        )
        .await;

        // One report more, made now: it shows on the map.
        let fresh = format!("fresh-{}", now_text().replace('.', "-"));
        let reply = herd
            .client("Campbell")
            .request(&format!("IAMAT {fresh} -41.2865+174.7762 {}", now_text()));
        assert!(reply.starts_with("AT Campbell"), "{reply}");
        until(
            &client,
            "the new report on the map",
            &format!("return document.querySelector('circle.report[data-client=\"{fresh}\"]') !== null"),
            || {},
        )
        .await;

        let screenshot = client.screenshot().await.expect("a screenshot");
        // Into target/ (a test run leaves the tree clean); set
        // HERD_SCREENSHOT=docs/dashboard.png to refresh the README's picture.
        let path = match std::env::var_os("HERD_SCREENSHOT") {
            Some(path) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path),
            None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"),
        };
        std::fs::write(&path, screenshot).expect("saving the screenshot");
        eprintln!("saved {}", path.display());

        let errors = console_errors(&client).await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");

        // A killed server, and its links, show down within a few seconds.
        herd.kill("Smith");
        until(
            &client,
            "Smith and its three links down, the rest up",
            &format!(
                "return document.querySelector('.node[data-server=\"Smith\"]').dataset.state === 'down' \
                 && {} === 4 && {} === 3 && {} === 3",
                count(".node[data-state=\"up\"]"),
                count(".link[data-state=\"down\"]"),
                count(".link[data-state=\"up\"]"),
            ),
            || {},
        )
        .await;
        let down: Value = run(
            &client,
            "return [...document.querySelectorAll('.link[data-state=\"down\"]')].map(l => l.dataset.link).sort()",
        )
        .await;
        assert_eq!(
            down,
            json!(["Hill–Smith", "Smith–Campbell", "Smith–Singleton"])
        );
        let errors = console_errors(&client).await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        client.close().await.expect("closing the browser");
    });
}

//! The Google providers (legacy Nearby Search and the Places API (New))
//! against a fake Google server that each test starts on port 0 and
//! scripts: answers, statuses, HTTP errors, slowness, nonsense, refusal.
//!
//! Most tests go through a server in the test's own process, as a client
//! would; the last ones drive the provider directly, on tokio's paused
//! clock where the cache's lifetime or the breaker's cool-down must pass.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::process::ProcessHerd;
use common::{Herd, LineClient, PATIENCE, Port, eventually, with_clock_held};
use herd::config::{PlacesConfig, RemotePlacesConfig};
use herd::places::{NearbyQuery, PlacesError};

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];
const KEY: &str = "test-key-7f3a9c SECRET";
const KEY_IN_URL: &str = "test-key-7f3a9c%20SECRET";
const WESTWOOD: &str = "+34.068930-118.445127";

// ---------------------------------------------------------------- the fake

/// One request the fake received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// A query parameter, as sent (not decoded).
    fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then_some(value)
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON request body")
    }
}

/// What the fake does with a request.
#[derive(Clone, Debug)]
enum Reply {
    /// An HTTP status and a JSON (or any) body.
    Body(u16, String),
    /// The same, after a pause.
    Slow(Duration, Box<Reply>),
    /// The same, once `Gate::open` is called (or after `PATIENCE`).
    Held(Gate, Box<Reply>),
    /// Close the connection without answering.
    Hang,
}

/// Holds the fake's answers until the test lets them go.
#[derive(Clone, Debug, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    fn wait(&self) {
        let open = self.0.0.lock().unwrap();
        let _ = self.0.1.wait_timeout_while(open, PATIENCE, |open| !*open);
    }
}

type Responder = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    responder: Mutex<Responder>,
    stopping: AtomicBool,
}

/// A scriptable HTTP/1.1 server standing in for Google, with keep-alive.
struct FakeGoogle {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeGoogle {
    fn start(responder: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeGoogle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake");
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: Mutex::new(Arc::new(responder)),
            stopping: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || serve_connection(stream, &shared));
            }
        });
        FakeGoogle { address, shared }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn set(&self, responder: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        *self.shared.responder.lock().unwrap() = Arc::new(responder);
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                headers.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body,
        };
        shared.requests.lock().unwrap().push(request.clone());
        let responder = shared.responder.lock().unwrap().clone();
        let mut reply = responder(&request);
        loop {
            match reply {
                Reply::Slow(pause, then) => {
                    // A slow provider: the pause is the point.
                    std::thread::sleep(pause);
                    reply = *then;
                }
                Reply::Held(gate, then) => {
                    gate.wait();
                    reply = *then;
                }
                Reply::Hang => return,
                Reply::Body(status, body) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- answers

/// A legacy answer with `n` results, laid out loosely (one line, a blank
/// line inside, two trailing newlines) as the real service never would.
fn legacy_body(n: usize) -> String {
    let results: Vec<Value> = (0..n).map(legacy_result).collect();
    let text = json!({
        "html_attributions": [],
        "next_page_token": "Aap_uEA7vb0DDYVJWEaX3O1AtQ",
        "results": results,
        "status": "OK",
    })
    .to_string();
    text.replacen("\"results\"", "\n\n\"results\"", 1) + "\n\n"
}

fn legacy_result(i: usize) -> Value {
    let i_f = i as f64;
    json!({
        "business_status": "OPERATIONAL",
        "geometry": {
            "location": { "lat": 34.0689 + i_f / 1000.0, "lng": -118.4452 - i_f / 1000.0 },
            "viewport": {
                "northeast": { "lat": 34.0702353, "lng": -118.4437797 },
                "southwest": { "lat": 34.0675374, "lng": -118.4464793 }
            }
        },
        "icon": "https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/generic_business-71.png",
        "name": format!("Place <{i}>"),
        "opening_hours": { "open_now": i.is_multiple_of(2) },
        "photos": [ { "height": 3024, "html_attributions": [ "<a href=\"https://maps.google.com/maps/contrib/1\">A</a>" ], "width": 4032 } ],
        "place_id": format!("ChIJ{i:03}"),
        "rating": 4.5,
        "types": [ "cafe", "food", "point_of_interest", "establishment" ],
        "user_ratings_total": 100 + i,
        "vicinity": format!("{} Westwood Blvd, Los Angeles", 1000 + i),
    })
}

/// An answer with no results and `status`; error statuses come with an
/// `error_message`, as Google sends them.
fn status_body(status: &str) -> String {
    let mut body = json!({ "html_attributions": [], "results": [], "status": status });
    if status != "ZERO_RESULTS" {
        body["error_message"] = json!(format!("message for {status}"));
    }
    body.to_string()
}

/// The answer a failed query gets (SPEC §4).
fn empty_answer(status: &str) -> String {
    format!(
        "{{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"{status}\"\n}}\n"
    )
}

fn google_config(fake_url: &str, extra: &str) -> String {
    format!(
        "[places]\nprovider = \"google\"\nbase_url = \"{fake_url}\"\nkey = \"{KEY}\"\ntimeout_ms = 1500\ncache_ttl_secs = 0\nstats_interval_secs = 1\n{extra}"
    )
}

fn new_config(fake_url: &str, extra: &str) -> String {
    google_config(fake_url, extra).replace("\"google\"", "\"google-new\"")
}

/// A solo server using the fake; `kiwi` has reported from Westwood.
fn herd_with(config: &str) -> (Herd, LineClient) {
    let herd = Herd::start_with(SOLO, config);
    let mut client = herd.client("Solo");
    client.iamat("kiwi", WESTWOOD);
    (herd, client)
}

fn whatsat(client: &mut LineClient, radius_km: &str, bound: usize) -> String {
    client.send_line(&format!("WHATSAT kiwi {radius_km} {bound}"));
    let (at, json) = client.read_answer();
    assert!(at.starts_with("AT Solo "), "{at}");
    json
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).expect("the answer is JSON")
}

// ---------------------------------------------------------------- legacy

#[test]
fn legacy_answer_is_cut_to_each_bound_and_nothing_else_changes() {
    let fake = FakeGoogle::start(|_| Reply::Body(200, legacy_body(20)));
    let (_herd, mut client) = herd_with(&google_config(&fake.url(), ""));
    let whole = parse(&legacy_body(20));
    for bound in 1..=20 {
        let answer = parse(&whatsat(&mut client, "10", bound));
        let mut expected = whole.clone();
        expected["results"].as_array_mut().unwrap().truncate(bound);
        assert_eq!(answer, expected, "bound {bound}");
    }
}

#[test]
fn legacy_answer_is_laid_out_byte_for_byte_as_google_does() {
    let fake = FakeGoogle::start(|_| Reply::Body(200, legacy_body(20)));
    let (_herd, mut client) = herd_with(&google_config(&fake.url(), ""));
    let expected = r#"{
   "html_attributions" : [],
   "next_page_token" : "Aap_uEA7vb0DDYVJWEaX3O1AtQ",
   "results" : [
      {
         "business_status" : "OPERATIONAL",
         "geometry" : {
            "location" : {
               "lat" : 34.0689,
               "lng" : -118.4452
            },
            "viewport" : {
               "northeast" : {
                  "lat" : 34.0702353,
                  "lng" : -118.4437797
               },
               "southwest" : {
                  "lat" : 34.0675374,
                  "lng" : -118.4464793
               }
            }
         },
         "icon" : "https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/generic_business-71.png",
         "name" : "Place \u003c0\u003e",
         "opening_hours" : {
            "open_now" : true
         },
         "photos" : [
            {
               "height" : 3024,
               "html_attributions" : [
                  "\u003ca href=\"https://maps.google.com/maps/contrib/1\"\u003eA\u003c/a\u003e"
               ],
               "width" : 4032
            }
         ],
         "place_id" : "ChIJ000",
         "rating" : 4.5,
         "types" : [ "cafe", "food", "point_of_interest", "establishment" ],
         "user_ratings_total" : 100,
         "vicinity" : "1000 Westwood Blvd, Los Angeles"
      }
   ],
   "status" : "OK"
}
"#;
    assert_eq!(whatsat(&mut client, "10", 1), expected);
}

#[test]
fn legacy_request_carries_location_radius_and_key() {
    let fake = FakeGoogle::start(|_| Reply::Body(200, legacy_body(3)));
    let (_herd, mut client) = herd_with(&google_config(&format!("{}/prefix/", fake.url()), ""));
    whatsat(&mut client, "10", 2);
    whatsat(&mut client, "0.5", 2);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.method, "GET");
    assert_eq!(
        first.target,
        format!(
            "/prefix/maps/api/place/nearbysearch/json?location=34.06893,-118.445127&radius=10000&key={KEY_IN_URL}"
        )
    );
    assert_eq!(requests[1].query("radius"), Some("500"));
    assert_eq!(first.header("accept"), Some("application/json"));
    assert!(first.header("user-agent").unwrap().starts_with("herd/"));
}

#[test]
fn legacy_error_statuses_are_passed_on_with_empty_results() {
    // The status to answer with rides in the radius: 1 km -> the first, ...
    const STATUSES: [&str; 5] = [
        "ZERO_RESULTS",
        "OVER_QUERY_LIMIT",
        "REQUEST_DENIED",
        "INVALID_REQUEST",
        "UNKNOWN_ERROR",
    ];
    let fake = FakeGoogle::start(|request| {
        let km: usize = request.query("radius").unwrap().parse::<usize>().unwrap() / 1000;
        Reply::Body(200, status_body(STATUSES[km - 1]))
    });
    let (herd, mut client) = herd_with(&google_config(&fake.url(), "max_attempts = 2\n"));
    for (i, status) in STATUSES.iter().enumerate() {
        let answer = whatsat(&mut client, &(i + 1).to_string(), 5);
        assert_eq!(answer, empty_answer(status), "{status}");
    }
    // Over the query limit and unknown errors were retried; the rest not.
    let calls_for = |km: &str| {
        fake.requests()
            .iter()
            .filter(|r| r.query("radius") == Some(km))
            .count()
    };
    assert_eq!(calls_for("1000"), 1);
    assert_eq!(calls_for("2000"), 2);
    assert_eq!(calls_for("3000"), 1);
    assert_eq!(calls_for("4000"), 1);
    assert_eq!(calls_for("5000"), 2);
    // Google's error message reaches the log, the key never does.
    eventually("the log to show the denial", || {
        herd.log("Solo").contains("message for REQUEST_DENIED")
    });
    assert!(
        !herd.log("Solo").contains("7f3a9c"),
        "the key is in the log"
    );
}

#[test]
fn http_errors_nonsense_and_silence_answer_unknown_error() {
    let fake = FakeGoogle::start(|request| match request.query("radius").unwrap() {
        "1000" => Reply::Body(500, "oops".into()),
        "2000" => Reply::Body(404, "<html>not here</html>".into()),
        "3000" => Reply::Body(200, "{\"results\": [".into()),
        "4000" => Reply::Body(200, "{\"results\": []}".into()),
        "5000" => Reply::Body(429, "{}".into()),
        _ => Reply::Hang,
    });
    let (herd, mut client) = herd_with(&google_config(&fake.url(), ""));
    assert_eq!(whatsat(&mut client, "1", 5), empty_answer("UNKNOWN_ERROR"));
    assert_eq!(
        whatsat(&mut client, "2", 5),
        empty_answer("INVALID_REQUEST")
    );
    assert_eq!(whatsat(&mut client, "3", 5), empty_answer("UNKNOWN_ERROR"));
    assert_eq!(whatsat(&mut client, "4", 5), empty_answer("UNKNOWN_ERROR"));
    assert_eq!(
        whatsat(&mut client, "5", 5),
        empty_answer("OVER_QUERY_LIMIT")
    );
    assert_eq!(whatsat(&mut client, "6", 5), empty_answer("UNKNOWN_ERROR"));
    assert!(
        !herd.log("Solo").contains("7f3a9c"),
        "the key is in the log"
    );
}

#[test]
fn a_slow_provider_times_out_and_holds_up_no_one_else() {
    let gate = Gate::default();
    let held = gate.clone();
    let fake = FakeGoogle::start(move |request| match request.query("radius").unwrap() {
        "1000" => Reply::Held(held.clone(), Box::new(Reply::Body(200, legacy_body(3)))),
        _ => Reply::Body(200, legacy_body(3)),
    });
    let (herd, mut client) = herd_with(
        &google_config(&fake.url(), "").replace("timeout_ms = 1500", "timeout_ms = 1000"),
    );
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = whatsat(&mut client, "1", 5);
        (answer, started.elapsed())
    });
    // Meanwhile, other clients of the same server are answered.
    let mut other = herd.client("Solo");
    eventually("the slow request to reach the fake", || fake.calls() >= 1);
    assert!(other.iamat("kiwi", WESTWOOD).starts_with("AT Solo"));
    assert_eq!(parse(&whatsat(&mut other, "2", 2))["status"], "OK");
    assert!(
        !slow.is_finished(),
        "the other client waited for the slow one"
    );

    // The slow one is answered when its time is up, and the log says so.
    let (answer, took) = slow.join().unwrap();
    assert_eq!(answer, empty_answer("UNKNOWN_ERROR"));
    assert!(took >= Duration::from_millis(900), "{took:?}");
    eventually("the timeout to be logged", || {
        herd.log("Solo").contains("no answer within 1000 ms")
    });
    gate.open();
}

#[test]
fn connection_refused_is_retried_then_answered_unknown_error() {
    // A port bound but not listening refuses connections.
    let nowhere = Port::any();
    let (herd, mut client) = herd_with(
        &google_config(&format!("http://{}", nowhere.address()), "")
            .replace("timeout_ms = 1500", "timeout_ms = 2000"),
    );
    assert_eq!(whatsat(&mut client, "10", 5), empty_answer("UNKNOWN_ERROR"));
    // Three refused attempts (max_attempts), then the answer: the attempts
    // ran out, not the time budget.
    eventually("the attempts to be counted", || {
        let log = herd.log("Solo");
        log.contains("upstream_calls=3") && log.contains("upstream_failures=3")
    });
    let log = herd.log("Solo");
    assert!(log.contains("cannot connect"), "{log}");
    assert!(!log.contains("no answer within"), "{log}");
    assert!(!log.contains("7f3a9c"), "the key is in the log");
}

#[test]
fn identical_concurrent_queries_make_one_upstream_call() {
    // The fake holds its answer until all ten queries have been asked of the
    // provider, so that they overlap however slow the machine.
    let gate = Gate::default();
    let held = gate.clone();
    let fake = FakeGoogle::start(move |_| {
        Reply::Held(held.clone(), Box::new(Reply::Body(200, legacy_body(20))))
    });
    let (herd, _client) = herd_with(&google_config(&fake.url(), ""));
    let clients: Vec<_> = (1..=10)
        .map(|bound| {
            let mut client = herd.client("Solo");
            std::thread::spawn(move || parse(&whatsat(&mut client, "10", bound)))
        })
        .collect();
    // The counters say so in the log.
    eventually("the ten queries to be counted", || {
        herd.log("Solo").contains("queries=10")
    });
    gate.open();
    for (bound, client) in (1..=10).zip(clients) {
        let answer = client.join().unwrap();
        assert_eq!(answer["results"].as_array().unwrap().len(), bound);
    }
    assert_eq!(fake.calls(), 1);
    let log = herd.log("Solo");
    let stats = log
        .lines()
        .rfind(|line| line.contains("places stats"))
        .unwrap();
    assert!(stats.contains("queries=10"), "{stats}");
    assert!(stats.contains("coalesced=9"), "{stats}");
    assert!(stats.contains("upstream_calls=1"), "{stats}");
}

#[test]
fn answers_are_served_from_the_cache() {
    // A lifetime no slow machine reaches; the expiry is
    // `cached_answers_expire_after_their_lifetime`'s, on a paused clock.
    let fake = FakeGoogle::start(|_| Reply::Body(200, legacy_body(20)));
    let (herd, mut client) = herd_with(
        &google_config(&fake.url(), "").replace("cache_ttl_secs = 0", "cache_ttl_secs = 3600"),
    );
    let first = whatsat(&mut client, "10", 3);
    assert_eq!(whatsat(&mut client, "10", 3), first);
    assert_eq!(
        parse(&whatsat(&mut client, "10", 7))["results"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(fake.calls(), 1, "served from the cache");
    // A different radius is a different question.
    whatsat(&mut client, "9", 3);
    assert_eq!(fake.calls(), 2);
    eventually("the stats to be logged", || {
        herd.log("Solo").contains("cache_hits=2")
    });
}

#[test]
fn the_circuit_breaker_stops_calls_to_a_failing_provider() {
    // A cool-down no slow machine reaches; what comes after it is
    // `the_breaker_lets_a_trial_through_after_its_cool_down`'s.
    let fake = FakeGoogle::start(|_| Reply::Body(503, "busy".into()));
    let (herd, mut client) = herd_with(&google_config(
        &fake.url(),
        "max_attempts = 1\nbreaker_failures = 3\nbreaker_cooldown_ms = 3600000\n",
    ));
    for km in ["1", "2", "3"] {
        assert_eq!(whatsat(&mut client, km, 5), empty_answer("UNKNOWN_ERROR"));
    }
    assert_eq!(fake.calls(), 3);
    // Open: answered without asking.
    for km in ["4", "5", "6"] {
        assert_eq!(whatsat(&mut client, km, 5), empty_answer("UNKNOWN_ERROR"));
    }
    assert_eq!(fake.calls(), 3);
    eventually("the rejections to be counted", || {
        let log = herd.log("Solo");
        log.contains("breaker_rejections=3") && log.contains("breaker_opened=1")
    });
    assert!(herd.log("Solo").contains("circuit breaker open"));
}

#[test]
fn the_key_may_come_from_the_environment() {
    let fake = FakeGoogle::start(|request| {
        if request.query("key") == Some("from-env") {
            Reply::Body(200, legacy_body(1))
        } else {
            Reply::Body(200, status_body("REQUEST_DENIED"))
        }
    });
    // No key in the config: the server must take $HERD_PLACES_KEY.
    // The environment is the process's: a `herd serve` process here.
    let config = google_config(&fake.url(), "").replace(&format!("key = \"{KEY}\"\n"), "");
    let herd = ProcessHerd::configure(SOLO, &config);
    let mut child = herd
        .command("Solo")
        .env("HERD_PLACES_KEY", "from-env")
        .spawn()
        .expect("starting a server");
    let address = herd.servers[0].client;
    eventually("the server to listen", || {
        TcpStream::connect(address).is_ok()
    });
    let mut client = LineClient::connect(address);
    client.iamat("kiwi", WESTWOOD);
    assert_eq!(parse(&whatsat(&mut client, "10", 5))["status"], "OK");
    let _ = child.kill();
    let _ = child.wait();

    // Without either, the server refuses to start, saying why.
    let herd = ProcessHerd::configure(SOLO, &config);
    let output = herd
        .command("Solo")
        .env_remove("HERD_PLACES_KEY")
        .output()
        .expect("running a server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HERD_PLACES_KEY"), "{stderr}");
}

// ---------------------------------------------------------------- new API

fn new_place(i: usize) -> Value {
    json!({
        "id": format!("ChIJnew{i:02}"),
        "displayName": { "text": format!("New Place {i}"), "languageCode": "en" },
        "location": { "latitude": 34.07 + i as f64 / 1000.0, "longitude": -118.44 },
        "types": ["restaurant", "food", "point_of_interest", "establishment"],
        "shortFormattedAddress": format!("{i} Gayley Ave, Los Angeles"),
        "formattedAddress": format!("{i} Gayley Ave, Los Angeles, CA 90024, USA"),
        "businessStatus": "OPERATIONAL",
    })
}

fn new_body(n: usize) -> String {
    let places: Vec<Value> = (0..n).map(new_place).collect();
    json!({ "places": places }).to_string()
}

#[test]
fn new_api_is_asked_with_headers_field_mask_and_a_circle() {
    let fake = FakeGoogle::start(|_| Reply::Body(200, new_body(20)));
    let (_herd, mut client) = herd_with(&new_config(&fake.url(), ""));
    let answer = parse(&whatsat(&mut client, "2.5", 3));
    assert_eq!(answer["results"].as_array().unwrap().len(), 3);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/places:searchNearby");
    assert_eq!(request.header("x-goog-api-key"), Some(KEY));
    assert_eq!(
        request.header("x-goog-fieldmask"),
        Some(
            "places.id,places.displayName,places.location,places.viewport,places.types,places.shortFormattedAddress,places.formattedAddress,places.businessStatus,places.plusCode,places.iconMaskBaseUri,places.iconBackgroundColor"
        )
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({
            "locationRestriction": {
                "circle": {
                    "center": { "latitude": 34.06893, "longitude": -118.445127 },
                    "radius": 2500.0
                }
            },
            "maxResultCount": 20
        })
    );
    // Every bound is served from the one answer of 20.
    for bound in [1, 7, 20] {
        assert_eq!(
            parse(&whatsat(&mut client, "2.5", bound))["results"]
                .as_array()
                .unwrap()
                .len(),
            bound
        );
    }
}

#[test]
fn new_api_answers_in_the_legacy_layout() {
    let fake = FakeGoogle::start(|_| Reply::Body(200, new_body(2)));
    let (_herd, mut client) = herd_with(&new_config(&fake.url(), "fields = \"enterprise\"\n"));
    let expected = r#"{
   "html_attributions" : [],
   "results" : [
      {
         "business_status" : "OPERATIONAL",
         "geometry" : {
            "location" : {
               "lat" : 34.07,
               "lng" : -118.44
            }
         },
         "name" : "New Place 0",
         "place_id" : "ChIJnew00",
         "reference" : "ChIJnew00",
         "scope" : "GOOGLE",
         "types" : [ "restaurant", "food", "point_of_interest", "establishment" ],
         "vicinity" : "0 Gayley Ave, Los Angeles"
      },
      {
         "business_status" : "OPERATIONAL",
         "geometry" : {
            "location" : {
               "lat" : 34.071,
               "lng" : -118.44
            }
         },
         "name" : "New Place 1",
         "place_id" : "ChIJnew01",
         "reference" : "ChIJnew01",
         "scope" : "GOOGLE",
         "types" : [ "restaurant", "food", "point_of_interest", "establishment" ],
         "vicinity" : "1 Gayley Ave, Los Angeles"
      }
   ],
   "status" : "OK"
}
"#;
    assert_eq!(whatsat(&mut client, "10", 20), expected);
    let mask = fake.requests()[0]
        .header("x-goog-fieldmask")
        .unwrap()
        .to_owned();
    assert!(
        mask.ends_with(
            ",places.rating,places.userRatingCount,places.priceLevel,places.currentOpeningHours"
        ),
        "{mask}"
    );
}

#[test]
fn new_api_http_errors_map_onto_legacy_statuses() {
    let fake = FakeGoogle::start(|request| {
        let radius = request.json()["locationRestriction"]["circle"]["radius"]
            .as_f64()
            .unwrap();
        let error = |code: u16, status: &str| {
            Reply::Body(
                code,
                json!({ "error": { "code": code, "message": "no", "status": status } }).to_string(),
            )
        };
        match radius as u32 {
            1000 => error(429, "RESOURCE_EXHAUSTED"),
            2000 => error(403, "PERMISSION_DENIED"),
            3000 => error(400, "INVALID_ARGUMENT"),
            4000 => error(500, "INTERNAL"),
            5000 => Reply::Body(200, "{}".into()),
            6000 => Reply::Body(200, "not json".into()),
            _ => error(401, "UNAUTHENTICATED"),
        }
    });
    let (herd, mut client) = herd_with(&new_config(&fake.url(), "max_attempts = 1\n"));
    for (km, status) in [
        ("1", "OVER_QUERY_LIMIT"),
        ("2", "REQUEST_DENIED"),
        ("3", "INVALID_REQUEST"),
        ("4", "UNKNOWN_ERROR"),
        ("5", "ZERO_RESULTS"),
        ("6", "UNKNOWN_ERROR"),
        ("7", "REQUEST_DENIED"),
    ] {
        assert_eq!(whatsat(&mut client, km, 5), empty_answer(status), "{km} km");
    }
    assert!(
        !herd.log("Solo").contains("7f3a9c"),
        "the key is in the log"
    );
}

// ---------------------------------------------------------------- in process

fn remote(fake: &FakeGoogle) -> RemotePlacesConfig {
    RemotePlacesConfig {
        base_url: Some(fake.url()),
        key: Some(KEY.into()),
        timeout_ms: 2_000,
        stats_interval_secs: 0,
        ..RemotePlacesConfig::default()
    }
}

fn query(limit: usize) -> NearbyQuery {
    query_within("10000", limit)
}

fn query_within(radius_m: &str, limit: usize) -> NearbyQuery {
    NearbyQuery {
        lat: 34.06893,
        lng: -118.445127,
        radius_m: radius_m.parse().unwrap(),
        radius_m_text: radius_m.into(),
        limit,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_identical_queries_make_one_call_per_api() {
    for new_api in [false, true] {
        let fake = FakeGoogle::start(|request| {
            let body = if request.method == "POST" {
                new_body(20)
            } else {
                legacy_body(20)
            };
            Reply::Slow(Duration::from_millis(300), Box::new(Reply::Body(200, body)))
        });
        let config = if new_api {
            PlacesConfig::GoogleNew(remote(&fake))
        } else {
            PlacesConfig::Google(remote(&fake))
        };
        let provider = herd::places::provider(&config).unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let provider = provider.clone();
                tokio::spawn(async move { provider.nearby(&query(1 + i % 20)).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let answer = task.await.unwrap().unwrap();
            assert_eq!(answer["results"].as_array().unwrap().len(), 1 + i % 20);
        }
        assert_eq!(fake.calls(), 1, "new API: {new_api}");
    }
}

// The tests below run on tokio's paused clock, which moves only when told
// (`tokio::time::advance`). Each request to the fake (real sockets, a real
// thread) is awaited with the clock held still, so that no timer fires
// merely because the runtime sat waiting for the fake's answer.

#[tokio::test(start_paused = true)]
async fn cached_answers_expire_after_their_lifetime() {
    let fake = FakeGoogle::start(|_| Reply::Body(200, legacy_body(20)));
    let provider = herd::places::provider(&PlacesConfig::Google(RemotePlacesConfig {
        cache_ttl_secs: 1,
        ..remote(&fake)
    }))
    .unwrap();
    let ask = |query: NearbyQuery| {
        let provider = provider.clone();
        with_clock_held("an answer", async move { provider.nearby(&query).await })
    };
    let first = ask(query(3)).await.unwrap();
    assert_eq!(first["results"].as_array().unwrap().len(), 3);
    let more = ask(query(7)).await.unwrap();
    assert_eq!(more["results"].as_array().unwrap().len(), 7);
    assert_eq!(fake.calls(), 1, "served from the cache");
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(ask(query(3)).await.unwrap(), first);
    assert_eq!(fake.calls(), 1, "still fresh just before a second");
    // A different radius is a different question.
    ask(query_within("9000", 3)).await.unwrap();
    assert_eq!(fake.calls(), 2);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(ask(query(3)).await.unwrap(), first);
    assert_eq!(fake.calls(), 3, "expired at a second");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_lets_a_trial_through_after_its_cool_down() {
    let fake = FakeGoogle::start(|_| Reply::Body(503, "busy".into()));
    let provider = herd::places::provider(&PlacesConfig::Google(RemotePlacesConfig {
        max_attempts: 1,
        breaker_failures: 3,
        breaker_cooldown_ms: 1_000,
        cache_ttl_secs: 0,
        ..remote(&fake)
    }))
    .unwrap();
    let ask = |radius_m: &str| {
        let provider = provider.clone();
        let query = query_within(radius_m, 5);
        with_clock_held("an answer", async move { provider.nearby(&query).await })
    };
    let open = |outcome: Result<Value, PlacesError>| matches!(outcome, Err(PlacesError::Unavailable(text)) if text.contains("circuit breaker"));
    for radius_m in ["1000", "2000", "3000"] {
        assert!(ask(radius_m).await.is_err());
    }
    assert_eq!(fake.calls(), 3);
    // Open: answered without asking, until the cool-down is over.
    assert!(open(ask("4000").await));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(open(ask("5000").await));
    assert_eq!(fake.calls(), 3);
    // After it, one trial goes to the provider, which has recovered; its
    // success closes the breaker.
    fake.set(|_| Reply::Body(200, legacy_body(4)));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(ask("6000").await.unwrap()["status"], "OK");
    assert_eq!(ask("7000").await.unwrap()["status"], "OK");
    assert_eq!(fake.calls(), 5);
}

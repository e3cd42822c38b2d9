//! The admin port: /metrics in the Prometheus text format with counters
//! that follow what happened, health and readiness, /status and /herd, and
//! that the admin port and the client port do not answer each other's
//! language. Servers run in this process (`common::Herd`) on port 0.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{DEFAULT_TOPOLOGY, Herd, LineClient, eventually, now_text};
use herd::admin::metrics::parse_text;

/// An HTTP answer: status code, headers (lower-case names) and body.
struct Answer {
    code: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// `GET path` with extra request `headers`, over a fresh connection.
fn get_with(address: SocketAddr, path: &str, headers: &str) -> Answer {
    let mut stream = TcpStream::connect(address).expect("connecting to the admin port");
    stream
        .set_read_timeout(Some(common::PATIENCE))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{headers}\r\n"
    )
    .expect("sending a request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|status| status.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    Answer {
        code,
        headers,
        body: body.to_owned(),
    }
}

fn get(address: SocketAddr, path: &str) -> Answer {
    get_with(address, path, "")
}

fn admin_of(herd: &Herd, name: &str) -> SocketAddr {
    herd.server(name).admin.expect("started with admin ports")
}

/// The samples of `name`'s /metrics, by series (`name{labels}`), after
/// checking that they parse.
fn metrics(herd: &Herd, name: &str) -> HashMap<String, f64> {
    // A server just started serves its admin port before it is ready.
    let mut answer = None;
    eventually(&format!("{name}'s metrics"), || {
        let got = get(admin_of(herd, name), "/metrics");
        let ready = got.code == 200;
        answer = Some(got);
        ready
    });
    let answer = answer.expect("an answer");
    assert!(
        answer.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        answer.headers
    );
    parse_text(&answer.body)
        .unwrap_or_else(|error| panic!("{error}\n{}", answer.body))
        .into_iter()
        .collect()
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} among {:#?}", samples.keys()))
}

#[test]
fn metrics_parse_and_count_a_known_sequence_of_requests() {
    let herd = Herd::start_with_admin(DEFAULT_TOPOLOGY, "");
    let before = metrics(&herd, "Hill");
    assert_eq!(
        sample(
            &before,
            r#"herd_requests_total{command="iamat",outcome="stored"}"#
        ),
        0.0
    );

    let mut client = herd.client("Hill");
    let time = now_text();
    assert!(
        client
            .request(&format!("IAMAT kiwi +34.068930-118.445127 {time}"))
            .starts_with("AT Hill ")
    );
    assert!(
        client
            .request(&format!("IAMAT kiwi +34.068930-118.445127 {time}"))
            .starts_with("AT Hill ")
    );
    client.iamat("pear", "+60.1699+24.9384");
    client.send_line("WHATSAT kiwi 10 2");
    let (at, json) = client.read_answer();
    assert!(
        at.starts_with("AT Hill") && json.contains("\"OK\""),
        "{at}\n{json}"
    );
    assert!(client.request("WHATSAT nobody 10 2").starts_with("? "));
    assert!(client.request("HELLO there").starts_with("? "));
    drop(client);

    let requests = |samples: &HashMap<String, f64>, command: &str, outcome: &str| {
        sample(
            samples,
            &format!(r#"herd_requests_total{{command="{command}",outcome="{outcome}"}}"#),
        )
    };
    let mut hill = HashMap::new();
    eventually("Hill to count the connection closed", || {
        hill = metrics(&herd, "Hill");
        sample(&hill, "herd_client_connections_open") == 0.0
    });
    assert_eq!(requests(&hill, "iamat", "stored"), 2.0);
    assert_eq!(requests(&hill, "iamat", "not_newer"), 1.0);
    assert_eq!(requests(&hill, "whatsat", "answered"), 1.0);
    assert_eq!(requests(&hill, "whatsat", "invalid"), 1.0);
    assert_eq!(requests(&hill, "other", "invalid"), 1.0);
    assert_eq!(
        sample(
            &hill,
            r#"herd_request_duration_seconds_count{command="iamat"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &hill,
            r#"herd_request_duration_seconds_bucket{command="whatsat",le="+Inf"}"#
        ),
        2.0
    );
    assert_eq!(sample(&hill, "herd_client_connections_accepted_total"), 1.0);
    assert_eq!(sample(&hill, "herd_clients_held"), 2.0);
    assert_eq!(
        sample(&hill, r#"herd_reports_stored_total{source="client"}"#),
        2.0
    );
    assert_eq!(sample(&hill, "herd_places_queries_total"), 1.0);
    eventually("Hill's links to be up both ways", || {
        let hill = metrics(&herd, "Hill");
        ["Jaquez", "Smith"].iter().all(|neighbour| {
            ["send", "receive"].iter().all(|direction| {
                sample(
                    &hill,
                    &format!(r#"herd_link_up{{neighbour="{neighbour}",direction="{direction}"}}"#),
                ) == 1.0
            })
        })
    });
    assert!(sample(&hill, "herd_storage_records_total") >= 2.0);
    assert!(sample(&hill, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&hill, "process_open_fds") > 0.0);

    // Both reports reach Campbell, two hops away, through its links.
    let mut campbell = HashMap::new();
    eventually("Campbell to hold both reports", || {
        campbell = metrics(&herd, "Campbell");
        sample(&campbell, "herd_clients_held") == 2.0
    });
    assert_eq!(
        sample(
            &campbell,
            r#"herd_reports_stored_total{source="neighbour"}"#
        ),
        2.0
    );
    let received: f64 = ["Smith", "Singleton"]
        .iter()
        .map(|n| {
            sample(
                &campbell,
                &format!(r#"herd_link_updates_received_total{{neighbour="{n}"}}"#),
            )
        })
        .sum();
    assert!(received >= 2.0, "{received}");
    eventually("Hill's links to have sent everything", || {
        let hill = metrics(&herd, "Hill");
        sample(&hill, r#"herd_link_backlog_reports{neighbour="Jaquez"}"#) == 0.0
            && sample(&hill, r#"herd_link_backlog_reports{neighbour="Smith"}"#) == 0.0
    });
    // The link-state lines that tell Campbell of every link may come after
    // the reports.
    eventually("Campbell to know every link of the herd up", || {
        sample(&metrics(&herd, "Campbell"), "herd_links_live") == 6.0
    });
}

#[test]
fn openmetrics_is_served_to_who_asks_and_promtool_accepts_the_text_format() {
    let herd = Herd::start_with_admin(&[("Solo", &[])], "");
    herd.client("Solo").iamat("kiwi", "+34.068930-118.445127");
    let admin = admin_of(&herd, "Solo");
    let open = get_with(
        admin,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
    );
    assert_eq!(open.code, 200);
    assert!(
        open.headers["content-type"].starts_with("application/openmetrics-text"),
        "{:?}",
        open.headers
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    let samples = parse_text(&open.body).unwrap_or_else(|e| panic!("{e}\n{}", open.body));
    assert!(samples.iter().any(|(series, value)| {
        series == r#"herd_requests_total{command="iamat",outcome="stored"}"# && *value == 1.0
    }));
    let plain = get(admin, "/metrics");

    let Ok(promtool) = which("promtool") else {
        eprintln!("promtool (Debian's prometheus package) is not installed: its check is skipped");
        return;
    };
    // promtool reads the text format; OpenMetrics is for Prometheus itself.
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain.body.as_bytes())
        .expect("feeding promtool");
    let output = check.wait_with_output().expect("promtool's verdict");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}",
        output.status
    );
}

/// The path of `program` on `$PATH`.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .ok_or(())
}

#[test]
fn a_stopped_neighbour_shows_as_a_link_down_and_a_restart_replays_its_store() {
    let mut herd = Herd::start_with_admin(DEFAULT_TOPOLOGY, "");
    for i in 0..3 {
        herd.client("Smith").iamat(&format!("client{i}"), "+1+1");
    }
    let smith_link = |samples: &HashMap<String, f64>, direction: &str| {
        sample(
            samples,
            &format!(r#"herd_link_up{{neighbour="Smith",direction="{direction}"}}"#),
        )
    };
    eventually("Hill to hold Smith's reports", || {
        sample(&metrics(&herd, "Hill"), "herd_clients_held") == 3.0
    });
    // Smith's reports came over Smith's link to Hill; Hill's own link to
    // Smith may still be on its way up.
    eventually("Hill to see its links to Smith up", || {
        let hill = metrics(&herd, "Hill");
        smith_link(&hill, "send") == 1.0 && smith_link(&hill, "receive") == 1.0
    });
    assert_eq!(
        sample(
            &metrics(&herd, "Hill"),
            r#"herd_link_flaps_total{neighbour="Smith"}"#
        ),
        0.0
    );

    herd.stop("Smith");
    eventually("Hill to see its links to Smith down", || {
        let hill = metrics(&herd, "Hill");
        smith_link(&hill, "send") == 0.0 && smith_link(&hill, "receive") == 0.0
    });
    let hill = metrics(&herd, "Hill");
    assert_eq!(
        sample(&hill, r#"herd_link_flaps_total{neighbour="Smith"}"#),
        1.0
    );
    eventually("the herd to know 3 links live", || {
        sample(&metrics(&herd, "Hill"), "herd_links_live") == 3.0
    });

    herd.restart("Smith");
    let smith = metrics(&herd, "Smith");
    assert_eq!(sample(&smith, "herd_storage_replayed_records"), 3.0);
    assert_eq!(sample(&smith, "herd_clients_held"), 3.0);
    eventually("Hill to see its links to Smith up again", || {
        let hill = metrics(&herd, "Hill");
        smith_link(&hill, "send") == 1.0 && smith_link(&hill, "receive") == 1.0
    });
    assert_eq!(
        sample(
            &metrics(&herd, "Hill"),
            r#"herd_link_flaps_total{neighbour="Smith"}"#
        ),
        1.0
    );
}

#[test]
fn health_readiness_status_and_the_herd_view() {
    let mut herd = Herd::start_with_admin(DEFAULT_TOPOLOGY, "");
    let hill = admin_of(&herd, "Hill");
    eventually("Hill to be ready", || get(hill, "/readyz").code == 200);
    let health = get(hill, "/healthz");
    assert_eq!((health.code, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(hill, "/readyz").code, 200);
    let status: herd::admin::status::Status =
        serde_json::from_str(&get(hill, "/status").body).expect("status JSON");
    assert_eq!(status.name, "Hill");
    assert_eq!(
        status.addresses.client,
        herd.server("Hill").client.to_string()
    );
    assert_eq!(status.addresses.admin, hill.to_string());
    let mut names: Vec<&str> = status.neighbours.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["Jaquez", "Smith"]);

    let view = |herd: &Herd| -> herd::admin::status::HerdView {
        serde_json::from_str(&get(admin_of(herd, "Hill"), "/herd").body).expect("herd JSON")
    };
    eventually("every link of the herd to be up", || {
        let view = view(&herd);
        view.servers.iter().all(|s| s.reachable)
            && view.links.len() == 6
            && view.links.iter().all(|l| l.state == "up")
    });

    herd.client("Jaquez").iamat("kiwi", "+34.068930-118.445127");
    eventually("Hill's recent reports to show kiwi", || {
        let recent: Vec<herd::admin::status::RecentReport> =
            serde_json::from_str(&get(hill, "/recent").body).expect("recent JSON");
        recent.iter().any(|r| {
            r.client_id == "kiwi" && r.server == "Jaquez" && (r.lat - 34.06893).abs() < 1e-9
        })
    });

    herd.stop("Smith");
    eventually("Smith and its links to show down", || {
        let view = view(&herd);
        let smith = view.servers.iter().find(|s| s.name == "Smith").unwrap();
        let mut down: Vec<String> = view
            .links
            .iter()
            .filter(|l| l.state == "down")
            .map(|l| format!("{}-{}", l.a, l.b))
            .collect();
        down.sort();
        !smith.reachable
            && down == ["Hill-Smith", "Smith-Campbell", "Smith-Singleton"]
            && view.links.iter().filter(|l| l.state == "up").count() == 3
    });

    let dashboard = get(hill, "/");
    assert_eq!(dashboard.code, 200);
    assert!(dashboard.headers["content-type"].starts_with("text/html"));
    // Everything is inline: nothing to fetch from elsewhere.
    assert!(!dashboard.body.contains("<script src") && !dashboard.body.contains("https://"));
    let map = get(hill, "/map.json");
    assert!(map.body.starts_with("[[") && map.body.len() > 10_000);
    assert_eq!(get(hill, "/nothing-here").code, 404);
}

#[test]
fn the_admin_port_is_not_the_client_port() {
    let herd = Herd::start_with_admin(&[("Solo", &[])], "");
    let solo = herd.server("Solo");
    // A client line to the admin port: an HTTP error, then the end.
    let mut stream = TcpStream::connect(solo.admin.unwrap()).unwrap();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    stream
        .write_all(format!("IAMAT kiwi +34.068930-118.445127 {}\n", now_text()).as_bytes())
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    // HTTP to the client port: answered `?`, as any invalid line.
    let mut client = LineClient::connect(solo.client);
    client.send(b"GET /metrics HTTP/1.1\r\nHost: herd\r\n\r\n");
    let first = client.read_line();
    assert!(first.starts_with("? GET /metrics HTTP/1.1"), "{first:?}");
    assert!(client.read_line().starts_with("? Host: herd"));
    // Nothing was stored on the way.
    eventually("Solo to be ready", || {
        get(solo.admin.unwrap(), "/readyz").code == 200
    });
    let status: herd::admin::status::Status =
        serde_json::from_str(&get(solo.admin.unwrap(), "/status").body).unwrap();
    assert_eq!(status.clients_held, 0);
}

#[test]
fn metrics_count_what_the_store_bounds_refuse() {
    let herd = Herd::start_with_admin(
        &[("Solo", &[])],
        "[limits]\nmax_clients = 1\n[storage]\nclient_ttl_secs = 3600\n",
    );
    let mut client = herd.client("Solo");
    assert!(client.iamat("kiwi", "+1+1").starts_with("AT "));
    for _ in 0..3 {
        assert!(client.iamat("emu", "+1+1").starts_with("? IAMAT emu "));
    }
    let samples = metrics(&herd, "Solo");
    let refused = r#"herd_requests_total{command="iamat",outcome="refused"}"#;
    assert_eq!(sample(&samples, refused), 3.0);
    let full = r#"herd_reports_refused_total{source="client",reason="full"}"#;
    assert_eq!(sample(&samples, full), 3.0);
    let expired = r#"herd_reports_refused_total{source="neighbour",reason="expired"}"#;
    assert_eq!(sample(&samples, expired), 0.0);
    assert_eq!(sample(&samples, "herd_clients_max"), 1.0);
    assert_eq!(sample(&samples, "herd_clients_held"), 1.0);
    assert_eq!(sample(&samples, "herd_clients_expired_total"), 0.0);
}

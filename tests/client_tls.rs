//! TLS for clients: a server's `client_tls` port speaks the line protocol
//! of its plain port, to our own TLS client, to `openssl s_client` and to
//! `herd send --tls`; clients refuse a certificate that is expired, for
//! another name or from an unknown CA; SIGHUP replaces the certificate
//! without dropping connections; and clients that do not speak TLS, or
//! never finish their handshake, are closed without harm.
//!
//! Every certificate is made here, by a throwaway CA (`rcgen`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::pki::{Issued, Pki};
use common::process::ProcessHerd;
use common::{LineClient, Log, PATIENCE, Port, RunningServer, eventually, new_secret, now_text};
use herd::client::tls::ClientTls;
use herd::config::HerdConfig;
use nix::sys::signal::Signal;
use rustls::pki_types::{CertificateDer, ServerName};

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];

// ------------------------------------------------------------ certificates

// ------------------------------------------------------------ a TLS client

/// Our own line client over TLS (rustls, blocking), trusting only `ca`.
struct TlsClient {
    reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects and finishes the handshake, checking the certificate for
    /// `name`.
    fn connect(address: SocketAddr, ca: &Path, name: &str) -> Result<TlsClient, std::io::Error> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(ca).expect("the CA file") {
            roots.add(certificate.expect("a CA certificate")).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).expect("a server name");
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = TcpStream::connect(address)?;
        socket.set_read_timeout(Some(PATIENCE))?;
        let mut stream = rustls::StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(stream),
        })
    }

    /// The certificate the server showed.
    fn server_certificate(&self) -> Vec<u8> {
        let certificates = self.reader.get_ref().conn.peer_certificates();
        certificates.expect("a server certificate")[0].to_vec()
    }

    fn send_line(&mut self, line: &str) {
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("writing to the server over TLS");
        stream.flush().expect("flushing");
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("reading a reply over TLS");
        assert_eq!(line.pop(), Some('\n'), "closed mid-reply: {line:?}");
        line
    }

    fn request(&mut self, line: &str) -> String {
        self.send_line(line);
        self.read_line()
    }

    /// A whole WHATSAT answer, as `LineClient::read_answer` reads it.
    fn read_answer(&mut self) -> (String, String) {
        common::read_answer_with(|| self.read_line())
    }
}

// ------------------------------------------------------------ one server

/// A server run in this process with a plain and a TLS client port,
/// showing the installed certificate.
struct Solo {
    pki: Pki,
    plain: SocketAddr,
    tls: SocketAddr,
    certificate: Arc<ClientTls>,
    config: HerdConfig,
    _server: RunningServer,
}

impl Solo {
    fn start() -> Solo {
        Solo::start_with("")
    }

    /// `extra` is more TOML for the config, such as a `[limits]` table.
    fn start_with(extra: &str) -> Solo {
        let pki = Pki::new();
        pki.install(&pki.issue_local());
        let (plain, tls, peer) = (Port::any(), Port::any(), Port::any());
        let text = format!(
            "log_dir = \"logs\"\n{extra}\n{}\n[[servers]]\nname = \"Solo\"\nclient = \"{}\"\nclient_tls = \"{}\"\npeer = \"{}\"\n",
            pki.tls_table(),
            plain.address(),
            tls.address(),
            peer.address()
        );
        let config = HerdConfig::parse(&text, "test config", pki.dir.path())
            .unwrap_or_else(|error| panic!("the test config: {error}\n{text}"));
        let files = config.tls_for("Solo").expect("Solo has a certificate");
        let certificate = Arc::new(ClientTls::load(files).expect("the test certificate"));
        let (plain_address, tls_address) = (plain.address(), tls.address());
        let server = RunningServer::start_with_tls(
            &config,
            "Solo",
            &new_secret(),
            (Some(plain), tls, peer),
            certificate.clone(),
            Log::default(),
        );
        Solo {
            pki,
            plain: plain_address,
            tls: tls_address,
            certificate,
            config,
            _server: server,
        }
    }

    fn tls_client(&self) -> TlsClient {
        TlsClient::connect(self.tls, &self.pki.ca_file, "127.0.0.1").expect("a TLS connection")
    }

    /// Shows `issued` from the next handshake on, as SIGHUP does.
    fn reload(&self, issued: &Issued) {
        self.pki.install(issued);
        let files = self.config.tls_for("Solo").unwrap();
        self.certificate.reload(files).expect("reloading");
    }
}

/// Reads `reader` until it ends (the server closed) or fails (reset),
/// failing the test if that takes longer than `PATIENCE`.
#[track_caller]
fn closed_by_the_server(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(error) => panic!("the server did not close the connection: {error}"),
        }
    }
}

// ------------------------------------------------------------ the protocol

#[test]
fn iamat_and_whatsat_over_tls_answer_as_on_the_plain_port() {
    let solo = Solo::start();
    let mut tls = solo.tls_client();
    let mut plain = LineClient::connect(solo.plain);

    // A report over TLS is stored and answered as on the plain port.
    let time = now_text();
    let at = tls.request(&format!(
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {time}"
    ));
    assert!(at.starts_with("AT Solo "), "{at}");
    assert!(
        at.ends_with(&format!(" kiwi.cs.ucla.edu +34.068930-118.445127 {time}")),
        "{at}"
    );
    // Either port then answers WHATSAT alike, with that report.
    tls.send_line("WHATSAT kiwi.cs.ucla.edu 10 3");
    plain.send_line("WHATSAT kiwi.cs.ucla.edu 10 3");
    let (over_tls, over_plain) = (tls.read_answer(), plain.read_answer());
    assert_eq!(over_tls, over_plain);
    assert_eq!(over_tls.0, at);
    assert!(over_tls.1.contains("\"results\""), "{}", over_tls.1);

    // A report over the plain port is seen over TLS.
    let newer = plain.iamat("kiwi.cs.ucla.edu", "+35.000000-118.000000");
    tls.send_line("WHATSAT kiwi.cs.ucla.edu 10 3");
    assert_eq!(tls.read_answer().0, newer);
    // Invalid lines get the same `?` answer.
    assert_eq!(tls.request("IAMAT too few"), "? IAMAT too few");
    assert_eq!(plain.request("IAMAT too few"), "? IAMAT too few");
    // Many lines in one write, answered in order: more than a read takes,
    // so that some wait decrypted in the TLS session, not in the socket.
    let lines: Vec<String> = (0..400)
        .map(|i| format!("IAMAT batch-{i} +1+1 {}", now_text()))
        .collect();
    let stream = tls.reader.get_mut();
    stream.write_all(lines.join("\n").as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    stream.flush().unwrap();
    for line in &lines {
        let reply = tls.read_line();
        let report = line.strip_prefix("IAMAT ").unwrap();
        assert!(reply.ends_with(report), "{reply} for {line}");
    }
}

/// `openssl` from the system, if it is there (`.ci/run` installs it).
fn openssl() -> Option<&'static str> {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!("openssl is not installed (apt-get install openssl): skipping");
    }
    found.then_some("openssl")
}

#[test]
fn openssl_s_client_gets_the_answers_of_the_plain_port() {
    let Some(openssl) = openssl() else { return };
    let solo = Solo::start();
    let time = now_text();
    let iamat = format!("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {time}");
    // -quiet keeps the connection open after its input ends (-ign_eof),
    // so the answers are read as they come and s_client is then stopped.
    let mut s_client = Command::new(openssl)
        .args(["s_client", "-quiet", "-verify_return_error"])
        .arg("-connect")
        .arg(solo.tls.to_string())
        .arg("-CAfile")
        .arg(&solo.pki.ca_file)
        .args(["-verify_ip", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl s_client");
    let mut stdin = s_client.stdin.take().unwrap();
    stdin
        .write_all(format!("{iamat}\nWHATSAT kiwi.cs.ucla.edu 10 3\n").as_bytes())
        .unwrap();
    drop(stdin);
    // Its output as it comes, on a thread, so that the wait has a deadline.
    let (lines_sender, lines) = mpsc::channel();
    let mut stdout = BufReader::new(s_client.stdout.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdout.read_line(&mut line).is_ok_and(|read| read > 0) {
            if lines_sender.send(std::mem::take(&mut line)).is_err() {
                return;
            }
        }
    });
    let read_line = || {
        lines
            .recv_timeout(PATIENCE)
            .map(|line| line.trim_end_matches('\n').to_owned())
    };
    let answers = (|| -> Result<_, mpsc::RecvTimeoutError> {
        let at = read_line()?;
        let whatsat_at = read_line()?;
        let mut json = String::new();
        loop {
            let line = read_line()?;
            if line.is_empty() {
                break;
            }
            json.push_str(&line);
            json.push('\n');
        }
        Ok((at, (whatsat_at, json)))
    })();
    let _ = s_client.kill();
    let exited = s_client.wait_with_output().expect("waiting for s_client");
    let (at, whatsat) = answers.unwrap_or_else(|_| {
        panic!(
            "s_client got no whole answers: {}",
            String::from_utf8_lossy(&exited.stderr)
        )
    });
    assert!(at.starts_with("AT Solo "), "{at}");
    assert!(at.ends_with(&iamat["IAMAT ".len()..]), "{at}");
    let mut plain = LineClient::connect(solo.plain);
    plain.send_line("WHATSAT kiwi.cs.ucla.edu 10 3");
    assert_eq!(whatsat, plain.read_answer());
    assert_eq!(whatsat.0, at);
}

// ------------------------------------------------------------ herd send --tls

/// Runs `herd send --tls ARGS ADDRESS LINE` and returns how it went.
fn herd_send(args: &[&str], address: SocketAddr, line: &str) -> Output {
    Command::new(common::herd_binary())
        .arg("send")
        .arg("--tls")
        .args(args)
        .arg(address.to_string())
        .arg(line)
        .stdin(Stdio::null())
        .output()
        .expect("running herd send")
}

#[track_caller]
fn refused(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert!(stderr.starts_with("herd: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn herd_send_over_tls_refuses_a_certificate_it_cannot_trust() {
    let solo = Solo::start();
    let ca = solo.pki.ca_file.to_str().unwrap();
    let iamat = || format!("IAMAT sent-over-tls +1+1 {}", now_text());

    let sent = herd_send(&["--ca", ca], solo.tls, &iamat());
    assert!(sent.status.success(), "{sent:?}");
    let stdout = String::from_utf8(sent.stdout).unwrap();
    assert!(stdout.starts_with("AT Solo "), "{stdout}");

    // The public roots do not know the test CA.
    refused(
        &herd_send(&[], solo.tls, &iamat()),
        &[
            "not signed by a CA this client trusts",
            "--ca FILE",
            "UnknownIssuer",
        ],
    );
    // A certificate for another name.
    solo.reload(&solo.pki.issue(&["elsewhere.example"], false));
    refused(
        &herd_send(&["--ca", ca], solo.tls, &iamat()),
        &[
            "the server's certificate is not for \"127.0.0.1\"",
            "--tls-server-name",
            "elsewhere.example",
        ],
    );
    // ...which is accepted for the name it is for.
    let named = herd_send(
        &["--ca", ca, "--tls-server-name", "elsewhere.example"],
        solo.tls,
        &iamat(),
    );
    assert!(named.status.success(), "{named:?}");
    // An expired certificate.
    solo.reload(&solo.pki.issue(&["127.0.0.1"], true));
    refused(
        &herd_send(&["--ca", ca], solo.tls, &iamat()),
        &[
            "the server's certificate has expired",
            "certificate expired",
        ],
    );
    // A CA file that is not there is said before connecting.
    refused(
        &herd_send(&["--ca", "/nonexistent/ca.pem"], solo.tls, &iamat()),
        &["--ca: cannot read /nonexistent/ca.pem"],
    );
    // --ca without --tls is a usage error.
    let usage = Command::new(common::herd_binary())
        .args([
            "send",
            "--ca",
            ca,
            &solo.plain.to_string(),
            "IAMAT x +1+1 1",
        ])
        .output()
        .unwrap();
    assert!(!usage.status.success());
    assert!(
        String::from_utf8_lossy(&usage.stderr).contains("--tls"),
        "{usage:?}"
    );
}

// ------------------------------------------------------------ reloading

#[test]
fn sighup_replaces_the_certificate_for_new_handshakes_drops_no_connection_and_warns_of_expiry() {
    let pki = Pki::new();
    let first = pki.issue_local();
    pki.install(&first);
    let mut herd = ProcessHerd::configure(SOLO, &pki.tls_table());
    let tls_address = common::process::free_address();
    // The generated entry gets a TLS port.
    let text = std::fs::read_to_string(&herd.config_path).unwrap();
    let peer = format!("peer = \"{}\"", herd.server("Solo").peer);
    let text = text.replace(&peer, &format!("client_tls = \"{tls_address}\"\n{peer}"));
    std::fs::write(&herd.config_path, text).unwrap();
    assert!(herd.launch("Solo"), "Solo did not start");
    let connect = || TlsClient::connect(tls_address, &pki.ca_file, "127.0.0.1");

    let mut before = connect().expect("a TLS connection");
    assert_eq!(before.server_certificate(), first.der());
    assert!(
        before
            .request(&format!("IAMAT a +1+1 {}", now_text()))
            .starts_with("AT Solo ")
    );

    let second = pki.issue_local();
    pki.install(&second);
    herd.signal("Solo", Signal::SIGHUP);
    eventually("Solo to reload its certificate", || {
        herd.log("Solo").contains("TLS certificate reloaded from")
    });
    // New handshakes get the new certificate; the connection opened
    // before keeps working.
    let mut after = connect().expect("a TLS connection after the reload");
    assert_eq!(after.server_certificate(), second.der());
    assert!(
        before
            .request(&format!("IAMAT b +1+1 {}", now_text()))
            .starts_with("AT Solo ")
    );
    assert!(
        after
            .request(&format!("IAMAT c +1+1 {}", now_text()))
            .starts_with("AT Solo ")
    );

    // A key that does not belong to the certificate: the reload fails,
    // says why, and the certificate in use stays.
    let third = pki.issue_local();
    std::fs::write(pki.path("server.crt"), &third.cert).unwrap();
    herd.signal("Solo", Signal::SIGHUP);
    eventually("Solo to refuse the mismatched key", || {
        herd.log("Solo")
            .contains("TLS certificate not reloaded, keeping the one in use")
    });
    let log = herd.log("Solo");
    assert!(log.contains("does not belong to the certificate"), "{log}");
    let kept = connect().expect("a TLS connection after a failed reload");
    assert_eq!(kept.server_certificate(), second.der());
    assert!(
        before
            .request(&format!("IAMAT d +1+1 {}", now_text()))
            .starts_with("AT Solo ")
    );
    // The server runs on: SIGHUP did not stop it.
    assert!(herd.exited("Solo").is_none());

    // A certificate past its end is taken, and the operator told.
    assert!(!herd.log("Solo").contains("TLS certificate expire"));
    pki.install(&pki.issue(&["127.0.0.1", "localhost"], true));
    herd.signal("Solo", Signal::SIGHUP);
    eventually("Solo to warn of its expired certificate", || {
        herd.log("Solo")
            .contains("Solo's TLS certificate expired on 2021-01-01")
    });
}

#[test]
fn a_server_refuses_to_start_with_a_certificate_it_cannot_use() {
    let pki = Pki::new();
    let issued = pki.issue_local();
    let herd = ProcessHerd::configure(SOLO, &pki.tls_table());
    let text = std::fs::read_to_string(&herd.config_path).unwrap();
    let peer = format!("peer = \"{}\"", herd.server("Solo").peer);
    let tls_address = common::process::free_address();
    std::fs::write(
        &herd.config_path,
        text.replace(&peer, &format!("client_tls = \"{tls_address}\"\n{peer}")),
    )
    .unwrap();
    let start = |what: &str| {
        let output = herd.command("Solo").output().expect("running herd serve");
        assert!(!output.status.success(), "{what}: {output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cert = pki.path("server.crt").display().to_string();
    let key = pki.path("server.key").display().to_string();
    // No files at all.
    let stderr = start("missing");
    assert!(
        stderr.contains(&format!("Solo: the TLS certificate: cannot read {cert}")),
        "{stderr}"
    );
    // A key that is not a key.
    std::fs::write(pki.path("server.crt"), &issued.cert).unwrap();
    std::fs::write(pki.path("server.key"), "not a key\n").unwrap();
    let stderr = start("no key");
    assert!(
        stderr.contains(&format!("{key}: no private key in it")),
        "{stderr}"
    );
    // A key that is not readable: a folder in its place.
    std::fs::remove_file(pki.path("server.key")).unwrap();
    std::fs::create_dir(pki.path("server.key")).unwrap();
    let stderr = start("unreadable key");
    assert!(stderr.contains(&format!("cannot read {key}")), "{stderr}");
    std::fs::remove_dir(pki.path("server.key")).unwrap();
    // A key of another certificate.
    std::fs::write(pki.path("server.key"), pki.issue_local().key).unwrap();
    let stderr = start("mismatch");
    assert!(
        stderr.contains(&format!(
            "the key in {key} does not belong to the certificate in {cert}"
        )),
        "{stderr}"
    );
    // A certificate file with no certificate.
    std::fs::write(pki.path("server.crt"), issued.key.as_bytes()).unwrap();
    let stderr = start("no certificate");
    assert!(
        stderr.contains(&format!("{cert}: no certificate in it")),
        "{stderr}"
    );
}

// ------------------------------------------------------------ hostile clients

#[test]
fn clients_that_do_not_speak_tls_are_closed_and_harm_no_one() {
    let solo = Solo::start();
    let garbage: [Vec<u8>; 4] = [
        format!("IAMAT plain +1+1 {}\n", now_text()).into_bytes(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A handshake record header announcing a record longer than TLS
        // allows.
        b"\x16\x03\x01\xff\xff".to_vec(),
        vec![0u8; 70_000],
    ];
    for bytes in garbage {
        let mut stream = TcpStream::connect(solo.tls).unwrap();
        // The server may close before reading it all.
        let _ = stream.write_all(&bytes);
        closed_by_the_server(&mut stream);
    }
    // A client that connects and leaves at once.
    drop(TcpStream::connect(solo.tls).unwrap());
    // None of that was stored, and both ports serve on.
    let mut plain = LineClient::connect(solo.plain);
    assert_eq!(plain.request("WHATSAT plain 10 1"), "? WHATSAT plain 10 1");
    let mut tls = solo.tls_client();
    assert!(
        tls.request(&format!("IAMAT after +1+1 {}", now_text()))
            .starts_with("AT Solo ")
    );
}

#[test]
fn the_per_address_limit_counts_both_client_ports() {
    let solo = Solo::start_with("[limits]\nmax_connections_per_ip = 2\n");
    let mut plain = LineClient::connect(solo.plain);
    let mut tls = solo.tls_client();
    assert!(plain.iamat("one", "+1+1").starts_with("AT Solo "));
    assert!(
        tls.request(&format!("IAMAT two +1+1 {}", now_text()))
            .starts_with("AT Solo ")
    );
    // A third from the same address is closed at once, on either port.
    for address in [solo.tls, solo.plain] {
        let mut third = TcpStream::connect(address).unwrap();
        closed_by_the_server(&mut third);
    }
    // Once one goes, there is room again.
    drop(plain);
    eventually("room for another connection", || {
        TlsClient::connect(solo.tls, &solo.pki.ca_file, "127.0.0.1")
            .is_ok_and(|mut client| client.request("IAMAT x").starts_with("? "))
    });
}

#[tokio::test(start_paused = true)]
async fn a_handshake_never_finished_is_cut_off_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that takes TLS clients only (no `client` in its entry).
    let pki = Pki::new();
    pki.install(&pki.issue_local());
    let (tls, peer) = (Port::any(), Port::any());
    let text = format!(
        "log_dir = \"logs\"\n{}\n[[servers]]\nname = \"Solo\"\nclient_tls = \"{}\"\npeer = \"{}\"\n",
        pki.tls_table(),
        tls.address(),
        peer.address()
    );
    let config = HerdConfig::parse(&text, "test config", pki.dir.path()).unwrap();
    assert_eq!(config.server("Solo").unwrap().client, None);
    let idle = Duration::from_secs(config.limits.idle_timeout_secs);
    let places = herd::places::from_config(&config, "Solo").unwrap();
    let mut setup =
        herd::server::ServerSetup::from_config(&config, "Solo", common::keyring("s"), places)
            .unwrap();
    setup.storage = None;
    setup.client_tls = Some(Arc::new(
        ClientTls::load(config.tls_for("Solo").unwrap()).unwrap(),
    ));
    let address = tls.address();
    let listen = |port: Port| tokio::net::TcpListener::from_std(port.listen()).unwrap();
    let listeners = herd::server::Listeners {
        client: None,
        client_tls: Some(listen(tls)),
        peer: listen(peer),
        admin: None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(herd::server::serve(setup, listeners, shutdown.clone()));

    let started = tokio::time::Instant::now();
    // One says nothing; the other begins a handshake record and stops.
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"\x16\x03\x01\x00").await.unwrap();
    for stream in [&mut silent, &mut slow] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(idle * 2, stream.read(&mut byte))
            .await
            .expect("a handshake never finished is cut off");
        // Closed: an end, or a reset if the server left bytes unread.
        assert!(
            matches!(&read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
    // Not before the idle timeout (on the paused clock).
    assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

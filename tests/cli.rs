//! The `herd` command line: `up`, `send`, `config`, and its errors.
//!
//! The command is run as a process, as a user runs it. `herd up` is given a
//! config on ports found free (`common::process`), since it starts server
//! processes that bind them themselves.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};

use common::process::ProcessHerd;
use common::{DEFAULT_TOPOLOGY, herd_binary, now_text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs `herd ARGS` in an empty folder: the embedded default config keeps
/// its data (and the secret `herd up` makes) in `./data`, and a folder
/// where a herd once ran would have one.
fn herd(args: &[&str]) -> std::process::Output {
    let folder = tempfile::tempdir().unwrap();
    Command::new(herd_binary())
        .args(args)
        .current_dir(folder.path())
        .env_remove("HERD_SECRET")
        .output()
        .expect("running herd")
}

#[test]
fn config_prints_the_embedded_default_which_serve_accepts() {
    let output = herd(&["config"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("name = \"Singleton\""));
    assert!(text.contains("client = \"127.0.0.1:12000\""));
}

#[test]
fn config_generates_herds_of_any_size_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twelve.toml");
    let output = herd(&["config", "--servers", "12", "--topology", "random:3:5"]);
    assert!(output.status.success(), "{output:?}");
    std::fs::write(&path, &output.stdout).unwrap();
    let config = herd::config::HerdConfig::load(&path).unwrap();
    assert_eq!(config.servers.len(), 12);
    assert_eq!(config.servers[11].name, "S12");
    let links: usize = config.servers.iter().map(|s| s.neighbours.len()).sum();
    assert_eq!(links, 2 * 18, "average degree 3");
    // The same seed, the same herd.
    let again = herd(&["config", "--servers", "12", "--topology", "random:3:5"]);
    assert_eq!(again.stdout, output.stdout);
    fails_with(
        &["config", "--servers", "5", "--topology", "star"],
        "unknown topology",
    );
    fails_with(&["config", "--servers", "0"], "at least one server");
    fails_with(&["config", "--topology", "ring"], "--servers");
}

#[test]
fn help_explains_the_commands() {
    let output = herd(&["--help"]);
    let text = String::from_utf8(output.stdout).unwrap();
    for command in ["serve", "up", "send", "client", "config"] {
        assert!(text.contains(command), "{text}");
    }
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let output = herd(&["--version"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with(&format!("herd {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    // Built from a git checkout, as the tests are: the commit is named.
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match commit {
        Ok(commit) if commit.status.success() => {
            let commit = String::from_utf8(commit.stdout).unwrap();
            assert!(
                text.contains(&format!("(commit {})", commit.trim())),
                "{text}"
            );
        }
        _ => eprintln!("not a git checkout, or no git: the commit is not checked"),
    }
}

#[test]
fn completions_and_the_manual_come_from_the_command_line_definition() {
    for (shell, mark) in [
        ("bash", "complete -F _herd"),
        ("zsh", "#compdef herd"),
        ("fish", "complete -c herd"),
    ] {
        let output = herd(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(mark), "{shell}: {script}");
        assert!(
            script.contains("serve") && script.contains("places"),
            "{shell}"
        );
    }
    fails_with(&["completions", "cmd.exe"], "invalid value");
    let output = herd(&["man"]);
    assert!(output.status.success(), "{output:?}");
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH herd 1"), "{page}");
    for command in ["serve", "up", "client", "completions"] {
        assert!(page.contains(command), "{command}: {page}");
    }
}

#[track_caller]
fn fails_with(args: &[&str], needle: &str) {
    let output = herd(args);
    assert!(!output.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configs_are_clear_errors_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[servers]]\nname = \"A\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\nneighbours = [\"Nobody\"]\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    fails_with(
        &["serve", "A", "--config", path],
        "bad.toml:5: unknown neighbour \"Nobody\"",
    );
    fails_with(
        &["serve", "A", "--config", "/no/such/herd.toml"],
        "cannot read",
    );
    fails_with(
        &["serve", "Nobody"],
        "no server \"Nobody\" in the herd; it has Hill, Jaquez",
    );
    fails_with(&["serve", "Hill"], "no herd secret");
}

#[test]
fn a_taken_port_is_a_clear_error() {
    // A port held listening by this test; the peer port is held too, so
    // that only the client port can be the trouble.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.toml");
    let addresses = [(taken.local_addr().unwrap(), peer.local_addr().unwrap())];
    std::fs::write(&path, common::config_text(&[("Solo", &[])], &addresses, "")).unwrap();
    let output = Command::new(herd_binary())
        .args(["serve", "Solo", "--config", path.to_str().unwrap()])
        .env("HERD_SECRET", common::new_secret())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen for clients on"), "{stderr}");
}

#[test]
fn send_prints_the_answers() {
    // The server runs in this process: `herd send` is the command under test.
    let herd_in_process = common::Herd::start(&[("Solo", &[])]);
    let address = herd_in_process.server("Solo").client.to_string();
    let time = now_text();
    let output = herd(&[
        "send",
        &address,
        &format!("IAMAT sent +1-2 {time}"),
        "WHATSAT sent 5 1",
        "bogus",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    let at = lines.next().unwrap();
    assert!(
        at.starts_with("AT Solo ") && at.ends_with(&format!(" sent +1-2 {time}")),
        "{text}"
    );
    assert_eq!(
        lines.next(),
        Some(at),
        "WHATSAT repeats the AT line: {text}"
    );
    assert!(text.ends_with("? bogus\n"), "{text}");
    fails_with(&["send", "127.0.0.1:1", "x"], "connecting to 127.0.0.1:1");
}

#[test]
fn up_runs_the_whole_herd_and_stops_it_on_sigterm() {
    let herd_config = ProcessHerd::configure(DEFAULT_TOPOLOGY, "");
    let mut up = Command::new(herd_binary())
        .args(["up", "--config", herd_config.config_path.to_str().unwrap()])
        .env_remove("HERD_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(up.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("is up") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "herd up ended early: {printed}"
        );
        printed.push_str(&line);
    }
    for server in &herd_config.servers {
        assert!(
            printed.contains(&server.name) && printed.contains(&server.client.to_string()),
            "{printed}"
        );
    }
    // The servers it started share the secret it made: a report floods.
    let mut hill = common::LineClient::connect(herd_config.server("Hill").client);
    let at = hill.iamat("up-client", "+1+1");
    let mut campbell = common::LineClient::connect(herd_config.server("Campbell").client);
    common::eventually("the report to reach Campbell", || {
        campbell.at_line_of("up-client").as_deref() == Some(at.as_str())
    });
    kill(Pid::from_raw(up.id() as i32), Signal::SIGTERM).unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "{status}");
    // Each server stopped on the SIGTERM passed on to it: none was left
    // for `herd up` to kill after its wait.
    let mut stderr = String::new();
    up.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("did not stop"), "{stderr}");
    // Every server is gone: its client port is free again.
    for server in &herd_config.servers {
        common::eventually("the port to be free", || {
            TcpListener::bind(server.client).is_ok()
        });
    }
}

#[test]
fn serve_says_ready_on_its_notify_socket_once_it_listens() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let herd_config = ProcessHerd::configure(&[("Solo", &[])], "");
    let name = format!("herd-cli-test-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    socket.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut server = herd_config
        .command("Solo")
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 512];
    let read = socket.recv(&mut buffer).expect("a notification");
    let said = String::from_utf8_lossy(&buffer[..read]).into_owned();
    assert!(said.lines().any(|l| l == "READY=1"), "{said}");
    assert!(
        said.lines()
            .any(|l| l == format!("MAINPID={}", server.id())),
        "{said}"
    );
    // Ready means ready: it answers at once.
    let mut client = common::LineClient::connect(herd_config.server("Solo").client);
    assert!(client.iamat("ready", "+1+1").starts_with("AT Solo "));
    kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM).unwrap();
    let read = socket.recv(&mut buffer).expect("a notification");
    assert!(
        String::from_utf8_lossy(&buffer[..read])
            .lines()
            .any(|l| l == "STOPPING=1")
    );
    assert!(server.wait().unwrap().success());
}

#[test]
fn a_second_server_on_a_data_folder_in_use_is_refused_naming_the_first() {
    let herd_config = ProcessHerd::start(&[("Solo", &[])]);
    let first = herd_config.pid("Solo");
    // Another "Solo" on other ports, told to keep its store in the first's
    // data folder.
    let data_dir = herd_config.dir.path().join("data");
    let impostor = ProcessHerd::configure(
        &[("Solo", &[])],
        &format!("[storage]\ndata_dir = {:?}\n", data_dir.to_str().unwrap()),
    );
    let output = impostor.command("Solo").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{} is in use by process {first}",
            data_dir.join("Solo").display()
        )),
        "{stderr}"
    );
    // The first is undisturbed.
    let mut client = herd_config.client("Solo");
    assert!(client.iamat("still-here", "+1+1").starts_with("AT Solo "));
}

#[test]
fn client_in_a_terminal_edits_recalls_and_reports_a_closed_connection_at_once() {
    let mut herd_in_process = common::Herd::start(&[("Solo", &[])]);
    let address = herd_in_process.server("Solo").client.to_string();
    let mut command = Command::new(herd_binary());
    command.args(["client", &address]);
    // A pseudo-terminal: standard input and output are a terminal.
    let patience = common::PATIENCE.as_millis() as u64;
    let mut session = rexpect::session::spawn_command(command, Some(patience)).unwrap();
    session.exp_string("> ").unwrap();
    // A typo mended with the line editor: a stray character rubbed out,
    // and the cursor moved back over the time to mend the location.
    let time = now_text();
    session
        .send(&format!("IAMAT pty +9+2 {time}X\x7f"))
        .unwrap();
    for _ in 0..=time.len() {
        session.send("\x1b[D").unwrap();
    }
    session.send("\x7f1\r").unwrap();
    session.flush().unwrap();
    session.exp_string("AT Solo ").unwrap();
    session.exp_string(&format!(" pty +9+1 {time}")).unwrap();
    // The line again from history (up arrow), and the prompt after it.
    session.send("\x1b[A\r").unwrap();
    session.flush().unwrap();
    session.exp_string("AT Solo ").unwrap();
    session.exp_string(&format!(" pty +9+1 {time}")).unwrap();
    session.exp_string("> ").unwrap();
    // The server goes away while the prompt waits: said at once, and the
    // session ends.
    herd_in_process.stop("Solo");
    session.exp_string("closed the connection").unwrap();
    session.exp_eof().unwrap();
    match session.process().wait().unwrap() {
        nix::sys::wait::WaitStatus::Exited(_, code) => assert_ne!(code, 0),
        other => panic!("herd client ended with {other:?}"),
    }
}

#[test]
fn client_without_a_terminal_is_a_pipe_that_reports_a_closed_connection() {
    use std::io::Write;
    let mut herd_in_process = common::Herd::start(&[("Solo", &[])]);
    let address = herd_in_process.server("Solo").client.to_string();
    let spawn = || {
        Command::new(herd_binary())
            .args(["client", &address])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Lines in, answers out, as a pipe: all of standard input, then the
    // answers to the end.
    let mut client = spawn();
    let time = now_text();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(format!("IAMAT piped +1+1 {time}\nbogus\n").as_bytes())
        .unwrap();
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("AT Solo "), "{text}");
    assert!(
        text.ends_with(&format!(" piped +1+1 {time}\n? bogus\n")),
        "{text}"
    );

    // The server goes away while standard input is still open: the client
    // says so and ends, without waiting for more input.
    let mut client = spawn();
    let mut stdin = client.stdin.take().unwrap();
    stdin
        .write_all(format!("IAMAT piped +1+2 {now}\n", now = now_text()).as_bytes())
        .unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("AT Solo "), "{line}");
    herd_in_process.stop("Solo");
    let mut status = None;
    common::eventually("herd client to end", || {
        status = client.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!("{address} closed the connection")),
        "{stderr}"
    );
    drop(stdin);
}

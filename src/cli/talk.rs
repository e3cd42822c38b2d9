//! `herd send` and `herd client`: talk to a server, in plain TCP or over
//! TLS.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rustls::CertificateError;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How `herd send` and `herd client` reach a server's TLS client port.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Speak TLS, as to a server's `client_tls` port. The server's
    /// certificate is checked against the public web's CAs (Mozilla's
    /// list, built in), or those of --ca.
    #[arg(long)]
    tls: bool,
    /// Trust the CA certificates in this PEM file instead (e.g. a herd's
    /// own CA, or the server's self-signed certificate).
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<PathBuf>,
    /// The name the server's certificate must be for; by default the host
    /// of the address (a DNS name or an IP address).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
}

/// A connection to a server, in plain TCP or over TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// Connects to `address`, and with `--tls` makes the TLS handshake.
async fn connect(address: &str, tls: &TlsArgs) -> anyhow::Result<Box<dyn Connection>> {
    // Everything that can be wrong here is found before connecting.
    let tls_setup = if tls.tls {
        Some((client_config(tls)?, server_name(address, tls)?))
    } else {
        None
    };
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let Some((config, name)) = tls_setup else {
        return Ok(Box::new(stream));
    };
    let shown = name.to_str().into_owned();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|error| handshake_failed(address, &shown, &error))?;
    Ok(Box::new(stream))
}

/// The TLS settings of a client: trusting --ca, or else the Mozilla roots.
fn client_config(tls: &TlsArgs) -> anyhow::Result<rustls::ClientConfig> {
    herd::tls::client_config(tls.ca.as_deref(), None).context("--ca")
}

/// The name the server's certificate is checked for: --tls-server-name,
/// else the host of `address` (`host:port`, `[v6]:port`).
fn server_name(address: &str, tls: &TlsArgs) -> anyhow::Result<ServerName<'static>> {
    let name = match &tls.tls_server_name {
        Some(name) => name.as_str(),
        None => address
            .rsplit_once(':')
            .map_or(address, |(host, _port)| host)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(name.to_owned()).map_err(|_| {
        anyhow!("{name:?} is not a DNS name or IP address to check the certificate for; give one with --tls-server-name")
    })
}

/// A failed handshake, said plainly: for a refused certificate, why, and
/// what can be done about it.
fn handshake_failed(address: &str, name: &str, error: &std::io::Error) -> anyhow::Error {
    let refused = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let hint = match refused {
        Some(rustls::Error::InvalidCertificate(why)) => match why {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired: its operator must renew it".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (or this machine's clock is wrong)"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not for {name:?}; --tls-server-name checks another name"
                )
            }
            CertificateError::UnknownIssuer => {
                "the server's certificate is not signed by a CA this client trusts; --ca FILE trusts the CA that signed it".to_owned()
            }
            // What `openssl req -x509` makes unless told otherwise.
            CertificateError::Other(other)
                if other.0.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                "the server's certificate is a CA certificate, which a server may not show: make it with basicConstraints CA:FALSE (docs/tls.md)".to_owned()
            }
            _ => "the server's certificate was refused".to_owned(),
        },
        Some(rustls::Error::InvalidMessage(_)) => {
            "the server does not speak TLS there: is it the server's client_tls address?"
                .to_owned()
        }
        _ => "TLS handshake failed".to_owned(),
    };
    anyhow!("{address}: {hint} ({error})")
}

/// Sends `lines` (or standard input) to a server and prints every answer.
pub(crate) async fn send(
    address: &str,
    tls: &TlsArgs,
    lines: Vec<String>,
    timeout_secs: f64,
) -> anyhow::Result<()> {
    let wait = Duration::try_from_secs_f64(timeout_secs)
        .context("--timeout must be a positive number of seconds")?;
    let mut stream = tokio::time::timeout(wait, connect(address, tls))
        .await
        .with_context(|| format!("connecting to {address}: timed out"))??;
    let mut input = Vec::new();
    if lines.is_empty() {
        tokio::io::stdin().read_to_end(&mut input).await?;
    } else {
        for line in lines {
            input.extend_from_slice(line.as_bytes());
            input.push(b'\n');
        }
    }
    stream.write_all(&input).await?;
    // EOF tells the server to answer everything and close (SPEC §2).
    stream.shutdown().await?;
    let mut stdout = tokio::io::stdout();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(wait, stream.read(&mut buffer))
            .await
            .context("no answer in time")??;
        if read == 0 {
            break;
        }
        stdout.write_all(&buffer[..read]).await?;
    }
    stdout.flush().await?;
    Ok(())
}

/// Talks to a server interactively: lines from standard input, answers
/// to standard output. In a terminal, lines can be edited and recalled
/// (`interactive`); otherwise standard input is sent as it comes (`piped`).
/// Either way, a server that closes the connection ends the session at
/// once, with an error.
pub(crate) async fn client(address: &str, tls: &TlsArgs) -> anyhow::Result<()> {
    // As long as `herd send` waits by default: a port that does not answer
    // a TLS handshake (a plain one waiting for a line, say) ends the
    // session rather than hanging it.
    let stream = tokio::time::timeout(Duration::from_secs(10), connect(address, tls))
        .await
        .with_context(|| format!("connecting to {address}: timed out"))??;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        interactive(address, stream).await
    } else {
        piped(address, stream).await
    }
}

/// Standard input to the server as it comes, everything the server says to
/// standard output, until standard input ends (then the server's last
/// answers) or the server closes the connection.
async fn piped(address: &str, stream: Box<dyn Connection>) -> anyhow::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let copied = tokio::io::copy(&mut reader, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    });
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    loop {
        tokio::select! {
            // Cancel-safe with a buffer kept across calls: what was read
            // before the other branch won stays in `line`.
            read = stdin.read_until(b'\n', &mut line) => {
                if read? == 0 {
                    break;
                }
                if writer.write_all(&line).await.is_err() {
                    let _ = printer.await;
                    return Err(closed(address));
                }
                line.clear();
            }
            _ = &mut printer => return Err(closed(address)),
        }
    }
    // EOF tells the server to answer everything and close (SPEC §2).
    writer.shutdown().await?;
    printer.await??;
    Ok(())
}

fn closed(address: &str) -> anyhow::Error {
    anyhow::anyhow!("{address} closed the connection")
}

/// A line editor with history (rustyline) on its own thread; each line is
/// sent and its answer printed before the next prompt. While the prompt
/// waits, a server that closes the connection ends the session at once.
async fn interactive(address: &str, stream: Box<dyn Connection>) -> anyhow::Result<()> {
    use nix::sys::termios;
    // The editor puts the terminal in raw mode while it reads a line; a
    // session ended under it puts the terminal back as it found it.
    let terminal = termios::tcgetattr(std::io::stdin()).context("reading terminal settings")?;
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let mut printer = editor
        .create_external_printer()
        .context("starting the line editor")?;
    let (want_line, wanted) = std::sync::mpsc::channel::<()>();
    let (line_sender, mut lines) = tokio::sync::mpsc::channel::<Option<String>>(1);
    std::thread::spawn(move || {
        while wanted.recv().is_ok() {
            let line = match editor.readline("> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    Some(line)
                }
                // Ctrl-D, Ctrl-C, or a terminal gone: the session ends.
                Err(_) => None,
            };
            let ended = line.is_none();
            if line_sender.blocking_send(line).is_err() || ended {
                return;
            }
        }
    });
    eprintln!("connected to {address}; type IAMAT or WHATSAT lines, Ctrl-D to finish");
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut stdout = tokio::io::stdout();
    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        let _ = want_line.send(());
        let line = loop {
            tokio::select! {
                line = lines.recv() => break line.flatten(),
                read = reader.read_buf(&mut received) => {
                    if !matches!(read, Ok(read) if read > 0) {
                        let _ = termios::tcsetattr(
                            std::io::stdin(),
                            termios::SetArg::TCSANOW,
                            &terminal,
                        );
                        eprintln!();
                        return Err(closed(address));
                    }
                    // The server speaks only when spoken to; should it say
                    // more, it is shown above the prompt.
                    let _ = rustyline::ExternalPrinter::print(
                        &mut printer,
                        String::from_utf8_lossy(&received).into_owned(),
                    );
                    received.clear();
                }
            }
        };
        let Some(line) = line else {
            writer.shutdown().await?;
            tokio::io::copy(&mut reader, &mut stdout).await?;
            stdout.flush().await?;
            return Ok(());
        };
        if writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return Err(closed(address));
        }
        loop {
            if let Some(length) = answer_length(&line, &received) {
                stdout.write_all(&received[..length]).await?;
                stdout.flush().await?;
                received.drain(..length);
                break;
            }
            if !matches!(reader.read_buf(&mut received).await, Ok(read) if read > 0) {
                stdout.write_all(&received).await?;
                stdout.flush().await?;
                return Err(closed(address));
            }
        }
    }
}

/// How many bytes at the start of `received` make the whole answer to the
/// request `line`, once they have all arrived: one line, but for WHATSAT
/// an AT line, JSON and a blank line (SPEC §3).
fn answer_length(line: &str, received: &[u8]) -> Option<usize> {
    let first_line = memchr::memchr(b'\n', received)? + 1;
    let places_follow =
        line.split_ascii_whitespace().next() == Some("WHATSAT") && received.starts_with(b"AT ");
    if !places_follow {
        return Some(first_line);
    }
    memchr::memmem::find(&received[first_line..], b"\n\n").map(|at| first_line + at + 2)
}

#[cfg(test)]
mod tests {
    use super::answer_length;

    #[test]
    fn an_answer_is_a_line_or_for_whatsat_a_line_json_and_a_blank_line() {
        assert_eq!(
            answer_length("IAMAT a +1+1 1", b"AT S +0.1 a +1+1 1\nAT"),
            Some(19)
        );
        assert_eq!(answer_length("IAMAT a +1+1 1", b"AT S +0.1 a +1+"), None);
        assert_eq!(answer_length("bogus", b"? bogus\n"), Some(8));
        assert_eq!(
            answer_length("WHATSAT a 9 9", b"? WHATSAT a 9 9\n"),
            Some(16)
        );
        let whatsat = b"AT S +0.1 a +1+1 1\n{\n   \"results\" : []\n}\n\n";
        assert_eq!(answer_length("WHATSAT a 5 1", whatsat), Some(whatsat.len()));
        assert_eq!(
            answer_length("WHATSAT a 5 1", &whatsat[..whatsat.len() - 1]),
            None
        );
    }
}

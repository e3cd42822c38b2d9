//! `herd send` and `herd client`: talk to a server.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `lines` (or standard input) to a server and prints every answer.
pub(crate) async fn send(
    address: &str,
    lines: Vec<String>,
    timeout_secs: f64,
) -> anyhow::Result<()> {
    let wait = Duration::try_from_secs_f64(timeout_secs)
        .context("--timeout must be a positive number of seconds")?;
    let mut stream = tokio::time::timeout(wait, TcpStream::connect(address))
        .await
        .with_context(|| format!("connecting to {address}: timed out"))?
        .with_context(|| format!("connecting to {address}"))?;
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
/// to standard output.
pub(crate) async fn client(address: &str) -> anyhow::Result<()> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    if std::io::stdin().is_terminal() {
        eprintln!("connected to {address}; type IAMAT or WHATSAT lines, Ctrl-D to finish");
    }
    let (reader, mut writer) = stream.into_split();
    let printer = tokio::spawn(async move {
        let mut reader = reader;
        let mut stdout = tokio::io::stdout();
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = reader.read(&mut buffer).await {
            if read == 0 || stdout.write_all(&buffer[..read]).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
    });
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    while stdin.read_until(b'\n', &mut line).await? > 0 {
        writer.write_all(&line).await?;
        line.clear();
    }
    writer.shutdown().await?;
    printer.await?;
    Ok(())
}

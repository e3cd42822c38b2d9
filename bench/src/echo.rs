//! The "loopback limit": a minimal line server that answers each IAMAT with
//! an AT line of the usual shape (constant server name and skew, the client's
//! fields echoed) and anything else with `? <line>`. It keeps no state and
//! floods nothing, so it shows what the machine and the load tool manage
//! before any herd logic. Replies to one read are written together.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves until `max_run` has passed (so that it always stops by itself).
pub async fn serve(addr: &str, max_run: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let accept = async {
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(connection(stream));
        }
    };
    match tokio::time::timeout(max_run, accept).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

async fn connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut input: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let read = stream.read_buf(&mut input).await?;
        let mut start = 0;
        while let Some(offset) = input[start..].iter().position(|&b| b == b'\n') {
            answer(&input[start..start + offset], &mut out);
            start += offset + 1;
        }
        if read == 0 {
            if start < input.len() {
                answer(&input[start..], &mut out);
            }
            stream.write_all(&out).await?;
            return stream.shutdown().await;
        }
        input.drain(..start);
        if input.len() > 1 << 20 {
            // Not a herd: a line this long just ends the connection.
            return Ok(());
        }
        if input.capacity() - input.len() < 16 * 1024 {
            input.reserve(64 * 1024);
        }
        stream.write_all(&out).await?;
        out.clear();
    }
}

fn answer(line: &[u8], out: &mut Vec<u8>) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let fields: Vec<&[u8]> = line
        .split(|b| b" \t\r\x0b\x0c".contains(b))
        .filter(|field| !field.is_empty())
        .collect();
    if let [b"IAMAT", client_id, location, time] = fields.as_slice() {
        out.extend_from_slice(b"AT Echo +0.000000000 ");
        for (index, field) in [client_id, location, time].into_iter().enumerate() {
            if index > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(field);
        }
    } else {
        out.extend_from_slice(b"? ");
        out.extend_from_slice(line);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn answers_iamat_with_an_at_line() {
        let mut out = Vec::new();
        answer(b"IAMAT kiwi +34-118 1.5\r", &mut out);
        answer(b"WHATSAT kiwi 1 1", &mut out);
        assert_eq!(
            out,
            b"AT Echo +0.000000000 kiwi +34-118 1.5\n? WHATSAT kiwi 1 1\n"
        );
    }
}

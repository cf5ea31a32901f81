//! Raw HTTP/1.1 on a socket: the bytes a test writes reach the proxy exactly as written (no
//! client library normalises the target or refuses a malformed header), and the answer is read
//! as bytes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one raw exchange may take.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The first response's status; None when the connection ended without one.
    pub status: Option<u16>,
    /// The first response's body (lossy UTF-8).
    pub body: String,
    /// Everything read (lossy UTF-8), for failure messages.
    pub text: String,
}

impl RawReply {
    /// The status as text (`-` for none), for tables.
    pub fn status_text(&self) -> String {
        self.status.map_or_else(|| "-".into(), |s| s.to_string())
    }
}

/// Writes `request` on a new connection to `addr` and reads until the first response is
/// complete, the peer closes, or [`RAW_TIMEOUT`]. Writing and reading run side by side: a
/// proxy may answer (431, 400) and close before the whole request is written.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<RawReply> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let write = async move {
        // A write error means the proxy closed first; what it answered is what matters.
        let _ = wr.write_all(request).await;
        let _ = wr.flush().await;
        wr
    };
    let read = async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if complete(&buf) {
                break;
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf
    };
    let (_wr, buf) = tokio::time::timeout(RAW_TIMEOUT, async { tokio::join!(write, read) })
        .await
        .map_err(|_| anyhow!("no complete answer from {addr} within {RAW_TIMEOUT:?}"))?;
    Ok(parse(&buf))
}

/// Whether `buf` holds one whole response (headers, then a `content-length` body or a
/// chunked body's last chunk).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return find(body, b"0\r\n\r\n").is_some();
    }
    // Neither: the body runs to the close.
    false
}

fn parse(buf: &[u8]) -> RawReply {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    let body = find(buf, b"\r\n\r\n")
        .map(|end| String::from_utf8_lossy(&buf[end + 4..]).into_owned())
        .unwrap_or_default();
    RawReply { status, body, text }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

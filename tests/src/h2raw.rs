//! HTTP/2 written by hand on an h2c connection: frames, HPACK literals (no Huffman, no
//! table), and a connection whose reader records what the server answers. For requests and
//! floods no client library would send: a `:path` exactly as given, a header value holding
//! NUL or CR, a HEADERS block that never ends, thousands of reset streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::{PATIENCE, eventually_matches};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame type HEADERS.
pub const HEADERS: u8 = 1;
/// Frame type RST_STREAM.
pub const RST_STREAM: u8 = 3;
/// Frame type SETTINGS.
pub const SETTINGS: u8 = 4;
/// Frame type GOAWAY.
pub const GOAWAY: u8 = 7;
/// Frame type CONTINUATION.
pub const CONTINUATION: u8 = 9;
/// Flag END_STREAM.
pub const END_STREAM: u8 = 0x1;
/// Flag END_HEADERS.
pub const END_HEADERS: u8 = 0x4;
/// Flag ACK (SETTINGS).
pub const ACK: u8 = 0x1;
/// Error code CANCEL.
pub const CANCEL: u32 = 0x8;
/// Error code ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
pub fn integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, new name, no Huffman coding.
pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    integer(out, 0, 7, name.len());
    out.extend_from_slice(name);
    integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// `GET <path>` for `authority`: `:method GET`, `:scheme http` from the static table, then
/// `:path` and `:authority` as literals with indexed names (the path exactly as given).
pub fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x04);
    integer(&mut b, 0, 7, path.len());
    b.extend_from_slice(path.as_bytes());
    b.push(0x01);
    integer(&mut b, 0, 7, authority.len());
    b.extend_from_slice(authority.as_bytes());
    b
}

/// What the proxy did with stream 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Answer {
    /// A response; its status when the HPACK block starts with a static-table status.
    Status(u16),
    /// A response whose status this reader does not decode.
    Response,
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection ended.
    Closed,
}

/// The `:status` at the start of a response block, when it is in one of the forms servers
/// use: indexed from the static table, or a literal with the static name (plain or Huffman
/// coded digits). 0 otherwise.
pub fn response_status(block: &[u8]) -> u16 {
    match block {
        // Static table: 8 = 200, 9 = 204, 10 = 206, 11 = 304, 12 = 400, 13 = 404, 14 = 500.
        [b @ 0x88..=0x8e, ..] => [200, 204, 206, 304, 400, 404, 500][usize::from(b - 0x88)],
        // Literal, name index 8 (with incremental indexing, without, never indexed).
        [0x48 | 0x08 | 0x18, len, rest @ ..] => {
            let n = usize::from(len & 0x7f);
            let value = rest.get(..n).unwrap_or_default();
            let digits = if len & 0x80 == 0 {
                String::from_utf8_lossy(value).into_owned()
            } else {
                huffman_digits(value)
            };
            digits.parse().unwrap_or(0)
        }
        _ => 0,
    }
}

/// Decodes a Huffman-coded string of digits (RFC 7541 appendix B: `0`–`2` are 5 bits,
/// `3`–`9` 6 bits); stops at anything else (padding).
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let code = |at: usize, n: usize| {
        bits.get(at..at + n)
            .map(|b| b.iter().fold(0u8, |acc, bit| (acc << 1) | bit))
    };
    let mut out = String::new();
    let mut at = 0;
    loop {
        match (code(at, 5), code(at, 6)) {
            (Some(c @ 0..=2), _) => {
                out.push(char::from(b'0' + c));
                at += 5;
            }
            (_, Some(c @ 0x19..=0x1f)) => {
                out.push(char::from(b'3' + c - 0x19));
                at += 6;
            }
            _ => return out,
        }
    }
}

/// What the reader side of a raw HTTP/2 connection saw.
#[derive(Default)]
struct Seen {
    /// The server's SETTINGS arrived and our ACK is queued.
    settings: AtomicBool,
    closed: AtomicBool,
    goaway: AtomicU64,
    resets: AtomicU64,
    responses: AtomicU64,
    /// The first answer, encoded by [`H2Answer`] for stream 1 only.
    first: std::sync::Mutex<Option<H2Answer>>,
}

/// A raw h2c connection: a writer task fed through a channel (so the reader can ACK the
/// server's SETTINGS) and a reader task recording what comes back.
pub struct RawH2 {
    tx: mpsc::Sender<Vec<u8>>,
    seen: Arc<Seen>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<u64>,
}

impl RawH2 {
    pub async fn connect(addr: SocketAddr) -> Result<RawH2> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let seen = Arc::new(Seen::default());
        let writer = tokio::spawn(async move {
            let mut written = 0u64;
            while let Some(bytes) = rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
                written += bytes.len() as u64;
            }
            written
        });
        let (ack, record) = (tx.clone(), seen.clone());
        let reader = tokio::spawn(async move {
            let mut head = [0u8; 9];
            loop {
                if rd.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let code = |at: usize| {
                    payload
                        .get(at..at + 4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                };
                let answer = match kind {
                    SETTINGS if flags & ACK == 0 => {
                        let _ = ack.try_send(frame(SETTINGS, ACK, 0, &[]));
                        record.settings.store(true, Ordering::SeqCst);
                        None
                    }
                    HEADERS => {
                        record.responses.fetch_add(1, Ordering::SeqCst);
                        let status = response_status(&payload);
                        Some(if status == 0 {
                            H2Answer::Response
                        } else {
                            H2Answer::Status(status)
                        })
                    }
                    RST_STREAM => {
                        record.resets.fetch_add(1, Ordering::SeqCst);
                        Some(H2Answer::Reset(code(0)))
                    }
                    GOAWAY => {
                        record
                            .goaway
                            .store(u64::from(code(4)) + 1, Ordering::SeqCst);
                        Some(H2Answer::GoAway(code(4)))
                    }
                    _ => None,
                };
                if let Some(a) = answer.filter(|a| stream == 1 || matches!(a, H2Answer::GoAway(_)))
                {
                    let mut first = record.first.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(a);
                }
            }
            record.closed.store(true, Ordering::SeqCst);
            let mut first = record.first.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(H2Answer::Closed);
        });
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        tx.send(hello)
            .await
            .map_err(|_| anyhow!("{addr}: closed at once"))?;
        // Our ACK goes out before anything else we send: an ACK landing between a HEADERS
        // frame and its CONTINUATION would be a protocol error of ours.
        let s = seen.clone();
        eventually_matches(
            "the server's SETTINGS",
            PATIENCE,
            || async { Ok(s.settings.load(Ordering::SeqCst)) },
            |&b| b,
        )
        .await?;
        Ok(RawH2 {
            tx,
            seen,
            reader,
            writer,
        })
    }

    /// Whether the connection has ended (read side).
    pub fn closed(&self) -> bool {
        self.seen.closed.load(Ordering::SeqCst)
    }

    /// Queues bytes; false once the connection is gone.
    pub async fn send(&self, bytes: Vec<u8>) -> bool {
        !self.seen.closed.load(Ordering::SeqCst) && self.tx.send(bytes).await.is_ok()
    }

    pub fn goaway(&self) -> Option<u32> {
        match self.seen.goaway.load(Ordering::SeqCst) {
            0 => None,
            n => Some((n - 1) as u32),
        }
    }

    /// Waits (bounded) for the first answer on stream 1.
    pub async fn first(&self) -> Result<H2Answer> {
        eventually_matches(
            "an answer on stream 1",
            PATIENCE,
            || async {
                Ok(self
                    .seen
                    .first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone())
            },
            Option::is_some,
        )
        .await?
        .ok_or_else(|| anyhow!("no answer"))
    }

    /// Closes our side; the bytes written.
    pub async fn finish(self) -> u64 {
        drop(self.tx);
        self.reader.abort();
        self.writer.await.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_status_forms() {
        assert_eq!(response_status(&[0x88]), 200);
        assert_eq!(response_status(&[0x08, 3, b'4', b'3', b'1']), 431);
        // RFC 7541 C.4.1's neighbour: "302" Huffman coded is 0x64 0x02.
        assert_eq!(response_status(&[0x48, 0x82, 0x64, 0x02]), 302);
    }

    #[test]
    fn hpack_integers_as_rfc_7541_c_1() {
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 10);
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [10, 31, 154, 10]);
    }
}

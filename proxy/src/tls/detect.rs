//! TLS or plaintext? Envoy's `tls_inspector` for PERMISSIVE ports: the first bytes of a
//! connection are peeked (never consumed, so the TLS handshake or the plaintext protocol reads
//! them afterwards) and a complete ClientHello selects `transport_protocol: tls`; anything
//! else selects `raw_buffer`.
//!
//! The ClientHello is reassembled across TLS records and TCP segments (a hello split over
//! several records is legal, and a parser reading only the first record can be fooled:
//! RUSTSEC-2024-0399), up to [`MAX_CLIENT_HELLO`] bytes. SNI and ALPN are read off it, so the
//! gateway can route on SNI with the same code.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest ClientHello handshake message accepted (Envoy's `max_client_hello_size` default).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// A TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// Largest TLS plaintext record payload (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Which filter chain a connection belongs to (Envoy's `transport_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A complete TLS ClientHello arrived: `tls`.
    Tls,
    /// Anything else: `raw_buffer`.
    RawBuffer,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// TLS or plaintext.
    pub transport: Transport,
    /// The SNI host name of the ClientHello, if any.
    pub sni: Option<String>,
    /// The ALPN protocols the client offered, in its order.
    pub alpn: Vec<Vec<u8>>,
    /// The deadline passed before a decision could be made from the bytes (a server-first
    /// protocol, a slow client): the connection is treated as plaintext, as Envoy does with
    /// `continue_on_listener_filters_timeout`.
    pub timed_out: bool,
}

impl Detected {
    fn raw(timed_out: bool) -> Detected {
        Detected {
            transport: Transport::RawBuffer,
            sni: None,
            alpn: Vec::new(),
            timed_out,
        }
    }
}

/// The ClientHello fields we read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// `server_name` (host_name type), if present and valid UTF-8.
    pub sni: Option<String>,
    /// `application_layer_protocol_negotiation`, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Could still become a ClientHello: wait for more bytes.
    NeedMore,
    /// Not a TLS ClientHello (or a malformed or oversized one).
    NotTls,
    /// A complete ClientHello.
    ClientHello(ClientHello),
}

/// Peeks at `stream` until its first bytes decide TLS or plaintext, or `timeout` passes.
/// Nothing is consumed. Errors are those of the socket.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 1024];
    let mut seen = 0;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => return Ok(Detected::raw(true)),
        };
        if n == 0 {
            // Closed before sending anything decisive: nothing to inspect.
            return Ok(Detected::raw(false));
        }
        match parse(&buf[..n]) {
            Parse::NotTls => return Ok(Detected::raw(false)),
            Parse::ClientHello(hello) => {
                return Ok(Detected {
                    transport: Transport::Tls,
                    sni: hello.sni,
                    alpn: hello.alpn,
                    timed_out: false,
                });
            }
            Parse::NeedMore => {}
        }
        if n == buf.len() {
            // The buffer is full: give the next peek room (parse refuses past the limit).
            let grown = (buf.len() * 2).min(max_peek());
            buf.resize(grown, 0);
        } else if n == seen {
            // `peek` returns at once while unread bytes wait; without a pause this would spin
            // until the next segment arrives.
            if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                .await
                .is_err()
            {
                return Ok(Detected::raw(true));
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        seen = n;
    }
}

/// The most bytes a ClientHello of [`MAX_CLIENT_HELLO`] can take, record headers included.
fn max_peek() -> usize {
    let records = MAX_CLIENT_HELLO.div_ceil(MAX_RECORD) + 1;
    MAX_CLIENT_HELLO + 4 + records * RECORD_HEADER
}

/// Decides on `bytes`, the first bytes of a connection.
pub fn parse(bytes: &[u8]) -> Parse {
    // Reassemble the handshake layer from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut rest = bytes;
    let mut needed: Option<usize> = None;
    loop {
        if let Some(total) = needed
            && handshake.len() >= total
        {
            break;
        }
        if rest.is_empty() {
            return Parse::NeedMore;
        }
        match record_header(rest) {
            Header::NeedMore => return Parse::NeedMore,
            Header::NotTls => return Parse::NotTls,
            Header::Ok(len) => {
                let Some(payload) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
                    // Take what is there: the handshake header may already decide.
                    handshake.extend_from_slice(&rest[RECORD_HEADER.min(rest.len())..]);
                    return match handshake_header(&handshake) {
                        Some(Err(())) => Parse::NotTls,
                        _ => Parse::NeedMore,
                    };
                };
                handshake.extend_from_slice(payload);
                rest = &rest[RECORD_HEADER + len..];
            }
        }
        match handshake_header(&handshake) {
            None => {}
            Some(Err(())) => return Parse::NotTls,
            Some(Ok(total)) => needed = Some(total),
        }
    }
    let total = needed.unwrap_or(0);
    match client_hello(&handshake[4..total]) {
        Some(hello) => Parse::ClientHello(hello),
        None => Parse::NotTls,
    }
}

enum Header {
    NeedMore,
    NotTls,
    Ok(usize),
}

/// A handshake record header: content type 22, version 3.x, a non-empty legal length.
fn record_header(b: &[u8]) -> Header {
    if b[0] != CONTENT_HANDSHAKE {
        return Header::NotTls;
    }
    if b.len() >= 2 && b[1] != 0x03 {
        return Header::NotTls;
    }
    if b.len() >= 3 && b[2] > 0x04 {
        return Header::NotTls;
    }
    if b.len() < RECORD_HEADER {
        return Header::NeedMore;
    }
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if len == 0 || len > MAX_RECORD {
        return Header::NotTls;
    }
    Header::Ok(len)
}

/// `Some(Ok(4 + body length))` once the 4-byte handshake header is there and announces a
/// ClientHello within the limit; `Some(Err)` if it is something else.
fn handshake_header(h: &[u8]) -> Option<Result<usize, ()>> {
    let first = *h.first()?;
    if first != HANDSHAKE_CLIENT_HELLO {
        return Some(Err(()));
    }
    if h.len() < 4 {
        return None;
    }
    let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
    if len > MAX_CLIENT_HELLO {
        return Some(Err(()));
    }
    Some(Ok(4 + len))
}

/// A cursor over a byte slice that never panics: every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The body of a ClientHello (RFC 8446 §4.1.2; TLS 1.2's is the same up to extensions).
fn client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let version = r.u16()?;
    if version >> 8 != 0x03 {
        return None;
    }
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        // A hello without extensions (SSLv3-era TLS 1.0): still TLS.
        return Some(hello);
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME => hello.sni = server_name(data),
            EXT_ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

fn server_name(data: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            return std::str::from_utf8(name).ok().map(str::to_owned);
        }
    }
    None
}

fn alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut list = Reader(Reader(data).vec16()?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        out.push(list.vec8()?.to_vec());
    }
    Some(out)
}

/// ClientHello bytes for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    #![allow(clippy::cast_possible_truncation)]

    /// A ClientHello handshake message (type + length + body) with `sni` and `alpn`.
    pub(crate) fn hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        let mut exts = Vec::new();
        let name = sni.as_bytes();
        let mut sni_list = vec![0u8];
        sni_list.extend((name.len() as u16).to_be_bytes());
        sni_list.extend(name);
        let mut sni_ext = (sni_list.len() as u16).to_be_bytes().to_vec();
        sni_ext.extend(sni_list);
        exts.extend(0u16.to_be_bytes());
        exts.extend((sni_ext.len() as u16).to_be_bytes());
        exts.extend(sni_ext);
        let mut protos = Vec::new();
        for p in alpn {
            protos.push(p.len() as u8);
            protos.extend(p.as_bytes());
        }
        let mut alpn_ext = (protos.len() as u16).to_be_bytes().to_vec();
        alpn_ext.extend(protos);
        exts.extend(16u16.to_be_bytes());
        exts.extend((alpn_ext.len() as u16).to_be_bytes());
        exts.extend(alpn_ext);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![1u8];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// `msg` cut into records of at most `chunk` bytes.
    pub(crate) fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in msg.chunks(chunk) {
            out.extend([0x16, 0x03, 0x01]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    /// A ClientHello for `sni` and `alpn` in one TLS record.
    pub(crate) fn hello_records(sni: &str, alpn: &[&str]) -> Vec<u8> {
        records(&hello(sni, alpn), 1 << 14)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::tests_support::{hello, records};
    use super::*;

    #[test]
    fn one_record_hello_gives_sni_and_alpn() {
        let bytes = records(&hello("outbound_.80_._.a.b.svc", &["istio", "h2"]), 1 << 14);
        assert_eq!(
            parse(&bytes),
            Parse::ClientHello(ClientHello {
                sni: Some("outbound_.80_._.a.b.svc".into()),
                alpn: vec![b"istio".to_vec(), b"h2".to_vec()],
            })
        );
    }

    #[test]
    fn hello_split_over_records_is_reassembled() {
        let msg = hello("split.example", &["h2"]);
        for chunk in [1, 3, 7, 50] {
            let bytes = records(&msg, chunk);
            match parse(&bytes) {
                Parse::ClientHello(h) => assert_eq!(h.sni.as_deref(), Some("split.example")),
                other => panic!("chunk {chunk}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_needs_more_and_never_panics() {
        let bytes = records(&hello("p.example", &["h2"]), 20);
        for end in 1..bytes.len() {
            assert_eq!(parse(&bytes[..end]), Parse::NeedMore, "prefix {end}");
        }
    }

    #[test]
    fn plaintext_is_decided_on_the_first_byte() {
        assert_eq!(parse(b"G"), Parse::NotTls);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse(b"PRI * HTTP/2.0"), Parse::NotTls);
        assert_eq!(parse(&[0x16, 0x02]), Parse::NotTls);
        assert_eq!(parse(&[0x16, 0x03, 0x09]), Parse::NotTls);
        // A handshake record that is not a ClientHello (a ServerHello).
        assert_eq!(parse(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02]), Parse::NotTls);
        // A zero-length record.
        assert_eq!(parse(&[0x16, 0x03, 0x01, 0x00, 0x00]), Parse::NotTls);
    }

    #[test]
    fn oversized_or_malformed_hello_is_not_tls() {
        // Announces more than the limit.
        assert_eq!(
            parse(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x02, 0x00, 0x00]),
            Parse::NotTls
        );
        // Complete but truncated body.
        let mut msg = hello("x", &[]);
        msg.truncate(40);
        msg[1..4].copy_from_slice(&[0, 0, 36]);
        assert_eq!(parse(&records(&msg, 1 << 14)), Parse::NotTls);
        // A non-handshake record in the middle of a split hello.
        let full = hello("y", &["h2"]);
        let mut bytes = records(&full[..10], 10);
        bytes.extend([0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        assert_eq!(parse(&bytes), Parse::NotTls);
    }
}

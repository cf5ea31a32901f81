//! Header rewriting on the way through, as Envoy's HTTP connection manager and router do:
//! hop-by-hop headers removed, `x-request-id` generated when missing, `x-forwarded-proto`
//! set, `x-forwarded-client-cert` per `forward_client_cert_details`.

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use rand::Rng;

use crate::config::{ClientCertDetails, ForwardClientCert};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the ones
/// Envoy strips too.
/// (`te` is handled apart: `te: trailers` is kept, gRPC needs it end to end.)
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
];

/// Most header fields a request may carry: Envoy's `max_headers_count` default, which straitd
/// leaves unset. hyper enforces it on HTTP/1.1 (431 before the request exists); HTTP/2 has
/// only a size limit, so [`too_many_headers`] checks each request.
pub const MAX_HEADERS_COUNT: usize = 100;

/// Whether `headers` holds more fields than [`MAX_HEADERS_COUNT`] (every value counts).
pub fn too_many_headers(headers: &HeaderMap) -> bool {
    headers.len() > MAX_HEADERS_COUNT
}

/// `x-forwarded-client-cert`.
pub const XFCC: &str = "x-forwarded-client-cert";
/// `x-request-id`.
pub const REQUEST_ID: &str = "x-request-id";

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    let trailers = headers.get_all("te").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove("te");
    if trailers {
        headers.insert("te", HeaderValue::from_static("trailers"));
    }
}

/// Adds `x-request-id` (a random UUID v4) unless the request carries one; returns it.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(v) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        return v.to_string();
    }
    let id = uuid_v4();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, v);
    }
    id
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The downstream client certificate, as XFCC describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// Hex SHA-256 of the leaf's DER.
    pub hash: String,
    /// Its subject (empty for mesh workload certificates).
    pub subject: String,
    /// Its URI SAN (the SPIFFE id).
    pub uri: String,
}

/// Applies `forward_client_cert_details`: `mtls` is the downstream connection's client
/// certificate (None: plaintext or no certificate), `by` our own identity.
pub fn forward_client_cert(
    headers: &mut HeaderMap,
    mode: ForwardClientCert,
    details: ClientCertDetails,
    mtls: Option<&ClientCert>,
    by: Option<&str>,
) {
    let ours = |c: &ClientCert| {
        // Envoy's field order: By, Hash, Cert, Chain, Subject, URI, DNS.
        let mut parts = Vec::new();
        if let Some(by) = by {
            parts.push(format!("By={by}"));
        }
        parts.push(format!("Hash={}", c.hash));
        if details.subject {
            parts.push(format!("Subject=\"{}\"", c.subject.replace('"', "\\\"")));
        }
        if details.uri && !c.uri.is_empty() {
            parts.push(format!("URI={}", c.uri));
        }
        parts.join(";")
    };
    match (mode, mtls) {
        (ForwardClientCert::AlwaysForwardOnly, _) | (ForwardClientCert::ForwardOnly, Some(_)) => {}
        (ForwardClientCert::AppendForward, Some(c)) => {
            let value = match headers.get(XFCC).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{}", ours(c)),
                _ => ours(c),
            };
            set(headers, &value);
        }
        (ForwardClientCert::SanitizeSet, Some(c)) => set(headers, &ours(c)),
        // Sanitize, and every mode on a connection without a client certificate: a header
        // the client wrote itself must not reach the application as if we had vouched for it.
        _ => {
            headers.remove(XFCC);
        }
    }
}

fn set(headers: &mut HeaderMap, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(XFCC, v);
        }
        Err(_) => {
            headers.remove(XFCC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details() -> ClientCertDetails {
        ClientCertDetails {
            subject: true,
            uri: true,
            dns: true,
            ..Default::default()
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-kept"));
        assert_eq!(h.get("te"), Some(&HeaderValue::from_static("trailers")));
    }

    #[test]
    fn header_count_bound_is_envoys() {
        let mut h = HeaderMap::new();
        for i in 0..MAX_HEADERS_COUNT {
            h.append("x-h", HeaderValue::from(i));
        }
        assert!(!too_many_headers(&h));
        h.append("x-other", HeaderValue::from_static("1"));
        assert!(too_many_headers(&h));
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(ensure_request_id(&mut h), id);
    }

    #[test]
    fn xfcc_append_forward_as_istio() {
        let cert = ClientCert {
            hash: "ab".into(),
            subject: String::new(),
            uri: "spiffe://cluster.local/ns/default/sa/sleep".into(),
        };
        let by = "spiffe://cluster.local/ns/default/sa/httpbin";
        let mut h = HeaderMap::new();
        forward_client_cert(
            &mut h,
            ForwardClientCert::AppendForward,
            details(),
            Some(&cert),
            Some(by),
        );
        assert_eq!(
            h.get(XFCC).and_then(|v| v.to_str().ok()),
            Some(
                "By=spiffe://cluster.local/ns/default/sa/httpbin;Hash=ab;Subject=\"\";\
                 URI=spiffe://cluster.local/ns/default/sa/sleep"
            )
        );
        // Plaintext: a forged header is removed.
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("URI=spiffe://forged"));
        forward_client_cert(
            &mut h,
            ForwardClientCert::AppendForward,
            details(),
            None,
            Some(by),
        );
        assert!(!h.contains_key(XFCC));
    }
}

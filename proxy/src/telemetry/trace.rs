//! The trace id of a request, for the access log: from W3C `traceparent`, else B3's
//! `x-b3-traceid`, else the single `b3` header. The headers themselves pass through the proxy
//! untouched (as Envoy's do with no tracer configured); only a value of the exact shape is
//! logged, so a hostile header can neither break a log line nor bloat it.

use hyper::HeaderMap;

/// The trace id (lowercase hex, 16 or 32 digits), if a trace header carries a well-formed one.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    text("traceparent")
        .and_then(traceparent)
        .or_else(|| text("x-b3-traceid").filter(|id| b3_id(id)))
        .or_else(|| text("b3").and_then(b3_single))
}

/// `version-traceid-parentid-flags`: 2, 32, 16 and 2 hex digits (55 bytes); an all-zero
/// trace id is invalid.
fn traceparent(v: &str) -> Option<&str> {
    let v = v.trim();
    if v.len() != 55 {
        return None;
    }
    let mut parts = v.split('-');
    let (version, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && id.bytes().any(|b| b != b'0');
    ok.then_some(id)
}

/// `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`; a bare sampling decision has no id.
fn b3_single(v: &str) -> Option<&str> {
    let id = v.trim().split('-').next()?;
    b3_id(id).then_some(id)
}

fn b3_id(id: &str) -> bool {
    (hex(id, 16) || hex(id, 32)) && id.bytes().any(|b| b != b'0')
}

fn hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
        h
    }

    #[test]
    fn trace_ids_by_precedence_and_shape() {
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&with("traceparent", w3c)),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut h = with("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7");
        h.insert(
            "b3",
            HeaderValue::from_static("a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        );
        assert_eq!(trace_id(&h), Some("80f198ee56343ba864fe8b2a57d3eff7"));
        h.insert("traceparent", HeaderValue::from_static(w3c));
        assert_eq!(trace_id(&h), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id(&with(
                "b3",
                "a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90"
            )),
            Some("a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(&with("b3", "1")), None);
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }

    #[test]
    fn malformed_trace_headers_are_not_logged() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "",
        ] {
            assert_eq!(trace_id(&with("traceparent", bad)), None, "{bad}");
        }
        let long = "a".repeat(50_000);
        assert_eq!(trace_id(&with("traceparent", &long)), None);
        assert_eq!(trace_id(&with("x-b3-traceid", &long)), None);
        assert_eq!(trace_id(&with("b3", &long)), None);
        assert_eq!(trace_id(&with("x-b3-traceid", "abc\"def")), None);
        assert_eq!(trace_id(&with("x-b3-traceid", "0000000000000000")), None);
    }
}

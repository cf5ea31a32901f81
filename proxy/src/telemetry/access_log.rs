//! Access logs: one structured `tracing` event per request or connection on target `access`,
//! with Envoy's fields (`%START_TIME%`, `%REQ(:METHOD)%`, `%RESPONSE_CODE%`,
//! `%RESPONSE_FLAGS%`, `%BYTES_RECEIVED%`, `%DURATION%`, `%UPSTREAM_HOST%`, …).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One finished request or connection.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// When it started.
    pub start: Option<SystemTime>,
    /// The listener.
    pub listener: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, `tcp`.
    pub protocol: &'a str,
    /// HTTP method (empty for TCP).
    pub method: &'a str,
    /// HTTP path (empty for TCP).
    pub path: &'a str,
    /// Response code (0 for TCP).
    pub response_code: u16,
    /// Envoy's response flags (`-`: none).
    pub response_flags: &'a str,
    /// Bytes from the downstream.
    pub bytes_received: u64,
    /// Bytes to the downstream.
    pub bytes_sent: u64,
    /// From start to the last byte.
    pub duration: Duration,
    /// The upstream endpoint.
    pub upstream_host: Option<&'a str>,
    /// The upstream cluster.
    pub upstream_cluster: Option<&'a str>,
    /// The downstream's address.
    pub downstream_peer: Option<SocketAddr>,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// The trace id (`traceparent`, B3), when well-formed.
    pub trace_id: Option<&'a str>,
    /// The downstream's verified SPIFFE id.
    pub peer_principal: Option<&'a str>,
}

/// Emits the event.
pub fn log(e: &Entry<'_>) {
    tracing::info!(
        target: "access",
        start_time = %e.start.map(rfc3339).unwrap_or_default(),
        listener = e.listener,
        method = e.method,
        path = e.path,
        protocol = e.protocol,
        response_code = e.response_code,
        response_flags = e.response_flags,
        bytes_received = e.bytes_received,
        bytes_sent = e.bytes_sent,
        duration_ms = e.duration.as_millis() as u64,
        upstream_host = e.upstream_host.unwrap_or("-"),
        upstream_cluster = e.upstream_cluster.unwrap_or("-"),
        downstream_peer = %e.downstream_peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        x_request_id = e.request_id.unwrap_or("-"),
        trace_id = e.trace_id.unwrap_or("-"),
        peer_principal = e.peer_principal.unwrap_or("-"),
    );
}

/// `2026-11-23T14:29:54.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_444_194_123);
        assert_eq!(rfc3339(t), "2026-11-23T14:29:54.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}

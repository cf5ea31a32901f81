//! The one error type of the data path (pingora's lesson): each failure says who is to blame
//! and whether a retry is safe, so retries, outlier detection and access logs read those facts
//! off the value instead of parsing strings. Each also knows the local reply Envoy would send
//! for it (status, body, response flag).

use hyper::StatusCode;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The upstream endpoint (refused, reset, timed out, bad certificate).
    Upstream,
    /// The downstream client (bad request, refused by policy, gone).
    Downstream,
    /// This proxy's config or state (no route, no cluster, no endpoints).
    Internal,
}

/// Why a connection or request could not be proxied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No virtual host or route matched (Envoy `NR`).
    #[error("no route matched")]
    NoRoute,
    /// The route or tcp_proxy names a cluster this proxy does not have (Envoy `NC`).
    #[error("cluster {0:?} is not known")]
    NoCluster(String),
    /// The cluster has no endpoint to send to (Envoy `UH`).
    #[error("cluster {0:?} has no healthy upstream")]
    NoHealthyUpstream(String),
    /// TCP connect failed or timed out (Envoy `UF`).
    #[error("connecting to {endpoint} of {cluster:?}: {reason}")]
    ConnectFailed {
        /// The cluster.
        cluster: String,
        /// The endpoint.
        endpoint: String,
        /// The socket error, or "timeout".
        reason: String,
    },
    /// The TLS handshake with the upstream failed (Envoy `UF` with a TLS transport failure).
    #[error("TLS to {endpoint} of {cluster:?}: {reason}")]
    UpstreamTls {
        /// The cluster.
        cluster: String,
        /// The endpoint.
        endpoint: String,
        /// The handshake error.
        reason: String,
    },
    /// The upstream connection broke before a response arrived (Envoy `UC`/`UR`).
    #[error("upstream reset before the response: {0}")]
    UpstreamReset(String),
    /// The route timeout expired before the response (Envoy `UT`).
    #[error("upstream request timeout")]
    Timeout,
    /// RBAC refused the request or connection.
    #[error("RBAC: access denied (policy {policy:?})")]
    RbacDenied {
        /// The DENY policy that matched, if any.
        policy: Option<String>,
    },
    /// The request is malformed (bad path, escaped slash refused).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The cluster's limits are reached (Envoy `UO`).
    #[error("cluster {0:?} is over its limits")]
    Overflow(String),
    /// Something this proxy cannot do for this config (e.g. an unsupported SAN matcher).
    #[error("{0}")]
    Unsupported(String),
}

impl ProxyError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamReset(_)
            | ProxyError::Timeout => Blame::Upstream,
            ProxyError::RbacDenied { .. } | ProxyError::BadRequest(_) => Blame::Downstream,
            ProxyError::NoRoute
            | ProxyError::NoCluster(_)
            | ProxyError::NoHealthyUpstream(_)
            | ProxyError::Overflow(_)
            | ProxyError::Unsupported(_) => Blame::Internal,
        }
    }

    /// Whether sending the request again (to another endpoint) cannot do harm: true when the
    /// upstream never saw it (connect and handshake failures, Envoy's `connect-failure` and
    /// `reset-before-request`).
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. } | ProxyError::UpstreamTls { .. }
        )
    }

    /// The status of the local reply, as Envoy answers.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::RbacDenied { .. } => StatusCode::FORBIDDEN,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoCluster(_)
            | ProxyError::NoHealthyUpstream(_)
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamReset(_)
            | ProxyError::Overflow(_)
            | ProxyError::Unsupported(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The body of the local reply, Envoy's wording (tests and tools grep for it).
    pub fn body(&self) -> String {
        match self {
            ProxyError::NoRoute | ProxyError::NoCluster(_) => String::new(),
            ProxyError::NoHealthyUpstream(_) => "no healthy upstream".into(),
            ProxyError::ConnectFailed { reason, .. } => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection failure, transport failure reason: {reason}"
            ),
            ProxyError::UpstreamTls { reason, .. } => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection failure, transport failure reason: TLS error: {reason}"
            ),
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection termination"
                    .into()
            }
            ProxyError::Timeout => "upstream request timeout".into(),
            ProxyError::RbacDenied { .. } => "RBAC: access denied".into(),
            ProxyError::BadRequest(_) => "Bad Request".into(),
            ProxyError::Overflow(_) => "upstream connect error or disconnect/reset before \
                                        headers. reset reason: overflow"
                .into(),
            ProxyError::Unsupported(_) => "unsupported configuration".into(),
        }
    }

    /// Envoy's response flag, for access logs.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NR",
            ProxyError::NoCluster(_) => "NC",
            ProxyError::NoHealthyUpstream(_) => "UH",
            ProxyError::ConnectFailed { .. } | ProxyError::UpstreamTls { .. } => "UF",
            ProxyError::UpstreamReset(_) => "UC",
            ProxyError::Timeout => "UT",
            ProxyError::RbacDenied { .. } => "RBAC",
            ProxyError::BadRequest(_) => "DPE",
            ProxyError::Overflow(_) => "UO",
            ProxyError::Unsupported(_) => "NC",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_retry_and_reply() {
        let connect = ProxyError::ConnectFailed {
            cluster: "c".into(),
            endpoint: "1.2.3.4:80".into(),
            reason: "refused".into(),
        };
        assert_eq!(connect.blame(), Blame::Upstream);
        assert!(connect.retry_safe());
        assert_eq!(connect.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!ProxyError::Timeout.retry_safe());
        assert_eq!(ProxyError::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let denied = ProxyError::RbacDenied { policy: None };
        assert_eq!(denied.blame(), Blame::Downstream);
        assert_eq!(denied.body(), "RBAC: access denied");
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ProxyError::NoHealthyUpstream("c".into()).body(),
            "no healthy upstream"
        );
    }
}

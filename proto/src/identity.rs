//! Workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing follows the SPIFFE ID spec (lower-case `spiffe` scheme, trust domain of
//! `[a-z0-9.-_]`, no query, fragment, user info, port, percent-encoding, empty, `.` or `..`
//! segments, at most 2048 bytes) and Kubernetes' name rules: the namespace is a DNS-1123 label,
//! the service account a DNS-1123 subdomain. A valid [`SpiffeId`] displays back to the exact text
//! it was parsed from.

use std::fmt;
use std::str::FromStr;

use crate::rules;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Longest SPIFFE ID, in bytes (SPIFFE spec).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain, in bytes (SPIFFE spec).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a SPIFFE ID, or one of its parts, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The ID is longer than [`MAX_SPIFFE_ID_LEN`] bytes; `excerpt` quotes its beginning.
    #[error("SPIFFE ID starting {excerpt:?} is {len} bytes long, over the 2048-byte limit")]
    TooLong {
        /// The first characters of the input.
        excerpt: String,
        /// The input's length in bytes.
        len: usize,
    },
    /// The ID holds a NUL or another control character.
    #[error("SPIFFE ID {input:?} contains a control character")]
    ControlCharacter {
        /// The rejected input.
        input: String,
    },
    /// The ID holds a `%`: percent-encoding is not allowed in SPIFFE IDs.
    #[error("SPIFFE ID {input:?} contains '%': percent-encoding is not allowed")]
    PercentEncoded {
        /// The rejected input.
        input: String,
    },
    /// The ID does not start with the lower-case `spiffe://`.
    #[error("SPIFFE ID {input:?} does not start with \"spiffe://\"")]
    WrongScheme {
        /// The rejected input.
        input: String,
    },
    /// The ID carries a query (`?`) or a fragment (`#`).
    #[error("SPIFFE ID {input:?} carries a query or fragment")]
    QueryOrFragment {
        /// The rejected input.
        input: String,
    },
    /// The authority carries user info (`@`) or a port (`:`).
    #[error("SPIFFE ID {input:?} carries user info or a port in its trust domain")]
    UserInfoOrPort {
        /// The rejected input.
        input: String,
    },
    /// The trust domain is empty, too long, or holds a character outside `[a-z0-9.-_]`.
    #[error("trust domain {trust_domain:?} {reason}")]
    TrustDomain {
        /// The rejected trust domain.
        trust_domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path has an empty, `.` or `..` segment, or a trailing slash.
    #[error("SPIFFE ID {input:?} has an empty, '.' or '..' path segment")]
    BadSegment {
        /// The rejected input.
        input: String,
    },
    /// The path is not exactly `/ns/<namespace>/sa/<service-account>`.
    #[error("SPIFFE ID {input:?} does not have the path /ns/<namespace>/sa/<service-account>")]
    WrongPath {
        /// The rejected input.
        input: String,
    },
    /// The namespace is not a DNS-1123 label.
    #[error("namespace {namespace:?} is not a DNS-1123 label: it {reason}")]
    Namespace {
        /// The rejected namespace.
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The service account is not a DNS-1123 subdomain.
    #[error("service account {service_account:?} is not a DNS-1123 subdomain: it {reason}")]
    ServiceAccount {
        /// The rejected service account.
        service_account: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A workload's identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Only valid IDs can be built, through [`SpiffeId::new`] or [`str::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, checking each of them.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        check_trust_domain(&id.trust_domain)?;
        check_namespace(&id.namespace)?;
        check_service_account(&id.service_account)?;
        Ok(id)
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = || s.to_owned();
        check_text(s)?;
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::WrongScheme { input: input() })?;
        if rest.contains(['?', '#']) {
            return Err(IdentityError::QueryOrFragment { input: input() });
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains(['@', ':']) {
            return Err(IdentityError::UserInfoOrPort { input: input() });
        }
        check_trust_domain(authority)?;
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|seg| matches!(*seg, "" | "." | "..")) {
            return Err(IdentityError::BadSegment { input: input() });
        }
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => SpiffeId::new(authority, *ns, *sa),
            _ => Err(IdentityError::WrongPath { input: input() }),
        }
    }
}

/// Length, control characters and percent-encoding, checked before anything else.
fn check_text(s: &str) -> Result<(), IdentityError> {
    if s.len() > MAX_SPIFFE_ID_LEN {
        let excerpt = rules::excerpt(s);
        return Err(IdentityError::TooLong {
            excerpt,
            len: s.len(),
        });
    }
    if rules::has_control(s) {
        return Err(IdentityError::ControlCharacter {
            input: s.to_owned(),
        });
    }
    if s.contains('%') {
        return Err(IdentityError::PercentEncoded {
            input: s.to_owned(),
        });
    }
    Ok(())
}

fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let reason = if td.is_empty() {
        "is empty"
    } else if td.len() > MAX_TRUST_DOMAIN_LEN {
        "is longer than 255 bytes"
    } else if td.bytes().any(|b| b.is_ascii_uppercase()) {
        "contains an upper-case letter"
    } else if !td.bytes().all(is_trust_domain_byte) {
        "contains a character outside [a-z0-9.-_]"
    } else {
        return Ok(());
    };
    Err(IdentityError::TrustDomain {
        trust_domain: td.to_owned(),
        reason,
    })
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn check_namespace(ns: &str) -> Result<(), IdentityError> {
    rules::check_label(ns).map_err(|reason| IdentityError::Namespace {
        namespace: ns.to_owned(),
        reason,
    })
}

fn check_service_account(sa: &str) -> Result<(), IdentityError> {
    rules::check_subdomain(sa, rules::MAX_SUBDOMAIN_LEN).map_err(|reason| {
        IdentityError::ServiceAccount {
            service_account: sa.to_owned(),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips() {
        let long_sa = ["a"; 127].join(".");
        let cases: &[(&str, &str, &str)] = &[
            (DEFAULT_TRUST_DOMAIN, "default", "reviews"),
            (
                "cluster.local",
                "istio-system",
                "istio-eastwestgateway-service-account",
            ),
            ("example_corp.io", "ns-1", "sa.with.dots"),
            ("td", "0", "1"),
            ("a-b.c_d", &"n".repeat(63), &long_sa),
        ];
        for &(td, ns, sa) in cases {
            let text = format!("spiffe://{td}/ns/{ns}/sa/{sa}");
            let parsed: SpiffeId = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(parsed, SpiffeId::new(td, ns, sa).unwrap());
            assert_eq!(
                (
                    parsed.trust_domain(),
                    parsed.namespace(),
                    parsed.service_account()
                ),
                (td, ns, sa)
            );
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn rejects_hostile_input() {
        let too_long = format!("spiffe://cluster.local/ns/default/sa/{}", "a".repeat(2048));
        let long_td = format!("spiffe://{}/ns/default/sa/reviews", "a".repeat(256));
        let cases: &[&str] = &[
            "",
            "reviews",
            "spiffe:/cluster.local/ns/default/sa/reviews",
            "SPIFFE://cluster.local/ns/default/sa/reviews",
            "https://cluster.local/ns/default/sa/reviews",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe:///ns/default/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://cluster.local/ns//sa/reviews",
            "spiffe://cluster.local//ns/default/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/reviews/",
            "spiffe://cluster.local/ns/default/sa/reviews/extra",
            "spiffe://cluster.local/ns/default/sa",
            "spiffe://cluster.local/sa/reviews/ns/default",
            "spiffe://cluster.local/NS/default/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/reviews?x=1",
            "spiffe://cluster.local/ns/default/sa/reviews#frag",
            "spiffe://user@cluster.local/ns/default/sa/reviews",
            "spiffe://cluster.local:443/ns/default/sa/reviews",
            "spiffe://Cluster.Local/ns/default/sa/reviews",
            "spiffe://cluster%2elocal/ns/default/sa/reviews",
            "spiffe://cluster.local/ns/def%61ult/sa/reviews",
            "spiffe://cluster.local/ns/./sa/reviews",
            "spiffe://cluster.local/ns/../sa/reviews",
            "spiffe://cluster.local/ns/default/sa/reviews/..",
            "spiffe://cluster.local/ns/default/sa/rev\0iews",
            "spiffe://cluster.local/ns/default/sa/rev\niews",
            "spiffe://cluster.local/ns/default/sa/rev\u{85}iews",
            "spiffe://cluster.local/ns/default/sa/rev iews",
            " spiffe://cluster.local/ns/default/sa/reviews",
            "spiffe://clüster.local/ns/default/sa/reviews",
            "spiffe://cluster.local/ns/Default/sa/reviews",
            "spiffe://cluster.local/ns/de_fault/sa/reviews",
            "spiffe://cluster.local/ns/-default/sa/reviews",
            "spiffe://cluster.local/ns/default-/sa/reviews",
            "spiffe://cluster.local/ns/a.b/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/Reviews",
            "spiffe://cluster.local/ns/default/sa/reviews.",
            "spiffe://cluster.local/ns/default/sa/.reviews",
            "spiffe://cluster.local/ns/default/sa/a..b",
            "spiffe://cluster.local/ns/default/sa/re_views",
            "spiffe://cluster.local\\ns/default/sa/reviews",
            &format!("spiffe://cluster.local/ns/{}/sa/reviews", "n".repeat(64)),
            &format!("spiffe://cluster.local/ns/default/sa/{}", "s".repeat(254)),
            &too_long,
            &long_td,
        ];
        for &bad in cases {
            let err = bad.parse::<SpiffeId>().expect_err(bad);
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn errors_name_the_problem_and_quote_the_input() {
        let err = "spiffe://cluster.local/ns/de\0/sa/x"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"SPIFFE ID "spiffe://cluster.local/ns/de\0/sa/x" contains a control character"#
        );
        let err = "spiffe://Cluster.local/ns/a/sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"trust domain "Cluster.local" contains an upper-case letter"#
        );
        let err = SpiffeId::new("cluster.local", "a_b", "sa").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"namespace "a_b" is not a DNS-1123 label: it contains a character outside [a-z0-9-]"#
        );
        let err = "x".repeat(3000).parse::<SpiffeId>().unwrap_err();
        assert!(
            matches!(err, IdentityError::TooLong { len: 3000, .. }),
            "{err}"
        );
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn new_checks_every_part() {
        assert!(SpiffeId::new("", "default", "reviews").is_err());
        assert!(SpiffeId::new("cluster.local", "", "reviews").is_err());
        assert!(SpiffeId::new("cluster.local", "default", "").is_err());
        assert!(SpiffeId::new("cluster.local/ns/x", "default", "reviews").is_err());
        assert!(SpiffeId::new("cluster.local", "default", "a/b").is_err());
    }

    #[test]
    fn mutated_input_never_panics() {
        let seeds = [
            "spiffe://cluster.local/ns/default/sa/reviews",
            "spiffe://td/ns/a/sa/b.c",
        ];
        let mut accepted = 0;
        for text in rules::mutations(&seeds, b"/.:%@?#-_aZ \0\xff", 10_000) {
            if let Ok(id) = text.parse::<SpiffeId>() {
                assert_eq!(id.to_string(), text);
                accepted += 1;
            }
        }
        assert!(accepted > 100, "only {accepted} mutations parsed");
    }
}

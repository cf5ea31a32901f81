//! The cross-network SNI name, `outbound_.<port>_.<subset>_.<fqdn>` (Istio's AUTO_PASSTHROUGH
//! form), and the Envoy cluster name it matches, `outbound|<port>|<subset>|<fqdn>`.
//!
//! No subset is written `_` in the SNI name (`outbound_.8080_._.reviews.default.svc.cluster.local`)
//! and as an empty field in the cluster name (`outbound|8080||reviews.default.svc.cluster.local`).
//! Only the `outbound` direction exists.
//!
//! The east-west gateway feeds [`SniName::from_str`] bytes from an untrusted TLS ClientHello, so
//! it rejects anything over [`MAX_SNI_LEN`] before looking further, allocates only in proportion
//! to that bounded input, and never panics. SNI is case-insensitive: parsing lower-cases ASCII
//! letters (as do [`SniName::new`] and [`SniName::from_cluster_name`]), so `Display` always prints
//! the lower-case form.

use std::fmt;
use std::str::FromStr;

use crate::rules;

/// Longest SNI name, in bytes: the whole name must itself be a DNS name (253 bytes at most).
pub const MAX_SNI_LEN: usize = rules::MAX_SUBDOMAIN_LEN;
/// Longest Envoy cluster name accepted by [`SniName::from_cluster_name`], in bytes.
pub const MAX_CLUSTER_NAME_LEN: usize = 512;
/// Longest subset name: `<subset>_` must still be a 63-character DNS label.
pub const MAX_SUBSET_LEN: usize = rules::MAX_LABEL_LEN - 1;

/// How many bytes of an over-long byte string [`SniName::from_bytes`] looks at for its message.
const EXCERPT_BYTES: usize = 64;
const SNI_PREFIX: &str = "outbound_.";
const CLUSTER_DIRECTION: &str = "outbound";
const PORT_RANGE: &str = "is not a decimal number from 1 to 65535 without sign or leading zero";

/// Why an SNI or cluster name, or one of its parts, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SniError {
    /// The input is longer than allowed; `excerpt` quotes its beginning.
    #[error("name starting {excerpt:?} is {len} bytes long, over the {max}-byte limit")]
    TooLong {
        /// The first characters of the input.
        excerpt: String,
        /// The input's length in bytes.
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The input holds whitespace, a control character (NUL included) or a non-ASCII character.
    #[error("name {input:?} contains whitespace, a control or a non-ASCII character")]
    InvalidCharacter {
        /// The rejected input.
        input: String,
    },
    /// The name does not start with `outbound_.` (SNI) or `outbound|` (cluster).
    #[error("name {input:?} is not an outbound name (only \"outbound\" is routed)")]
    Direction {
        /// The rejected input.
        input: String,
    },
    /// A part of the name is missing.
    #[error("name {input:?} has no {part}")]
    MissingPart {
        /// The rejected input.
        input: String,
        /// The part that is missing: `port`, `subset` or `host`.
        part: &'static str,
    },
    /// The port part is not `<port>_` with a decimal port from 1 to 65535, no sign, no leading 0.
    #[error("port {port:?} {reason}")]
    Port {
        /// The rejected port text.
        port: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The subset part is not `_` or `<subset>_` with a DNS-1123 label of at most 62 characters.
    #[error("subset {subset:?} is not a DNS-1123 label of at most 62 characters: it {reason}")]
    Subset {
        /// The rejected subset text.
        subset: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host is not a DNS name: labels of 1–63 `[a-z0-9-]`, no edge `-`, no trailing dot.
    #[error("host {host:?} is not a valid DNS name: it {reason}")]
    Host {
        /// The rejected host.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The cluster name does not have exactly four `|`-separated fields.
    #[error("cluster name {input:?} is not outbound|<port>|<subset>|<host>")]
    ClusterName {
        /// The rejected input.
        input: String,
    },
}

/// A cross-network SNI name: port, optional subset and service host.
///
/// Only valid names can be built, through [`SniName::new`], [`str::parse`] or
/// [`SniName::from_cluster_name`]; all of them lower-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SniName {
    port: u16,
    subset: Option<String>,
    host: String,
}

impl SniName {
    /// Builds a name from its parts, lower-casing `subset` and `host` and checking all three,
    /// including that the resulting SNI name fits in [`MAX_SNI_LEN`].
    pub fn new(port: u16, subset: Option<&str>, host: &str) -> Result<Self, SniError> {
        if port == 0 {
            return Err(SniError::Port {
                port: "0".to_owned(),
                reason: PORT_RANGE,
            });
        }
        let subset = subset.map(str::to_ascii_lowercase);
        let host = host.to_ascii_lowercase();
        if let Some(s) = &subset {
            check_subset(s)?;
        }
        check_host(&host)?;
        let name = SniName { port, subset, host };
        let len = name.sni_len();
        if len > MAX_SNI_LEN {
            let excerpt = rules::excerpt(&name.to_string());
            return Err(SniError::TooLong {
                excerpt,
                len,
                max: MAX_SNI_LEN,
            });
        }
        Ok(name)
    }

    /// The service port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The subset (a DestinationRule subset name), if any.
    pub fn subset(&self) -> Option<&str> {
        self.subset.as_deref()
    }

    /// The service's fully qualified host name, e.g. `reviews.default.svc.cluster.local`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Parses an SNI name from raw bytes (a ClientHello's `host_name`): the length is checked
    /// before anything else, then UTF-8, then the form, as [`str::parse`] does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SniError> {
        if bytes.len() > MAX_SNI_LEN {
            let head = bytes.get(..EXCERPT_BYTES).unwrap_or(bytes);
            let excerpt = rules::excerpt(&String::from_utf8_lossy(head));
            return Err(SniError::TooLong {
                excerpt,
                len: bytes.len(),
                max: MAX_SNI_LEN,
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => s.parse(),
            Err(_) => {
                let input = String::from_utf8_lossy(bytes).into_owned();
                Err(SniError::InvalidCharacter { input })
            }
        }
    }

    /// Parses an Envoy cluster name, `outbound|<port>|<subset>|<host>` (empty subset for none).
    pub fn from_cluster_name(s: &str) -> Result<Self, SniError> {
        check_text(s, MAX_CLUSTER_NAME_LEN)?;
        let mut fields = s.split('|');
        let (Some(direction), Some(port), Some(subset), Some(host), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(SniError::ClusterName {
                input: s.to_owned(),
            });
        };
        if !direction.eq_ignore_ascii_case(CLUSTER_DIRECTION) {
            return Err(SniError::Direction {
                input: s.to_owned(),
            });
        }
        let port = parse_port(port)?;
        let subset = Some(subset).filter(|s| !s.is_empty());
        SniName::new(port, subset, host)
    }

    /// The matching Envoy cluster name, e.g. `outbound|8080|v1|reviews.default.svc.cluster.local`.
    pub fn to_cluster_name(&self) -> String {
        let subset = self.subset.as_deref().unwrap_or("");
        format!("{CLUSTER_DIRECTION}|{}|{subset}|{}", self.port, self.host)
    }

    fn sni_len(&self) -> usize {
        let port_len = self.port.to_string().len();
        let subset_len = self.subset.as_ref().map_or(0, String::len);
        SNI_PREFIX.len() + port_len + 2 + subset_len + 2 + self.host.len()
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subset = self.subset.as_deref().unwrap_or("");
        write!(f, "{SNI_PREFIX}{}_.{subset}_.{}", self.port, self.host)
    }
}

impl FromStr for SniName {
    type Err = SniError;

    /// Parses `outbound_.<port>_.<subset>_.<fqdn>`, lower-casing ASCII letters first.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_text(s, MAX_SNI_LEN)?;
        let lower = s.to_ascii_lowercase();
        let (port, subset, host) = split_sni(s, &lower)?;
        let port = port.strip_suffix('_').ok_or_else(|| SniError::Port {
            port: port.to_owned(),
            reason: "does not end with '_'",
        })?;
        let subset = subset.strip_suffix('_').ok_or_else(|| SniError::Subset {
            subset: subset.to_owned(),
            reason: "does not end with '_'",
        })?;
        SniName::new(
            parse_port(port)?,
            Some(subset).filter(|s| !s.is_empty()),
            host,
        )
    }
}

/// Splits a lower-cased SNI name into its port and subset labels (with their `_`) and its host.
fn split_sni<'a>(input: &str, lower: &'a str) -> Result<(&'a str, &'a str, &'a str), SniError> {
    let missing = |part| SniError::MissingPart {
        input: input.to_owned(),
        part,
    };
    let rest = lower
        .strip_prefix(SNI_PREFIX)
        .ok_or_else(|| SniError::Direction {
            input: input.to_owned(),
        })?;
    let next = if rest.is_empty() { "port" } else { "subset" };
    let (port, rest) = rest.split_once('.').ok_or_else(|| missing(next))?;
    let next = if rest.is_empty() { "subset" } else { "host" };
    let (subset, host) = rest.split_once('.').ok_or_else(|| missing(next))?;
    if host.is_empty() {
        return Err(missing("host"));
    }
    Ok((port, subset, host))
}

/// Length first (so nothing large is copied), then the character set.
fn check_text(s: &str, max: usize) -> Result<(), SniError> {
    if s.len() > max {
        let excerpt = rules::excerpt(s);
        return Err(SniError::TooLong {
            excerpt,
            len: s.len(),
            max,
        });
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SniError::InvalidCharacter {
            input: s.to_owned(),
        });
    }
    Ok(())
}

/// A decimal port from 1 to 65535: digits only, no sign, no leading zero.
fn parse_port(s: &str) -> Result<u16, SniError> {
    let err = || SniError::Port {
        port: s.to_owned(),
        reason: PORT_RANGE,
    };
    let digits_only = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || s.starts_with('0') {
        return Err(err());
    }
    s.parse::<u16>().map_err(|_| err())
}

fn check_subset(subset: &str) -> Result<(), SniError> {
    let reason = if subset.len() > MAX_SUBSET_LEN {
        Err("is longer than 62 characters")
    } else {
        rules::check_label(subset)
    };
    reason.map_err(|reason| SniError::Subset {
        subset: subset.to_owned(),
        reason,
    })
}

fn check_host(host: &str) -> Result<(), SniError> {
    rules::check_subdomain(host, rules::MAX_LABEL_LEN).map_err(|reason| SniError::Host {
        host: host.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests;

//! Filter chain choice, in Envoy's order of precedence: destination port, then server name
//! (exact, then the longest `*.` wildcard), then transport protocol, then ALPN. At each step
//! the chains that name the connection's value win over those that leave the field empty, and
//! the others drop out; no chain left means the default chain (or none: the connection is
//! closed).

use crate::config::{FilterChain, FilterChainMatch, Listener, TransportProtocol};
use crate::tls::{Detected, Transport};

/// The facts a chain is chosen by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The (original) destination port.
    pub port: u16,
    /// The SNI, from the TLS inspector.
    pub sni: Option<String>,
    /// TLS or plaintext (plaintext without an inspector, as Envoy's `raw_buffer`).
    pub tls: bool,
    /// The ALPN protocols offered.
    pub alpn: Vec<String>,
}

impl Facts {
    /// From the destination port and what the TLS inspector found.
    pub fn new(port: u16, detected: Option<&Detected>) -> Facts {
        match detected {
            None => Facts {
                port,
                ..Facts::default()
            },
            Some(d) => Facts {
                port,
                sni: d.sni.as_ref().map(|s| s.to_ascii_lowercase()),
                tls: d.transport == Transport::Tls,
                alpn: d
                    .alpn
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            },
        }
    }
}

/// The index of the chosen chain: `0..filter_chains.len()`, or `filter_chains.len()` for the
/// default chain.
pub fn select(listener: &Listener, facts: &Facts) -> Option<usize> {
    let all: Vec<(usize, &FilterChainMatch)> = listener
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c): (usize, &FilterChain)| (i, &c.r#match))
        .collect();
    let port = narrow(all, |m| m.destination_port.map(|p| p == facts.port));
    let named = by_server_name(port, facts.sni.as_deref());
    let transport = narrow(named, |m| {
        m.transport_protocol
            .map(|t| (t == TransportProtocol::Tls) == facts.tls)
    });
    let alpn = narrow(transport, |m| {
        (!m.application_protocols.is_empty()).then(|| {
            m.application_protocols
                .iter()
                .any(|a| facts.alpn.contains(a))
        })
    });
    match alpn.first() {
        Some((i, _)) => Some(*i),
        None => listener
            .default_filter_chain
            .as_ref()
            .map(|_| listener.filter_chains.len()),
    }
}

/// Keeps the chains whose field matches (`Some(true)`) if any, else those that leave it empty
/// (`None`).
fn narrow(
    chains: Vec<(usize, &FilterChainMatch)>,
    test: impl Fn(&FilterChainMatch) -> Option<bool>,
) -> Vec<(usize, &FilterChainMatch)> {
    let specific: Vec<_> = chains
        .iter()
        .filter(|(_, m)| test(m) == Some(true))
        .copied()
        .collect();
    if !specific.is_empty() {
        return specific;
    }
    chains
        .into_iter()
        .filter(|(_, m)| test(m).is_none())
        .collect()
}

fn by_server_name<'a>(
    chains: Vec<(usize, &'a FilterChainMatch)>,
    sni: Option<&str>,
) -> Vec<(usize, &'a FilterChainMatch)> {
    if let Some(sni) = sni {
        let exact: Vec<_> = chains
            .iter()
            .filter(|(_, m)| m.server_names.iter().any(|n| n == sni))
            .copied()
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        // The longest matching wildcard suffix wins.
        let wildcard_len = |m: &FilterChainMatch| {
            m.server_names
                .iter()
                .filter_map(|n| n.strip_prefix('*'))
                .filter(|suffix| sni.len() > suffix.len() && sni.ends_with(suffix))
                .map(str::len)
                .max()
        };
        if let Some(best) = chains.iter().filter_map(|(_, m)| wildcard_len(m)).max() {
            return chains
                .into_iter()
                .filter(|(_, m)| wildcard_len(m) == Some(best))
                .collect();
        }
    }
    chains
        .into_iter()
        .filter(|(_, m)| m.server_names.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterTarget, TcpProxy, Terminal};

    fn chain(m: FilterChainMatch) -> FilterChain {
        FilterChain {
            name: String::new(),
            r#match: m,
            tls: None,
            rbac: Vec::new(),
            terminal: Terminal::Tcp(TcpProxy {
                stat_prefix: String::new(),
                target: ClusterTarget::Cluster("c".into()),
            }),
        }
    }

    fn listener(chains: Vec<FilterChainMatch>, default: bool) -> Listener {
        Listener {
            name: "l".into(),
            address: ([0, 0, 0, 0], 1).into(),
            bind_to_port: true,
            use_original_dst: false,
            tls_inspector: true,
            original_dst: false,
            direction: crate::config::Direction::Inbound,
            filter_chains: chains.into_iter().map(chain).collect(),
            default_filter_chain: default.then(|| chain(FilterChainMatch::default())),
        }
    }

    fn transport(t: TransportProtocol) -> FilterChainMatch {
        FilterChainMatch {
            transport_protocol: Some(t),
            ..Default::default()
        }
    }

    #[test]
    fn permissive_splits_tls_and_plaintext() {
        let l = listener(
            vec![
                transport(TransportProtocol::Tls),
                transport(TransportProtocol::RawBuffer),
            ],
            false,
        );
        let tls = Facts {
            port: 8000,
            tls: true,
            ..Default::default()
        };
        assert_eq!(select(&l, &tls), Some(0));
        let plain = Facts {
            port: 8000,
            ..Default::default()
        };
        assert_eq!(select(&l, &plain), Some(1));
    }

    #[test]
    fn port_beats_transport_and_default_catches_the_rest() {
        let l = listener(
            vec![
                transport(TransportProtocol::Tls),
                FilterChainMatch {
                    destination_port: Some(9000),
                    ..Default::default()
                },
            ],
            true,
        );
        let f = |port, tls| Facts {
            port,
            tls,
            ..Default::default()
        };
        assert_eq!(select(&l, &f(9000, true)), Some(1));
        assert_eq!(select(&l, &f(8000, true)), Some(0));
        assert_eq!(select(&l, &f(8000, false)), Some(2), "the default chain");
        let no_default = listener(vec![transport(TransportProtocol::Tls)], false);
        assert_eq!(select(&no_default, &f(8000, false)), None);
    }

    #[test]
    fn server_names_exact_then_longest_wildcard_then_alpn() {
        let names = |n: &[&str]| FilterChainMatch {
            server_names: n.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let l = listener(
            vec![
                names(&["*.com"]),
                names(&["*.example.com"]),
                names(&["a.example.com"]),
                FilterChainMatch {
                    application_protocols: vec!["h2".into()],
                    ..Default::default()
                },
                FilterChainMatch::default(),
            ],
            false,
        );
        let f = |sni: Option<&str>, alpn: &[&str]| Facts {
            port: 1,
            sni: sni.map(str::to_string),
            tls: true,
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(select(&l, &f(Some("a.example.com"), &[])), Some(2));
        assert_eq!(select(&l, &f(Some("b.example.com"), &[])), Some(1));
        assert_eq!(select(&l, &f(Some("x.com"), &[])), Some(0));
        assert_eq!(select(&l, &f(Some("x.org"), &["h2"])), Some(3));
        assert_eq!(select(&l, &f(None, &["http/1.1"])), Some(4));
    }
}

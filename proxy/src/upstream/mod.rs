//! Reaching a cluster: choose an endpoint ([`Balancer`]), connect within the cluster's
//! connect timeout, and originate mesh mTLS when the endpoint's transport socket match says so
//! (`Cluster::tls_for`: straitd's auto-mTLS on `tlsMode: istio`). Shared by the TCP and the HTTP
//! paths.
//!
//! The balancer is a small trait: [`Lb`] runs the `lb` module per cluster (priorities with
//! spill-over, panic threshold, the cluster's policy, outlier ejection fed by [`Balancer::report`]);
//! [`RoundRobin`] is the simplest stand-in.

mod balance;

pub use crate::lb::Outcome;
pub use balance::Lb;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use strait_proto::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{
    Cluster, Config, Discovery, Endpoint, EndpointAddress, LoadAssignment, SanType, StringMatch,
    UpstreamTls as TlsConfig,
};
use crate::error::ProxyError;
use crate::tls::client::UpstreamTls;
use crate::tls::{ClientTls, SanMatcher};

/// A byte stream, plain or TLS, either side.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// Chooses an endpoint of a cluster, and hears how it went.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// One available endpoint of `assignment`, or none. Every pick is followed by exactly one
    /// [`Balancer::report`].
    fn pick<'a>(
        &self,
        cluster: &Cluster,
        assignment: &'a Arc<LoadAssignment>,
    ) -> Option<&'a Endpoint>;

    /// How a request or connection to `endpoint` ended (outlier detection, least request).
    fn report(&self, _cluster: &Cluster, _endpoint: &Endpoint, _outcome: Outcome) {}
}

/// Round robin over the available endpoints of the best priority that has any (Envoy's
/// priority order without spill-over), one counter per cluster.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Balancer for RoundRobin {
    fn pick<'a>(
        &self,
        cluster: &Cluster,
        assignment: &'a Arc<LoadAssignment>,
    ) -> Option<&'a Endpoint> {
        let best = assignment
            .localities
            .iter()
            .filter(|l| l.endpoints.iter().any(|e| e.health.is_available()))
            .map(|l| l.priority)
            .min()?;
        let candidates: Vec<&Endpoint> = assignment
            .localities
            .iter()
            .filter(|l| l.priority == best)
            .flat_map(|l| l.endpoints.iter())
            .filter(|e| e.health.is_available())
            .collect();
        let counter = self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(cluster.name.clone())
            .or_default()
            .clone();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        candidates.get(n % candidates.len().max(1)).copied()
    }
}

/// A slot of a cluster's circuit breaker, freed on drop.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open upstream connection.
pub struct Connected {
    /// The stream (TLS or plain).
    pub io: BoxIo,
    /// Where it goes.
    pub endpoint: SocketAddr,
    /// The server's verified identity, for mTLS.
    pub peer: Option<SpiffeId>,
    /// The ALPN protocol negotiated, for TLS.
    pub alpn: Option<Vec<u8>>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("endpoint", &self.endpoint)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Endpoint choice, connecting and TLS origination for every cluster. Cheap to share.
#[derive(Debug)]
pub struct Upstreams {
    client_tls: Option<ClientTls>,
    balancer: Box<dyn Balancer>,
    /// In-flight requests (HTTP) or connections (TCP) per cluster, against its circuit
    /// breakers.
    inflight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Built rustls client configs per cluster, rebuilt when the cluster's TLS config changes
    /// (building one per connection would cost a config build per handshake).
    tls_cache: Mutex<HashMap<String, (TlsConfig, UpstreamTls)>>,
}

impl Upstreams {
    /// `client_tls`: None when there is no workload certificate (then a cluster that asks for
    /// TLS fails its connections instead of going plaintext).
    pub fn new(client_tls: Option<ClientTls>, balancer: Box<dyn Balancer>) -> Upstreams {
        Upstreams {
            client_tls,
            balancer,
            inflight: Mutex::new(HashMap::new()),
            tls_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster `name` and one of its endpoints; for an ORIGINAL_DST cluster, `original`
    /// (a captured connection's destination; none: refused, it would loop back to us).
    pub fn pick(
        &self,
        config: &Config,
        name: &str,
        original: Option<SocketAddr>,
    ) -> Result<(Arc<Cluster>, Endpoint), ProxyError> {
        let cluster = config
            .cluster(name)
            .ok_or_else(|| ProxyError::NoCluster(name.to_string()))?
            .clone();
        let endpoint = match &cluster.discovery {
            Discovery::OriginalDst => match original {
                Some(addr) => Endpoint {
                    address: EndpointAddress::Socket(addr),
                    weight: 1,
                    health: crate::config::Health::Healthy,
                    transport_socket_match: Default::default(),
                },
                None => {
                    return Err(ProxyError::Unsupported(format!(
                        "ORIGINAL_DST cluster {name:?} for a connection that was not captured"
                    )));
                }
            },
            _ => config
                .load_assignment(&cluster)
                .and_then(|a| self.balancer.pick(&cluster, a))
                .cloned()
                .ok_or_else(|| ProxyError::NoHealthyUpstream(name.to_string()))?,
        };
        Ok((cluster, endpoint))
    }

    /// Admits one more request or connection to `cluster` if it stays within `limit` (the
    /// cluster's `max_requests` for HTTP, `max_connections` for TCP); the slot is freed when
    /// the guard drops. Over the limit: [`ProxyError::Overflow`] (Envoy's `UO`).
    pub fn admit(&self, cluster: &Cluster, limit: u32) -> Result<Admitted, ProxyError> {
        let counter = self
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(cluster.name.clone())
            .or_default()
            .clone();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if counter.fetch_add(1, Ordering::AcqRel) >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::Overflow(cluster.name.clone()));
        }
        Ok(Admitted(counter))
    }

    /// Admits one more retry to `cluster` within `limit` (its circuit breakers' `max_retries`:
    /// retries outstanding at once); the guard frees it.
    pub fn admit_retry(&self, cluster: &Cluster, limit: u32) -> Result<Admitted, ProxyError> {
        let counter = self
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{}\0retries", cluster.name))
            .or_default()
            .clone();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if counter.fetch_add(1, Ordering::AcqRel) >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::Overflow(cluster.name.clone()));
        }
        Ok(Admitted(counter))
    }

    /// Tells the balancer how a pick ended.
    pub fn report(&self, cluster: &Cluster, endpoint: &Endpoint, outcome: Outcome) {
        self.balancer.report(cluster, endpoint, outcome);
    }

    /// Connects to `endpoint` of `cluster`: TCP within the connect timeout, then mTLS if the
    /// endpoint's transport socket match (or the cluster's socket) says so.
    pub async fn connect(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
    ) -> Result<Connected, ProxyError> {
        let tls = cluster.tls_for(&endpoint.transport_socket_match);
        let addr =
            resolve(&endpoint.address)
                .await
                .map_err(|reason| ProxyError::ConnectFailed {
                    cluster: cluster.name.clone(),
                    endpoint: display(&endpoint.address),
                    reason,
                })?;
        let fail = |reason: String| ProxyError::ConnectFailed {
            cluster: cluster.name.clone(),
            endpoint: addr.to_string(),
            reason,
        };
        let tcp = tokio::time::timeout(cluster.connect_timeout, tcp_connect(cluster, addr))
            .await
            .map_err(|_| fail("timeout".into()))?
            .map_err(fail)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Connected {
                io: Box::new(tcp),
                endpoint: addr,
                peer: None,
                alpn: None,
            });
        };
        let upstream = self.upstream_tls(cluster, tls)?;
        let tls_fail = |reason: String| ProxyError::UpstreamTls {
            cluster: cluster.name.clone(),
            endpoint: addr.to_string(),
            reason,
        };
        // Envoy sends no SNI when none is configured; rustls needs a name, and the address
        // is what a client would use (the server's SPIFFE id is verified, never the name).
        let sni = if tls.sni.is_empty() {
            addr.ip().to_string()
        } else {
            tls.sni.clone()
        };
        let handshake = upstream.connect(&sni, tcp);
        let (stream, peer) = tokio::time::timeout(cluster.connect_timeout, handshake)
            .await
            .map_err(|_| tls_fail("handshake timeout".into()))?
            .map_err(|e| tls_fail(error_chain(&e)))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Connected {
            io: Box::new(stream),
            endpoint: addr,
            peer: Some(peer),
            alpn,
        })
    }

    fn upstream_tls(&self, cluster: &Cluster, tls: &TlsConfig) -> Result<UpstreamTls, ProxyError> {
        let mut cache = self
            .tls_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((config, built)) = cache.get(&cluster.name)
            && config == tls
        {
            return Ok(built.clone());
        }
        let client = self.client_tls.as_ref().ok_or_else(|| {
            ProxyError::Unsupported(format!(
                "cluster {:?} wants TLS and this proxy has no workload certificate",
                cluster.name
            ))
        })?;
        let sans = tls
            .common
            .verify_sans
            .iter()
            .map(
                |m| match (&m.san_type, &m.matcher.pattern, m.matcher.ignore_case) {
                    (SanType::Uri, StringMatch::Exact(s), false) => {
                        Ok(SanMatcher::Exact(s.clone()))
                    }
                    (SanType::Uri, StringMatch::Prefix(s), false) => {
                        Ok(SanMatcher::Prefix(s.clone()))
                    }
                    // Anything else would have to be verified some other way; refusing the
                    // connection is the only safe answer until it is.
                    other => Err(ProxyError::Unsupported(format!(
                        "cluster {:?}: SAN matcher {other:?} is not supported",
                        cluster.name
                    ))),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        let alpn = tls
            .common
            .alpn
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        let built = client
            .upstream(sans, alpn)
            .map_err(|e| ProxyError::Unsupported(format!("cluster {:?}: {e}", cluster.name)))?;
        cache.insert(cluster.name.clone(), (tls.clone(), built.clone()));
        Ok(built)
    }
}

/// A TCP connection to `addr`, from the cluster's `upstream_bind_config` source address if it
/// has one (bound before connecting, port chosen by the kernel).
async fn tcp_connect(cluster: &Cluster, addr: SocketAddr) -> Result<TcpStream, String> {
    let Some(source) = cluster.upstream_bind else {
        return TcpStream::connect(addr).await.map_err(|e| e.to_string());
    };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("creating a socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("binding the upstream_bind_config source {source}: {e}"))?;
    socket.connect(addr).await.map_err(|e| e.to_string())
}

/// An endpoint's socket address (DNS names resolved now, first address).
async fn resolve(address: &EndpointAddress) -> Result<SocketAddr, String> {
    match address {
        EndpointAddress::Socket(a) => Ok(*a),
        EndpointAddress::Dns { host, port } => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address")),
    }
}

fn display(address: &EndpointAddress) -> String {
    match address {
        EndpointAddress::Socket(a) => a.to_string(),
        EndpointAddress::Dns { host, port } => format!("{host}:{port}"),
    }
}

/// An error and its sources, one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{CircuitBreakers, Health, HttpOptions, LbPolicy};

    fn original_dst(bind: Option<IpAddr>) -> Cluster {
        Cluster {
            name: "inbound|8000||".into(),
            discovery: Discovery::OriginalDst,
            lb_policy: LbPolicy::ClusterProvided,
            connect_timeout: Duration::from_secs(5),
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            healthy_panic_threshold: 50.0,
            locality_weighted: false,
            http: HttpOptions::default(),
            tls: None,
            transport_socket_matches: Vec::new(),
            upstream_bind: bind,
        }
    }

    fn endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint {
            address: EndpointAddress::Socket(addr),
            weight: 1,
            health: Health::Healthy,
            transport_socket_match: Default::default(),
        }
    }

    #[tokio::test]
    async fn upstream_bind_sets_the_source_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstreams = Upstreams::new(None, Box::new(RoundRobin::default()));
        let bound = original_dst(Some("127.0.0.6".parse().unwrap()));
        let up = upstreams.connect(&bound, &endpoint(addr)).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.6");
        assert_eq!(up.endpoint, addr);
        // Without it, the kernel's choice.
        let _plain = upstreams
            .connect(&original_dst(None), &endpoint(addr))
            .await
            .unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
    }

    #[tokio::test]
    async fn an_unusable_bind_address_fails_the_connect_and_says_why() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstreams = Upstreams::new(None, Box::new(RoundRobin::default()));
        // TEST-NET-2: not an address of this machine, so bind(2) refuses it.
        let cluster = original_dst(Some("198.51.100.7".parse().unwrap()));
        let e = upstreams
            .connect(&cluster, &endpoint(addr))
            .await
            .unwrap_err();
        let ProxyError::ConnectFailed { reason, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(
            reason.contains("upstream_bind_config source 198.51.100.7"),
            "{reason}"
        );
    }
}

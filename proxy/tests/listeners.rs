//! Listeners over real sockets, fed a config watch by hand: a tcp_proxy listener carries
//! bytes both ways with half-close; removing it stops new connections while an established
//! one keeps working (drain); a chain whose RBAC cannot be compiled refuses connections
//! instead of letting them through.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_proto::xds::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal,
};
use strait_proto::xds::google::api::expr::v1alpha1::Expr;
use strait_proxy::config::{
    CircuitBreakers, Cluster, ClusterTarget, Config, Direction, Discovery, Endpoint,
    EndpointAddress, FilterChain, FilterChainMatch, Health, HttpOptions, LbPolicy, Listener,
    LoadAssignment, LocalityEndpoints, RbacFilter, TcpProxy, Terminal,
};
use strait_proxy::http::pool::Pool;
use strait_proxy::listener::{Context, Listeners};
use strait_proxy::tcp::TcpCounters;
use strait_proxy::upstream::{RoundRobin, Upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A TCP server that echoes every byte and closes its side when the client closes its own.
async fn echo_server() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

fn cluster(name: &str, upstream: SocketAddr) -> Cluster {
    Cluster {
        name: name.into(),
        discovery: Discovery::Static(Arc::new(LoadAssignment {
            cluster_name: name.into(),
            localities: vec![LocalityEndpoints {
                locality: Default::default(),
                priority: 0,
                weight: 1,
                endpoints: vec![Endpoint {
                    address: EndpointAddress::Socket(upstream),
                    weight: 1,
                    health: Health::Healthy,
                    transport_socket_match: BTreeMap::new(),
                }],
            }],
        })),
        lb_policy: LbPolicy::RoundRobin,
        connect_timeout: Duration::from_secs(1),
        circuit_breakers: CircuitBreakers::default(),
        outlier_detection: None,
        healthy_panic_threshold: 50.0,
        locality_weighted: false,
        http: HttpOptions::default(),
        tls: None,
        transport_socket_matches: Vec::new(),
        upstream_bind: None,
    }
}

fn tcp_listener(name: &str, rbac: Vec<RbacFilter>) -> Listener {
    Listener {
        name: name.into(),
        address: ([127, 0, 0, 1], 0).into(),
        bind_to_port: true,
        use_original_dst: false,
        tls_inspector: false,
        original_dst: false,
        direction: Direction::Inbound,
        filter_chains: vec![FilterChain {
            name: format!("{name}_chain"),
            r#match: FilterChainMatch::default(),
            tls: None,
            rbac,
            terminal: Terminal::Tcp(TcpProxy {
                stat_prefix: name.into(),
                target: ClusterTarget::Cluster("echo".into()),
            }),
        }],
        default_filter_chain: None,
    }
}

fn config(listeners: Vec<Listener>, upstream: SocketAddr) -> Arc<Config> {
    Arc::new(Config {
        listeners: Arc::new(
            listeners
                .into_iter()
                .map(|l| (l.name.clone(), Arc::new(l)))
                .collect::<HashMap<_, _>>(),
        ),
        clusters: Arc::new(HashMap::from([(
            "echo".to_string(),
            Arc::new(cluster("echo", upstream)),
        )])),
        ..Config::default()
    })
}

fn start(rx: watch::Receiver<Arc<Config>>) -> Listeners {
    Listeners::start(Arc::new(Context {
        config: rx,
        certs: None,
        upstreams: Upstreams::new(None, Box::new(RoundRobin::default())),
        pool: Arc::new(Pool::default()),
        tcp: TcpCounters::default(),
        telemetry: Default::default(),
    }))
}

async fn bound_address(
    listeners: &Listeners,
    name: &str,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut bound = listeners.bound();
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        bound.wait_for(|m| m.contains_key(name)),
    )
    .await??;
    Ok(*m.get(name).ok_or("not bound")?)
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    s.write_all(msg).await?;
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await??;
    Ok(buf)
}

#[tokio::test]
async fn tcp_proxy_half_close_and_drain_on_removal() -> TestResult {
    let upstream = echo_server().await?;
    let (tx, rx) = watch::channel(config(vec![tcp_listener("tcp", Vec::new())], upstream));
    let listeners = start(rx);
    let addr = bound_address(&listeners, "tcp").await?;

    // Half-close: the client shuts its write side and still reads the whole echo, then EOF.
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"half").await?;
    s.shutdown().await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await??;
    assert_eq!(all, b"half");

    // An established connection survives the listener's removal; new ones are refused.
    let mut kept = TcpStream::connect(addr).await?;
    assert_eq!(roundtrip(&mut kept, b"before").await?, b"before");
    tx.send_replace(config(Vec::new(), upstream));
    let mut bound = listeners.bound();
    tokio::time::timeout(Duration::from_secs(5), bound.wait_for(|m| m.is_empty())).await??;
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the removed listener still accepts");
    assert_eq!(roundtrip(&mut kept, b"after").await?, b"after");
    listeners.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_chain_with_rbac_it_cannot_compile_refuses_connections() -> TestResult {
    let upstream = echo_server().await?;
    // A CEL condition: the authz module refuses it, so the chain must take no traffic.
    let policy = Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Any(true)),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::Any(true)),
        }],
        condition: Some(Expr::default()),
        ..Default::default()
    };
    let rules = Rbac {
        action: 0,
        policies: HashMap::from([("cel".to_string(), policy)]),
        ..Default::default()
    };
    let rbac = vec![RbacFilter {
        rules: Some(rules),
        shadow_rules: None,
        stat_prefix: String::new(),
    }];
    let (_tx, rx) = watch::channel(config(vec![tcp_listener("guarded", rbac)], upstream));
    let listeners = start(rx);
    let addr = bound_address(&listeners, "guarded").await?;
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.write_all(b"let me in").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await?;
    assert!(
        read.is_err() || buf.is_empty(),
        "a chain with an uncompilable policy passed traffic: {buf:?}"
    );
    listeners.shutdown().await;
    Ok(())
}

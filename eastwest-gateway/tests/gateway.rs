//! The gateway on loopback against a real straitd: exported names forwarded byte for byte (a
//! rustls handshake completes end to end through it, so it never decrypts), a ClientHello split
//! one byte per segment still routes, every refusal closes the connection without reaching a
//! workload, a slow ClientHello times out, the connection limit holds, and 15012 passes bytes
//! through unparsed. The gateway gets its certificate from straitd's CA by bootstrap token and
//! its routing table by mutual-TLS xDS on 15012; a certificate for another namespace than its
//! node claims is refused by straitd, and plaintext xDS needs asking for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use strait_gateway::app::{App, Config, Node};
use strait_gateway::metrics::Refusal;
use strait_proxy::certs::{CaClientConfig, CertManagerConfig};
use support::{
    Recorder, Straitd, closed_without_a_byte, eventually, http_get, rustls_client_hello,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REVIEWS: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";
const REVIEWS_V1: &str = "outbound_.9080_.v1_.reviews.default.svc.cluster.local";
const SECURE: &str = "outbound_.9443_._.secure.default.svc.cluster.local";
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn mesh(reviews: SocketAddr, secure: SocketAddr, details: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints:
  - {{address: {rip}, ports: {{tcp: {rport}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.9, ports: {{tcp: 9}}, network: n2, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {sip}, ports: {{tls: {sport}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details
  namespace: default
  labels: {{networking.strait.io/export: "false"}}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {dip}, ports: {{tcp: {dport}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {dip}, ports: {{tcp: {dport}}}, network: n2}}]
"#,
        rip = reviews.ip(),
        rport = reviews.port(),
        sip = secure.ip(),
        sport = secure.port(),
        dip = details.ip(),
        dport = details.port(),
    )
}

/// Istio's east-west gateway identity.
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway";

/// How the gateway reads its config.
#[derive(Clone, Copy)]
enum Xds {
    /// `https://…:15012` with a certificate for `GATEWAY_ID` from straitd's CA.
    Mtls,
    /// `http://…:15010`, allowed explicitly (`insecure_xds`).
    Plaintext,
}

/// The certificate manager's config for `identity` (namespace `ns`, service account `sa`): a
/// bootstrap token and the root from straitd, the CA on straitd's 15012.
async fn certs(d: &Straitd, ns: &str, sa: &str) -> CertManagerConfig {
    let (token, root) = d.bootstrap(ns, sa).await;
    let mut ca = CaClientConfig::new(d.tls_url(), root, "cluster1");
    ca.server_name = Some("istiod.istio-system.svc".into());
    ca.token_file = Some(token);
    let identity = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    CertManagerConfig::new(ca, identity.parse().unwrap())
}

/// A gateway of network n1 in this process (node namespace `istio-system`), its control-plane
/// port passing to `cp`.
fn config(d: &Straitd, cp: SocketAddr, max_connections: usize, xds: &str) -> Config {
    let node = Node {
        ip: IpAddr::V4(d.ip),
        name: "eastwest".into(),
        namespace: "istio-system".into(),
        network: "n1".into(),
        cluster_id: "cluster1".into(),
    };
    let any = SocketAddr::new(IpAddr::V4(LOCAL), 0);
    let mut c = Config::new(xds, node);
    c.sni_addr = any;
    c.control_plane_addr = Some(any);
    c.control_plane = Some(cp);
    c.health_addr = any;
    c.metrics_addr = any;
    c.handshake_timeout = Duration::from_millis(800);
    c.max_connections = max_connections;
    c
}

/// A gateway as [`config`] makes it, ready with its routes.
async fn gateway(d: &Straitd, cp: SocketAddr, max_connections: usize, xds: Xds) -> App {
    let c = match xds {
        Xds::Mtls => {
            let mut c = config(d, cp, max_connections, &d.tls_url());
            c.certs = Some(certs(d, "istio-system", "istio-eastwestgateway").await);
            c
        }
        Xds::Plaintext => {
            let mut c = config(d, cp, max_connections, &d.xds_url());
            c.insecure_xds = true;
            c
        }
    };
    let app = App::start(c).await.expect("gateway starts");
    let (health, table) = (app.bound.health, app.table.clone());
    eventually(
        "gateway ready with its routes",
        Duration::from_secs(20),
        || {
            let table = table.clone();
            async move {
                let r = http_get(health, "/healthz/ready").await.ok()?;
                let names = table.borrow().names();
                (r.starts_with("HTTP/1.1 200") && names.len() == 3).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        app.table.borrow().names(),
        [REVIEWS, REVIEWS_V1, SECURE].map(String::from).to_vec(),
        "exported services of n1 only"
    );
    let identity = app.identity.as_ref().map(ToString::to_string);
    match xds {
        Xds::Mtls => assert_eq!(identity.as_deref(), Some(GATEWAY_ID)),
        Xds::Plaintext => assert_eq!(identity, None),
    }
    app
}

struct World {
    _straitd: Straitd,
    reviews: Recorder,
    details: Recorder,
    control_plane: Recorder,
    secure_cert: Vec<u8>,
}

async fn world() -> World {
    let d = Straitd::start("n1", &[]).await;
    let reviews = Recorder::start(LOCAL).await;
    let details = Recorder::start(LOCAL).await;
    let control_plane = Recorder::start(LOCAL).await;
    let (secure, secure_cert) = tls_echo_server().await;
    d.apply(&mesh(reviews.addr, secure, details.addr)).await;
    World {
        _straitd: d,
        reviews,
        details,
        control_plane,
        secure_cert,
    }
}

/// Sends `bytes` (each chunk a write), half-closes, returns what comes back.
async fn exchange(to: SocketAddr, chunks: &[&[u8]], pause: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.set_nodelay(true).unwrap();
    for c in chunks {
        s.write_all(c).await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .expect("an answer")
        .unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_names_are_forwarded_untouched() {
    let w = world().await;
    let gw = gateway(&w._straitd, w.control_plane.addr, 100, Xds::Mtls).await;
    let sni = gw.bound.sni;

    // A real rustls ClientHello and some application bytes, byte for byte.
    let mut bytes = rustls_client_hello(Some(REVIEWS));
    bytes.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    assert_eq!(exchange(sni, &[&bytes], Duration::ZERO).await, b"pong");
    assert_eq!(w.reviews.seen(), vec![bytes.clone()]);

    // The subset's name goes to the v1 endpoint (the n2 one is never a candidate).
    let hello_v1 = rustls_client_hello(Some(REVIEWS_V1));
    assert_eq!(exchange(sni, &[&hello_v1], Duration::ZERO).await, b"pong");
    assert_eq!(w.reviews.seen().last(), Some(&hello_v1));

    // Split one byte per TCP segment (nodelay, a pause between writes): reassembled, routed.
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(
        exchange(sni, &chunks, Duration::from_millis(1)).await,
        b"pong"
    );
    assert_eq!(w.reviews.seen().last(), Some(&bytes));
    assert_eq!(w.reviews.accepted(), 3);

    // A full TLS handshake between a rustls client and server through the gateway.
    let reply = tls_round_trip(sni, SECURE, &w.secure_cert, b"ping").await;
    assert_eq!(reply, b"pong:ping");

    // 15012: raw bytes to the control plane, unparsed.
    let cp = gw.bound.control_plane.unwrap();
    assert_eq!(
        exchange(cp, &[b"\x00garbage\xff"], Duration::ZERO).await,
        b"pong"
    );
    assert_eq!(w.control_plane.seen(), vec![b"\x00garbage\xff".to_vec()]);

    // Istio's TCP metrics.
    let text = http_get(gw.bound.metrics, "/stats/prometheus")
        .await
        .unwrap();
    for want in [
        "istio_tcp_connections_opened_total{",
        "istio_tcp_connections_closed_total{",
        "istio_tcp_received_bytes_total{",
        "istio_tcp_sent_bytes_total{",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "reporter=\"source\"",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let received = text
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_received_bytes_total{")
                && l.contains("reviews.default.svc.cluster.local")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert_eq!(received, (2 * bytes.len() + hello_v1.len()) as u64);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_close_the_connection_and_reach_no_workload() {
    let w = world().await;
    let gw = gateway(&w._straitd, w.control_plane.addr, 100, Xds::Mtls).await;
    let sni = gw.bound.sni;
    let cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
        (
            "unknown name",
            rustls_client_hello(Some("outbound_.9080_._.nope.default.svc.cluster.local")),
            Refusal::UnknownName,
        ),
        (
            "unexported service",
            rustls_client_hello(Some("outbound_.9080_._.details.default.svc.cluster.local")),
            Refusal::UnknownName,
        ),
        (
            "service of another network",
            rustls_client_hello(Some("outbound_.9080_._.ratings.default.svc.cluster.local")),
            Refusal::UnknownName,
        ),
        (
            "name outside the mesh",
            rustls_client_hello(Some("outbound_.443_._.www.example.com")),
            Refusal::UnknownName,
        ),
        (
            "unknown subset",
            rustls_client_hello(Some(
                "outbound_.9080_.v9_.reviews.default.svc.cluster.local",
            )),
            Refusal::UnknownName,
        ),
        (
            "other name form",
            rustls_client_hello(Some("reviews.default.svc.cluster.local")),
            Refusal::BadName,
        ),
        (
            "control plane through 15443",
            rustls_client_hello(Some(
                "outbound_.15012_._.istiod.istio-system.svc.cluster.local",
            )),
            Refusal::ReservedPort,
        ),
        (
            "the gateway's own port",
            rustls_client_hello(Some("outbound_.15443_._.reviews.default.svc.cluster.local")),
            Refusal::ReservedPort,
        ),
        ("no SNI", rustls_client_hello(None), Refusal::NoSni),
        (
            "plaintext",
            b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n".to_vec(),
            Refusal::NotTls,
        ),
        (
            "garbage that looks like a record",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff],
            Refusal::NotTls,
        ),
    ];
    for (what, bytes, reason) in &cases {
        let before = gw.metrics.refused(*reason);
        let mut s = TcpStream::connect(sni).await.unwrap();
        s.write_all(bytes).await.unwrap();
        assert!(closed_without_a_byte(&mut s).await, "{what}: not closed");
        eventually(what, Duration::from_secs(3), || {
            let m = gw.metrics.clone();
            async move { (m.refused(*reason) == before + 1).then_some(()) }
        })
        .await;
    }

    // A ClientHello slower than the deadline: half of it, then silence.
    let hello = rustls_client_hello(Some(REVIEWS));
    let mut s = TcpStream::connect(sni).await.unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let started = std::time::Instant::now();
    assert!(
        closed_without_a_byte(&mut s).await,
        "slow hello: not closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the deadline"
    );
    assert_eq!(gw.metrics.refused(Refusal::HandshakeTimeout), 1);

    assert_eq!(
        w.reviews.accepted(),
        0,
        "no refused connection reached reviews"
    );
    assert_eq!(w.details.accepted(), 0, "nor details");
    let text = http_get(gw.bound.metrics, "/metrics").await.unwrap();
    assert!(
        text.contains("strait_gateway_refused_connections_total{reason=\"unknown_name\"} 5"),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds() {
    let w = world().await;
    // Plaintext xDS, asked for: the insecure mode still routes as before.
    let gw = gateway(&w._straitd, w.control_plane.addr, 2, Xds::Plaintext).await;
    let sni = gw.bound.sni;
    let hello = rustls_client_hello(Some(REVIEWS));
    // Two connections held in inspection (a partial ClientHello) fill the limit.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sni).await.unwrap();
        s.write_all(&hello[..10]).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(sni).await.unwrap();
    let _ = third.write_all(&hello).await;
    assert!(closed_without_a_byte(&mut third).await, "third not closed");
    assert_eq!(gw.metrics.refused(Refusal::Limit), 1);
    // Once they time out, there is room again.
    for mut s in held {
        assert!(closed_without_a_byte(&mut s).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(exchange(sni, &[&hello], Duration::ZERO).await, b"pong");
    assert_eq!(w.reviews.accepted(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_namespace_is_refused_xds() {
    let w = world().await;
    let d = &w._straitd;
    // A valid mesh certificate, but for namespace `default`, while the node claims
    // `istio-system`: straitd refuses the stream, so the gateway never gets a routing table.
    let mut c = config(d, w.control_plane.addr, 100, &d.tls_url());
    c.certs = Some(certs(d, "default", "istio-eastwestgateway").await);
    let gw = App::start(c).await.expect("gateway starts");
    assert_eq!(
        gw.identity.as_ref().map(ToString::to_string).as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/istio-eastwestgateway")
    );
    let health = gw.bound.health;
    let body = eventually(
        "the refusal on /healthz/ready",
        Duration::from_secs(20),
        || async move {
            let r = http_get(health, "/healthz/ready").await.ok()?;
            r.contains("PermissionDenied").then_some(r)
        },
    )
    .await;
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
    assert!(
        body.contains("claims namespace \"istio-system\"")
            && body.contains("spiffe://cluster.local/ns/default/sa/istio-eastwestgateway"),
        "{body}"
    );
    let last = gw
        .xds_status
        .borrow()
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(last.contains("PermissionDenied"), "{last}");
    assert!(!*gw.ready.borrow(), "ready without a config");
    assert!(gw.table.borrow().names().is_empty(), "routes without xDS");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_xds_must_be_asked_for() {
    // The library: http:// without `insecure_xds`, and https:// without a certificate.
    let node = || Node {
        ip: IpAddr::V4(LOCAL),
        name: "eastwest".into(),
        namespace: "istio-system".into(),
        network: "n1".into(),
        cluster_id: "cluster1".into(),
    };
    let any = SocketAddr::new(IpAddr::V4(LOCAL), 0);
    for (address, want) in [
        ("http://127.0.0.1:15010", "plaintext xDS is refused"),
        (
            "https://127.0.0.1:15012",
            "needs the gateway's workload certificate",
        ),
    ] {
        let mut c = Config::new(address, node());
        (c.sni_addr, c.health_addr, c.metrics_addr) = (any, any, any);
        c.control_plane_addr = None;
        let e = App::start(c).await.expect_err(address).to_string();
        assert!(e.contains(want), "{address}: {e}");
    }

    // The binary: a usage error (exit code 2) naming the flag, before binding anything.
    let gateway = env!("CARGO_BIN_EXE_strait-gateway");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(gateway)
            .args(["--network", "n1"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--xds-address", "http://127.0.0.1:15010"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("refusing plaintext xDS to http://127.0.0.1:15010")
            && err.contains("--insecure-xds"),
        "{err}"
    );
    let (code, err) = run(&["--xds-address", "https://127.0.0.1:15012"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--root-cert"), "{err}");
    let (code, err) = run(&["--xds-address", "ftp://127.0.0.1:15012"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("scheme must be https://"), "{err}");
}

/// A rustls server with a self-signed certificate for the SNI name: answers `pong:<what it
/// read>` to each connection.
async fn tls_echo_server() -> (SocketAddr, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec![SECURE.to_string()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()).into();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                let Ok(n) = tls.read(&mut buf).await else {
                    return;
                };
                let mut reply = b"pong:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = tls.write_all(&reply).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, der.to_vec())
}

async fn tls_round_trip(gateway: SocketAddr, sni: &str, cert: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gateway).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake through the gateway");
    tls.write_all(msg).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    out
}

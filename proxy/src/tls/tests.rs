//! mTLS over real sockets on 127.0.0.1, with certificates made by rcgen: a root, an
//! intermediate and leaves with SPIFFE SANs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::certs::WorkloadCert;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/data/sa/db";

struct Ca {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// How a leaf is made.
#[derive(Clone)]
struct Leaf {
    sans: Vec<SanType>,
    serial: u64,
    expired: bool,
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

impl Leaf {
    fn id(id: &str, serial: u64) -> Leaf {
        Leaf {
            sans: vec![uri(id)],
            serial,
            expired: false,
        }
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        let root = CertifiedIssuer::self_signed(
            ca_params(&format!("{name} root")),
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        )
        .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca_params(&format!("{name} intermediate")),
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            &root,
        )
        .unwrap();
        Ca { root, intermediate }
    }

    /// A workload certificate: leaf + intermediate, the leaf's key, this CA's root (or
    /// `trust`'s, to make a workload that trusts another mesh than the one that signed it).
    fn workload(&self, leaf: Leaf, trust: Option<&Ca>) -> WorkloadCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = leaf.sans.clone();
        params.serial_number = Some(SerialNumber::from(leaf.serial));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.intermediate).unwrap();
        let identity = strait_proto::peer::spiffe_id_from_der(cert.der())
            .unwrap_or_else(|_| WEB.parse().unwrap());
        WorkloadCert {
            chain_pem: vec![cert.pem(), self.intermediate.pem()],
            key_pem: key.serialize_pem(),
            root_pem: trust.unwrap_or(self).root.pem(),
            identity,
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        }
    }
}

fn source(cert: WorkloadCert) -> (watch::Sender<Arc<WorkloadCert>>, CertSource) {
    let (tx, rx) = watch::channel(Arc::new(cert));
    (tx, CertSource::new(rx).unwrap())
}

fn alpn(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|a| a.to_vec()).collect()
}

/// Accepts `n` connections; each handshake's result is sent back, then lines are echoed.
async fn serve(
    tls: ServerTls,
    n: usize,
) -> (
    std::net::SocketAddr,
    JoinHandle<Vec<Result<Option<String>, String>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            match tls.accept(tcp).await {
                Ok((stream, peer)) => {
                    out.push(Ok(peer.map(|p| p.to_string())));
                    tokio::spawn(echo(stream));
                }
                Err(e) => out.push(Err(format!("{e}: {:?}", std::error::Error::source(&e)))),
            }
        }
        out
    });
    (addr, task)
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, msg: &str) -> String {
    stream
        .write_all(format!("{msg}\n").as_bytes())
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("echo timed out")
        .unwrap();
    line.trim_end().to_owned()
}

/// Whether a line can go through the connection and come back (a refused client sees its
/// handshake "succeed" in TLS 1.3 and the alert only on the first read).
async fn works<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> bool {
    if stream.write_all(b"ping\n").await.is_err() || stream.flush().await.is_err() {
        return false;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await,
        Ok(Ok(n)) if n > 0
    )
}

fn server(cert: WorkloadCert, auth: ClientAuth) -> ServerTls {
    let (tx, src) = source(cert);
    // The sender must outlive the test; leaking it is harmless here.
    std::mem::forget(tx);
    ServerTls::new(
        src,
        ServerTlsConfig {
            client_auth: auth,
            alpn: alpn(&[ALPN_H2, ALPN_HTTP11]),
            ..Default::default()
        },
    )
    .unwrap()
}

fn client(cert: WorkloadCert, sans: Vec<SanMatcher>) -> UpstreamTls {
    let (tx, src) = source(cert);
    std::mem::forget(tx);
    ClientTls::new(src)
        .upstream(sans, alpn(&[ALPN_ISTIO_PEER_EXCHANGE, ALPN_ISTIO, ALPN_H2]))
        .unwrap()
}

use super::client::UpstreamTls;

const SNI: &str = "outbound_.5432_._.db.data.svc.cluster.local";

#[tokio::test]
async fn mutual_handshake_both_sides_see_the_other_identity() {
    let ca = Ca::new("mesh");
    let (addr, task) = serve(
        server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Required),
        1,
    )
    .await;
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![SanMatcher::Exact(DB.into())],
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut stream, server_id) = up.connect(SNI, tcp).await.unwrap();
    assert_eq!(server_id.to_string(), DB);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(round_trip(&mut stream, "hello").await, "hello");
    assert_eq!(task.await.unwrap(), vec![Ok(Some(WEB.to_owned()))]);
}

#[tokio::test]
async fn prefix_san_matches() {
    let ca = Ca::new("mesh");
    let (addr, _task) = serve(
        server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Required),
        1,
    )
    .await;
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![
            SanMatcher::Exact("spiffe://cluster.local/ns/data/sa/other".into()),
            SanMatcher::Prefix("spiffe://cluster.local/ns/data/".into()),
        ],
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_, id) = up.connect(SNI, tcp).await.unwrap();
    assert_eq!(id.to_string(), DB);
}

#[tokio::test]
async fn server_with_unexpected_identity_is_refused() {
    let ca = Ca::new("mesh");
    let (addr, _task) = serve(
        server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Required),
        1,
    )
    .await;
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![SanMatcher::Exact(
            "spiffe://cluster.local/ns/data/sa/cache".into(),
        )],
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = up.connect(SNI, tcp).await.unwrap_err().to_string();
    assert!(err.contains("UnexpectedServerIdentity"), "{err}");
}

#[tokio::test]
async fn server_from_another_root_is_refused() {
    let ca = Ca::new("mesh");
    let other = Ca::new("intruder");
    let (addr, _task) = serve(
        server(
            other.workload(Leaf::id(DB, 1), Some(&ca)),
            ClientAuth::Required,
        ),
        1,
    )
    .await;
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![SanMatcher::Exact(DB.into())],
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = up.connect(SNI, tcp).await.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

/// A client config that presents no certificate.
#[derive(Debug)]
struct NoCert;
impl ResolvesClientCert for NoCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

async fn connect_without_cert(
    ca: &Ca,
    addr: std::net::SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let up = client(ca.workload(Leaf::id(WEB, 2), None), vec![]);
    let mut config = (*up.rustls_config()).clone();
    config.client_auth_cert_resolver = Arc::new(NoCert);
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(SNI.to_owned().try_into().unwrap(), tcp)
        .await
        .ok()
}

#[tokio::test]
async fn strict_refuses_a_client_without_certificate() {
    let ca = Ca::new("mesh");
    let (addr, task) = serve(
        server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Required),
        1,
    )
    .await;
    if let Some(mut stream) = connect_without_cert(&ca, addr).await {
        assert!(!works(&mut stream).await);
    }
    let results = task.await.unwrap();
    let err = results[0].as_ref().unwrap_err();
    assert!(
        err.contains("CertificateRequired") || err.contains("NoCertificatesPresented"),
        "{err}"
    );
}

#[tokio::test]
async fn optional_client_auth_accepts_a_client_without_certificate() {
    let ca = Ca::new("mesh");
    let (addr, task) = serve(
        server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Optional),
        1,
    )
    .await;
    let mut stream = connect_without_cert(&ca, addr).await.unwrap();
    assert!(works(&mut stream).await);
    assert_eq!(task.await.unwrap(), vec![Ok(None)]);
}

/// The server refuses the client `leaf` (signed by `signer`, trusting `ca`) and says why.
async fn refused_client(ca: &Ca, signer: &Ca, leaf: Leaf, why: &str) {
    let (addr, task) = serve(
        server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Required),
        1,
    )
    .await;
    let up = client(
        signer.workload(leaf, Some(ca)),
        vec![SanMatcher::Exact(DB.into())],
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    if let Ok((mut stream, _)) = up.connect(SNI, tcp).await {
        assert!(!works(&mut stream).await, "{why}: the connection works");
    }
    let results = task.await.unwrap();
    let err = results[0].as_ref().unwrap_err();
    assert!(err.contains(why), "expected {why:?} in {err}");
}

#[tokio::test]
async fn client_from_another_root_is_refused() {
    let ca = Ca::new("mesh");
    let other = Ca::new("intruder");
    refused_client(&ca, &other, Leaf::id(WEB, 2), "UnknownIssuer").await;
}

#[tokio::test]
async fn client_with_two_uri_sans_is_refused() {
    let ca = Ca::new("mesh");
    let leaf = Leaf {
        sans: vec![
            uri(WEB),
            uri("spiffe://cluster.local/ns/kube-system/sa/admin"),
        ],
        serial: 2,
        expired: false,
    };
    refused_client(&ca, &ca, leaf, "SeveralUriSans(2)").await;
}

#[tokio::test]
async fn client_with_dns_only_san_is_refused() {
    let ca = Ca::new("mesh");
    let leaf = Leaf {
        sans: vec![SanType::DnsName(
            Ia5String::try_from("web.default.svc").unwrap(),
        )],
        serial: 2,
        expired: false,
    };
    refused_client(&ca, &ca, leaf, "NoUriSan").await;
}

#[tokio::test]
async fn client_with_non_spiffe_uri_is_refused() {
    let ca = Ca::new("mesh");
    let leaf = Leaf {
        sans: vec![uri("https://web.example/")],
        serial: 2,
        expired: false,
    };
    refused_client(&ca, &ca, leaf, "WrongScheme").await;
}

#[tokio::test]
async fn expired_client_is_refused() {
    let ca = Ca::new("mesh");
    let mut leaf = Leaf::id(WEB, 2);
    leaf.expired = true;
    refused_client(&ca, &ca, leaf, "Expired").await;
}

#[tokio::test]
async fn client_of_a_foreign_trust_domain_is_refused() {
    let ca = Ca::new("mesh");
    refused_client(
        &ca,
        &ca,
        Leaf::id("spiffe://other.domain/ns/default/sa/web", 2),
        "ForeignTrustDomain",
    )
    .await;
}

#[tokio::test]
async fn expired_server_is_refused() {
    let ca = Ca::new("mesh");
    let mut leaf = Leaf::id(DB, 1);
    leaf.expired = true;
    let (addr, _task) = serve(server(ca.workload(leaf, None), ClientAuth::Required), 1).await;
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![SanMatcher::Exact(DB.into())],
    );
    let err = up
        .connect(SNI, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn permissive_port_accepts_plaintext_and_mtls() {
    let ca = Ca::new("mesh");
    let tls = server(ca.workload(Leaf::id(DB, 1), None), ClientAuth::Required);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let d = detect(&tcp, Duration::from_secs(5)).await.unwrap();
            match d.transport {
                Transport::Tls => {
                    let (stream, peer) = tls.accept(tcp).await.unwrap();
                    seen.push((d, peer.map(|p| p.to_string())));
                    tokio::spawn(echo(stream));
                }
                Transport::RawBuffer => {
                    seen.push((d, None));
                    tokio::spawn(echo(tcp));
                }
            }
        }
        seen
    });
    let mut plain = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        round_trip(&mut plain, "GET / HTTP/1.1").await,
        "GET / HTTP/1.1"
    );
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![SanMatcher::Exact(DB.into())],
    );
    let (mut mtls, _) = up
        .connect(SNI, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(round_trip(&mut mtls, "over tls").await, "over tls");
    let seen = task.await.unwrap();
    assert_eq!(seen[0].0.transport, Transport::RawBuffer);
    assert!(!seen[0].0.timed_out);
    assert_eq!(seen[1].0.transport, Transport::Tls);
    assert_eq!(seen[1].0.sni.as_deref(), Some(SNI));
    assert_eq!(
        seen[1].0.alpn,
        alpn(&[ALPN_ISTIO_PEER_EXCHANGE, ALPN_ISTIO, ALPN_H2])
    );
    assert_eq!(seen[1].1.as_deref(), Some(WEB));
}

#[tokio::test]
async fn detect_times_out_on_a_silent_client_and_waits_for_a_slow_hello() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let d = detect(&tcp, Duration::from_millis(50)).await.unwrap();
    assert_eq!(d.transport, Transport::RawBuffer);
    assert!(d.timed_out);

    // A ClientHello trickling in byte by byte across the record boundary.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let hello = detect::tests_support::hello_records("slow.example", &["h2"]);
    let writer = tokio::spawn(async move {
        for b in hello {
            slow.write_all(&[b]).await.unwrap();
            slow.flush().await.unwrap();
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        slow
    });
    let d = detect(&tcp, Duration::from_secs(10)).await.unwrap();
    assert_eq!(d.transport, Transport::Tls);
    assert_eq!(d.sni.as_deref(), Some("slow.example"));
    // Nothing was consumed: the whole hello is still there to read.
    let mut buf = [0u8; 1];
    assert_eq!(tcp.peek(&mut buf).await.unwrap(), 1);
    assert_eq!(buf[0], 0x16);
    drop(writer.await.unwrap());
}

fn serial_of(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    let (_, cert) = X509Certificate::from_der(&certs[0]).unwrap();
    cert.raw_serial_as_string()
}

#[tokio::test]
async fn rotation_new_handshakes_use_the_new_certificate_old_connections_stay() {
    let ca = Ca::new("mesh");
    let (tx, src) = source(ca.workload(Leaf::id(DB, 0x11), None));
    let tls = ServerTls::new(src, ServerTlsConfig::default()).unwrap();
    let (addr, task) = serve(tls, 2).await;
    let up = client(
        ca.workload(Leaf::id(WEB, 2), None),
        vec![SanMatcher::Exact(DB.into())],
    );

    let (mut first, _) = up
        .connect(SNI, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(serial_of(&first), "11");
    assert_eq!(round_trip(&mut first, "before").await, "before");

    tx.send(Arc::new(ca.workload(Leaf::id(DB, 0x22), None)))
        .unwrap();

    let (mut second, _) = up
        .connect(SNI, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(serial_of(&second), "22");
    assert_eq!(round_trip(&mut second, "new").await, "new");
    // The connection made before the rotation goes on with its certificate.
    assert_eq!(round_trip(&mut first, "after").await, "after");
    assert_eq!(task.await.unwrap().len(), 2);
}

#[tokio::test]
async fn rotation_to_a_new_root_follows_on_both_sides() {
    let old = Ca::new("old");
    let new = Ca::new("new");
    let (server_tx, server_src) = source(old.workload(Leaf::id(DB, 1), None));
    let (client_tx, client_src) = source(old.workload(Leaf::id(WEB, 2), None));
    let tls = ServerTls::new(server_src, ServerTlsConfig::default()).unwrap();
    let (addr, task) = serve(tls, 2).await;
    let up = ClientTls::new(client_src)
        .upstream(vec![SanMatcher::Exact(DB.into())], vec![])
        .unwrap();
    let (mut s, _) = up
        .connect(SNI, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    // The server verifies a TLS 1.3 client after the client is done: let it finish first.
    assert!(works(&mut s).await);
    server_tx
        .send(Arc::new(new.workload(Leaf::id(DB, 3), None)))
        .unwrap();
    client_tx
        .send(Arc::new(new.workload(Leaf::id(WEB, 4), None)))
        .unwrap();
    let (mut s, id) = up
        .connect(SNI, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(id.to_string(), DB);
    assert_eq!(serial_of(&s), "03");
    assert!(works(&mut s).await);
    assert_eq!(
        task.await.unwrap(),
        vec![Ok(Some(WEB.into())), Ok(Some(WEB.into()))]
    );
}

#[test]
fn unusable_certificate_is_refused_at_start_and_kept_out_after() {
    let ca = Ca::new("mesh");
    let mut bad = ca.workload(Leaf::id(WEB, 1), None);
    bad.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    let (_tx, rx) = watch::channel(Arc::new(bad.clone()));
    assert!(CertSource::new(rx).is_err());

    let (tx, src) = source(ca.workload(Leaf::id(WEB, 1), None));
    let before = src.material().unwrap();
    tx.send(Arc::new(bad)).unwrap();
    let after = src.material().unwrap();
    assert!(
        Arc::ptr_eq(&before, &after),
        "the last good certificate stays"
    );

    let mut no_roots = ca.workload(Leaf::id(WEB, 1), None);
    no_roots.root_pem = String::new();
    let (_tx, rx) = watch::channel(Arc::new(no_roots));
    assert!(matches!(CertSource::new(rx), Err(Error::BadRoots(_))));
}

//! The CA and mTLS xDS on port 15012, at the wire: a bootstrap token buys a certificate for
//! exactly its own identity; the certificate renews itself; xDS needs a mesh certificate and a
//! node in the certificate's namespace.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hyper::Method;
use strait_controlplane::app::{App, Bound, Config};
use strait_controlplane::cli::client::Client;
use strait_proto::ca::IstioCertificateRequest;
use strait_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use strait_proto::xds::envoy::config::core::v3::Node;
use strait_proto::xds::envoy::service::discovery::v3::DiscoveryRequest;
use strait_proto::xds::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use strait_proto::xds::google::protobuf::{Struct, Value, value::Kind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Ca {
    _app: App,
    bound: Bound,
    http: Client,
    root: String,
}

async fn start() -> Ca {
    let app = App::start(Config {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        xds_port: 0,
        http_port: 0,
        tls_port: 0,
        ..Config::default()
    })
    .await
    .unwrap();
    let bound = app.bound;
    let root = raw_get(bound, "/api/v1/ca/root").await;
    let http = Client::new(&format!("http://{}", bound.http)).unwrap();
    Ca {
        _app: app,
        bound,
        http,
        root,
    }
}

async fn raw_get(bound: Bound, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(bound.http).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

impl Ca {
    async fn token(&self, ns: &str, sa: &str) -> String {
        let body = serde_json::json!({"namespace": ns, "serviceAccount": sa, "ttlSeconds": 600})
            .to_string();
        let v = self
            .http
            .call(Method::POST, "/api/v1/tokens", Some(body))
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    async fn channel(&self, identity: Option<(&str, &str)>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root))
            .domain_name("istiod.istio-system.svc");
        if let Some((chain, key)) = identity {
            tls = tls.identity(Identity::from_pem(chain, key));
        }
        Channel::from_shared(format!("https://{}", self.bound.tls))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

fn csr_for(uri: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap();
    (csr.pem().unwrap(), key.serialize_pem())
}

fn with_token<T>(msg: T, token: Option<&str>, cluster: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(c) = cluster {
        req.metadata_mut().insert("clusterid", c.parse().unwrap());
    }
    req
}

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

#[tokio::test]
async fn token_buys_a_certificate_for_its_own_identity_only() {
    let ca = start().await;
    let token = ca.token("default", "sleep").await;
    let mut client = IstioCertificateServiceClient::new(ca.channel(None).await);
    let (csr, key) = csr_for(SLEEP);
    let req = IstioCertificateRequest {
        csr,
        validity_duration: 600,
        metadata: None,
    };
    let chain = client
        .create_certificate(with_token(req, Some(&token), Some("cluster1")))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert!(chain.len() >= 2, "leaf and root");
    assert_eq!(chain.last().unwrap().trim(), ca.root.trim(), "root last");
    let leaf_der = rustls_pemfile_der(&chain[0]);
    assert_eq!(
        strait_proto::peer::spiffe_id_from_der(&leaf_der)
            .unwrap()
            .to_string(),
        SLEEP
    );

    // Refusals, each with a status that says why and nothing issued.
    let cases: Vec<(
        IstioCertificateRequest,
        Option<String>,
        Option<&str>,
        tonic::Code,
        &str,
    )> = vec![
        (
            IstioCertificateRequest {
                csr: csr_for("spiffe://cluster.local/ns/other/sa/sleep").0,
                ..Default::default()
            },
            Some(token.clone()),
            None,
            tonic::Code::InvalidArgument,
            "other",
        ),
        (
            IstioCertificateRequest {
                csr: csr_for(SLEEP).0,
                ..Default::default()
            },
            None,
            None,
            tonic::Code::Unauthenticated,
            "no credentials",
        ),
        (
            IstioCertificateRequest {
                csr: csr_for(SLEEP).0,
                ..Default::default()
            },
            Some("e30.e30.AAAA".into()),
            None,
            tonic::Code::Unauthenticated,
            "bearer token",
        ),
        (
            IstioCertificateRequest {
                csr: csr_for(SLEEP).0,
                ..Default::default()
            },
            Some(token.clone()),
            Some("cluster9"),
            tonic::Code::PermissionDenied,
            "cluster9",
        ),
        (
            IstioCertificateRequest {
                csr: csr_for(SLEEP).0,
                validity_duration: -5,
                ..Default::default()
            },
            Some(token.clone()),
            None,
            tonic::Code::InvalidArgument,
            "negative",
        ),
        (
            IstioCertificateRequest {
                csr: "x".repeat(200 * 1024),
                ..Default::default()
            },
            Some(token.clone()),
            None,
            tonic::Code::OutOfRange,
            "",
        ),
    ];
    for (req, tok, cluster, code, says) in cases {
        let status = client
            .create_certificate(with_token(req, tok.as_deref(), cluster))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(says),
            "{says}: {}",
            status.message()
        );
    }

    // Renewal: the current certificate alone proves who we are.
    let chain_pem = chain[..chain.len() - 1].concat();
    let mut renewing =
        IstioCertificateServiceClient::new(ca.channel(Some((&chain_pem, &key))).await);
    let (csr2, _) = csr_for(SLEEP);
    let renewed = renewing
        .create_certificate(IstioCertificateRequest {
            csr: csr2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.cert_chain.len() >= 2);
    // …and only for itself.
    let status = renewing
        .create_certificate(IstioCertificateRequest {
            csr: csr_for("spiffe://cluster.local/ns/default/sa/admin").0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn node(namespace: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    Node {
        id: format!("sidecar~198.18.0.9~sleep-1.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s(namespace)),
                ("INTERCEPTION_MODE".to_string(), s("NONE")),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

async fn first_xds_answer(channel: Channel, namespace: &str) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node(namespace)),
        type_url: strait_proto::xds::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(tonic::Status::unknown("closed")),
        Err(s) => Err(s),
    }
}

#[tokio::test]
async fn xds_over_tls_needs_a_mesh_certificate_in_the_nodes_namespace() {
    let ca = start().await;
    let token = ca.token("default", "sleep").await;
    let mut client = IstioCertificateServiceClient::new(ca.channel(None).await);
    let (csr, key) = csr_for(SLEEP);
    let chain = client
        .create_certificate(with_token(
            IstioCertificateRequest {
                csr,
                ..Default::default()
            },
            Some(&token),
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let chain_pem = chain[..chain.len() - 1].concat();

    first_xds_answer(ca.channel(Some((&chain_pem, &key))).await, "default")
        .await
        .unwrap();
    let refused = first_xds_answer(ca.channel(Some((&chain_pem, &key))).await, "kube-system")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("kube-system"),
        "{}",
        refused.message()
    );
    let anonymous = first_xds_answer(ca.channel(None).await, "default")
        .await
        .unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
}

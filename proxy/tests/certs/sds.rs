//! The SDS server as Envoy sees it: a gRPC client on the Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use strait_proto::xds::SECRET;
use strait_proto::xds::envoy::config::core::v3::{Node, data_source};
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use strait_proto::xds::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use strait_proto::xds::google::rpc::Status as RpcStatus;
use strait_proxy::certs::testing::{FakeCa, FakeCaConfig};
use strait_proxy::certs::{Auth, CaClient, SdsServer, WorkloadCert, sds};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::{fake_ca, web, within};

const PATIENCE: Duration = Duration::from_secs(5);

/// A fake CA and a client of it, to issue certificates by hand.
async fn issuer() -> (FakeCa, tempfile::TempDir, CaClient) {
    let (ca, dir, config) = fake_ca(FakeCaConfig::default()).await;
    (ca, dir, CaClient::new(config).unwrap())
}

async fn issue(client: &CaClient) -> Arc<WorkloadCert> {
    Arc::new(
        client
            .issue(&web(), Duration::from_secs(3600), Auth::Token)
            .await
            .unwrap(),
    )
}

async fn connect(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
    // The authority is unused; tonic dials the socket path.
    let channel = Endpoint::try_from(format!("unix:{}", path.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SecretDiscoveryServiceClient::new(channel)
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(Node {
            id: "sidecar~10.0.0.1~web-0.default~default.svc.cluster.local".to_owned(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// A StreamSecrets stream: the request sender and the response stream.
async fn open(
    client: &mut SecretDiscoveryServiceClient<Channel>,
    names: &[&str],
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(names, "", "")).await.unwrap();
    let responses = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

async fn next(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    within("an SDS response", PATIENCE, responses.message())
        .await
        .unwrap()
        .expect("stream ended")
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, SECRET);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn inline(source: Option<&strait_proto::xds::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(bytes)) => {
            String::from_utf8(bytes.clone()).unwrap()
        }
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// Checks `default` and `ROOTCA` against `cert`.
fn assert_secrets(secrets: &[Secret], cert: &WorkloadCert) {
    let names: Vec<_> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA", "default"]);
    match &secrets[1].r#type {
        Some(secret::Type::TlsCertificate(tls)) => {
            let chain = inline(tls.certificate_chain.as_ref());
            assert_eq!(chain, cert.chain_bundle());
            assert!(
                !chain.contains(cert.root_pem.trim()),
                "the root is not in the chain"
            );
            assert_eq!(inline(tls.private_key.as_ref()), cert.key_pem);
        }
        other => panic!("default is {other:?}"),
    }
    match &secrets[0].r#type {
        Some(secret::Type::ValidationContext(ctx)) => {
            assert_eq!(inline(ctx.trusted_ca.as_ref()), cert.root_pem);
        }
        other => panic!("ROOTCA is {other:?}"),
    }
}

/// Nothing arrives for a while.
async fn assert_quiet(responses: &mut Streaming<DiscoveryResponse>) {
    let got = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(got.is_err(), "unexpected response {got:?}");
}

#[tokio::test]
async fn serves_default_and_rootca_then_pushes_each_rotation() {
    let (_ca, dir, client) = issuer().await;
    let first = issue(&client).await;
    let (certs, rx) = watch::channel(first.clone());
    let path = dir.path().join("sds.sock");
    let server = SdsServer::serve(&path, rx).await.unwrap();
    let mut sds = connect(&path).await;

    let (tx, mut responses) = open(&mut sds, &["default", "ROOTCA"]).await;
    let r1 = next(&mut responses).await;
    assert_secrets(&secrets(&r1), &first);
    assert_eq!(r1.version_info, first.serial_hex());
    assert!(!r1.nonce.is_empty());
    // ACK: nothing more until something changes.
    tx.send(request(&["default", "ROOTCA"], &r1.version_info, &r1.nonce))
        .await
        .unwrap();
    assert_quiet(&mut responses).await;

    // Rotation: pushed with a new version and nonce.
    let second = issue(&client).await;
    certs.send_replace(second.clone());
    let r2 = next(&mut responses).await;
    assert_secrets(&secrets(&r2), &second);
    assert_ne!(r2.version_info, r1.version_info);
    assert_ne!(r2.nonce, r1.nonce);
    tx.send(request(&["default", "ROOTCA"], &r2.version_info, &r2.nonce))
        .await
        .unwrap();
    assert_quiet(&mut responses).await;

    let third = issue(&client).await;
    certs.send_replace(third.clone());
    let r3 = next(&mut responses).await;
    assert_eq!(r3.version_info, third.serial_hex());
    server.shutdown().await;
}

#[tokio::test]
async fn each_stream_gets_what_it_asked_for() {
    let (_ca, dir, client) = issuer().await;
    let first = issue(&client).await;
    let (certs, rx) = watch::channel(first.clone());
    let path = dir.path().join("sds.sock");
    let server = SdsServer::serve(&path, rx).await.unwrap();
    let mut sds = connect(&path).await;

    // Envoy opens one stream per secret.
    let (root_tx, mut root_stream) = open(&mut sds, &["ROOTCA"]).await;
    let (_cert_tx, mut cert_stream) = open(&mut sds, &["default"]).await;
    let root = next(&mut root_stream).await;
    let names: Vec<_> = secrets(&root).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["ROOTCA"]);
    let cert = next(&mut cert_stream).await;
    let names: Vec<_> = secrets(&cert).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["default"]);
    root_tx
        .send(request(&["ROOTCA"], &root.version_info, &root.nonce))
        .await
        .unwrap();

    // A rotation under the same root reaches the `default` stream only.
    certs.send_replace(issue(&client).await);
    let pushed = next(&mut cert_stream).await;
    assert_ne!(pushed.version_info, cert.version_info);
    assert_quiet(&mut root_stream).await;

    // Unknown names are answered without them, as Istio's agent does.
    root_tx
        .send(request(
            &["ROOTCA", "file-cert:/etc/x"],
            &root.version_info,
            &root.nonce,
        ))
        .await
        .unwrap();
    let mixed = next(&mut root_stream).await;
    let names: Vec<_> = secrets(&mixed).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["ROOTCA"]);
    let (_tx, mut unknown) = open(&mut sds, &["nope"]).await;
    let empty = next(&mut unknown).await;
    assert!(empty.resources.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn a_nack_is_not_answered_and_stale_nonces_are_ignored() {
    let (_ca, dir, client) = issuer().await;
    let (_certs, rx) = watch::channel(issue(&client).await);
    let path = dir.path().join("sds.sock");
    let server = SdsServer::serve(&path, rx).await.unwrap();
    let mut sds = connect(&path).await;
    let (tx, mut responses) = open(&mut sds, &["default"]).await;
    let r1 = next(&mut responses).await;

    let mut nack = request(&["default"], "", &r1.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "Failed to load certificate chain".to_owned(),
        ..Default::default()
    });
    tx.send(nack).await.unwrap();
    assert_quiet(&mut responses).await;

    // A request with a nonce we never sent changes nothing.
    tx.send(request(&["default", "ROOTCA"], "", "not-a-nonce"))
        .await
        .unwrap();
    assert_quiet(&mut responses).await;

    // New names with the current nonce: answered.
    tx.send(request(&["default", "ROOTCA"], "", &r1.nonce))
        .await
        .unwrap();
    let r2 = next(&mut responses).await;
    assert_eq!(r2.resources.len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn fetch_answers_and_delta_is_unimplemented() {
    let (_ca, dir, client) = issuer().await;
    let cert = issue(&client).await;
    let (_certs, rx) = watch::channel(cert.clone());
    let path = dir.path().join("sds.sock");
    let server = SdsServer::serve(&path, rx).await.unwrap();
    let mut sds = connect(&path).await;

    let fetched = sds
        .fetch_secrets(request(&["ROOTCA", "default"], "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_secrets(&secrets(&fetched), &cert);
    assert_eq!(fetched.version_info, cert.serial_hex());

    let mut wrong = request(&["default"], "", "");
    wrong.type_url = strait_proto::xds::CLUSTER.to_owned();
    let status = sds.fetch_secrets(wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let (_dtx, drx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let status = sds
        .delta_secrets(ReceiverStream::new(drx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("StreamSecrets"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_socket_file_is_private_exclusive_and_removed() {
    let (_ca, dir, client) = issuer().await;
    let (_certs, rx) = watch::channel(issue(&client).await);
    let path = dir.path().join("sds.sock");
    let server = SdsServer::serve(&path, rx.clone()).await.unwrap();
    assert_eq!(server.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second server on a live socket is refused, and the first keeps working.
    let err = SdsServer::serve(&path, rx.clone()).await.unwrap_err();
    assert!(matches!(err, sds::Error::InUse { .. }), "{err:?}");
    let mut sds = connect(&path).await;
    let (_tx, mut responses) = open(&mut sds, &["default"]).await;
    next(&mut responses).await;

    // Shutdown ends open streams and removes the file.
    within("shutdown", PATIENCE, server.shutdown()).await;
    assert!(!path.exists());
    let ended = within("the stream to end", PATIENCE, responses.message()).await;
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");

    // A stale socket (nobody listening) is replaced; other files are left alone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = SdsServer::serve_with_mode(&path, 0o660, rx.clone())
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    drop(server);
    assert!(!path.exists(), "dropping the server removes the socket");

    let file = dir.path().join("plain-file");
    std::fs::write(&file, "keep me").unwrap();
    let err = SdsServer::serve(&file, rx).await.unwrap_err();
    assert!(matches!(err, sds::Error::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

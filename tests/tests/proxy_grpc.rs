//! Conformance: gRPC through the mesh, with stock Envoy sidecars and with `strait-proxy run`,
//! on the same straitd config and with the same assertions. A ServiceEntry port of protocol
//! GRPC (straitd: HTTP/2 to the app and between the sidecars); a tonic client calls through the
//! client's sidecar → mTLS (STRICT) → the server's sidecar → a tonic server:
//!
//! - unary (Istio's `CreateCertificate`): OK, and the request's metadata (an ASCII header and a
//!   `-bin` one) reaches the server; the server's response metadata reaches the client;
//! - a non-OK status (NOT_FOUND with a message, a trailers-only response) arrives with its code
//!   and message;
//! - server streaming (Strait's federation `Subscribe`): 100 messages of ~2 KiB (past HTTP/2's
//!   initial 64 KiB window) arrive whole and in order, then OK; a stream that fails after 10
//!   messages delivers them and then its ABORTED status from the trailers.
//!
//! The services are the generated ones of `strait-proto`, so no test proto is compiled.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use futures::Stream;
use strait_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use strait_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use strait_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use strait_proto::federation::federation_client::FederationClient;
use strait_proto::federation::federation_server::{Federation, FederationServer};
use strait_proto::federation::{ClusterSnapshot, Service, SubscribeRequest};
use strait_tests::controlplane::Straitd;
use strait_tests::fixtures::{
    Port, allow_principals, peer_authentication, service_entry, sidecar_egress, sidecar_ingress,
    workload_entry, yaml_docs,
};
use strait_tests::mesh::{Sidecar, SidecarKind};
use strait_tests::telemetry::scrape;
use strait_tests::wait::{PATIENCE, eventually};
use strait_tests::{ports, process};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

const HOST: &str = "grpcsvc.default.svc.cluster.local";
const PORT: u16 = 7070;
/// Messages in the long stream, and the padding of each (together past the 64 KiB window).
const STREAMED: usize = 100;
const PADDING: usize = 2048;
/// Each RPC's bound, so a test fails rather than hangs.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The application: Istio's CA service and Strait's federation service, scripted.
#[derive(Debug, Clone, Copy)]
struct App;

#[tonic::async_trait]
impl IstioCertificateService for App {
    /// `csr: "missing"` → NOT_FOUND; anything else echoes the csr and the request metadata
    /// `x-tenant` and `x-blob-bin` (hex), and answers with metadata `x-served-by: grpc-app`.
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let meta = request.metadata();
        let tenant = meta
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let blob = meta
            .get_bin("x-blob-bin")
            .and_then(|v| v.to_bytes().ok())
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .unwrap_or_else(|| "-".into());
        let csr = request.into_inner().csr;
        if csr == "missing" {
            return Err(Status::not_found("no certificate for \"missing\""));
        }
        let mut response = Response::new(IstioCertificateResponse {
            cert_chain: vec![
                format!("csr={csr}"),
                format!("tenant={tenant}"),
                format!("blob={blob}"),
            ],
        });
        response
            .metadata_mut()
            .insert("x-served-by", MetadataValue::from_static("grpc-app"));
        Ok(response)
    }
}

type Snapshots = Pin<Box<dyn Stream<Item = Result<ClusterSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for App {
    type SubscribeStream = Snapshots;

    /// `cluster_id: "<n>"` snapshots numbered 0..n, each padded; `network: "abort"` ends the
    /// stream with ABORTED instead of OK.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Snapshots>, Status> {
        let request = request.into_inner();
        let n: usize = request
            .cluster_id
            .parse()
            .map_err(|_| Status::invalid_argument("cluster_id: a count"))?;
        let abort = request.network == "abort";
        let messages = (0..n).map(|i| {
            Ok(ClusterSnapshot {
                cluster_id: "grpc-app".into(),
                version: i.to_string(),
                services: vec![Service {
                    hostname: format!("{i}-{}", "x".repeat(PADDING)),
                    ..Service::default()
                }],
                gateways: Vec::new(),
            })
        });
        let end = abort.then(|| Err(Status::aborted(format!("stopped after {n}"))));
        Ok(Response::new(Box::pin(futures::stream::iter(
            messages.chain(end),
        ))))
    }
}

/// The tonic server on a loopback address of its own (h2c, as a GRPC port's sidecar speaks).
async fn start_app() -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((IpAddr::V4(ports::unique_loopback()), 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(App))
            .add_service(FederationServer::new(App))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Ok((addr, task))
}

/// `grpcsvc` (STRICT mTLS, only `sa/grpcclient` allowed) behind its sidecar at `server`, and
/// the client's explicit egress listener at `client`.
fn config(client: IpAddr, server: IpAddr, app: SocketAddr) -> String {
    let port = Port::new(PORT, "grpc", "GRPC");
    yaml_docs([
        service_entry("grpcsvc", HOST, &[port]),
        workload_entry("grpcsvc", server),
        sidecar_ingress("grpcsvc", port, server, app),
        sidecar_egress("grpcclient", &[port], client),
        peer_authentication("grpcsvc", "STRICT", &[]),
        allow_principals("grpcsvc", &["cluster.local/ns/default/sa/grpcclient"]),
    ])
}

/// A unary call with metadata; Ok(chain, `x-served-by`) or the status.
async fn unary(channel: &Channel, csr: &str) -> Result<Result<(Vec<String>, String), Status>> {
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr.into(),
        ..IstioCertificateRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-tenant", MetadataValue::from_static("blue"));
    request.metadata_mut().insert_bin(
        "x-blob-bin",
        BinaryMetadataValue::from_bytes(&[0x00, 0xff, 0x10]),
    );
    request.set_timeout(RPC_TIMEOUT);
    let mut client = IstioCertificateServiceClient::new(channel.clone());
    let call = tokio::time::timeout(RPC_TIMEOUT, client.create_certificate(request))
        .await
        .map_err(|_| anyhow!("CreateCertificate: no answer within {RPC_TIMEOUT:?}"))?;
    Ok(call.map(|r| {
        let served_by = r
            .metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        (r.into_inner().cert_chain, served_by)
    }))
}

/// A server-streaming call: the messages' versions, then the final status (OK included).
async fn stream(channel: &Channel, n: usize, network: &str) -> Result<(Vec<String>, Status)> {
    let mut client = FederationClient::new(channel.clone());
    let request = SubscribeRequest {
        cluster_id: n.to_string(),
        network: network.into(),
        last_version: String::new(),
    };
    let run = async {
        let mut stream = client.subscribe(request).await?.into_inner();
        let mut versions = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    let hostname = m.services.first().map(|s| s.hostname.as_str());
                    let expected = format!("{}-{}", m.version, "x".repeat(PADDING));
                    if hostname != Some(expected.as_str()) {
                        return Err(Status::data_loss(format!(
                            "message {} arrived damaged ({} bytes of hostname)",
                            m.version,
                            hostname.map_or(0, str::len)
                        )));
                    }
                    versions.push(m.version);
                }
                Ok(None) => return Ok((versions, Status::ok(""))),
                Err(status) => return Ok((versions, status)),
            }
        }
    };
    tokio::time::timeout(RPC_TIMEOUT, run)
        .await
        .map_err(|_| anyhow!("Subscribe({n}, {network:?}): no end within {RPC_TIMEOUT:?}"))?
        .map_err(|s: Status| anyhow!("Subscribe({n}, {network:?}): {s}"))
}

async fn grpc_scenario(kind: SidecarKind) -> Result<()> {
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    let (app, _app_task) = start_app().await?;
    let [client_ip, server_ip] = [0, 1].map(|_| IpAddr::V4(ports::unique_loopback()));
    straitd.apply(&config(client_ip, server_ip, app)).await?;
    let ttl = Duration::from_secs(3600);
    let server = Sidecar::start(kind, &straitd, "grpcsvc", "grpcsvc", server_ip, ttl).await?;
    let client = Sidecar::start(kind, &straitd, "grpcclient", "grpcclient", client_ip, ttl).await?;
    let logs = || format!("{}\n---\n{}", client.log_tail(30), server.log_tail(30));

    // The client dials its sidecar's listener and names the service as :authority.
    let channel = Endpoint::from_shared(format!("http://{}", SocketAddr::new(client_ip, PORT)))?
        .origin(format!("http://{HOST}:{PORT}").parse()?)
        .connect_timeout(RPC_TIMEOUT)
        .connect_lazy();

    let first = eventually("a unary call through the sidecars", PATIENCE, || async {
        unary(&channel, "hello")
            .await?
            .map_err(|s| anyhow!("status {:?}: {}", s.code(), s.message()))
    })
    .await;
    let (chain, served_by) = first.with_context(logs)?;
    ensure!(
        chain == ["csr=hello", "tenant=blue", "blob=00ff10"],
        "the request or its metadata arrived changed: {chain:?}"
    );
    ensure!(served_by == "grpc-app", "response metadata: {served_by:?}");

    match unary(&channel, "missing").await? {
        Err(s) => ensure!(
            s.code() == Code::NotFound && s.message() == "no certificate for \"missing\"",
            "status {:?} {:?}",
            s.code(),
            s.message()
        ),
        Ok(r) => return Err(anyhow!("NOT_FOUND arrived as OK: {r:?}")),
    }

    let (versions, status) = stream(&channel, STREAMED, "").await.with_context(logs)?;
    let expected: Vec<String> = (0..STREAMED).map(|i| i.to_string()).collect();
    ensure!(
        status.code() == Code::Ok && versions == expected,
        "stream of {STREAMED}: {} messages, then {:?} {:?}",
        versions.len(),
        status.code(),
        status.message()
    );

    let (versions, status) = stream(&channel, 10, "abort").await.with_context(logs)?;
    ensure!(
        versions.len() == 10
            && status.code() == Code::Aborted
            && status.message() == "stopped after 10",
        "aborted stream: {} messages, then {:?} {:?}",
        versions.len(),
        status.code(),
        status.message()
    );

    if let Sidecar::Strait { .. } = &server {
        // Istio's request_protocol for gRPC, as the destination reports it.
        let metrics = SocketAddr::new(server_ip, 15090);
        let seen = eventually("istio_requests_total for grpc", PATIENCE, || async move {
            let text = scrape(metrics).await?;
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains("request_protocol=\"grpc\"")
                        && l.contains("reporter=\"destination\"")
                })
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no gRPC request counted:\n{text}"))
        })
        .await;
        seen.with_context(logs)?;
    }
    ensure!(
        server.is_running() && client.is_running(),
        "a sidecar died:\n{}",
        logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_mesh_envoy() -> Result<()> {
    grpc_scenario(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_mesh_strait() -> Result<()> {
    grpc_scenario(SidecarKind::Strait).await
}

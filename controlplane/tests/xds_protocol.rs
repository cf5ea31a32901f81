//! The ADS protocol at the wire, against a real straitd (in-process, real sockets): delta
//! removals and resumption, ACK/NACK bookkeeping, and hostile requests.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hyper::Method;
use prost_types_shim::{node, string};
use strait_controlplane::app::{App, Bound, Config};
use strait_controlplane::cli::client::Client;
use strait_proto::xds::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use strait_proto::xds::{self as types};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 198.18.0.7}]
"#;
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(10);

mod prost_types_shim {
    use strait_proto::xds::envoy::config::core::v3::Node;
    use strait_proto::xds::google::protobuf::{Struct, Value, value::Kind};

    pub fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    pub fn strukt(fields: &[(&str, Value)]) -> Struct {
        Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    pub fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            cluster: "productpage.default".into(),
            metadata: Some(strukt(&[
                ("NAMESPACE", string("default")),
                ("CLUSTER_ID", string("cluster1")),
                ("INTERCEPTION_MODE", string("NONE")),
            ])),
            ..Default::default()
        }
    }
}

async fn start() -> (App, Bound, Client) {
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
    let client = Client::new(&format!("http://{}", bound.http)).unwrap();
    (app, bound, client)
}

/// Applies `yaml` and waits until straitd serves a snapshot that includes it.
async fn apply(client: &Client, yaml: &str) {
    let out = client
        .call(
            Method::POST,
            "/api/v1/apply?namespace=default",
            Some(yaml.into()),
        )
        .await
        .unwrap();
    let revision = out["revision"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .call(Method::GET, "/debug/syncz", None)
        .await
        .unwrap()["snapshot"]
        .as_u64()
        < Some(revision)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "snapshot {revision} never served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn ads(bound: Bound) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{}", bound.xds))
        .await
        .unwrap()
}

const NODE: &str = "sidecar~198.18.0.10~productpage-1.default~default.svc.cluster.local";

async fn delta_stream(
    bound: Bound,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(8);
    let responses = ads(bound)
        .await
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap();
    (tx, responses.into_inner())
}

async fn next<T>(s: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a response in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn delta_names_removals_and_resumes_without_resending() {
    let (_app, bound, client) = start().await;
    apply(&client, SERVICE).await;
    let (tx, mut rx) = delta_stream(bound).await;
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(NODE)),
        type_url: types::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    let versions: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert!(versions.contains_key(CLUSTER), "{:?}", versions.keys());
    tx.send(DeltaDiscoveryRequest {
        type_url: types::CLUSTER.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    client
        .call(
            Method::DELETE,
            "/api/v1/resources/ServiceEntry/default/reviews",
            None,
        )
        .await
        .unwrap();
    let removal = next(&mut rx).await;
    assert_eq!(removal.removed_resources, vec![CLUSTER.to_string()]);
    assert!(removal.resources.is_empty(), "only the removal is sent");
    drop((tx, rx));

    // A proxy that reconnects holding current versions is sent nothing it already has.
    apply(&client, SERVICE).await;
    let (tx, mut rx) = delta_stream(bound).await;
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(NODE)),
        type_url: types::CLUSTER.into(),
        initial_resource_versions: versions.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let resumed = next(&mut rx).await;
    assert!(
        resumed.resources.is_empty(),
        "resent: {:?}",
        resumed
            .resources
            .iter()
            .map(|r| &r.name)
            .collect::<Vec<_>>()
    );
    assert!(resumed.removed_resources.is_empty());
}

async fn sotw_first(
    bound: Bound,
    first: DiscoveryRequest,
) -> Result<
    (
        mpsc::Sender<DiscoveryRequest>,
        Streaming<DiscoveryResponse>,
        DiscoveryResponse,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let mut stream = ads(bound)
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an answer in time")
    {
        Ok(Some(r)) => Ok((tx, stream, r)),
        Ok(None) => Err(tonic::Status::unknown("stream closed")),
        Err(status) => Err(status),
    }
}

#[tokio::test]
async fn hostile_first_requests_are_refused_with_the_field_named() {
    let (_app, bound, _client) = start().await;
    let cds = |node| DiscoveryRequest {
        node,
        type_url: types::CLUSTER.into(),
        ..Default::default()
    };
    let cases = [
        (None, "node"),
        (
            Some(node(
                "sidecar~not-an-ip~a.default~default.svc.cluster.local",
            )),
            "node.id",
        ),
        (
            Some(node(
                "gateway~198.18.0.1~a.default~default.svc.cluster.local",
            )),
            "node.id",
        ),
        (
            Some(node(&format!(
                "sidecar~198.18.0.1~{}.default~x",
                "a".repeat(5000)
            ))),
            "node.id",
        ),
        (
            Some({
                let mut n = node(NODE);
                n.metadata
                    .as_mut()
                    .unwrap()
                    .fields
                    .insert("INTERCEPTION_MODE".into(), string("SOMETIMES"));
                n
            }),
            "INTERCEPTION_MODE",
        ),
    ];
    for (n, field) in cases {
        let Err(status) = sotw_first(bound, cds(n)).await else {
            panic!("{field}: accepted")
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    // A request beyond the message size limit is refused by the transport, and straitd lives on.
    let mut huge = cds(Some(node(NODE)));
    huge.resource_names = vec!["x".repeat(1024); 5 * 1024];
    assert!(sotw_first(bound, huge).await.is_err());
    assert!(sotw_first(bound, cds(Some(node(NODE)))).await.is_ok());
}

#[tokio::test]
async fn nack_is_reported_with_the_proxys_text_and_unknown_types_are_ignored() {
    let (_app, bound, client) = start().await;
    apply(&client, SERVICE).await;
    let unknown = DiscoveryRequest {
        node: Some(node(NODE)),
        type_url: "type.googleapis.com/envoy.config.Nothing".into(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(8);
    tx.send(unknown).await.unwrap();
    tx.send(DiscoveryRequest {
        type_url: types::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = ads(bound)
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = next(&mut stream).await;
    assert_eq!(
        response.type_url,
        types::CLUSTER,
        "the unknown type got no answer"
    );

    tx.send(DiscoveryRequest {
        type_url: types::CLUSTER.into(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(strait_proto::xds::google::rpc::Status {
            code: 3,
            message: "bad cluster: you know why".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = client
            .call(Method::GET, "/debug/syncz", None)
            .await
            .unwrap();
        let cds = &status["proxies"][0]["types"][types::CLUSTER];
        if cds["state"] == "NACKED" {
            assert_eq!(cds["nack"], "bad cluster: you know why");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no NACK in {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A stale nonce neither ACKs nor clears the NACK.
    tx.send(DiscoveryRequest {
        type_url: types::CLUSTER.into(),
        response_nonce: "0-999".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let status = client
        .call(Method::GET, "/debug/syncz", None)
        .await
        .unwrap();
    assert_eq!(
        status["proxies"][0]["types"][types::CLUSTER]["state"],
        "NACKED"
    );
}

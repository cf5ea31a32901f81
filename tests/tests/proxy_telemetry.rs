//! Istio's standard metrics from `strait-proxy run` sidecars (issue 4, Telemetry): after N
//! requests sleep → httpbin over mTLS, sleep's sidecar reports them on 15090 as the source and
//! httpbin's on 15020 (merged) as the destination, with sleep's SPIFFE id and `mutual_tls`; the
//! intruder's request, refused by httpbin's RBAC, is counted there with response code 403.
//! Istio's HTTP metadata exchange between the sidecars fills the peer's workload, app,
//! version, canonical service and cluster on both sides; neither app sees its headers, and
//! metadata forged by sleep's app is replaced by its sidecar's own (HTTP/1.1 and HTTP/2).
//! The same over a TCP port: connections opened and closed and bytes both ways, on each side.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use strait_proxy::telemetry::peer::Exchange;
use strait_proxy::xds::NodeInfo;
use strait_tests::mesh::{HTTPBIN, MtlsMesh, Protocol, SidecarKind, mtls_mesh};
use strait_tests::telemetry::{access_events, scrape, sum, wait_for_metric};
use strait_tests::upstream::{HttpResponse, http_exchange, http_get, http_request};
use strait_tests::{eventually, eventually_matches};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const INTRUDER: &str = "spiffe://cluster.local/ns/default/sa/intruder";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const N: f64 = 10.0;
/// Requests whose app forges the metadata exchange.
const FORGED: f64 = 5.0;
const PEER_METADATA: &str = "x-envoy-peer-metadata";
const PEER_METADATA_ID: &str = "x-envoy-peer-metadata-id";
const FORGED_ID: &str = "sidecar~198.18.0.66~forged-1.default~default.svc.cluster.local";

/// Well-formed metadata of a workload `forged` in namespace `forged`, as an app could write it.
fn forged_metadata() -> Result<String> {
    let node = NodeInfo::new(FORGED_ID, "forged.forged")
        .meta("WORKLOAD_NAME", "forged")
        .meta("NAMESPACE", "forged")
        .meta("CLUSTER_ID", "forged");
    let x = Exchange::new(&node).context("no exchange headers")?;
    Ok(x.metadata().to_str()?.to_owned())
}

/// The mTLS mesh of strait-proxy sidecars for `protocol`, once sleep reaches httpbin.
async fn ready_mesh(protocol: Protocol) -> Result<MtlsMesh> {
    let m = mtls_mesh(SidecarKind::Strait, protocol, Duration::from_secs(3600)).await?;
    let first = eventually_matches(
        &format!("sleep → httpbin over mTLS ({protocol:?})"),
        Duration::from_secs(30),
        || http_get(m.client(), HTTPBIN, "/"),
        |r| r.0 == 200,
    )
    .await;
    first.with_context(|| m.logs())?;
    Ok(m)
}

/// `GET path` from sleep's app with another workload's metadata exchange headers.
async fn get_forged(m: &MtlsMesh, path: &str, forged: &str) -> Result<HttpResponse> {
    http_exchange(
        m.client(),
        "GET",
        HTTPBIN,
        path,
        &[(PEER_METADATA, forged), (PEER_METADATA_ID, FORGED_ID)],
        Bytes::new(),
    )
    .await
}

/// Waits until `addr` counts `at_least` requests with `labels`; no sample may name the forged
/// workload (its sidecar replaced the app's metadata). Returns the exposition.
async fn requests_unforged(
    m: &MtlsMesh,
    addr: SocketAddr,
    labels: &[(&str, &str)],
    at_least: f64,
) -> Result<String> {
    let text = wait_for_metric(addr, "istio_requests_total", labels, at_least)
        .await
        .with_context(|| m.logs())?;
    ensure!(!text.contains("forged"), "{text}");
    Ok(text)
}

/// The metadata exchange stays between the sidecars: httpbin's app never sees its headers,
/// nor does sleep's app in `response` (when given).
fn exchange_unseen(m: &MtlsMesh, response: Option<&HttpResponse>) -> Result<()> {
    for h in [PEER_METADATA, PEER_METADATA_ID] {
        if let Some(r) = response {
            ensure!(
                r.header(h).is_none(),
                "sleep's app got {h}: {:?}",
                r.headers
            );
        }
        ensure!(
            m.app.last_header(h).is_none(),
            "httpbin's app got {h}: {:?}",
            m.app.last_header(h)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strait_sidecars_report_istio_metrics() -> Result<()> {
    let m = ready_mesh(Protocol::Http).await?;
    for i in 0..N as u32 {
        let r = http_request(m.client(), "GET", HTTPBIN, &format!("/{i}")).await?;
        ensure!(r.status == 200, "request {i}: {} {}", r.status, r.body);
        exchange_unseen(&m, Some(&r))?;
    }
    // sleep's app forges another workload's metadata: its sidecar replaces it with its own.
    let forged = forged_metadata()?;
    for i in 0..FORGED as u32 {
        let r = get_forged(&m, &format!("/forged/{i}"), &forged).await?;
        ensure!(r.status == 200, "forged {i}: {} {}", r.status, r.body);
        exchange_unseen(&m, None)?;
    }
    let (status, body) = http_get(m.intruder(), HTTPBIN, "/").await?;
    ensure!(status == 403, "the intruder got {status} {body}");

    // sleep's sidecar (ips[0]) reports its requests as the source, on 15090.
    let sleep = SocketAddr::new(m.ips[0], 15090);
    let outbound = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("source_workload_namespace", "default"),
        ("source_principal", SLEEP),
        ("source_cluster", "cluster1"),
        ("source_app", "sleep"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("destination_service", HTTPBIN),
        ("destination_workload_namespace", "default"),
        // From httpbin's sidecar's metadata, in its responses.
        ("destination_workload", "httpbin"),
        ("destination_app", "httpbin"),
        ("destination_version", "unknown"),
        ("destination_canonical_service", "httpbin"),
        ("destination_canonical_revision", "latest"),
        ("destination_cluster", "cluster1"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    let text = requests_unforged(&m, sleep, &outbound, N + FORGED).await?;
    for histogram in [
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_count",
        "istio_response_bytes_count",
    ] {
        let n = sum(&text, histogram, &outbound);
        ensure!(n >= N, "{histogram}: {n}\n{text}");
    }

    // httpbin's sidecar (ips[2]) reports them as the destination, on 15020 (merged).
    let httpbin = SocketAddr::new(m.ips[2], 15020);
    let inbound = [
        ("reporter", "destination"),
        ("source_principal", SLEEP),
        ("source_workload_namespace", "default"),
        // From sleep's sidecar's metadata, in its requests (the forged ones too).
        ("source_workload", "sleep"),
        ("source_app", "sleep"),
        ("source_version", "unknown"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "cluster1"),
        ("destination_workload", "httpbin"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", HTTPBIN_ID),
        ("destination_service", HTTPBIN),
        ("destination_cluster", "cluster1"),
        ("destination_app", "httpbin"),
        ("destination_canonical_service", "httpbin"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    requests_unforged(&m, httpbin, &inbound, N + FORGED).await?;
    // The exchange happens before RBAC, so the refused intruder is known by its workload.
    let denied = [
        ("reporter", "destination"),
        ("source_workload", "intruder"),
        ("source_principal", INTRUDER),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "403"),
    ];
    wait_for_metric(httpbin, "istio_requests_total", &denied, 1.0)
        .await
        .with_context(|| m.logs())?;
    // One access event per request on each side: sleep's names the upstream cluster,
    // httpbin's the peer's principal and the x-request-id sleep's sidecar added.
    let (sleep_sidecar, httpbin_sidecar, mesh) = (&m.sidecars[1], &m.sidecars[0], &m);
    eventually("the access logs", Duration::from_secs(10), || async move {
        let outbound = access_events(
            &sleep_sidecar.log_tail(400),
            &[
                "upstream_cluster=\"outbound|8000||httpbin.default.svc.cluster.local\"",
                "response_code=200",
                "method=\"GET\"",
            ],
        );
        let inbound = access_events(
            &httpbin_sidecar.log_tail(400),
            &[
                &format!("peer_principal=\"{SLEEP}\""),
                "upstream_cluster=\"inbound|8000||\"",
                "response_code=200",
            ],
        );
        let with_id = inbound
            .iter()
            .filter(|l| !l.contains("x_request_id=\"-\""))
            .count();
        if outbound.len() as f64 >= N && inbound.len() as f64 >= N && with_id == inbound.len() {
            Ok(())
        } else {
            bail!(
                "{} outbound, {} inbound ({with_id} with an id)\n{}",
                outbound.len(),
                inbound.len(),
                mesh.logs()
            )
        }
    })
    .await?;
    // 15090 serves the same registry.
    let direct = scrape(SocketAddr::new(m.ips[2], 15090)).await?;
    ensure!(
        sum(&direct, "istio_requests_total", &inbound) >= N,
        "15090:\n{direct}"
    );
    m.all_running()?;
    Ok(())
}

/// The metadata exchange between sidecars speaking HTTP/2 to each other (and to the app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strait_sidecars_exchange_metadata_over_http2() -> Result<()> {
    let m = ready_mesh(Protocol::Http2).await?;
    let forged = forged_metadata()?;
    for i in 0..N as u32 {
        let r = get_forged(&m, &format!("/{i}"), &forged).await?;
        ensure!(r.status == 200, "request {i}: {} {}", r.status, r.body);
        exchange_unseen(&m, Some(&r))?;
    }
    let outbound = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("destination_workload", "httpbin"),
        ("destination_canonical_service", "httpbin"),
        ("destination_cluster", "cluster1"),
        ("response_code", "200"),
    ];
    requests_unforged(&m, SocketAddr::new(m.ips[0], 15090), &outbound, N).await?;
    let inbound = [
        ("reporter", "destination"),
        ("source_workload", "sleep"),
        ("source_app", "sleep"),
        ("source_canonical_service", "sleep"),
        ("source_cluster", "cluster1"),
        ("destination_workload", "httpbin"),
        ("response_code", "200"),
    ];
    requests_unforged(&m, SocketAddr::new(m.ips[2], 15020), &inbound, N).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strait_sidecars_report_istio_tcp_metrics() -> Result<()> {
    let m = ready_mesh(Protocol::Tcp).await?;
    for i in 0..N as u32 {
        let (status, body) = http_get(m.client(), HTTPBIN, &format!("/{i}")).await?;
        ensure!(status == 200, "connection {i}: {status} {body}");
    }
    let outbound = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("source_principal", SLEEP),
        ("destination_service", HTTPBIN),
        ("request_protocol", "tcp"),
    ];
    let sleep = SocketAddr::new(m.ips[0], 15090);
    for metric in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        wait_for_metric(sleep, metric, &outbound, N)
            .await
            .with_context(|| m.logs())?;
    }
    // Every connection carried a request out and a response back.
    for metric in [
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        wait_for_metric(sleep, metric, &outbound, N * 10.0)
            .await
            .with_context(|| m.logs())?;
    }
    let inbound = [
        ("reporter", "destination"),
        ("source_principal", SLEEP),
        ("destination_workload", "httpbin"),
        ("destination_principal", HTTPBIN_ID),
        // From Istio's SNI, outbound_.8000_._.<host>.
        ("destination_service", HTTPBIN),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "tcp"),
    ];
    let httpbin = SocketAddr::new(m.ips[2], 15020);
    wait_for_metric(httpbin, "istio_tcp_connections_closed_total", &inbound, N)
        .await
        .with_context(|| m.logs())?;
    m.all_running()?;
    Ok(())
}

//! Two stock Envoys talk mTLS with certificates from straitd's CA, delivered by strait-proxy's
//! SDS agent: a client with the allowed identity gets through; one whose certificate names
//! another service account is refused by the destination's AuthorizationPolicy; plaintext is
//! refused under STRICT. And certificates rotate under steady traffic with no failed request.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strait_tests::envoy::Envoy;
use strait_tests::eventually_matches;
use strait_tests::mesh::{HTTPBIN as HOST, Protocol, SidecarKind, mtls_mesh};
use strait_tests::upstream::http_get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_stock_envoys_with_identity_based_authorization() -> Result<()> {
    let m = mtls_mesh(
        SidecarKind::Envoy,
        Protocol::Http,
        Duration::from_secs(3600),
    )
    .await?;
    let (client, intruder, server) = (m.client(), m.intruder(), m.server());
    let (status, body) = eventually_matches(
        "sleep → httpbin over mTLS",
        Duration::from_secs(30),
        || http_get(client, HOST, "/"),
        |r| r.0 == 200,
    )
    .await?;
    ensure!(
        status == 200 && body.contains(&m.app.body()),
        "{status} {body}"
    );
    let (status, body) = http_get(intruder, HOST, "/").await?;
    ensure!(
        status == 403,
        "a client with another service account got {status}: {body}"
    );
    if let Ok((200, body)) = http_get(server, HOST, "/").await {
        bail!("plaintext reached the STRICT sidecar: {body}");
    }
    ensure!(m.straitd.child.is_running());
    Ok(())
}

/// Serial numbers of the certificates Envoy holds (`/certs`).
async fn serials(envoy: &Envoy) -> Result<Vec<String>> {
    let certs: serde_json::Value = serde_json::from_str(&envoy.admin_get("/certs").await?)?;
    let mut out: Vec<String> = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_steady_traffic_fails_no_request() -> Result<()> {
    let ttl = Duration::from_secs(60);
    let m = mtls_mesh(SidecarKind::Envoy, Protocol::Http, ttl).await?;
    let client = m.client();
    eventually_matches(
        "first request",
        Duration::from_secs(30),
        || http_get(client, HOST, "/"),
        |r| r.0 == 200,
    )
    .await?;
    let server_envoy = m.sidecars[0].envoy().context("an Envoy sidecar")?;
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    // Steady traffic for a bit over two rotations (each at about half of a one-minute
    // lifetime), bounded in count and time.
    while started.elapsed() < ttl + Duration::from_secs(10) && ok + (failed.len() as u32) < 20_000 {
        match http_get(client, HOST, "/").await {
            Ok((200, _)) => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
        if (ok % 50) == 0 {
            seen.extend(serials(server_envoy).await?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.extend(serials(server_envoy).await?);
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The workload leaf and the root are in the list; three or more distinct leaves mean at
    // least two rotations happened while traffic flowed.
    ensure!(
        seen.len() >= 4,
        "too few rotations observed: serials {seen:?}"
    );
    Ok(())
}

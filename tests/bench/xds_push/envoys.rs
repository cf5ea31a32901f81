//! Real Envoys (delta ADS) on one straitd: how long until straitd's `/debug/syncz` shows that
//! every one of them ACKed the EDS push of a change.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use strait_proto::xds::ENDPOINT;
use strait_tests::envoy::{Envoy, IstioMeta, Node, XdsMode, xds_bootstrap};

use crate::mesh::{Plane, marker_addr, move_endpoint};

/// A namespace without a Sidecar: with `INTERCEPTION_MODE: NONE` its proxies get no listeners,
/// so the Envoys bind nothing, yet they see every service (CDS, EDS).
const ENVOY_NAMESPACE: &str = "bench-envoy";
/// Pause between polls of `/debug/syncz`.
pub const POLL: Duration = Duration::from_millis(2);

/// Per-round times and the measured polling interval.
#[derive(Debug)]
pub struct EnvoyRounds {
    pub times: Vec<Duration>,
    pub missed: usize,
    pub mean_poll: Duration,
}

/// Starts `n` Envoys and waits until all are LIVE and listed in syncz with EDS ACKed.
pub async fn start(plane: &Plane, n: usize) -> Result<Vec<Envoy>> {
    let mut envoys = Vec::with_capacity(n);
    for i in 0..n {
        let mut meta = IstioMeta::new("bench-envoy", ENVOY_NAMESPACE);
        meta.network = "network1".into();
        meta.interception_mode = "NONE".into();
        let ip = IpAddr::V4(Ipv4Addr::new(198, 19, 200, i as u8 + 1));
        let node = Node::istio_sidecar(ip, &format!("envoy-{i}"), &meta);
        let bootstrap = xds_bootstrap(&node, plane.xds(), XdsMode::Delta);
        envoys.push(Envoy::start(&format!("envoy-{i}"), &bootstrap).await?);
    }
    for e in &envoys {
        e.wait_ready(Duration::from_secs(60)).await?;
    }
    Ok(envoys)
}

/// The EDS `acked_snapshot` of every delta proxy in syncz, and the current snapshot.
fn eds_acks(syncz: &Value) -> Result<(u64, Vec<u64>)> {
    let snapshot = syncz["snapshot"]
        .as_u64()
        .context("syncz has no \"snapshot\"")?;
    let proxies = syncz["proxies"]
        .as_array()
        .context("syncz has no \"proxies\"")?;
    let acks = proxies
        .iter()
        .map(|p| p["types"][ENDPOINT]["acked_snapshot"].as_u64().unwrap_or(0))
        .collect();
    Ok((snapshot, acks))
}

/// Polls syncz until a snapshot newer than `prev` exists and all `n` proxies ACKed EDS at or
/// past it. Returns the time from `t0` and the number of polls, or `None` past `patience`.
async fn wait_acked(
    plane: &Plane,
    n: usize,
    prev: u64,
    t0: Instant,
    patience: Duration,
) -> Result<(Option<Duration>, u32)> {
    let mut polls = 0;
    while t0.elapsed() < patience {
        polls += 1;
        let (snapshot, acks) = eds_acks(&plane.syncz().await?)?;
        if snapshot > prev && acks.len() == n && acks.iter().all(|a| *a >= snapshot) {
            return Ok((Some(t0.elapsed()), polls));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok((None, polls))
}

/// `rounds` endpoint changes, continuing from change number `*seq`.
pub async fn rounds(
    plane: &Plane,
    envoys: &[Envoy],
    seq: &mut u64,
    rounds: usize,
    gap: Duration,
) -> Result<EnvoyRounds> {
    let n = envoys.len();
    let (snap, acks) = eds_acks(&plane.syncz().await?)?;
    if acks.len() != n || acks.iter().any(|a| *a < snap) {
        bail!(
            "before the first change, syncz lists {} proxies with EDS ACKs {acks:?} (snapshot {snap}); expected {n}",
            acks.len()
        );
    }
    let (mut times, mut missed, mut polls, mut polled) = (Vec::new(), 0, 0u32, Duration::ZERO);
    for _ in 0..rounds {
        tokio::time::sleep(gap).await;
        *seq += 1;
        let (prev, _) = eds_acks(&plane.syncz().await?)?;
        let t0 = Instant::now();
        plane.apply(&move_endpoint(*seq)).await?;
        let (took, p) = wait_acked(plane, n, prev, t0, Duration::from_secs(10)).await?;
        polls += p;
        polled += t0.elapsed();
        match took {
            Some(t) => times.push(t),
            None => missed += 1,
        }
    }
    check_envoys_hold(envoys, &marker_addr(*seq)).await?;
    let mean_poll = polled / polls.max(1);
    Ok(EnvoyRounds {
        times,
        missed,
        mean_poll,
    })
}

/// Cross-checks on Envoy's side that the last change really arrived.
async fn check_envoys_hold(envoys: &[Envoy], addr: &str) -> Result<()> {
    for e in envoys {
        let clusters = e.clusters().await?;
        if !clusters.contains(&format!("::{addr}:")) {
            bail!(
                "Envoy {} does not hold endpoint {addr} after syncz reported its ACK",
                e.child().name()
            );
        }
    }
    Ok(())
}

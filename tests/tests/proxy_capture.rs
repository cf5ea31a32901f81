//! Capture conformance: with `INTERCEPTION_MODE: REDIRECT` straitd sends `virtualOutbound`
//! (0.0.0.0:15001) and a `bind_to_port: false` listener per service port (`0.0.0.0_9080`); an
//! iptables rule redirects connections to one address (a stand-in for a service VIP) on that
//! port to 15001, and the sidecar must hand each to the listener of its original destination
//! (SO_ORIGINAL_DST) and route it by Host. Stock Envoy first,
//! then strait-proxy, one after the other (both bind 15001).
//!
//! Needs root and iptables (`tests/run` installs it); fails, never skips, without them. The
//! rule matches only this test's VIP (198.18.0.0/15, reserved for benchmarking) and port, and
//! is removed when the test ends, also on failure.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use strait_tests::controlplane::Straitd;
use strait_tests::mesh::{Sidecar, SidecarKind};
use strait_tests::upstream::{EchoServer, http_request};
use strait_tests::{eventually_matches, ports, process};

const HOST: &str = "ratings.default.svc.cluster.local";
const PORT: u16 = 9080;

/// An iptables nat OUTPUT rule, removed on drop.
struct Redirect {
    args: Vec<String>,
}

impl Redirect {
    fn add(vip: Ipv4Addr, port: u16, to: u16) -> Result<Redirect> {
        let args: Vec<String> = [
            "-t",
            "nat",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &format!("{vip}/32"),
            "--dport",
            &port.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &to.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut add = args.clone();
        add.insert(2, "-A".into());
        let out = Command::new("iptables")
            .args(&add)
            .output()
            .context("running iptables (tests/run installs it; the test needs root)")?;
        ensure!(
            out.status.success(),
            "iptables {add:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Redirect { args })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let mut del = self.args.clone();
        del.insert(2, "-D".into());
        let _ = Command::new("iptables").args(&del).output();
    }
}

fn config(app: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-1, namespace: default}}
spec:
  address: {ip}
  ports: {{http: {port}}}
  labels: {{app: ratings}}
"#,
        ip = app.ip(),
        port = app.port(),
    )
}

async fn through_capture(kind: SidecarKind, straitd: &Straitd, vip: Ipv4Addr) -> Result<()> {
    let ip = IpAddr::V4(ports::unique_loopback());
    let sidecar = Sidecar::start_with(
        kind,
        straitd,
        "productpage",
        "productpage",
        ip,
        Duration::from_secs(3600),
        "REDIRECT",
    )
    .await?;
    let dst = SocketAddr::from((vip, PORT));
    let response = eventually_matches(
        &format!("{kind:?}: a request to the VIP through 15001"),
        Duration::from_secs(30),
        || http_request(dst, "GET", HOST, "/"),
        |r| r.status == 200,
    )
    .await
    .with_context(|| sidecar.log_tail(40))?;
    ensure!(
        response.body.contains("upstream=ratings"),
        "{kind:?}: {}",
        response.body
    );
    let expected = match kind {
        SidecarKind::Envoy => "envoy",
        SidecarKind::Strait => "strait",
    };
    ensure!(
        response.header("server") == Some(expected),
        "{kind:?}: answered by {:?}",
        response.header("server")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_outbound_is_handed_to_the_original_destination_listener() -> Result<()> {
    if !nix_is_root() {
        bail!("this test needs root (iptables REDIRECT); run it as root, as tests/run does");
    }
    let store = process::tempdir_for("store")?;
    let straitd = Straitd::start("cluster1", "network1", store.path()).await?;
    let app = EchoServer::start("ratings").await?;
    // One address per test process, inside 198.18.0.0/15 (routed off-host, so nothing
    // answers there unless the redirect works).
    let pid = std::process::id();
    let vip = Ipv4Addr::new(198, 18, (pid >> 8) as u8, (pid & 0xff) as u8 | 1);
    straitd.apply(&config(app.addr())).await?;
    let _redirect = Redirect::add(vip, PORT, 15001)?;
    through_capture(SidecarKind::Envoy, &straitd, vip).await?;
    through_capture(SidecarKind::Strait, &straitd, vip).await?;
    Ok(())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

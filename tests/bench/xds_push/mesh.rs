//! The benchmark's side of straitd: starting it, the config it serves, applying changes over
//! the HTTP API, and reading `/debug/syncz`, `/metrics` and its RSS.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use strait_tests::controlplane::Straitd;
use strait_tests::process::tempdir_for;
use strait_tests::upstream::http_request;
use tempfile::TempDir;

/// Namespace of the services and of the simulated clients.
pub const NAMESPACE: &str = "default";
/// The port every service listens on.
pub const PORT: u16 = 8080;

/// A straitd for one part of the benchmark, with the store directory it owns.
pub struct Plane {
    pub straitd: Straitd,
    _store: TempDir,
}

impl Plane {
    /// Starts a release straitd in universal mode with default flags (so the default push
    /// debounce) and logging at `info` (the harness's default is `debug`, which writes a line
    /// per push and would be measured too).
    pub async fn start() -> Result<Plane> {
        let store = tempdir_for("bench-store")?;
        let straitd = Straitd::start_for_bench("cluster1", "network1", store.path()).await?;
        Ok(Plane {
            straitd,
            _store: store,
        })
    }

    pub fn xds(&self) -> SocketAddr {
        self.straitd.xds()
    }

    /// POSTs `yaml` to `/api/v1/apply`; fails with straitd's answer unless it is a 200.
    pub async fn apply(&self, yaml: &str) -> Result<()> {
        let path = format!("/api/v1/apply?namespace={NAMESPACE}");
        let (status, body) = post(self.straitd.http(), &path, yaml.to_owned()).await?;
        if status != 200 {
            bail!("POST {path}: status {status}: {body}");
        }
        Ok(())
    }

    /// `/debug/syncz` as JSON.
    pub async fn syncz(&self) -> Result<Value> {
        let r = http_request(self.straitd.http(), "GET", "straitd", "/debug/syncz").await?;
        if r.status != 200 {
            bail!("/debug/syncz: status {}: {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).context("/debug/syncz is not JSON")
    }

    /// `strait_xds_pushed_bytes_total` by (type, protocol).
    pub async fn pushed_bytes(&self) -> Result<BTreeMap<(String, String), u64>> {
        let r = http_request(self.straitd.http(), "GET", "straitd", "/metrics").await?;
        if r.status != 200 {
            bail!("/metrics: status {}", r.status);
        }
        Ok(parse_pushed_bytes(&r.body))
    }

    /// straitd's resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss(&self) -> Result<u64> {
        let pid = self.straitd.child.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        Ok(kb * 1024)
    }

    /// Fails, with the tail of straitd's log, if it has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.straitd.child.ensure_running()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.straitd.child.log_tail(n)
    }
}

fn parse_pushed_bytes(text: &str) -> BTreeMap<(String, String), u64> {
    let label = |labels: &str, key: &str| {
        let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
        let end = labels[start..].find('"')? + start;
        Some(labels[start..end].to_owned())
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("strait_xds_pushed_bytes_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once('}')?;
            let value = value.trim().parse::<f64>().ok()? as u64;
            Some(((label(labels, "type")?, label(labels, "protocol")?), value))
        })
        .collect()
}

/// A one-shot HTTP/1.1 POST on a fresh connection; returns status and body.
async fn post(addr: SocketAddr, path: &str, body: String) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = Request::builder()
        .method("POST")
        .uri(path)
        .header(HOST, "straitd")
        .header(CONNECTION, "close")
        .header(CONTENT_TYPE, "application/yaml")
        .body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(30), async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .context("POST took longer than 30s")??;
    conn.abort();
    Ok(response)
}

/// The mesh served: `services` STATIC ServiceEntries `svc-0`…, each selecting its own
/// WorkloadEntries; `svc-0` has `first` endpoints (one of which moves), the others `others`.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub services: usize,
    pub first: usize,
    pub others: usize,
}

impl Shape {
    /// Endpoints in the whole mesh.
    pub fn endpoints(self) -> usize {
        self.first + self.services.saturating_sub(1) * self.others
    }
}

/// Most endpoints a mesh may have: each gets its own address in 198.18.0.0/16.
pub const MAX_ENDPOINTS: usize = 64_000;

pub fn host(svc: usize) -> String {
    format!("svc-{svc}.{NAMESPACE}.svc.cluster.local")
}

/// EDS name of `svc-0`, the service whose endpoint changes (Istio's cluster name).
pub fn target_cluster() -> String {
    format!("outbound|{PORT}||{}", host(0))
}

/// Address of the `n`-th endpoint, from 198.18.0.0/15 (the benchmarking range).
/// `n` counts every endpoint of the mesh; [`Shape::endpoints`] keeps it below 64000.
fn endpoint_addr(n: usize) -> String {
    format!("198.18.{}.{}", n / 250, n % 250 + 1)
}

/// The moving endpoint's address for change number `seq` (198.19.x.y).
pub fn marker_addr(seq: u64) -> String {
    format!("198.19.{}.{}", (seq / 250) % 256, seq % 250 + 1)
}

fn workload_entry(out: &mut String, name: &str, svc: usize, addr: &str) {
    let _ = write!(
        out,
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  address: {addr}\n  ports: {{http: {PORT}}}\n  labels: {{app: svc-{svc}}}\n"
    );
}

/// straitd accepts at most 1000 documents per apply.
const DOCS_PER_APPLY: usize = 500;

/// The whole config, in applies of at most [`DOCS_PER_APPLY`] documents; the moving endpoint
/// (`svc-0-0`) starts at [`marker_addr`]`(0)`.
pub fn config_yaml(shape: Shape) -> Vec<String> {
    let text = all_config(shape);
    let docs: Vec<&str> = text.split("---\n").filter(|d| !d.is_empty()).collect();
    docs.chunks(DOCS_PER_APPLY)
        .map(|c| format!("---\n{}", c.join("---\n")))
        .collect()
}

fn all_config(shape: Shape) -> String {
    let mut out = String::new();
    let mut n = 0;
    for svc in 0..shape.services {
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: svc-{svc}, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports:\n  - {{number: {PORT}, name: http, protocol: HTTP}}\n\
             \x20 workloadSelector:\n    labels: {{app: svc-{svc}}}\n",
            host = host(svc)
        );
        let count = if svc == 0 { shape.first } else { shape.others };
        for ep in 0..count {
            let addr = if svc == 0 && ep == 0 {
                marker_addr(0)
            } else {
                endpoint_addr(n)
            };
            n += 1;
            workload_entry(&mut out, &format!("svc-{svc}-{ep}"), svc, &addr);
        }
    }
    out
}

/// One endpoint change: the moving WorkloadEntry re-applied with the address of change `seq`.
pub fn move_endpoint(seq: u64) -> String {
    let mut out = String::new();
    workload_entry(&mut out, "svc-0-0", 0, &marker_addr(seq));
    out
}

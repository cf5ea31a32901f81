//! A real `straitd` on its own loopback address with Istio's ports, and `straitctl` against it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::process::Child;
use crate::upstream::http_request;
use crate::{bins, eventually, ports};

/// A running control plane.
/// The harness's straitd log filter: everything a failing test may need.
const DEBUG_LOG: &str = "info,strait_controlplane=debug";

#[derive(Debug)]
pub struct Straitd {
    pub child: Child,
    pub ip: Ipv4Addr,
    pub store: PathBuf,
}

impl Straitd {
    /// Starts straitd in universal mode on a fresh loopback address, keeping config in `store`,
    /// and waits until its HTTP port answers.
    pub async fn start(cluster: &str, network: &str, store: &Path) -> Result<Straitd> {
        let ip = ports::control_plane_ip()?;
        Self::start_on(ip, cluster, network, store).await
    }

    /// Like [`Straitd::start`] on a given address (to restart on the same one).
    pub async fn start_on(
        ip: Ipv4Addr,
        cluster: &str,
        network: &str,
        store: &Path,
    ) -> Result<Straitd> {
        Self::start_with(ip, cluster, network, store, &[]).await
    }

    /// Like [`Straitd::start_on`] with more command-line arguments (e.g. `--ca-dir`).
    pub async fn start_with(
        ip: Ipv4Addr,
        cluster: &str,
        network: &str,
        store: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Straitd> {
        Self::launch(ip, cluster, network, store, extra, DEBUG_LOG).await
    }

    /// Like [`Straitd::start`] logging at `info`, as in production: for benchmarks, where the
    /// harness's `debug` lines (one per push, per certificate) would be measured too.
    pub async fn start_for_bench(cluster: &str, network: &str, store: &Path) -> Result<Straitd> {
        let ip = ports::control_plane_ip()?;
        Self::launch(ip, cluster, network, store, &[], "info").await
    }

    async fn launch(
        ip: Ipv4Addr,
        cluster: &str,
        network: &str,
        store: &Path,
        extra: &[&std::ffi::OsStr],
        log: &str,
    ) -> Result<Straitd> {
        let child = Child::builder(&format!("straitd-{cluster}"), bins::straitd()?)
            .args([
                "--cluster",
                cluster,
                "--network",
                network,
                "--bind",
                &ip.to_string(),
            ])
            .arg("--store")
            .arg(store)
            .args(extra)
            .env("STRAIT_LOG", log)
            .spawn()?;
        let d = Straitd {
            child,
            ip,
            store: store.to_path_buf(),
        };
        let http = d.http();
        let child = &d.child;
        eventually(
            "straitd to answer /ready",
            Duration::from_secs(20),
            || async move {
                child.ensure_running()?;
                let r = http_request(http, "GET", "straitd", "/ready").await?;
                if r.status == 200 {
                    Ok(())
                } else {
                    bail!("status {}", r.status)
                }
            },
        )
        .await?;
        Ok(d)
    }

    pub fn xds(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 15010)
    }

    pub fn http(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 15014)
    }

    pub fn server_url(&self) -> String {
        format!("http://{}", self.http())
    }

    /// Runs `straitctl --server <this> args…`, feeding `stdin`; returns (success, stdout, stderr).
    pub async fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Result<CtlOutput> {
        let mut cmd = tokio::process::Command::new(bins::straitctl()?);
        cmd.arg("--server").arg(self.server_url()).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning straitctl")?;
        if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
            pipe.write_all(input.as_bytes())
                .await
                .context("writing straitctl's stdin")?;
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .context("straitctl did not finish within 30s")??;
        Ok(CtlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `straitctl apply -f -` with `yaml`; fails the test with straitctl's message if refused.
    pub async fn apply(&self, yaml: &str) -> Result<String> {
        let out = self.ctl(&["apply", "-f", "-"], Some(yaml)).await?;
        if !out.success {
            bail!("straitctl apply failed: {}{}", out.stderr, out.stdout);
        }
        Ok(out.stdout)
    }

    /// The proxies straitd reports in `straitctl proxy-status -o json`.
    pub async fn proxy_status(&self) -> Result<Vec<Value>> {
        let out = self.ctl(&["proxy-status", "-o", "json"], None).await?;
        if !out.success {
            bail!("straitctl proxy-status failed: {}", out.stderr);
        }
        let v: Value =
            serde_json::from_str(&out.stdout).context("proxy-status output is not JSON")?;
        Ok(v["proxies"].as_array().cloned().unwrap_or_default())
    }
}

/// What a straitctl run printed.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

//! strait-proxy's SDS agent for one workload identity, bootstrapped the way a VM is: a Strait
//! bootstrap token from `straitctl token create`, the mesh root from straitd's API, then
//! certificates from straitd's CA on 15012, served to a stock Envoy over a Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::controlplane::Straitd;
use crate::process::{self, Child};
use crate::upstream::http_request;
use crate::{bins, eventually};

pub struct SdsAgent {
    pub child: Child,
    socket: PathBuf,
}

impl SdsAgent {
    /// Starts an agent for `spiffe://cluster.local/ns/<namespace>/sa/<sa>` whose certificates
    /// live `ttl`, and waits for its socket.
    pub async fn start(
        straitd: &Straitd,
        namespace: &str,
        sa: &str,
        ttl: Duration,
    ) -> Result<SdsAgent> {
        let out = straitd
            .ctl(
                &[
                    "token",
                    "create",
                    "-n",
                    namespace,
                    "--service-account",
                    sa,
                    "--ttl",
                    "1h",
                ],
                None,
            )
            .await?;
        ensure!(out.success, "token create: {}", out.stderr);
        let root = http_request(straitd.http(), "GET", "straitd", "/api/v1/ca/root").await?;
        ensure!(root.status == 200, "GET /api/v1/ca/root: {}", root.status);
        let dir = process::tempdir_for(&format!("agent-{sa}"))?;
        std::fs::write(dir.path().join("token"), out.stdout.trim())?;
        std::fs::write(dir.path().join("root-cert.pem"), root.body)?;
        let socket = dir.path().join("sds.sock");
        let child = Child::builder(&format!("agent-{sa}"), bins::bin_path("strait-proxy")?)
            .arg("sds")
            .args(["--ca-address", &format!("https://{}:15012", straitd.ip)])
            .arg("--root-cert")
            .arg(dir.path().join("root-cert.pem"))
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .args([
                "--identity",
                &format!("spiffe://cluster.local/ns/{namespace}/sa/{sa}"),
            ])
            .args(["--ttl-seconds", &ttl.as_secs().to_string()])
            .arg("--sds-socket")
            .arg(&socket)
            .dir(dir)
            .spawn()?;
        let (c, s) = (&child, &socket);
        eventually("the SDS socket", Duration::from_secs(30), || async move {
            c.ensure_running()?;
            ensure!(s.exists(), "not yet");
            Ok(())
        })
        .await?;
        Ok(SdsAgent { child, socket })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

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

/// What a workload needs to get its first certificate, as a VM gets it: a Strait bootstrap
/// token (`straitctl token create`) and the mesh root (straitd's API), in a directory of its own.
pub struct WorkloadBootstrap {
    /// The directory holding both (give it to the process that uses them).
    pub dir: tempfile::TempDir,
    /// The token file.
    pub token: PathBuf,
    /// The root certificate file.
    pub root: PathBuf,
}

/// A [`WorkloadBootstrap`] for `spiffe://cluster.local/ns/<namespace>/sa/<sa>`.
pub async fn workload_bootstrap(
    straitd: &Straitd,
    namespace: &str,
    sa: &str,
) -> Result<WorkloadBootstrap> {
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
    let dir = process::tempdir_for(&format!("workload-{sa}"))?;
    let (token, root_path) = (dir.path().join("token"), dir.path().join("root-cert.pem"));
    std::fs::write(&token, out.stdout.trim())?;
    std::fs::write(&root_path, root.body)?;
    Ok(WorkloadBootstrap {
        dir,
        token,
        root: root_path,
    })
}

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
        let WorkloadBootstrap { dir, token, root } =
            workload_bootstrap(straitd, namespace, sa).await?;
        let socket = dir.path().join("sds.sock");
        let child = Child::builder(&format!("agent-{sa}"), bins::bin_path("strait-proxy")?)
            .arg("sds")
            .args(["--ca-address", &format!("https://{}:15012", straitd.ip)])
            .arg("--root-cert")
            .arg(&root)
            .arg("--token-file")
            .arg(&token)
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

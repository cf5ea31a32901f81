//! One root across clusters: `straitctl ca root` makes a mesh root, `straitctl ca intermediate`
//! a CA per cluster under it, and each straitd runs on its plug-in files. A workload certified
//! by cluster1's CA is trusted by cluster2's (it renews there by presenting its certificate,
//! and its chain verifies to the root cluster2 publishes); a CA under another root refuses it.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use strait_proto::identity::SpiffeId;
use strait_proxy::certs::client::{Auth, CaClient, CaClientConfig};
use strait_tests::controlplane::Straitd;
use strait_tests::upstream::http_request;
use strait_tests::{bins, ports, process};

async fn straitctl(args: &[&OsStr]) -> Result<()> {
    let out = tokio::process::Command::new(bins::straitctl()?)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running straitctl")?;
    ensure!(
        out.status.success(),
        "straitctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn root(out: &Path) -> Result<()> {
    straitctl(&[
        "ca".as_ref(),
        "root".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .await
}

async fn intermediate(root: &Path, cluster: &str, out: &Path) -> Result<()> {
    straitctl(&[
        "ca".as_ref(),
        "intermediate".as_ref(),
        "--root".as_ref(),
        root.as_os_str(),
        "--cluster".as_ref(),
        cluster.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .await
}

async fn straitd_on(cluster: &str, ca_dir: &Path, store: &Path) -> Result<Straitd> {
    Straitd::start_with(
        ports::control_plane_ip()?,
        cluster,
        "network1",
        store,
        &["--ca-dir".as_ref(), ca_dir.as_os_str()],
    )
    .await
}

/// A CA client of `straitd` that trusts `root_file`, with a bootstrap token for `sa`.
async fn client(straitd: &Straitd, cluster: &str, root_file: &Path, sa: &str) -> Result<CaClient> {
    let out = straitd
        .ctl(
            &["token", "create", "-n", "default", "--service-account", sa],
            None,
        )
        .await?;
    ensure!(out.success, "token create: {}", out.stderr);
    let token_file = root_file.with_file_name(format!("token-{cluster}"));
    std::fs::write(&token_file, out.stdout.trim())?;
    let mut config =
        CaClientConfig::new(format!("https://{}:15012", straitd.ip), root_file, cluster);
    config.token_file = Some(token_file);
    Ok(CaClient::new(config)?)
}

async fn published_root(straitd: &Straitd) -> Result<String> {
    let r = http_request(straitd.http(), "GET", "straitd", "/api/v1/ca/root").await?;
    ensure!(r.status == 200, "GET /api/v1/ca/root: {}", r.status);
    Ok(r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_of_one_root_trust_each_other_and_not_another_root() -> Result<()> {
    let dir = process::tempdir_for("shared-root")?;
    let d = dir.path();
    root(&d.join("root")).await?;
    intermediate(&d.join("root"), "cluster1", &d.join("cluster1")).await?;
    intermediate(&d.join("root"), "cluster2", &d.join("cluster2")).await?;
    root(&d.join("other-root")).await?;
    intermediate(&d.join("other-root"), "cluster3", &d.join("cluster3")).await?;

    let one = straitd_on("cluster1", &d.join("cluster1"), &d.join("store1")).await?;
    let two = straitd_on("cluster2", &d.join("cluster2"), &d.join("store2")).await?;
    let three = straitd_on("cluster3", &d.join("cluster3"), &d.join("store3")).await?;

    // Both clusters publish the one mesh root, not their own intermediate.
    let mesh_root = std::fs::read_to_string(d.join("root/root-cert.pem"))?;
    ensure!(published_root(&one).await? == mesh_root, "cluster1 root");
    ensure!(published_root(&two).await? == mesh_root, "cluster2 root");
    ensure!(
        published_root(&three).await? != mesh_root,
        "cluster3 is under another root"
    );
    let root_file = d.join("root/root-cert.pem");
    let other_root_file = d.join("other-root/root-cert.pem");

    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/sleep".parse()?;
    let ttl = Duration::from_secs(3600);
    let from_one = client(&one, "cluster1", &root_file, "sleep")
        .await?
        .issue(&id, ttl, Auth::Token)
        .await
        .context("cluster1 issuing by token")?;
    ensure!(from_one.identity == id);

    // cluster2's CA authenticates the caller by the certificate cluster1 issued (renewal),
    // and what it issues verifies to the same root (the client checks the chain).
    let from_two = client(&two, "cluster2", &root_file, "sleep")
        .await?
        .issue(&id, ttl, Auth::ClientCert(&from_one))
        .await
        .context("cluster2 renewing a certificate cluster1 issued")?;
    ensure!(from_two.identity == id);
    ensure!(
        from_two.chain_pem != from_one.chain_pem,
        "cluster2 issued a new certificate"
    );
    ensure!(
        from_one.chain_pem.get(1) != from_two.chain_pem.get(1),
        "each cluster signs with its own intermediate"
    );

    // cluster3 (another root) works for its own callers…
    let three_client = client(&three, "cluster3", &other_root_file, "sleep").await?;
    three_client
        .issue(&id, ttl, Auth::Token)
        .await
        .context("cluster3 issuing by token to a client that trusts its root")?;
    // …but refuses cluster1's certificate as a credential (the TLS handshake fails: the chain
    // does not lead to cluster3's root).
    if three_client
        .issue(&id, ttl, Auth::ClientCert(&from_one))
        .await
        .is_ok()
    {
        anyhow::bail!("a CA under another root accepted cluster1's certificate");
    }
    // And a client that trusts only the mesh root refuses cluster3's CA itself.
    let wrong_ca = client(&three, "cluster3", &root_file, "sleep")
        .await?
        .issue(&id, ttl, Auth::Token)
        .await;
    ensure!(
        wrong_ca.is_err(),
        "a client trusting the mesh root accepted a CA under another root"
    );
    for s in [&one, &two, &three] {
        s.child.ensure_running()?;
    }
    Ok(())
}

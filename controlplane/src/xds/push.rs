//! Turns store changes into snapshots: changes are debounced (a burst of applies becomes one
//! push), the mesh is rebuilt off the async threads, and the new snapshot is published.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use super::snapshot::Snapshot;
use crate::dns::HostResolver;
use crate::model::mesh::{ExportDefault, Mesh};
use crate::store::{ConfigStore, StoreError};

/// How long to wait for a burst of changes to end, and the most a push may be delayed.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    pub quiet: Duration,
    pub max: Duration,
}

/// What a snapshot is built from.
#[derive(Clone)]
pub struct Inputs {
    pub store: Arc<dyn ConfigStore>,
    /// The control plane's own network (endpoints that name none are on it).
    pub network: String,
    pub export: ExportDefault,
    /// Resolves east-west gateways registered by host name; `None`: such gateways stay
    /// unreachable (logged once at startup).
    pub dns: Option<HostResolver>,
}

impl Inputs {
    /// Builds a snapshot of the store as it is now, with gateway names as last resolved (and
    /// tells the resolver which names to keep resolving).
    pub fn build(&self) -> Result<Snapshot, StoreError> {
        let revision = self.store.revision();
        let resources = self.store.list(None, None)?;
        let mut mesh = Mesh::build(&resources)
            .with_default_network(&self.network)
            .with_export_default(self.export);
        if let Some(dns) = &self.dns {
            dns.track(mesh.gateway_host_names());
            mesh = mesh.with_gateway_resolution(|h| dns.addrs(h));
        }
        Ok(Snapshot::new(revision, mesh))
    }
}

/// Publishes a new snapshot after each debounced burst of store changes or change of a
/// gateway's resolved addresses, until `tx` has no receivers left. Versions only grow: a
/// rebuild for DNS alone gets the next number even though the store did not change.
pub async fn run(inputs: Inputs, tx: watch::Sender<Arc<Snapshot>>, debounce: Debounce) {
    let mut revisions = inputs.store.subscribe();
    // A write between the first snapshot and this subscription would otherwise wait for the
    // next write to be published.
    if *revisions.borrow() != tx.borrow().version {
        revisions.mark_changed();
    }
    let mut dns_changes = inputs.dns.as_ref().map(HostResolver::changes);
    let mut last_version = tx.borrow().version;
    loop {
        let dns_tick = async {
            match dns_changes.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = revisions.changed() => if r.is_err() { return },
            alive = dns_tick => if !alive { dns_changes = None; continue },
        }
        let first = Instant::now();
        let deadline = first + debounce.max;
        loop {
            let quiet_end = (Instant::now() + debounce.quiet).min(deadline);
            match timeout_at(quiet_end, revisions.changed()).await {
                Ok(Ok(())) if Instant::now() < deadline => continue,
                Ok(Err(_)) => return,
                _ => break,
            }
        }
        revisions.borrow_and_update();
        if let Some(rx) = dns_changes.as_mut() {
            rx.borrow_and_update();
        }
        let i = inputs.clone();
        match tokio::task::spawn_blocking(move || i.build()).await {
            Ok(Ok(mut snapshot)) => {
                snapshot.version = snapshot.version.max(last_version + 1);
                last_version = snapshot.version;
                tracing::info!(
                    version = snapshot.version,
                    services = snapshot.mesh.services.len(),
                    debounced_ms = first.elapsed().as_millis() as u64,
                    "new snapshot"
                );
                if tx.send(Arc::new(snapshot)).is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the store; keeping the previous snapshot")
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot build panicked; keeping the previous snapshot")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::dns::fake::FakeDns;
    use crate::model::yaml::resources;
    use crate::store::{Change, MemoryStore};

    const GATEWAY_BY_NAME: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: eastwest-n2
  namespace: istio-system
  labels: {topology.istio.io/network: n2}
spec: {address: gw.n2.example}
"#;

    async fn next_snapshot(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
        match tokio::time::timeout(Duration::from_secs(20), rx.changed()).await {
            Ok(Ok(())) => rx.borrow_and_update().clone(),
            other => panic!("no new snapshot: {other:?}"),
        }
    }

    fn n2(s: &Snapshot) -> Vec<SocketAddr> {
        s.mesh.gateway_addrs.get("n2").cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_gateway_registered_by_name_is_resolved_into_snapshots_and_follows_dns() {
        let dns = FakeDns::start().await;
        dns.set("gw.n2.example", &["198.18.20.1"], 1);
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let inputs = Inputs {
            store: store.clone(),
            network: "n1".into(),
            export: ExportDefault::All,
            dns: Some(HostResolver::with_nameserver(dns.addr).unwrap_or_else(|e| panic!("{e}"))),
        };
        let first = inputs.build().unwrap_or_else(|e| panic!("{e}"));
        assert!(first.mesh.gateway_addrs.is_empty());
        let (tx, mut rx) = watch::channel(Arc::new(first));
        let debounce = Debounce {
            quiet: Duration::from_millis(5),
            max: Duration::from_millis(50),
        };
        let task = tokio::spawn(run(inputs, tx, debounce));

        let changes = resources(GATEWAY_BY_NAME, "default")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(Change::Upsert)
            .collect();
        store.apply(changes).unwrap_or_else(|e| panic!("{e}"));
        // The store change publishes a snapshot that names the gateway but cannot place it
        // yet; the resolution that follows publishes one with its address.
        let mut s = next_snapshot(&mut rx).await;
        let mut versions = vec![s.version];
        while n2(&s).is_empty() {
            s = next_snapshot(&mut rx).await;
            versions.push(s.version);
        }
        assert_eq!(
            n2(&s),
            ["198.18.20.1:15443"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))]
        );

        // The record changes; once its TTL runs out a new snapshot carries the new address.
        dns.set("gw.n2.example", &["198.18.20.9"], 1);
        while n2(&s)
            != ["198.18.20.9:15443"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))]
        {
            s = next_snapshot(&mut rx).await;
            versions.push(s.version);
        }
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "snapshot versions must grow even when only DNS changed: {versions:?}"
        );
        task.abort();
    }
}

//! Turns store changes into snapshots: changes are debounced (a burst of applies becomes one
//! push), the mesh is rebuilt off the async threads, and the new snapshot is published.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use super::snapshot::Snapshot;
use crate::model::mesh::{ExportDefault, Mesh};
use crate::store::{ConfigStore, StoreError};

/// How long to wait for a burst of changes to end, and the most a push may be delayed.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    pub quiet: Duration,
    pub max: Duration,
}

/// Builds a snapshot of the store as it is now.
pub fn build(
    store: &dyn ConfigStore,
    network: &str,
    export: ExportDefault,
) -> Result<Snapshot, StoreError> {
    let revision = store.revision();
    let resources = store.list(None, None)?;
    Ok(Snapshot::new(
        revision,
        Mesh::build(&resources)
            .with_default_network(network)
            .with_export_default(export),
    ))
}

/// Publishes a new snapshot after each debounced burst of store changes, until `tx` has no
/// receivers left.
pub async fn run(
    store: Arc<dyn ConfigStore>,
    network: String,
    export: ExportDefault,
    tx: watch::Sender<Arc<Snapshot>>,
    debounce: Debounce,
) {
    let mut revisions = store.subscribe();
    loop {
        if revisions.changed().await.is_err() {
            return;
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
        let (s, n) = (store.clone(), network.clone());
        match tokio::task::spawn_blocking(move || build(s.as_ref(), &n, export)).await {
            Ok(Ok(snapshot)) => {
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

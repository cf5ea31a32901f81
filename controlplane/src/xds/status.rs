//! What every connected proxy has been sent and what it accepted: `straitctl proxy-status`
//! and the debug endpoint read this.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use super::proxy::Proxy;

/// One connected stream's state, per type.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub cluster_id: String,
    pub namespace: String,
    pub network: String,
    pub locality: String,
    /// `delta` or `sotw`.
    pub protocol: &'static str,
    pub connected_at_unix: u64,
    pub types: BTreeMap<String, TypeStatus>,
    /// What generation reads of this proxy, for the per-proxy config dump.
    #[serde(skip)]
    pub proxy: Option<Arc<Proxy>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// Snapshot version of the last response sent for this type.
    pub sent_snapshot: u64,
    pub sent_version: String,
    pub sent_nonce: String,
    /// Snapshot version the proxy last ACKed.
    pub acked_snapshot: u64,
    pub acked_version: String,
    /// The proxy's error text from its last NACK, while that NACK is the latest answer.
    pub nack: Option<String>,
    pub resources: usize,
}

impl TypeStatus {
    /// `SYNCED`, `NACKED`, or `STALE` (sent but not yet acknowledged), as `istioctl` says it.
    pub fn state(&self) -> &'static str {
        if self.nack.is_some() {
            "NACKED"
        } else if !self.sent_nonce.is_empty() && self.acked_snapshot == self.sent_snapshot {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// All connections, keyed by a per-process connection id.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<u64, ProxyStatus>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        // A panic while holding this lock leaves plain data; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connect(&self, conn: u64, status: ProxyStatus) {
        self.lock().insert(conn, status);
    }

    pub fn disconnect(&self, conn: u64) {
        self.lock().remove(&conn);
    }

    pub fn update(&self, conn: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = self.lock().get_mut(&conn) {
            f(p.types.entry(type_url.to_string()).or_default());
        }
    }

    /// The connected proxy with this node id, if any.
    pub fn proxy(&self, node_id: &str) -> Option<Arc<Proxy>> {
        self.lock()
            .values()
            .find(|p| p.node_id == node_id)
            .and_then(|p| p.proxy.clone())
    }

    pub fn list(&self) -> Vec<ProxyStatus> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

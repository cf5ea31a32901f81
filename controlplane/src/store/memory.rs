//! [`MemoryStore`]: the config store in memory, with the same semantics as the sled store
//! (atomic batches, revisions, notifications, document-form records) but no durability.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::{Change, ConfigStore, Revision, StoreError, decode, stage};
use crate::model::{Kind, Resource, ResourceKey};

/// A config store in memory, for tests. Nothing survives the value.
pub struct MemoryStore {
    state: Mutex<State>,
    revision: watch::Sender<Revision>,
}

struct State {
    /// Each resource in its stored (document, JSON) form, as the sled store keeps it.
    records: BTreeMap<ResourceKey, Vec<u8>>,
    revision: Revision,
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        MemoryStore {
            state: Mutex::new(State {
                records: BTreeMap::new(),
                revision: 0,
            }),
            revision: watch::Sender::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch: `apply` only mutates
        // after everything that can fail has succeeded.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore for MemoryStore {
    fn apply(&self, changes: Vec<Change>) -> Result<Revision, StoreError> {
        let mut state = self.state();
        let staged = stage(changes, |key| Ok(state.records.contains_key(key)))?;
        if staged.is_empty() {
            return Ok(state.revision);
        }
        let revision = state
            .revision
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt {
                key: "revision".into(),
                reason: "the revision counter is exhausted".into(),
            })?;
        for (key, record) in staged {
            match record {
                Some(bytes) => state.records.insert(key, bytes),
                None => state.records.remove(&key),
            };
        }
        state.revision = revision;
        // Still under the lock, so subscribers see revisions in order.
        self.revision.send_replace(revision);
        Ok(revision)
    }

    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.state()
            .records
            .get(key)
            .map(|bytes| decode(key, bytes))
            .transpose()
    }

    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError> {
        self.state()
            .records
            .iter()
            .filter(|(key, _)| {
                kind.is_none_or(|k| key.kind == k) && namespace.is_none_or(|ns| key.namespace == ns)
            })
            .map(|(key, bytes)| decode(key, bytes))
            .collect()
    }

    fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    crate::store::suite::config_store_suite!(((), MemoryStore::new()));
}

//! The config store: where universal mode (no Kubernetes) keeps its config.
//!
//! A [`ConfigStore`] holds [`Resource`]s by [`ResourceKey`] and applies changes in atomic
//! batches, each of which advances a persisted [`Revision`]. Subscribers learn of every new
//! revision through a [`tokio::sync::watch`] channel and re-read what they need.
//!
//! Two implementations share one set of semantics (and one test suite):
//! - [`SledStore`]: on disk (sled), durable once `apply` returns `Ok`;
//! - [`MemoryStore`]: in memory, for tests.
//!
//! Both keep each resource in its document form (`apiVersion`, `kind`, `metadata`, `spec`, see
//! [`document`]) as JSON and parse it again when loading, so a record that is corrupt or that a
//! newer model no longer accepts is reported with its key instead of crashing the control plane.
//! A resource that would not read back (for example a hand-built one with an invalid name) is
//! refused at `apply` with [`StoreError::Invalid`], so the store never holds what it cannot load.

mod memory;
mod sled;
#[cfg(test)]
mod suite;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::model::{Kind, Resource, ResourceKey, document};

pub use self::memory::MemoryStore;
pub use self::sled::SledStore;

/// The store's version counter: advanced by one for every applied batch, never reused.
pub type Revision = u64;

/// One change of a batch.
// Changes are built once and moved into `apply`; boxing the resource would only add an
// allocation and noise at every call site.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create the resource, or replace the one with the same key.
    Upsert(Resource),
    /// Remove the resource; the batch fails with [`StoreError::NotFound`] if it does not exist.
    Delete(ResourceKey),
}

/// Where config lives, with atomic, durable, versioned batches.
pub trait ConfigStore: Send + Sync + 'static {
    /// Applies `changes` in order: all of them or none.
    ///
    /// When it returns `Ok`, the write is durable (it survives `kill -9`). A `Delete` of a key that
    /// does not exist (at that point of the batch) fails the whole batch with
    /// [`StoreError::NotFound`]. Returns the new revision, strictly greater than every earlier one
    /// and persisted with the batch. An empty batch changes nothing and returns the current
    /// revision.
    fn apply(&self, changes: Vec<Change>) -> Result<Revision, StoreError>;

    /// The resource stored under `key`, if any.
    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError>;

    /// The stored resources of `kind` in `namespace`, sorted by key. `None` means all kinds / all
    /// namespaces.
    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError>;

    /// The revision of the last applied batch (0 for a new store).
    fn revision(&self) -> Revision;

    /// A receiver that is notified with the new revision after each successful `apply`.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision>;
}

/// Why a store operation failed. Every message names the key or the directory concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A `Delete` named a key that does not exist.
    #[error("{0} not found")]
    NotFound(ResourceKey),
    /// An `Upsert` carried a resource that would not read back (invalid name, invalid spec…).
    #[error("refusing to store {key}: {reason}")]
    Invalid { key: ResourceKey, reason: String },
    /// A stored record could not be read: unreadable bytes, an invalid document, or a document
    /// that a newer model refuses. `key` is the raw store key.
    #[error("corrupt record {key:?} in the config store: {reason}")]
    Corrupt { key: String, reason: String },
    /// Another process (or another store in this process) has the directory open.
    #[error("config store {} is in use by another process (could not lock {})", dir.display(), dir.join(self::sled::LOCK_FILE).display())]
    Locked { dir: PathBuf },
    /// The directory was written by a newer Strait with a format this build does not know.
    #[error(
        "config store {} has format version {found}; this build of Strait reads versions up to {supported}",
        dir.display()
    )]
    UnsupportedFormat {
        dir: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The storage engine failed; `context` says what was being done, and where.
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: ::sled::Error,
    },
}

/// What a batch does to each key it touches, after batch-internal ordering is resolved:
/// `Some(document bytes)` to write, `None` to remove.
type Staged = BTreeMap<ResourceKey, Option<Vec<u8>>>;

/// Resolves a batch against the current contents (`exists`), encoding every upsert. Fails on
/// the first `Delete` of a key that does not exist at that point of the batch, and on the first
/// resource that would not read back.
fn stage(
    changes: Vec<Change>,
    mut exists: impl FnMut(&ResourceKey) -> Result<bool, StoreError>,
) -> Result<Staged, StoreError> {
    let mut staged = Staged::new();
    for change in changes {
        match change {
            Change::Upsert(resource) => {
                let bytes = encode(&resource)?;
                staged.insert(resource.key(), Some(bytes));
            }
            Change::Delete(key) => {
                let present = match staged.get(&key) {
                    Some(pending) => pending.is_some(),
                    None => exists(&key)?,
                };
                if !present {
                    return Err(StoreError::NotFound(key));
                }
                staged.insert(key, None);
            }
        }
    }
    Ok(staged)
}

/// The stored form of a resource: its document as JSON. Checks that it reads back.
fn encode(resource: &Resource) -> Result<Vec<u8>, StoreError> {
    let key = resource.key();
    let bytes =
        serde_json::to_vec(&document::to_value(resource)).map_err(|e| StoreError::Invalid {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    match decode(&key, &bytes) {
        Ok(_) => Ok(bytes),
        Err(StoreError::Corrupt { reason, .. }) => Err(StoreError::Invalid { key, reason }),
        Err(other) => Err(other),
    }
}

/// Parses a stored record and checks that it is the resource its key says.
fn decode(key: &ResourceKey, bytes: &[u8]) -> Result<Resource, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a JSON document: {e}")))?;
    let resource = document::from_value(doc, &key.namespace)
        .map_err(|e| corrupt(format!("invalid document: {e}")))?;
    let found = resource.key();
    if &found != key {
        return Err(corrupt(format!("the record holds {found}")));
    }
    Ok(resource)
}

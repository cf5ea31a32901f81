//! [`SledStore`]: the config store on disk, in one sled tree.
//!
//! Layout of the tree (all in sled's default tree, so one batch covers everything):
//! - `<Kind>/<namespace>/<name>` → the resource's document as JSON. Listing by kind, or by kind
//!   and namespace, is a prefix scan on `<Kind>/` or `<Kind>/<namespace>/`; the trailing `/` keeps
//!   namespace `a` from matching namespace `ab`.
//! - `@format` → the layout version (u64, big-endian), so a later layout can migrate.
//! - `@revision` → the revision of the last applied batch (u64, big-endian), written in the same
//!   atomic batch as the resources it describes.
//!
//! Kind names start with a capital letter, so the `@` keys never collide with a resource.
//!
//! Besides sled's own files the directory holds `strait.lock`, locked (`flock`) for as long as
//! the store is open, so a second control plane on the same directory fails at once and says so.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sled::{Batch, Db, IVec};
use tokio::sync::watch;

use super::{Change, ConfigStore, Revision, StoreError, decode, stage};
use crate::model::{Kind, Resource, ResourceKey};

/// The file locked while a store is open, inside its directory.
pub(super) const LOCK_FILE: &str = "strait.lock";

const FORMAT_KEY: &[u8] = b"@format";
const REVISION_KEY: &[u8] = b"@revision";
/// The layout this build writes. Version 1: the layout described in the module docs.
const FORMAT_VERSION: u64 = 1;

/// The config store on disk (sled 0.34). See the module docs for the layout.
pub struct SledStore {
    dir: PathBuf,
    db: Db,
    /// Serialises `apply`, so the read-check-write of a batch sees no other writer.
    writer: Mutex<()>,
    revision: watch::Sender<Revision>,
    /// Holds the directory lock until the store is dropped.
    _lock: File,
}

impl SledStore {
    /// Opens the store in `dir`, creating it if needed.
    ///
    /// Fails with [`StoreError::Locked`] if another process (or another `SledStore` in this one)
    /// has `dir` open, and with [`StoreError::UnsupportedFormat`] if a newer Strait wrote it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            io_error(
                format!("creating config store directory {}", dir.display()),
                e,
            )
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(format!("opening {}", lock_path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { dir }),
            Err(TryLockError::Error(e)) => {
                return Err(io_error(format!("locking {}", lock_path.display()), e));
            }
        }
        let db = open_sled(&dir)?;
        let revision = init_or_check(&dir, &db)?;
        Ok(SledStore {
            dir,
            db,
            writer: Mutex::new(()),
            revision: watch::Sender::new(revision),
            _lock: lock,
        })
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_revision(&self) -> Result<Revision, StoreError> {
        read_u64(&self.dir, &self.db, REVISION_KEY)?.ok_or_else(|| missing(REVISION_KEY))
    }
}

impl ConfigStore for SledStore {
    fn apply(&self, changes: Vec<Change>) -> Result<Revision, StoreError> {
        // Poisoning carries no meaning here: the guarded state lives in sled, not in the mutex.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let staged = stage(changes, |key| {
            self.db.contains_key(db_key(key)).map_err(|e| {
                sled_error(
                    format!("reading {key} from config store {}", self.dir.display()),
                    e,
                )
            })
        })?;
        if staged.is_empty() {
            return self.read_revision();
        }
        let revision = self
            .read_revision()?
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt {
                key: "@revision".into(),
                reason: "the revision counter is exhausted".into(),
            })?;
        let mut batch = Batch::default();
        for (key, record) in staged {
            match record {
                Some(bytes) => batch.insert(db_key(&key).into_bytes(), bytes),
                None => batch.remove(db_key(&key).into_bytes()),
            }
        }
        batch.insert(REVISION_KEY, &revision.to_be_bytes());
        self.db.apply_batch(batch).map_err(|e| {
            sled_error(
                format!(
                    "writing batch {revision} to config store {}",
                    self.dir.display()
                ),
                e,
            )
        })?;
        let flushed = self.db.flush();
        // The batch is visible to readers from here on, flushed or not: tell subscribers.
        self.revision.send_replace(revision);
        match flushed {
            Ok(_) => Ok(revision),
            Err(e) => Err(sled_error(
                format!(
                    "batch {revision} was applied but could not be flushed to config store {}; it may not survive a crash",
                    self.dir.display()
                ),
                e,
            )),
        }
    }

    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let record = self.db.get(db_key(key)).map_err(|e| {
            sled_error(
                format!("reading {key} from config store {}", self.dir.display()),
                e,
            )
        })?;
        record.map(|bytes| decode(key, &bytes)).transpose()
    }

    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError> {
        let kinds = match kind {
            Some(k) => vec![k],
            None => Kind::ALL.to_vec(),
        };
        let mut out = Vec::new();
        for kind in kinds {
            let prefix = match namespace {
                Some(ns) => format!("{kind}/{ns}/"),
                None => format!("{kind}/"),
            };
            for item in self.db.scan_prefix(prefix.as_bytes()) {
                let (raw, bytes) = item.map_err(|e| {
                    sled_error(
                        format!("listing {prefix}* in config store {}", self.dir.display()),
                        e,
                    )
                })?;
                let key = parse_key(&raw)?;
                out.push((key.clone(), decode(&key, &bytes)?));
            }
        }
        // Byte order is not key order (`a-b/` sorts before `a/`, kinds sort by name): sort.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }
}

/// How long `open` waits for sled to let go of a directory that was closed a moment ago.
const SLED_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Opens sled in `dir`, whose `strait.lock` the caller holds.
///
/// sled 0.34 releases its own lock on `dir/db` asynchronously: for a moment after a `Db` is
/// dropped, its background threads still hold it. Holding `strait.lock` means no other store has
/// `dir` open, so a lock failure here is such a recent close in this process (or a foreign
/// program using sled on `dir`): retry for a bounded time, then report the directory as locked.
fn open_sled(dir: &Path) -> Result<Db, StoreError> {
    let deadline = Instant::now() + SLED_RELEASE_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        dir: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(sled_error(
                    format!("opening config store {}", dir.display()),
                    e,
                ));
            }
        }
    }
}

/// Checks the layout version of an existing store, or initialises a new one. Returns the
/// stored revision.
fn init_or_check(dir: &Path, db: &Db) -> Result<Revision, StoreError> {
    match read_u64(dir, db, FORMAT_KEY)? {
        Some(FORMAT_VERSION) => {}
        Some(found) if found > FORMAT_VERSION => {
            return Err(StoreError::UnsupportedFormat {
                dir: dir.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        // Migrations from older layouts go here when there are any.
        Some(found) => {
            return Err(StoreError::Corrupt {
                key: "@format".into(),
                reason: format!("format version {found} never existed"),
            });
        }
        None => {
            let first = db
                .first()
                .map_err(|e| sled_error(format!("reading config store {}", dir.display()), e))?;
            if let Some((key, _)) = first {
                return Err(StoreError::Corrupt {
                    key: "@format".into(),
                    reason: format!(
                        "missing, but {} holds data (first key {:?}): not a Strait config store?",
                        dir.display(),
                        String::from_utf8_lossy(&key)
                    ),
                });
            }
            let mut batch = Batch::default();
            batch.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes());
            batch.insert(REVISION_KEY, &0u64.to_be_bytes());
            db.apply_batch(batch).map_err(|e| {
                sled_error(format!("initialising config store {}", dir.display()), e)
            })?;
            db.flush().map_err(|e| {
                sled_error(format!("initialising config store {}", dir.display()), e)
            })?;
        }
    }
    read_u64(dir, db, REVISION_KEY)?.ok_or_else(|| missing(REVISION_KEY))
}

fn read_u64(dir: &Path, db: &Db, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let name = String::from_utf8_lossy(key);
    let value: Option<IVec> = db.get(key).map_err(|e| {
        sled_error(
            format!("reading {name} from config store {}", dir.display()),
            e,
        )
    })?;
    value
        .map(|v| {
            <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    key: name.to_string(),
                    reason: format!("expected 8 bytes, found {}", v.len()),
                })
        })
        .transpose()
}

fn missing(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: "missing".into(),
    }
}

/// `<Kind>/<namespace>/<name>`. Names and namespaces are DNS names (the model validates them
/// and `apply` refuses what does not validate), so they hold no `/`.
fn db_key(key: &ResourceKey) -> String {
    format!("{}/{}/{}", key.kind.as_str(), key.namespace, key.name)
}

fn parse_key(raw: &[u8]) -> Result<ResourceKey, StoreError> {
    let text = String::from_utf8_lossy(raw);
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: text.to_string(),
        reason: reason.to_string(),
    };
    let mut parts = text.splitn(3, '/');
    let (Some(kind), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt("a resource key must be <Kind>/<namespace>/<name>"));
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| corrupt("unknown kind"))?;
    Ok(ResourceKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

fn sled_error(context: String, error: sled::Error) -> StoreError {
    StoreError::Io { context, error }
}

fn io_error(context: String, error: std::io::Error) -> StoreError {
    StoreError::Io {
        context,
        error: sled::Error::Io(error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    use super::*;
    use crate::store::suite::{we, we_key};

    /// sled itself, bypassing the store, to plant records. Waits as `SledStore::open` does for
    /// sled to release a directory closed a moment ago.
    fn raw_sled(dir: &Path) -> sled::Db {
        let deadline = Instant::now() + SLED_RELEASE_WAIT;
        loop {
            match sled::open(dir) {
                Ok(db) => return db,
                Err(e) if Instant::now() < deadline => {
                    assert!(e.to_string().contains("could not acquire lock"), "{e}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn open_temp() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (dir, store)
    }

    crate::store::suite::config_store_suite!(open_temp());

    #[test]
    fn revision_and_contents_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.revision(), 0);
        store
            .apply(vec![Change::Upsert(we("default", "a", "10.0.0.1"))])
            .unwrap();
        let r2 = store
            .apply(vec![
                Change::Upsert(we("default", "b", "10.0.0.2")),
                Change::Delete(we_key("default", "a")),
            ])
            .unwrap();
        assert_eq!(r2, 2);
        drop(store);

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.revision(), 2);
        assert_eq!(*store.subscribe().borrow(), 2);
        assert_eq!(store.get(&we_key("default", "a")).unwrap(), None);
        assert_eq!(
            store.get(&we_key("default", "b")).unwrap(),
            Some(we("default", "b", "10.0.0.2"))
        );
        assert_eq!(
            store
                .apply(vec![Change::Delete(we_key("default", "b"))])
                .unwrap(),
            3
        );
        drop(store);
        assert_eq!(SledStore::open(dir.path()).unwrap().revision(), 3);
    }

    #[test]
    fn a_second_open_of_the_same_directory_fails_naming_it() {
        let (dir, _store) = open_temp();
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("in use"), "{message}");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        {
            let db = raw_sled(dir.path());
            db.insert(FORMAT_KEY, &99u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedFormat {
                    found: 99,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_directory_with_foreign_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = raw_sled(dir.path());
            db.insert(b"something", b"else").unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains("not a Strait config store"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_records_are_reported_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store
            .apply(vec![Change::Upsert(we("default", "good", "10.0.0.1"))])
            .unwrap();
        drop(store);
        {
            let db = raw_sled(dir.path());
            db.insert(b"WorkloadEntry/default/garbage", b"{not json")
                .unwrap();
            // Valid JSON, but a field the model does not know (as after a downgrade).
            let outdated = serde_json::json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {"name": "outdated", "namespace": "default"},
                "spec": {"address": "10.0.0.2", "futureField": true},
            });
            db.insert(
                b"WorkloadEntry/default/outdated",
                serde_json::to_vec(&outdated).unwrap(),
            )
            .unwrap();
            // A record under the wrong key.
            db.insert(
                b"WorkloadEntry/other/misplaced",
                db.get(b"WorkloadEntry/default/good").unwrap().unwrap(),
            )
            .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get(&we_key("default", "good")).unwrap(),
            Some(we("default", "good", "10.0.0.1"))
        );

        let err = store.get(&we_key("default", "garbage")).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if key == "WorkloadEntry/default/garbage"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("WorkloadEntry/default/garbage"),
            "{err}"
        );

        let err = store.get(&we_key("default", "outdated")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("WorkloadEntry/default/outdated") && message.contains("futureField"),
            "{message}"
        );

        let err = store.get(&we_key("other", "misplaced")).unwrap_err();
        assert!(
            err.to_string().contains("holds WorkloadEntry/default/good"),
            "{err}"
        );

        let err = store
            .list(Some(Kind::WorkloadEntry), Some("default"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        // Other namespaces are unaffected.
        assert!(
            store
                .list(Some(Kind::WorkloadEntry), Some("elsewhere"))
                .unwrap()
                .is_empty()
        );
        // A bad record can still be deleted.
        store
            .apply(vec![
                Change::Delete(we_key("default", "garbage")),
                Change::Delete(we_key("default", "outdated")),
                Change::Delete(we_key("other", "misplaced")),
            ])
            .unwrap();
        assert_eq!(
            store.list(None, None).unwrap(),
            vec![we("default", "good", "10.0.0.1")]
        );
    }

    /// Set (to the store directory) in the child process of the crash test.
    const WRITER_ENV: &str = "STRAIT_STORE_CRASH_WRITER_DIR";
    /// How many entries each batch keeps alive: batch `i` upserts `w-i` and deletes `w-(i-KEEP)`.
    const KEEP: u64 = 5;

    /// The batch that the writer applies as its `i`-th (1-based), landing at revision `i`.
    fn crash_batch(i: u64) -> Vec<Change> {
        let mut batch = vec![Change::Upsert(we(
            "crash",
            &format!("w-{i}"),
            &format!("10.1.{}.{}", i / 250, i % 250),
        ))];
        if i > KEEP {
            batch.push(Change::Delete(we_key("crash", &format!("w-{}", i - KEEP))));
        }
        batch
    }

    /// The child: applies batches until killed, printing `ACK <revision>` after each `Ok`.
    fn crash_writer(dir: &Path) {
        use std::io::Write;
        let store = SledStore::open(dir).unwrap();
        let mut stdout = std::io::stdout();
        // Bounded, in case the parent vanished without killing us (a closed pipe also ends us).
        for i in 1..=100_000 {
            let revision = store.apply(crash_batch(i)).unwrap();
            assert_eq!(revision, i);
            writeln!(stdout, "ACK {revision}").unwrap();
            stdout.flush().unwrap();
        }
    }

    #[test]
    fn acknowledged_writes_survive_kill_9() {
        if let Some(dir) = std::env::var_os(WRITER_ENV) {
            crash_writer(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (_, module) = module_path!().split_once("::").unwrap();
        let test_name = format!("{module}::acknowledged_writes_survive_kill_9");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &test_name, "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ack = line
                    .strip_prefix("ACK ")
                    .and_then(|r| r.trim().parse::<u64>().ok());
                if let Some(rev) = ack
                    && lines_tx.send(rev).is_err()
                {
                    break;
                }
            }
        });

        let deadline = Instant::now() + Duration::from_secs(60);
        let mut acked = 0;
        while acked < 50 {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(rev) => acked = acked.max(rev),
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "writer stopped acknowledging after revision {acked} ({e:?}); exit: {status:?}"
                    );
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the writer should have been killed: {status:?}"
        );
        // Acknowledgements printed before the kill but not yet read count too.
        reader.join().unwrap();
        acked = lines_rx.try_iter().fold(acked, u64::max);

        let store = SledStore::open(dir.path()).unwrap();
        let revision = store.revision();
        eprintln!(
            "killed the writer after acknowledgement {acked}; the store reopened at revision {revision}"
        );
        assert!(
            revision >= acked,
            "acknowledged revision {acked}, store reopened at {revision}"
        );
        // Revision `r` means exactly batches 1..=r applied: entries w-(r-KEEP+1) ..= w-r.
        let names: Vec<String> = store
            .list(Some(Kind::WorkloadEntry), Some("crash"))
            .unwrap()
            .into_iter()
            .map(|r| r.meta.name)
            .collect();
        let mut expected: Vec<String> = (revision.saturating_sub(KEEP) + 1..=revision)
            .map(|i| format!("w-{i}"))
            .collect();
        expected.sort();
        assert_eq!(
            names, expected,
            "at revision {revision} (acknowledged {acked})"
        );
        for i in revision.saturating_sub(KEEP) + 1..=revision {
            let Change::Upsert(want) = &crash_batch(i)[0] else {
                unreachable!()
            };
            assert_eq!(store.get(&want.key()).unwrap().as_ref(), Some(want));
        }
        // And it keeps working.
        assert_eq!(
            store.apply(crash_batch(revision + 1)).unwrap(),
            revision + 1
        );
    }
}

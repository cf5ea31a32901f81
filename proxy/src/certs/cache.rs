//! The certificate cache directory, in Istio's file names: `cert-chain.pem` (leaf and
//! intermediates), `key.pem` (mode 0600) and `root-cert.pem`. Each file is written to a
//! temporary name, synced and renamed into place, so a reader never sees half a file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Error, WorkloadCert, join_pem};

/// Leaf and intermediates, PEM.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key, PEM, mode 0600.
pub const KEY: &str = "key.pem";
/// The mesh root, PEM.
pub const ROOT_CERT: &str = "root-cert.pem";

/// What a cache directory holds, unchecked.
pub(crate) struct Cached {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// Writes the three files of `cert` into `dir` (created 0700 if missing).
pub(crate) fn store(dir: &Path, cert: &WorkloadCert) -> Result<(), Error> {
    create_dir(dir)?;
    // The key goes first: a crash between two renames leaves a key that does not match the
    // chain, which `load` refuses, rather than a chain whose key is lost.
    write_atomic(&dir.join(KEY), cert.key_pem.as_bytes(), 0o600)?;
    write_atomic(
        &dir.join(CERT_CHAIN),
        join_pem(&cert.chain_pem).as_bytes(),
        0o644,
    )?;
    write_atomic(&dir.join(ROOT_CERT), cert.root_pem.as_bytes(), 0o644)?;
    sync_dir(dir)
}

/// The cached chain and key, `None` when either file is missing.
pub(crate) fn load(dir: &Path) -> Result<Option<Cached>, Error> {
    let read = |name: &str| -> Result<Option<String>, Error> {
        let path = dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Cache { path, source }),
        }
    };
    match (read(CERT_CHAIN)?, read(KEY)?) {
        (Some(chain_pem), Some(key_pem)) => Ok(Some(Cached { chain_pem, key_pem })),
        _ => Ok(None),
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Cache {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to `<path>.tmp` with `mode`, syncs it and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = tmp_name(path);
    let io = |source| Error::Cache {
        path: tmp.clone(),
        source,
    };
    // A leftover from a crash may have another mode; start afresh.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(|source| Error::Cache {
        path: path.to_owned(),
        source,
    })
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Cache {
            path: dir.to_owned(),
            source,
        })
}

//! Making CA material in Istio's plug-in `cacerts` layout (`straitctl ca root` and
//! `straitctl ca intermediate --cluster C`).
//!
//! A directory holds four files, as Istio's plug-in CA expects:
//!
//! | file | content |
//! |---|---|
//! | `ca-cert.pem` | this CA's certificate |
//! | `ca-key.pem` | this CA's private key, PKCS#8 PEM, mode 0600 |
//! | `root-cert.pem` | the root(s) workloads trust |
//! | `cert-chain.pem` | this CA's certificate, then the intermediates up to and including the root |
//!
//! For a root, `ca-cert.pem`, `root-cert.pem` and `cert-chain.pem` all hold the root.
//! Every cluster of a mesh gets an intermediate made from one shared root, so workloads of all
//! clusters verify each other. Keys are ECDSA P-256. Directories are created 0700; files are
//! written to temporary names and renamed into place, the key first and `ca-cert.pem` last
//! (its presence is what [`Signer::load_or_create`] looks for). An existing key is never
//! replaced unless `overwrite` is set.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use rcgen::{KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};

use super::signer::{
    CLOCK_SKEW, CaError, Signer, duration_secs, fmt_time, random_serial, set_validity, unix_now,
};

/// This CA's certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// This CA's private key (PKCS#8 PEM, 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The trusted root(s).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// This CA's certificate followed by the intermediates up to and including the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// Lifetime of a root when none is given: 10 years (Istio's self-signed root).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Lifetime of a cluster intermediate when none is given: 5 years (never past the root).
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 60 * 60);

/// Common name of a root made here.
pub const ROOT_COMMON_NAME: &str = "Root CA";
/// Common name of an intermediate made here.
pub const INTERMEDIATE_COMMON_NAME: &str = "Intermediate CA";

/// Longest organisation or cluster name (X.520 `ub-organization-name`).
const MAX_NAME_LEN: usize = 64;

/// Makes a self-signed root in `out_dir`: ECDSA P-256, `O=<org>, CN=Root CA`, `CA:TRUE`,
/// keyCertSign + cRLSign, valid for `ttl` (default 10 years) from one minute ago. Writes the
/// four `cacerts` files; refuses to replace an existing `ca-key.pem` unless `overwrite`.
pub fn make_root(
    out_dir: &Path,
    org: &str,
    ttl: Option<Duration>,
    overwrite: bool,
) -> Result<(), CaError> {
    check_name("organisation", org)?;
    let ttl = check_ttl(ttl.unwrap_or(DEFAULT_ROOT_TTL))?;
    prepare_dir(out_dir, overwrite)?;

    let key = generate_key()?;
    let mut params = ca_params(org, ROOT_COMMON_NAME, BasicConstraints::Unconstrained);
    let now = unix_now();
    let not_after = now.saturating_add(duration_secs(ttl));
    set_validity(
        &mut params,
        now.saturating_sub(duration_secs(CLOCK_SKEW)),
        not_after,
    )?;
    let cert = params.self_signed(&key).map_err(|e| CaError::Issue {
        reason: format!("self-signing the root: {e}"),
    })?;
    let cert_pem = cert.pem();
    write_ca_files(
        out_dir,
        &CaFiles {
            key_pem: &key.serialize_pem(),
            ca_cert_pem: &cert_pem,
            cert_chain_pem: &cert_pem,
            root_cert_pem: &cert_pem,
        },
        overwrite,
    )?;
    tracing::info!(
        dir = %out_dir.display(),
        org,
        not_after = %fmt_time(not_after),
        "CA: made a self-signed root"
    );
    Ok(())
}

/// Makes a cluster intermediate in `out_dir`, signed by the root in `root_dir` (which must
/// hold a root, not an intermediate): ECDSA P-256, `O=<cluster>, CN=Intermediate CA`,
/// `CA:TRUE, pathlen:0`, keyCertSign + cRLSign, valid for `ttl` (default 5 years) but never
/// past the root's own expiry. `cert-chain.pem` is the intermediate followed by the root.
/// Refuses to replace an existing `ca-key.pem` unless `overwrite`, and never writes into
/// `root_dir` itself.
pub fn make_intermediate(
    root_dir: &Path,
    cluster: &str,
    out_dir: &Path,
    ttl: Option<Duration>,
    overwrite: bool,
) -> Result<(), CaError> {
    check_name("cluster name", cluster)?;
    let ttl = check_ttl(ttl.unwrap_or(DEFAULT_INTERMEDIATE_TTL))?;
    let root = Signer::from_dir(root_dir)?;
    let [root_pem] = root.chain_pem() else {
        return Err(CaError::InvalidArgument {
            what: "root directory",
            reason: format!(
                "{} holds an intermediate CA ({CERT_CHAIN_FILE} has {} certificates); \
                 intermediates are made from the root",
                root_dir.display(),
                root.chain_pem().len()
            ),
        });
    };
    if same_dir(root_dir, out_dir) {
        return Err(CaError::InvalidArgument {
            what: "output directory",
            reason: format!(
                "{} is the root's own directory; the root's key would be replaced",
                out_dir.display()
            ),
        });
    }
    let now = unix_now();
    let root_not_after = root.not_after_unix();
    if now >= root_not_after {
        return Err(CaError::CaExpired {
            not_after: fmt_time(root_not_after),
        });
    }
    let wanted = now.saturating_add(duration_secs(ttl));
    let not_after = wanted.min(root_not_after);
    if not_after < wanted {
        tracing::warn!(
            root_not_after = %fmt_time(root_not_after),
            "CA: the intermediate would outlive the root; it ends with the root instead"
        );
    }
    prepare_dir(out_dir, overwrite)?;

    let key = generate_key()?;
    let mut params = ca_params(
        cluster,
        INTERMEDIATE_COMMON_NAME,
        BasicConstraints::Constrained(0),
    );
    params.use_authority_key_identifier_extension = true;
    set_validity(
        &mut params,
        now.saturating_sub(duration_secs(CLOCK_SKEW)),
        not_after,
    )?;
    let cert = params
        .signed_by(&key, root.issuer())
        .map_err(|e| CaError::Issue {
            reason: format!("signing the intermediate: {e}"),
        })?;
    let cert_pem = cert.pem();
    let chain = format!("{cert_pem}{root_pem}");
    write_ca_files(
        out_dir,
        &CaFiles {
            key_pem: &key.serialize_pem(),
            ca_cert_pem: &cert_pem,
            cert_chain_pem: &chain,
            root_cert_pem: root.root_pem(),
        },
        overwrite,
    )?;
    // What was written must load as a CA; fail now rather than at the cluster's start.
    Signer::from_dir(out_dir)?;
    tracing::info!(
        dir = %out_dir.display(),
        cluster,
        root_dir = %root_dir.display(),
        not_after = %fmt_time(not_after),
        "CA: made a cluster intermediate"
    );
    Ok(())
}

fn ca_params(org: &str, common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, org);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    params
}

fn generate_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Issue {
        reason: format!("generating an ECDSA P-256 key: {e}"),
    })
}

fn check_name(what: &'static str, value: &str) -> Result<(), CaError> {
    let reason = if value.trim().is_empty() {
        "it is empty"
    } else if value.chars().count() > MAX_NAME_LEN {
        "it is longer than 64 characters"
    } else if value.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(CaError::InvalidArgument {
        what,
        reason: format!("{value:?}: {reason}"),
    })
}

fn check_ttl(ttl: Duration) -> Result<Duration, CaError> {
    if ttl < Duration::from_secs(60 * 60) {
        return Err(CaError::InvalidArgument {
            what: "CA lifetime",
            reason: format!(
                "{} s is shorter than an hour; a CA must outlive the certificates it issues",
                ttl.as_secs()
            ),
        });
    }
    Ok(ttl)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Creates `dir` (0700, with any missing parents) and refuses early if a key is in the way.
fn prepare_dir(dir: &Path, overwrite: bool) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CaError::Io {
            action: "create the directory",
            path: dir.to_owned(),
            source,
        })?;
    let key_path = dir.join(CA_KEY_FILE);
    if !overwrite && key_path.symlink_metadata().is_ok() {
        return Err(CaError::KeyFileExists { path: key_path });
    }
    Ok(())
}

struct CaFiles<'a> {
    key_pem: &'a str,
    ca_cert_pem: &'a str,
    cert_chain_pem: &'a str,
    root_cert_pem: &'a str,
}

/// Writes the four files through temporary names: key first, `ca-cert.pem` last.
fn write_ca_files(dir: &Path, files: &CaFiles<'_>, overwrite: bool) -> Result<(), CaError> {
    let plan = [
        (CA_KEY_FILE, files.key_pem, 0o600),
        (CERT_CHAIN_FILE, files.cert_chain_pem, 0o644),
        (ROOT_CERT_FILE, files.root_cert_pem, 0o644),
        (CA_CERT_FILE, files.ca_cert_pem, 0o644),
    ];
    let tag: u64 = rand::random();
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for (name, content, mode) in plan {
            let tmp = dir.join(format!(".{name}.tmp-{tag:016x}"));
            write_new(&tmp, content, mode)?;
            written.push((tmp, dir.join(name)));
        }
        let key_path = dir.join(CA_KEY_FILE);
        if !overwrite && key_path.symlink_metadata().is_ok() {
            return Err(CaError::KeyFileExists { path: key_path });
        }
        for (tmp, path) in &written {
            fs::rename(tmp, path).map_err(|source| CaError::Io {
                action: "rename into place",
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &written {
            // Best effort: a leftover temporary file must not keep a key around.
            let _ = fs::remove_file(tmp);
        }
        return result;
    }
    if let Ok(d) = fs::File::open(dir) {
        // Best effort: make the renames durable.
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_new(path: &Path, content: &str, mode: u32) -> Result<(), CaError> {
    let io_error = |source| CaError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error)?;
    file.write_all(content.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

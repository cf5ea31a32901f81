//! The CA's signing key and chain, and issuing workload certificates.
//!
//! A [`Signer`] is loaded from Istio's plug-in `cacerts` layout (see [`super::files`]): this
//! CA's certificate and key, the root, and the chain from this CA up to the root. Loading
//! checks everything it can (the key belongs to the certificate, the certificate is a CA, the
//! chain links up to `root-cert.pem` signature by signature, nothing has expired) and then
//! issues and verifies one throw-away certificate, so a CA that would hand out broken chains
//! refuses to start instead. That probe is what checks that the signing key and the CA
//! certificate agree: the key and certificate never change after loading (a new CA is a new
//! [`Signer`], probed again), and an ECDSA or RSA signature made with a key verifies with that
//! key, so each issued leaf is not verified again (that was a third of the CA's CPU per
//! certificate); each leaf's issuer name and public key are still checked.
//!
//! [`Signer::sign`] issues a leaf for a CSR that passed [`csr::validate`]: the leaf carries the
//! CSR's public key and nothing else from the CSR. Its name, extensions and lifetime are the
//! CA's: the caller's SPIFFE ID as the one URI SAN, an empty subject (as Istio does),
//! `CA:FALSE`, digitalSignature + keyEncipherment, serverAuth + clientAuth, a random 128-bit
//! serial, one minute of backdating for clock skew, and never a day past the CA's own expiry.
//!
//! [`verify_chain`] / [`verify_chain_der`] check a certificate chain against trusted roots and
//! return the leaf's SPIFFE ID; the mTLS side can use them on a peer's chain.
//!
//! The CA's private key is never logged, displayed, or put in an error.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strait_proto::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::csr::{self, CsrError};
use super::files::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};

/// Lifetime of a workload certificate when the caller does not ask for one (Istio's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest workload certificate issued unless [`Signer::set_max_ttl`] says otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// How far before "now" a certificate's notBefore is set, for peers whose clocks lag.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Most certificates [`verify_chain`] accepts in a chain, leaf included, root excluded.
pub const MAX_CHAIN_LEN: usize = 8;

/// Why the CA could not load, make or use its material, or refused to issue, or why a
/// certificate chain does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing a file or directory failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done (read, write, create, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Making CA material would replace an existing key, and overwriting was not asked for.
    #[error(
        "refusing to overwrite the existing CA key {}: every certificate it issued would stop \
         verifying; pass overwrite to replace it, or use another directory",
        path.display()
    )]
    KeyFileExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// A PEM file is empty, malformed, or holds the wrong number of blocks.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate does not parse or cannot be used as intended.
    #[error("certificate {what} is unusable: {reason}")]
    Certificate {
        /// Which certificate (file and position, or subject).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key does not parse or is of an unsupported kind. Never contains key material.
    #[error("CA key {} is unusable: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key is not the key of the CA certificate.
    #[error(
        "the CA key {} does not belong to the certificate {}: they are from different pairs",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The CA's chain up to its root is broken: a link's signature or name does not match, a
    /// certificate is not a CA, has expired, or the chain does not end at `root-cert.pem`.
    #[error("the CA chain in {} is broken: {reason}", dir.display())]
    Chain {
        /// The `cacerts` directory.
        dir: PathBuf,
        /// Which link is broken and how.
        reason: String,
    },
    /// A peer's (or any given) chain does not verify against the trusted roots.
    #[error("certificate chain does not verify: {reason}")]
    ChainVerify {
        /// Which certificate failed and why.
        reason: String,
    },
    /// An argument is unusable (empty organisation, bad trust domain, zero TTL, …).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The CSR was refused; nothing was issued.
    #[error("CSR refused: {0}")]
    Csr(#[from] CsrError),
    /// The identity to certify is in another trust domain than this CA's.
    #[error(
        "identity {identity} is outside this CA's trust domain {trust_domain:?}: the CA only \
         certifies its own trust domain"
    )]
    ForeignTrustDomain {
        /// The identity asked for.
        identity: String,
        /// This CA's trust domain.
        trust_domain: String,
    },
    /// An explicitly requested validity would end after the CA's own expiry.
    #[error(
        "requested validity of {requested_secs} s ends at {ends}, after the CA's own expiry at \
         {ca_not_after}: ask for at most {remaining_secs} s, or rotate the CA"
    )]
    TtlPastCaExpiry {
        /// The requested validity, in seconds (after capping at the maximum TTL).
        requested_secs: u64,
        /// When the certificate would have expired.
        ends: String,
        /// When the CA (or a certificate above it) expires.
        ca_not_after: String,
        /// Seconds left until the CA expires.
        remaining_secs: u64,
    },
    /// The CA (or a certificate above it) has expired; it cannot issue anything.
    #[error("the CA expired at {not_after}: it can no longer issue certificates; rotate it")]
    CaExpired {
        /// When it expired.
        not_after: String,
    },
    /// Building or signing a certificate failed inside the CA (not the caller's fault).
    #[error("could not issue a certificate: {reason}")]
    Issue {
        /// What failed.
        reason: String,
    },
}

/// This CA: its key, its certificate, and its chain up to the root.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_der: Vec<u8>,
    /// The CA certificate's subject, DER: every leaf's issuer name must be these bytes.
    ca_subject_der: Vec<u8>,
    chain_pem: Vec<String>,
    chain_der: Vec<Vec<u8>>,
    roots_der: Vec<Vec<u8>>,
    root_pem: String,
    trust_domain: String,
    not_after: i64,
    max_ttl: Duration,
    dir: PathBuf,
}

impl fmt::Debug for Signer {
    /// Shows where the CA comes from and how long it lives; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain_pem.len())
            .field("not_after", &fmt_time(self.not_after))
            .field("max_ttl", &self.max_ttl)
            .field("key", &"[elided]")
            .finish()
    }
}

impl Signer {
    /// Loads the plug-in CA files (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`) from `dir` and checks them: the key (PKCS#8; ECDSA P-256/P-384 or RSA)
    /// matches `ca-cert.pem`, which is a CA; `cert-chain.pem` starts with `ca-cert.pem` and
    /// verifies link by link up to a root in `root-cert.pem` (which may hold several roots;
    /// `cert-chain.pem` may end with the root or stop below it); nothing has expired. The trust
    /// domain is `cluster.local` until [`Signer::set_trust_domain`].
    pub fn from_dir(dir: &Path) -> Result<Signer, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let root_path = dir.join(ROOT_CERT_FILE);
        let chain_path = dir.join(CERT_CHAIN_FILE);

        let ca_certs = read_certs(&cert_path)?;
        let [ca_cert_der] = <[Vec<u8>; 1]>::try_from(ca_certs).map_err(|certs| CaError::Pem {
            path: cert_path.clone(),
            reason: format!(
                "holds {} certificates, exactly one is expected",
                certs.len()
            ),
        })?;
        let roots_der = read_certs(&root_path)?;
        let chain_file = read_certs(&chain_path)?;

        let ca_cert = parse_cert(
            &ca_cert_der,
            &format!("{} (ca-cert.pem)", cert_path.display()),
        )?;
        let key = read_key(&key_path, ca_cert.public_key())?;
        if key.subject_public_key_info() != ca_cert.public_key().raw {
            return Err(CaError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        check_ca(&ca_cert, 0).map_err(|reason| CaError::Certificate {
            what: cert_path.display().to_string(),
            reason,
        })?;

        let roots = roots_der
            .iter()
            .enumerate()
            .map(|(i, der)| parse_cert(der, &format!("{} #{}", root_path.display(), i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        if chain_file.first() != Some(&ca_cert_der) {
            return Err(CaError::Chain {
                dir: dir.to_owned(),
                reason: format!(
                    "{CERT_CHAIN_FILE} must start with the certificate in {CA_CERT_FILE}"
                ),
            });
        }
        // The path to check: the CA's certificate and intermediates, without the root.
        let mut path_der: Vec<&[u8]> = Vec::new();
        for der in &chain_file {
            if roots_der.contains(der) {
                break;
            }
            path_der.push(der);
        }
        let now = unix_now();
        let chain_error = |reason: String| CaError::Chain {
            dir: dir.to_owned(),
            reason,
        };
        let (mut not_after, anchor) = if path_der.is_empty() {
            // ca-cert.pem is itself one of the roots: a root CA.
            if chain_file.len() != 1 {
                return Err(chain_error(format!(
                    "{CA_CERT_FILE} is a root, so {CERT_CHAIN_FILE} must hold just that root"
                )));
            }
            check_validity(&ca_cert, now, "the root").map_err(&chain_error)?;
            let anchor = roots_der
                .iter()
                .position(|r| *r == ca_cert_der)
                .unwrap_or_default();
            (ca_cert.validity().not_after.timestamp(), anchor)
        } else {
            let path = path_der
                .iter()
                .enumerate()
                .map(|(i, der)| parse_cert(der, &format!("{} #{}", chain_path.display(), i + 1)))
                .collect::<Result<Vec<_>, _>>()?;
            check_path(&path, &roots, now).map_err(&chain_error)?
        };
        let anchor_der = roots_der
            .get(anchor)
            .ok_or_else(|| chain_error("no root anchors the chain".to_owned()))?;
        if let Some(root) = roots.get(anchor) {
            not_after = not_after.min(root.validity().not_after.timestamp());
        }

        let mut chain_der: Vec<Vec<u8>> = path_der.iter().map(|d| d.to_vec()).collect();
        chain_der.push(anchor_der.clone());
        let chain_pem = chain_der.iter().map(|d| cert_pem(d)).collect();
        let root_pem = roots_der.iter().map(|d| cert_pem(d)).collect::<String>();

        check_rcgen_name(&ca_cert).map_err(|reason| CaError::Certificate {
            what: cert_path.display().to_string(),
            reason,
        })?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_cert_der.as_slice()), key)
            .map_err(|e| CaError::Certificate {
            what: cert_path.display().to_string(),
            reason: format!("cannot sign with it: {e}"),
        })?;

        let ca_subject_der = ca_cert.subject().as_raw().to_vec();
        let signer = Signer {
            issuer,
            ca_subject_der,
            ca_cert_der,
            chain_pem,
            chain_der,
            roots_der,
            root_pem,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            not_after,
            max_ttl: DEFAULT_MAX_TTL,
            dir: dir.to_owned(),
        };
        signer.self_test().map_err(|e| CaError::Chain {
            dir: dir.to_owned(),
            reason: format!("a test certificate issued by this CA does not verify: {e}"),
        })?;
        Ok(signer)
    }

    /// Loads the plug-in CA files from `dir` if `ca-cert.pem` exists there; otherwise makes a
    /// self-signed root (ECDSA P-256, 10 years, `O=<trust_domain>, CN=Root CA`) in `dir`,
    /// persists it in the same layout, and loads it. Logs which one at info, never the key.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Signer, CaError> {
        check_trust_domain(trust_domain)?;
        let plugged_in = dir.join(CA_CERT_FILE).exists();
        if !plugged_in {
            super::files::make_root(dir, trust_domain, None, false)?;
        }
        let mut signer = Signer::from_dir(dir)?;
        signer.trust_domain = trust_domain.to_owned();
        let subject = parse_cert(&signer.ca_cert_der, CA_CERT_FILE)
            .map(|c| c.subject().to_string())
            .unwrap_or_default();
        if plugged_in {
            tracing::info!(
                dir = %dir.display(),
                subject = %subject,
                chain_len = signer.chain_pem.len(),
                not_after = %fmt_time(signer.not_after),
                trust_domain,
                "CA: using plug-in certificates"
            );
        } else {
            tracing::info!(
                dir = %dir.display(),
                subject = %subject,
                not_after = %fmt_time(signer.not_after),
                trust_domain,
                "CA: no plug-in certificates found; created and persisted a self-signed root"
            );
        }
        Ok(signer)
    }

    /// Sets the trust domain whose identities this CA certifies.
    pub fn set_trust_domain(&mut self, trust_domain: &str) -> Result<(), CaError> {
        check_trust_domain(trust_domain)?;
        self.trust_domain = trust_domain.to_owned();
        Ok(())
    }

    /// Sets the longest lifetime a workload certificate may get (default 90 days). A longer
    /// request is capped to it.
    pub fn set_max_ttl(&mut self, max_ttl: Duration) {
        self.max_ttl = max_ttl;
    }

    /// The longest lifetime a workload certificate may get.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The trust domain whose identities this CA certifies.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trusted roots (`root-cert.pem`, normalised), PEM: what workloads verify peers with.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// This CA's certificate, the intermediates above it, and the root, PEM, one per entry:
    /// what follows the leaf in every issued chain.
    pub fn chain_pem(&self) -> &[String] {
        &self.chain_pem
    }

    /// When this CA stops being able to issue: the earliest notAfter of its certificate and
    /// every certificate above it. No leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        from_unix(self.not_after)
    }

    /// The directory the CA was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a workload certificate for `csr_pem` to `identity` (the caller's authenticated
    /// identity). The CSR is validated by [`csr::validate`] first. Returns the chain as PEM,
    /// leaf first, then [`Signer::chain_pem`], root last (always at least two entries).
    ///
    /// Lifetime: `requested_ttl` or 24 h, capped at [`Signer::max_ttl`]. It never ends after
    /// the CA's own expiry: an explicit request that would is refused
    /// ([`CaError::TtlPastCaExpiry`]); the default is cut short instead. `Some(0)` is refused;
    /// pass `None` for "the default".
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let valid = csr::validate(csr_pem, identity)?;
        let now = unix_now();
        let not_after = self.leaf_not_after(now, requested_ttl)?;
        let not_before = now.saturating_sub(duration_secs(CLOCK_SKEW));
        let leaf = self.issue(valid.public_key(), identity, not_before, not_after)?;
        self.check_issued(&leaf, valid.spki_der())?;
        let mut chain = Vec::with_capacity(self.chain_pem.len() + 1);
        chain.push(cert_pem(&leaf));
        chain.extend(self.chain_pem.iter().cloned());
        tracing::debug!(
            identity = %identity,
            key = %valid.key_type(),
            not_after = %fmt_time(not_after),
            "CA: issued a workload certificate"
        );
        Ok(chain)
    }

    /// The notAfter of a leaf issued at `now`, following the TTL rules of [`Signer::sign`].
    fn leaf_not_after(&self, now: i64, requested: Option<Duration>) -> Result<i64, CaError> {
        if now >= self.not_after {
            return Err(CaError::CaExpired {
                not_after: fmt_time(self.not_after),
            });
        }
        if requested == Some(Duration::ZERO) {
            return Err(CaError::InvalidArgument {
                what: "requested validity",
                reason: "it is zero; ask for no particular validity to get the default".to_owned(),
            });
        }
        let ttl = requested.unwrap_or(DEFAULT_WORKLOAD_TTL).min(self.max_ttl);
        let ends = now.saturating_add(duration_secs(ttl));
        if ends <= self.not_after {
            return Ok(ends);
        }
        if requested.is_some() {
            return Err(CaError::TtlPastCaExpiry {
                requested_secs: ttl.as_secs(),
                ends: fmt_time(ends),
                ca_not_after: fmt_time(self.not_after),
                remaining_secs: u64::try_from(self.not_after - now).unwrap_or_default(),
            });
        }
        tracing::warn!(
            ca_not_after = %fmt_time(self.not_after),
            "CA: expires within a workload certificate's lifetime; issuing a shorter certificate"
        );
        Ok(self.not_after)
    }

    /// Builds and signs a leaf for `public_key`: only what the CA decides goes in.
    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        identity: &SpiffeId,
        not_before: i64,
        not_after: i64,
    ) -> Result<Vec<u8>, CaError> {
        let issue_error = |reason: String| CaError::Issue { reason };
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; the SAN is then marked critical (RFC 5280 4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(identity.to_string())
            .map_err(|e| issue_error(format!("identity is not IA5: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, not_before, not_after)?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| issue_error(e.to_string()))?;
        Ok(cert.der().to_vec())
    }

    /// Checks an issued leaf before it leaves the CA: the issuer name is byte for byte this
    /// CA's subject and the key is exactly the validated one. Returns the parsed leaf. That the
    /// CA's key verifies it is checked once, by [`Signer::self_test`] (see the module docs).
    fn check_issued<'a>(
        &self,
        leaf_der: &'a [u8],
        spki_der: &[u8],
    ) -> Result<X509Certificate<'a>, CaError> {
        let issue_error = |reason: &str| CaError::Issue {
            reason: reason.to_owned(),
        };
        let leaf = parse_cert(leaf_der, "issued leaf")?;
        if leaf.issuer().as_raw() != self.ca_subject_der.as_slice() {
            return Err(issue_error(
                "the leaf's issuer name does not match the CA certificate's subject encoding",
            ));
        }
        if leaf.public_key().raw != spki_der {
            return Err(issue_error(
                "the leaf's public key differs from the validated one",
            ));
        }
        Ok(leaf)
    }

    /// The CA's key verifies `leaf`: that the signing key and the CA certificate agree.
    fn check_issued_signature(&self, leaf: &X509Certificate<'_>) -> Result<(), CaError> {
        let ca = parse_cert(&self.ca_cert_der, CA_CERT_FILE)?;
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| CaError::Issue {
                reason: "the leaf's signature does not verify with the CA certificate's key"
                    .to_owned(),
            })
    }

    /// Issues a short-lived certificate for a fresh key and verifies it with the CA
    /// certificate's key and up to the roots.
    fn self_test(&self) -> Result<(), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Issue {
            reason: format!("self-test key: {e}"),
        })?;
        let identity = SpiffeId::new(self.trust_domain.as_str(), "strait-system", "ca-self-test")
            .map_err(|e| CaError::Issue {
            reason: format!("self-test identity: {e}"),
        })?;
        let now = unix_now();
        let not_after = now.saturating_add(60).min(self.not_after);
        let leaf = self.issue(&key, &identity, now.saturating_sub(60), not_after)?;
        let parsed = self.check_issued(&leaf, &key.subject_public_key_info())?;
        self.check_issued_signature(&parsed)?;
        let intermediates: Vec<&[u8]> = self.chain_der.iter().map(Vec::as_slice).collect();
        let roots: Vec<&[u8]> = self.roots_der.iter().map(Vec::as_slice).collect();
        let got = verify_chain_der(&leaf, &intermediates, &roots, SystemTime::now())?;
        if got != identity {
            return Err(CaError::Issue {
                reason: format!("self-test leaf reads back as {got}, not {identity}"),
            });
        }
        Ok(())
    }

    /// The issuer handle, for making intermediates in [`super::files`].
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The effective expiry, Unix seconds.
    pub(crate) fn not_after_unix(&self) -> i64 {
        self.not_after
    }
}

/// Verifies `leaf_pem` up to one of the roots in `root_pem` (one or more PEM certificates)
/// through `chain`, now, and returns the leaf's SPIFFE ID. `chain` holds the intermediates in
/// order, leaf side first; each entry may hold several PEM blocks, it may start with the leaf
/// itself and end with the root (as [`Signer::sign`] returns it), so a whole issued chain can
/// be passed as is. See [`verify_chain_der`] for what is checked.
pub fn verify_chain(leaf_pem: &str, chain: &[String], root_pem: &str) -> Result<SpiffeId, CaError> {
    let verify_error = |reason: String| CaError::ChainVerify { reason };
    let leaf = pem_certs(leaf_pem.as_bytes()).map_err(|e| verify_error(format!("leaf: {e}")))?;
    let [leaf] = <[Vec<u8>; 1]>::try_from(leaf).map_err(|certs| {
        verify_error(format!(
            "the leaf PEM holds {} certificates, exactly one is expected",
            certs.len()
        ))
    })?;
    let mut intermediates = Vec::new();
    for (i, entry) in chain.iter().enumerate() {
        let certs = pem_certs(entry.as_bytes())
            .map_err(|e| verify_error(format!("chain entry {}: {e}", i + 1)))?;
        intermediates.extend(certs);
    }
    let roots = pem_certs(root_pem.as_bytes()).map_err(|e| verify_error(format!("roots: {e}")))?;
    let intermediates: Vec<&[u8]> = intermediates.iter().map(Vec::as_slice).collect();
    let roots: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
    verify_chain_der(&leaf, &intermediates, &roots, SystemTime::now())
}

/// Verifies the DER certificate `leaf` up to one of `roots` through `intermediates` (in order,
/// leaf side first; a leading copy of the leaf and anything from the first copy of a root on
/// are ignored) at time `now`, and returns the leaf's SPIFFE ID.
///
/// Checked: every link's issuer name equals the next certificate's subject and its signature
/// verifies with the next certificate's key (the last one with a root's); every certificate,
/// roots included, is within its validity at `now`; every issuer is a CA (basicConstraints
/// `CA:TRUE`, keyCertSign if keyUsage is present) whose pathLenConstraint allows the
/// intermediates below it; no certificate carries a critical extension this verifier does not
/// understand; at most [`MAX_CHAIN_LEN`] certificates; the leaf is not a CA and carries exactly
/// one URI SAN, a valid SPIFFE ID. Trust-domain policy is the caller's.
pub fn verify_chain_der(
    leaf: &[u8],
    intermediates: &[&[u8]],
    roots: &[&[u8]],
    now: SystemTime,
) -> Result<SpiffeId, CaError> {
    let verify_error = |reason: String| CaError::ChainVerify { reason };
    if roots.is_empty() {
        return Err(verify_error("no trusted root was given".to_owned()));
    }
    let now = system_to_unix(now);
    let mut path_der: Vec<&[u8]> = vec![leaf];
    for (i, der) in intermediates.iter().enumerate() {
        if i == 0 && *der == leaf {
            continue;
        }
        if roots.contains(der) {
            break;
        }
        path_der.push(der);
    }
    if path_der.len() > MAX_CHAIN_LEN {
        return Err(verify_error(format!(
            "{} certificates below the root, more than the limit of {MAX_CHAIN_LEN}",
            path_der.len()
        )));
    }
    let path = path_der
        .iter()
        .enumerate()
        .map(|(i, der)| parse_peer_cert(der, position_name(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = roots
        .iter()
        .enumerate()
        .map(|(i, der)| parse_peer_cert(der, format!("root #{}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    check_path(&path, &roots, now).map_err(verify_error)?;
    let leaf = path
        .first()
        .ok_or_else(|| verify_error("no leaf".to_owned()))?;
    leaf_identity(leaf).map_err(verify_error)
}

fn parse_peer_cert(der: &[u8], what: String) -> Result<X509Certificate<'_>, CaError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CaError::ChainVerify {
            reason: format!("{what}: trailing bytes after the DER"),
        }),
        Err(e) => Err(CaError::ChainVerify {
            reason: format!("{what}: does not parse: {e}"),
        }),
    }
}

/// The leaf's SPIFFE ID: it must not be a CA and must carry exactly one URI SAN.
fn leaf_identity(leaf: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    match leaf.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            return Err("the leaf is a CA certificate".to_owned());
        }
        Ok(_) => {}
        Err(e) => return Err(format!("the leaf's basicConstraints are malformed: {e}")),
    }
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("the leaf's subjectAltName is malformed: {e}"))?
        .ok_or_else(|| "the leaf has no subjectAltName".to_owned())?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "the leaf carries {} URI SANs, exactly one SPIFFE ID is expected",
            uris.len()
        ));
    };
    uri.parse::<SpiffeId>()
        .map_err(|e| format!("the leaf's URI SAN is not a workload SPIFFE ID: {e}"))
}

/// Checks `path` (leaf or CA first, then the intermediates, no root) up to one of `roots`.
/// Returns the chain's earliest notAfter and the index of the root that anchors it.
fn check_path(
    path: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    now: i64,
) -> Result<(i64, usize), String> {
    if path.is_empty() {
        return Err("the chain is empty".to_owned());
    }
    let mut not_after = i64::MAX;
    for (i, cert) in path.iter().enumerate() {
        let name = || format!("{} ({})", position_name(i), subject_excerpt(cert));
        check_validity(cert, now, &name())?;
        check_critical(cert).map_err(|e| format!("{}: {e}", name()))?;
        if i > 0 {
            check_ca(cert, i - 1).map_err(|e| format!("{}: {e}", name()))?;
        }
        not_after = not_after.min(cert.validity().not_after.timestamp());
        if let Some(issuer) = path.get(i + 1) {
            check_link(cert, issuer).map_err(|e| format!("{}: {e}", name()))?;
        }
    }
    let last_index = path.len() - 1;
    let last = &path[last_index];
    let anchor = roots
        .iter()
        .position(|root| check_link(last, root).is_ok())
        .ok_or_else(|| {
            format!(
                "{} ({}) was not issued by any trusted root (its issuer is {})",
                position_name(last_index),
                subject_excerpt(last),
                excerpt(&last.issuer().to_string())
            )
        })?;
    let root = &roots[anchor];
    let root_name = format!("the root ({})", subject_excerpt(root));
    check_validity(root, now, &root_name)?;
    check_ca(root, last_index).map_err(|e| format!("{root_name}: {e}"))?;
    not_after = not_after.min(root.validity().not_after.timestamp());
    Ok((not_after, anchor))
}

/// `cert` names `issuer` as its issuer, byte for byte, and `issuer`'s key verifies it.
fn check_link(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), String> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(format!(
            "its issuer {} is not the next certificate's subject {}",
            excerpt(&cert.issuer().to_string()),
            subject_excerpt(issuer)
        ));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|e| format!("its signature does not verify with its issuer's key ({e})"))
}

fn check_validity(cert: &X509Certificate<'_>, now: i64, name: &str) -> Result<(), String> {
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "{name} is not valid before {}",
            fmt_time(validity.not_before.timestamp())
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(format!(
            "{name} expired at {}",
            fmt_time(validity.not_after.timestamp())
        ));
    }
    Ok(())
}

/// `cert` may issue certificates with `below` intermediates under it.
fn check_ca(cert: &X509Certificate<'_>, below: usize) -> Result<(), String> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("its basicConstraints are malformed: {e}"))?;
    let Some(bc) = bc.filter(|bc| bc.value.ca) else {
        return Err("it is not a CA (no basicConstraints CA:TRUE)".to_owned());
    };
    if let Some(limit) = bc.value.path_len_constraint
        && u64::try_from(below).unwrap_or(u64::MAX) > u64::from(limit)
    {
        return Err(format!(
            "its pathLenConstraint {limit} forbids the {below} intermediate(s) below it"
        ));
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err("its keyUsage lacks keyCertSign".to_owned())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("its keyUsage is malformed: {e}")),
    }
}

/// Refuses critical extensions this verifier does not act on (RFC 5280 4.2).
fn check_critical(cert: &X509Certificate<'_>) -> Result<(), String> {
    let understood = [
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    ];
    for ext in cert.extensions() {
        if ext.critical && !understood.contains(&ext.oid) {
            return Err(format!(
                "it carries the critical extension {}, which this verifier does not enforce",
                ext.oid.to_id_string()
            ));
        }
        if let ParsedExtension::ParseError { error } = ext.parsed_extension()
            && understood.contains(&ext.oid)
        {
            return Err(format!(
                "its extension {} does not parse ({error})",
                ext.oid.to_id_string()
            ));
        }
    }
    Ok(())
}

/// rcgen re-encodes the issuer name from the CA certificate; it handles one attribute per
/// RDN only (and panics on an empty RDN), so anything else is refused up front.
fn check_rcgen_name(cert: &X509Certificate<'_>) -> Result<(), String> {
    for rdn in cert.subject().iter() {
        if rdn.iter().count() != 1 {
            return Err(
                "its subject has an empty or multi-valued RDN, which the signer cannot reproduce"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

fn position_name(i: usize) -> String {
    if i == 0 {
        "the leaf".to_owned()
    } else {
        format!("intermediate #{i}")
    }
}

fn subject_excerpt(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "empty subject".to_owned()
    } else {
        excerpt(&subject)
    }
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

fn check_trust_domain(trust_domain: &str) -> Result<(), CaError> {
    SpiffeId::new(trust_domain, "default", "default")
        .map(|_| ())
        .map_err(|e| CaError::InvalidArgument {
            what: "trust domain",
            reason: e.to_string(),
        })
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CaError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CaError::Certificate {
            what: what.to_owned(),
            reason: "trailing bytes after the DER".to_owned(),
        }),
        Err(e) => Err(CaError::Certificate {
            what: what.to_owned(),
            reason: format!("does not parse: {e}"),
        }),
    }
}

/// Every CERTIFICATE block of a PEM text, DER. Other blocks are refused.
fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    for item in rustls::pki_types::pem::PemObject::pem_slice_iter(pem) {
        let cert: CertificateDer<'static> = item.map_err(|e| format!("malformed PEM: {e}"))?;
        certs.push(cert.to_vec());
    }
    if certs.is_empty() {
        return Err("holds no PEM CERTIFICATE".to_owned());
    }
    Ok(certs)
}

fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    let bytes = fs::read(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    pem_certs(&bytes).map_err(|reason| CaError::Pem {
        path: path.to_owned(),
        reason,
    })
}

/// Reads the CA key: ECDSA P-256/P-384 or RSA, as PKCS#8 ("PRIVATE KEY") or, as older Istio
/// plug-in files have it, SEC1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"); the latter
/// two are rewrapped as PKCS#8, the curve taken from the CA certificate. Never logs or returns
/// its content.
fn read_key(path: &Path, cert_key: &SubjectPublicKeyInfo<'_>) -> Result<KeyPair, CaError> {
    let key_error = |reason: String| CaError::Key {
        path: path.to_owned(),
        reason,
    };
    let bytes = fs::read(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    warn_if_readable_by_others(path);
    let der = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| key_error("holds no PEM private key".to_owned()))?;
    let pkcs8 = match &der {
        PrivateKeyDer::Pkcs8(pkcs8) => pkcs8.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(pkcs1) => {
            // AlgorithmIdentifier { rsaEncryption, NULL }
            let algorithm = der_tlv(
                0x30,
                &[
                    der_tlv(
                        0x06,
                        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
                    ),
                    vec![0x05, 0x00],
                ]
                .concat(),
            );
            pkcs8_wrap(&algorithm, pkcs1.secret_pkcs1_der())
        }
        PrivateKeyDer::Sec1(sec1) => {
            let curve = cert_key
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| {
                    key_error(
                        "it is an \"EC PRIVATE KEY\" but the CA certificate's key is not an EC \
                         key on a named curve"
                            .to_owned(),
                    )
                })?;
            // AlgorithmIdentifier { id-ecPublicKey, namedCurve }
            let algorithm = der_tlv(
                0x30,
                &[
                    der_tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
                    der_tlv(0x06, curve.as_bytes()),
                ]
                .concat(),
            );
            pkcs8_wrap(&algorithm, sec1.secret_sec1_der())
        }
        _ => {
            return Err(key_error(
                "it is not a private key format Strait reads".to_owned(),
            ));
        }
    };
    let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|_| {
        key_error(
            "it is not an ECDSA P-256/P-384 or RSA (2048+ bits) key in PKCS#8, SEC1 or PKCS#1 \
             form, or it is encrypted; `openssl pkcs8 -topk8 -nocrypt` converts most keys"
                .to_owned(),
        )
    })?;
    if key.algorithm() == &rcgen::PKCS_ED25519 {
        return Err(key_error(
            "it is an Ed25519 key: Envoy and Istio workloads verify ECDSA or RSA chains".to_owned(),
        ));
    }
    Ok(key)
}

/// PKCS#8 v1 `PrivateKeyInfo` around a SEC1 or PKCS#1 private key.
fn pkcs8_wrap(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    der_tlv(
        0x30,
        &[
            &[0x02, 0x01, 0x00][..],
            algorithm,
            &der_tlv(0x04, private_key),
        ]
        .concat(),
    )
}

/// DER tag, definite length, content.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if let Ok(short) = u8::try_from(len)
        && short < 0x80
    {
        out.push(short);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | u8::try_from(significant.len()).unwrap_or(8));
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "CA key file is readable by group or others; it should be 0600"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// PEM for one DER certificate, 64-character lines.
pub(crate) fn cert_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// 128 random bits, as a positive serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    if bytes.iter().all(|&b| b == 0) {
        bytes[15] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

/// Sets notBefore and notAfter from Unix seconds.
pub(crate) fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), CaError> {
    let time = |secs: i64| {
        ASN1Time::from_timestamp(secs).map_err(|_| CaError::Issue {
            reason: format!("time {secs} is out of range"),
        })
    };
    params.not_before = time(not_before)?.to_datetime();
    params.not_after = time(not_after)?.to_datetime();
    Ok(())
}

pub(crate) fn unix_now() -> i64 {
    system_to_unix(SystemTime::now())
}

fn system_to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs())
            .map(|s| -s)
            .unwrap_or(i64::MIN),
    }
}

fn from_unix(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    t.unwrap_or(UNIX_EPOCH)
}

pub(crate) fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A Unix time as text, for messages and logs.
pub(crate) fn fmt_time(secs: i64) -> String {
    ASN1Time::from_timestamp(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{secs} (Unix seconds)"))
}

#[cfg(test)]
#[path = "tests/mod.rs"]
mod tests;

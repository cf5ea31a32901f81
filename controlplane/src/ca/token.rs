//! Strait bootstrap tokens: JWTs the control plane signs, with which a VM (or any workload
//! without Kubernetes) proves who it is to the CA on its first certificate.
//!
//! # Format
//!
//! A compact JWS (RFC 7515) with exactly one algorithm, ES256 (ECDSA P-256 with SHA-256; the
//! signature is the JOSE fixed 64-byte `r || s`, RFC 7518 §3.4):
//!
//! - header `{"alg":"ES256","typ":"JWT","kid":"<key id>"}`; the key id is the unpadded base64url
//!   of the first 8 bytes of SHA-256 over the key's uncompressed SEC1 public point;
//! - claims `iss` (the control plane, e.g. `strait://<cluster>`), `aud` (default
//!   [`DEFAULT_AUDIENCE`], `istio-ca`), `sub` (the SPIFFE ID), `namespace`, `service_account`,
//!   `group` (the workload group; optional), `iat`, `nbf`, `exp` (whole seconds since the epoch)
//!   and `jti` (128 random bits, unpadded base64url).
//!
//! It is built by hand on `ring`: no JWT library, so no algorithm but ES256 can ever be
//! negotiated, and `none` or an HMAC keyed with the public key (the classic confusion attack)
//! are refused before any key is looked at.
//!
//! # What [`TokenVerifier::verify`] refuses
//!
//! In this order, each with its own [`TokenError`] variant:
//!
//! 1. a token over [`MAX_TOKEN_LEN`] bytes, before anything is decoded ([`TokenError::TooLong`]);
//! 2. anything but three dot-separated unpadded base64url parts ([`TokenError::Malformed`]);
//! 3. a header that is not a JSON object ([`TokenError::HeaderNotJson`]);
//! 4. header fields that change the token's meaning or bring their own key: `crit`, `jku`,
//!    `jwk`, `x5u`, `x5c`, `x5t`, `x5t#S256`, `cty`, `b64`, `zip`, `enc`, even when `null`
//!    ([`TokenError::ForbiddenHeader`]);
//! 5. any other header field than `alg`, `typ`, `kid`; a repeated, missing or non-string `alg`
//!    ([`TokenError::BadHeader`]);
//! 6. any `alg` but `ES256`: `none`, `HS256`, `ES384`, `RS256`, `es256`…
//!    ([`TokenError::UnsupportedAlgorithm`]);
//! 7. a `typ` other than `JWT`, a missing `kid` ([`TokenError::BadHeader`]);
//! 8. a `kid` this verifier has no key for ([`TokenError::UnknownKey`]);
//! 9. a signature that is not 64 bytes, e.g. ASN.1 DER ([`TokenError::SignatureLength`]);
//! 10. a signature that does not verify ([`TokenError::BadSignature`]).
//!
//! Only then are the claims parsed:
//!
//! 11. claims that are not a JSON object ([`TokenError::ClaimsNotJson`]);
//! 12. a repeated, missing or mistyped claim ([`TokenError::DuplicateClaim`],
//!     [`TokenError::MissingClaim`], [`TokenError::ClaimType`]);
//! 13. another `iss` ([`TokenError::WrongIssuer`]); an `aud`, string or array, without ours
//!     ([`TokenError::WrongAudience`]);
//! 14. `exp` passed, `nbf` or `iat` in the future ([`TokenError::Expired`],
//!     [`TokenError::NotYetValid`], [`TokenError::IssuedInFuture`]);
//! 15. a namespace, service account or group that is not a valid Kubernetes name
//!     ([`TokenError::BadName`]);
//! 16. a `sub` that is not the SPIFFE ID of the `namespace` and `service_account` claims
//!     ([`TokenError::SubjectMismatch`]);
//! 17. a trust domain other than the one the verifier is pinned to
//!     ([`TokenError::WrongTrustDomain`]);
//! 18. a `jti` that is not 128 bits of base64url ([`TokenError::BadClaim`]).
//!
//! # Clock skew
//!
//! The control plane and a VM need not agree on the time: every time check allows
//! [`CLOCK_SKEW`] (60 s) either way. A token is refused once `now >= exp + 60 s`, while
//! `nbf > now + 60 s`, and when `iat > now + 60 s`.
//!
//! # Key
//!
//! The signing key is a P-256 key in PKCS#8, PEM, in `<dir>/token-signing-key.pem`, mode 0600.
//! It is created on first start, read (and its mode checked) afterwards, and never logged.
//! Rotation: a new issuer's verifier takes the old public key with [`TokenVerifier::add_key`]
//! until the old tokens have expired.
//!
//! # Cache
//!
//! A verifier remembers the tokens that verified (at most [`cache::DEFAULT_CAPACITY`], least
//! recently used evicted first), keyed on SHA-256 of the token text, so a token presented again
//! costs no ES256 verification. A hit re-checks the times against `now` and that the `kid` still
//! names the key that verified it, so it decides exactly as a fresh verification; adding or
//! removing a key or changing a setting empties the cache. See [`cache`].
//!
//! # What this module leaves to its callers
//!
//! A token is a bearer credential for its first issue only (renewal uses the mesh certificate,
//! so a VM does not stop rotating when its token expires). Remembering used `jti`s, to make a
//! token single-use, is the CA's business; note that ECDSA signatures are malleable, so a
//! replay cache must key on `jti`, never on the token text.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use strait_proto::identity::{IdentityError, SpiffeId};

use cache::{Digest, Verified, VerifiedTokens};

pub mod cache;

/// The audience a token carries unless asked otherwise: the CA's, as for Kubernetes tokens.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The signing key's file name inside the directory given to [`TokenIssuer::load_or_create`].
pub const KEY_FILE: &str = "token-signing-key.pem";
/// Longest token [`TokenVerifier::verify`] looks at, in bytes; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest lifetime a token can be issued with.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How far the verifier's clock may be from the issuer's, either way.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The only algorithm, in the header's words.
const ALG: &str = "ES256";
const TYP: &str = "JWT";
/// Length of a JOSE ES256 signature: `r || s`, 32 bytes each.
const SIGNATURE_LEN: usize = 64;
/// Length of an uncompressed SEC1 P-256 point: `0x04 || x || y`.
const PUBLIC_KEY_LEN: usize = 65;
/// Random bytes in a `jti`.
const JTI_BYTES: usize = 16;
/// Largest key file read; a PEM P-256 PKCS#8 key is about 250 bytes.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Header fields that would change what the token means or where its key comes from: refused.
const FORBIDDEN_HEADERS: &[&str] = &[
    "crit", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "cty", "b64", "zip", "enc",
];
/// Algorithm names quoted back in errors; any other `alg` is called "an unrecognised algorithm".
const KNOWN_ALGS: &[&str] = &[
    "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES384", "ES512", "ES256K", "EdDSA", "Ed25519", "Ed448",
];

/// Why a token could not be issued or was refused, or the signing key could not be loaded.
///
/// Messages say what is wrong but never quote the token, its decoded parts or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The signing key file or its directory could not be read or written.
    #[error("token signing key {path}: {source}")]
    KeyIo {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The signing key file can be read or written by group or others.
    #[error(
        "token signing key {path} has mode {mode:o}: it must be readable by its owner only \
         (chmod 600)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The signing key file is not a PEM PKCS#8 ECDSA P-256 private key.
    #[error("token signing key {path} {reason}")]
    KeyInvalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A public key given to [`TokenVerifier::add_key`] is not an uncompressed P-256 point.
    #[error("public key is not an uncompressed SEC1 P-256 point (65 bytes starting 0x04)")]
    BadPublicKey,
    /// The system's random generator or the signer failed.
    #[error("the system random generator or the ECDSA signer failed")]
    Crypto,
    /// The system clock (or the `now` given) is before 1970.
    #[error("the clock is before the Unix epoch")]
    Clock,
    /// A token was requested with a lifetime under one second.
    #[error("token lifetime must be at least one second")]
    ZeroTtl,
    /// A token was requested with a lifetime over [`MAX_TTL`].
    #[error("token lifetime of {requested_secs} s is over the maximum of {max_secs} s")]
    TtlTooLong {
        /// The lifetime asked for, in seconds.
        requested_secs: u64,
        /// [`MAX_TTL`] in seconds.
        max_secs: u64,
    },

    /// The token is longer than [`MAX_TOKEN_LEN`]; nothing of it was decoded.
    #[error("token is {len} bytes long, over the {max}-byte limit")]
    TooLong {
        /// The token's length.
        len: usize,
        /// [`MAX_TOKEN_LEN`].
        max: usize,
    },
    /// The token is not three dot-separated, non-empty, unpadded base64url parts.
    #[error("token is not a compact JWS: {reason}")]
    Malformed {
        /// Which part is wrong and how.
        reason: &'static str,
    },
    /// The decoded header is not a JSON object.
    #[error("token header is not a JSON object")]
    HeaderNotJson,
    /// The header carries a field that changes the token's meaning or names its own key.
    #[error("token header carries {field:?}, which is refused")]
    ForbiddenHeader {
        /// The refused field.
        field: &'static str,
    },
    /// The header has a field other than `alg`, `typ` and `kid`, or misses or repeats one, or
    /// `typ` is not `JWT`.
    #[error("token header {reason}")]
    BadHeader {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header's `alg` is not `ES256`.
    #[error("token algorithm {alg} is refused: only ES256 is accepted")]
    UnsupportedAlgorithm {
        /// The algorithm's name if it is a known one, else "an unrecognised algorithm".
        alg: &'static str,
    },
    /// The header's `kid` names no key this verifier has.
    #[error("token is signed with a key this control plane does not know (unknown kid)")]
    UnknownKey,
    /// The signature is not the 64 bytes of an ES256 signature.
    #[error("token signature is {len} bytes long: an ES256 signature is 64 bytes (r || s)")]
    SignatureLength {
        /// The decoded signature's length.
        len: usize,
    },
    /// The signature does not verify with the key named by `kid`.
    #[error("token signature does not verify")]
    BadSignature,
    /// The decoded claims are not a JSON object.
    #[error("token claims are not a JSON object")]
    ClaimsNotJson,
    /// A claim appears twice.
    #[error("token claim {claim} appears more than once")]
    DuplicateClaim {
        /// The claim.
        claim: &'static str,
    },
    /// A required claim is missing.
    #[error("token has no {claim} claim")]
    MissingClaim {
        /// The claim.
        claim: &'static str,
    },
    /// A claim has the wrong JSON type.
    #[error("token claim {claim} is not {expected}")]
    ClaimType {
        /// The claim.
        claim: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A claim (or a token request field) has the right type but an unusable value.
    #[error("token claim {claim} {reason}")]
    BadClaim {
        /// The claim.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `iss` is not this control plane.
    #[error("token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not name this verifier's audience.
    #[error("token is meant for another audience")]
    WrongAudience,
    /// `exp` has passed (with [`CLOCK_SKEW`] allowed).
    #[error("token expired {ago_secs} s ago (60 s of clock skew allowed)")]
    Expired {
        /// Seconds since `exp`.
        ago_secs: u64,
    },
    /// `nbf` is still in the future (with [`CLOCK_SKEW`] allowed).
    #[error("token is not valid for another {in_secs} s (60 s of clock skew allowed)")]
    NotYetValid {
        /// Seconds until `nbf`.
        in_secs: u64,
    },
    /// `iat` is in the future (with [`CLOCK_SKEW`] allowed).
    #[error("token claims to be issued {in_secs} s in the future (60 s of clock skew allowed)")]
    IssuedInFuture {
        /// Seconds until `iat`.
        in_secs: u64,
    },
    /// A namespace, service account, group or trust domain is not a valid name.
    #[error("{claim} is not a valid name: it {reason}")]
    BadName {
        /// Which name.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `sub` is not the SPIFFE ID of the `namespace` and `service_account` claims.
    #[error("token sub is not the SPIFFE ID of its namespace and service_account claims")]
    SubjectMismatch,
    /// The identity is in another trust domain than the one the verifier is pinned to.
    #[error("token identity is in another trust domain")]
    WrongTrustDomain,
}

/// What [`TokenIssuer::issue`] is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The workload's Kubernetes namespace (a DNS-1123 label).
    pub namespace: String,
    /// The workload's service account (a DNS-1123 subdomain).
    pub service_account: String,
    /// The workload group the VM registers into, if any.
    pub group: Option<String>,
    /// The audience; [`DEFAULT_AUDIENCE`] when `None`.
    pub audience: Option<String>,
    /// How long the token is valid: at least one second, at most [`MAX_TTL`].
    pub ttl: Duration,
}

/// What a verified token says: who the bearer is, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapClaims {
    /// The bearer's identity, `sub`.
    pub identity: SpiffeId,
    /// The workload group, `group`.
    pub group: Option<String>,
    /// When the token expires, `exp`.
    pub expires: SystemTime,
    /// The token's unique id, `jti`.
    pub jti: String,
}

/// Signs bootstrap tokens with the control plane's token key.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    issuer: String,
    kid: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Loads the signing key from `dir/token-signing-key.pem`, or creates it (mode 0600, in a
    /// directory created 0700) when there is none. Two processes creating it at once end up
    /// with the same key. A key file readable by group or others is refused.
    pub fn load_or_create(dir: &Path, issuer: String) -> Result<Self, TokenError> {
        check_issuer(&issuer)?;
        let path = dir.join(KEY_FILE);
        let rng = SystemRandom::new();
        let pkcs8 = match read_key_file(&path)? {
            Some(pkcs8) => pkcs8,
            None => create_key_file(dir, &path, &rng)?,
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| TokenError::KeyInvalid {
                path: path.clone(),
                reason: "is not a PKCS#8 ECDSA P-256 private key",
            })?;
        let kid = key_id(key.public_key().as_ref());
        tracing::debug!(path = %path.display(), %kid, "token signing key loaded");
        Ok(TokenIssuer {
            key,
            rng,
            issuer,
            kid,
        })
    }

    /// The `iss` this issuer writes.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` of this issuer's key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as an uncompressed SEC1 P-256 point (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Issues a token for `namespace`/`service_account` in `trust_domain`, valid from now.
    pub fn issue(&self, request: &TokenRequest, trust_domain: &str) -> Result<String, TokenError> {
        self.issue_at(request, trust_domain, SystemTime::now())
    }

    /// Issues a token as [`TokenIssuer::issue`] does, as if the time were `now`.
    pub fn issue_at(
        &self,
        request: &TokenRequest,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        let ttl = request.ttl.as_secs();
        if ttl == 0 {
            return Err(TokenError::ZeroTtl);
        }
        if request.ttl > MAX_TTL {
            return Err(TokenError::TtlTooLong {
                requested_secs: ttl,
                max_secs: MAX_TTL.as_secs(),
            });
        }
        let identity = SpiffeId::new(
            trust_domain,
            request.namespace.as_str(),
            request.service_account.as_str(),
        )
        .map_err(bad_name)?;
        if let Some(group) = &request.group {
            check_group(group)?;
        }
        let audience = request.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
        if audience.is_empty() {
            return Err(TokenError::BadClaim {
                claim: "aud",
                reason: "is empty",
            });
        }
        let iat = unix_secs(now)?;
        let exp = iat.checked_add(ttl).ok_or(TokenError::Clock)?;
        let mut jti = [0u8; JTI_BYTES];
        self.rng.fill(&mut jti).map_err(|_| TokenError::Crypto)?;

        let mut header = Map::new();
        header.insert("alg".into(), ALG.into());
        header.insert("typ".into(), TYP.into());
        header.insert("kid".into(), self.kid.as_str().into());
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.as_str().into());
        claims.insert("aud".into(), audience.into());
        claims.insert("sub".into(), identity.to_string().into());
        claims.insert("namespace".into(), identity.namespace().into());
        claims.insert("service_account".into(), identity.service_account().into());
        if let Some(group) = &request.group {
            claims.insert("group".into(), group.as_str().into());
        }
        claims.insert("iat".into(), iat.into());
        claims.insert("nbf".into(), iat.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
        self.sign(
            Value::Object(header).to_string().as_bytes(),
            Value::Object(claims).to_string().as_bytes(),
        )
    }

    /// A verifier for this issuer's tokens, audience [`DEFAULT_AUDIENCE`], with its key.
    pub fn verifier(&self) -> TokenVerifier {
        let mut keys = BTreeMap::new();
        keys.insert(self.kid.clone(), self.public_key().to_vec());
        TokenVerifier {
            issuer: self.issuer.clone(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            trust_domain: None,
            keys,
            cache: VerifiedTokens::new(cache::DEFAULT_CAPACITY),
        }
    }

    /// Signs `header` and `claims` (JSON) as a compact JWS.
    fn sign(&self, header: &[u8], claims: &[u8]) -> Result<String, TokenError> {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| TokenError::Crypto)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }
}

/// Checks bootstrap tokens: one issuer, one audience, the keys it trusts by `kid`; remembers
/// the tokens that verified (see the module docs, "Cache"). A clone starts with an empty cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenVerifier {
    issuer: String,
    audience: String,
    trust_domain: Option<String>,
    keys: BTreeMap<String, Vec<u8>>,
    cache: VerifiedTokens,
}

impl TokenVerifier {
    /// A verifier with no keys yet, for tokens from `issuer` meant for `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        TokenVerifier {
            issuer: issuer.into(),
            audience: audience.into(),
            trust_domain: None,
            keys: BTreeMap::new(),
            cache: VerifiedTokens::new(cache::DEFAULT_CAPACITY),
        }
    }

    /// The same verifier, for tokens meant for `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self.forget_verified();
        self
    }

    /// The same verifier, refusing identities outside `trust_domain`.
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = Some(trust_domain.into());
        self.forget_verified();
        self
    }

    /// The same verifier, remembering at most `capacity` verified tokens (0: none).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = VerifiedTokens::new(capacity);
        self
    }

    /// Trusts one more key (an uncompressed SEC1 P-256 point, as [`TokenIssuer::public_key`]
    /// gives), e.g. the previous key during a rotation. Returns its `kid`.
    pub fn add_key(&mut self, public_key: &[u8]) -> Result<String, TokenError> {
        if public_key.len() != PUBLIC_KEY_LEN || public_key.first() != Some(&0x04) {
            return Err(TokenError::BadPublicKey);
        }
        let kid = key_id(public_key);
        self.keys.insert(kid.clone(), public_key.to_vec());
        self.forget_verified();
        Ok(kid)
    }

    /// Stops trusting the key `kid` (e.g. the previous key once its tokens have expired); says
    /// whether it was trusted. Tokens it signed are refused from now on, cached or not.
    pub fn remove_key(&mut self, kid: &str) -> bool {
        let removed = self.keys.remove(kid).is_some();
        self.forget_verified();
        removed
    }

    /// Empties the cache: what it holds was decided under the old settings or keys.
    fn forget_verified(&mut self) {
        self.cache = VerifiedTokens::new(self.cache.capacity());
    }

    /// The `iss` this verifier accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid`s of the keys this verifier trusts.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `token` as of `now`, and says whom it names. See the module docs for what is
    /// refused, in which order; a token that verified before is answered from the cache, with
    /// the same decision.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<BootstrapClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let digest = token_digest(token);
        if let Some(hit) = self.cache.get(&digest) {
            // Same bytes, same settings (a change empties the cache): only the clock and the
            // key set can make a fresh verification decide otherwise.
            if self.keys.get(&hit.kid) == Some(&hit.key) {
                return match hit.times.check(now) {
                    Ok(()) => Ok(hit.claims.clone()),
                    Err(refused) => {
                        self.cache.remove(&digest);
                        Err(refused)
                    }
                };
            }
            self.cache.remove(&digest);
        }
        let verified = self.verify_uncached(token, now)?;
        let claims = verified.claims.clone();
        self.cache.insert(digest, verified);
        Ok(claims)
    }

    /// The checks of [`TokenVerifier::verify`], all of them, with what a cache entry keeps.
    fn verify_uncached(&self, token: &str, now: SystemTime) -> Result<Verified, TokenError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed {
                reason: "it is not three dot-separated parts",
            });
        };
        if header_b64.is_empty() || claims_b64.is_empty() {
            return Err(TokenError::Malformed {
                reason: "its header or claims part is empty",
            });
        }
        let header = decode_part(header_b64, "its header is not unpadded base64url")?;
        let claims = decode_part(claims_b64, "its claims are not unpadded base64url")?;
        let signature = decode_part(signature_b64, "its signature is not unpadded base64url")?;

        let (kid, key) = self.check_header(&header)?;
        if signature.len() != SIGNATURE_LEN {
            return Err(TokenError::SignatureLength {
                len: signature.len(),
            });
        }
        let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
            .verify(signed, &signature)
            .map_err(|_| TokenError::BadSignature)?;

        let (claims, times) = self.check_claims(&claims, now)?;
        Ok(Verified {
            claims,
            times,
            kid: kid.to_owned(),
            key: key.to_vec(),
        })
    }

    /// Checks the header and returns its `kid` and the public key it names.
    fn check_header(&self, header: &[u8]) -> Result<(&str, &[u8]), TokenError> {
        let members = parse_object(header).ok_or(TokenError::HeaderNotJson)?;
        for (name, _) in &members {
            if let Some(field) = FORBIDDEN_HEADERS.iter().find(|f| **f == name.as_str()) {
                return Err(TokenError::ForbiddenHeader { field });
            }
        }
        if members
            .iter()
            .any(|(name, _)| !matches!(name.as_str(), "alg" | "typ" | "kid"))
        {
            return Err(TokenError::BadHeader {
                reason: "carries a field other than alg, typ and kid",
            });
        }
        let field = |name: &str| {
            let mut found = members.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
            match (found.next(), found.next()) {
                (_, Some(_)) => Err(TokenError::BadHeader {
                    reason: "repeats a field",
                }),
                (Some(Value::String(s)), None) => Ok(Some(s.as_str())),
                (Some(_), None) => Err(TokenError::BadHeader {
                    reason: "has a field that is not a string",
                }),
                (None, None) => Ok(None),
            }
        };
        let alg = field("alg")?.ok_or(TokenError::BadHeader {
            reason: "has no alg",
        })?;
        if alg != ALG {
            let alg = KNOWN_ALGS
                .iter()
                .find(|known| **known == alg)
                .copied()
                .unwrap_or("an unrecognised algorithm");
            return Err(TokenError::UnsupportedAlgorithm { alg });
        }
        if field("typ")? != Some(TYP) {
            return Err(TokenError::BadHeader {
                reason: "typ is not \"JWT\"",
            });
        }
        let kid = field("kid")?.ok_or(TokenError::BadHeader {
            reason: "has no kid",
        })?;
        self.keys
            .get_key_value(kid)
            .map(|(kid, key)| (kid.as_str(), key.as_slice()))
            .ok_or(TokenError::UnknownKey)
    }

    /// Checks the (signed) claims; returns them with the times a cache hit re-checks.
    fn check_claims(
        &self,
        claims: &[u8],
        now: SystemTime,
    ) -> Result<(BootstrapClaims, Times), TokenError> {
        let members = parse_object(claims).ok_or(TokenError::ClaimsNotJson)?;
        let claims = Claims::from_members(&members)?;

        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.contains(&self.audience.as_str()) {
            return Err(TokenError::WrongAudience);
        }

        let times = Times {
            iat: claims.iat,
            nbf: claims.nbf,
            exp: claims.exp,
        };
        times.check(now)?;
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .ok_or(TokenError::BadClaim {
                claim: "exp",
                reason: "is out of range",
            })?;

        // The names first, under any valid trust domain, so that a bad one is called by its name.
        SpiffeId::new("cluster.local", claims.namespace, claims.service_account)
            .map_err(bad_name)?;
        if let Some(group) = claims.group {
            check_group(group)?;
        }
        let identity: SpiffeId = claims
            .sub
            .parse()
            .map_err(|_| TokenError::SubjectMismatch)?;
        if identity.namespace() != claims.namespace
            || identity.service_account() != claims.service_account
        {
            return Err(TokenError::SubjectMismatch);
        }
        if let Some(trust_domain) = &self.trust_domain
            && identity.trust_domain() != trust_domain
        {
            return Err(TokenError::WrongTrustDomain);
        }
        let jti_ok = claims.jti.len() == 22
            && URL_SAFE_NO_PAD
                .decode(claims.jti)
                .is_ok_and(|bytes| bytes.len() == JTI_BYTES);
        if !jti_ok {
            return Err(TokenError::BadClaim {
                claim: "jti",
                reason: "is not 128 bits of unpadded base64url",
            });
        }

        let claims = BootstrapClaims {
            identity,
            group: claims.group.map(str::to_owned),
            expires,
            jti: claims.jti.to_owned(),
        };
        Ok((claims, times))
    }
}

/// A token's `iat`, `nbf` and `exp`, whole seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl Times {
    /// The time checks of [`TokenVerifier::verify`], with [`CLOCK_SKEW`] either way.
    fn check(&self, now: SystemTime) -> Result<(), TokenError> {
        let now = unix_secs(now)?;
        let skew = CLOCK_SKEW.as_secs();
        if now >= self.exp.saturating_add(skew) {
            return Err(TokenError::Expired {
                ago_secs: now - self.exp,
            });
        }
        if self.nbf > now.saturating_add(skew) {
            return Err(TokenError::NotYetValid {
                in_secs: self.nbf - now,
            });
        }
        if self.iat > now.saturating_add(skew) {
            return Err(TokenError::IssuedInFuture {
                in_secs: self.iat - now,
            });
        }
        Ok(())
    }
}

/// What the cache is keyed on: the whole token text, so that no two tokens share an entry.
fn token_digest(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// The claims, typed, borrowed from the parsed object.
struct Claims<'a> {
    iss: &'a str,
    aud: Vec<&'a str>,
    sub: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    group: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
}

impl<'a> Claims<'a> {
    /// Checks that each claim appears at most once, that the required ones are there, and
    /// their types. Unknown claims are ignored.
    fn from_members(members: &'a [(String, Value)]) -> Result<Self, TokenError> {
        const STRING: &str = "a string";
        const SECONDS: &str = "a whole, non-negative number of seconds";
        let get = |claim: &'static str| -> Result<Option<&'a Value>, TokenError> {
            let mut found = members.iter().filter(|(n, _)| n == claim).map(|(_, v)| v);
            match (found.next(), found.next()) {
                (_, Some(_)) => Err(TokenError::DuplicateClaim { claim }),
                (value, None) => Ok(value),
            }
        };
        let required = |claim: &'static str| get(claim)?.ok_or(TokenError::MissingClaim { claim });
        let string = |claim: &'static str| match required(claim)? {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(TokenError::ClaimType {
                claim,
                expected: STRING,
            }),
        };
        let seconds = |claim: &'static str| {
            required(claim)?.as_u64().ok_or(TokenError::ClaimType {
                claim,
                expected: SECONDS,
            })
        };
        let aud_type = TokenError::ClaimType {
            claim: "aud",
            expected: "a string or an array of strings",
        };
        let aud = match required("aud")? {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .ok_or(aud_type)?,
            _ => return Err(aud_type),
        };
        let group = match get("group")? {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err(TokenError::ClaimType {
                    claim: "group",
                    expected: STRING,
                });
            }
        };
        Ok(Claims {
            iss: string("iss")?,
            aud,
            sub: string("sub")?,
            namespace: string("namespace")?,
            service_account: string("service_account")?,
            group,
            iat: seconds("iat")?,
            nbf: seconds("nbf")?,
            exp: seconds("exp")?,
            jti: string("jti")?,
        })
    }
}

/// A JSON object's members in order, repeats kept (a map would silently keep the last).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The members of `json` if it is one JSON object (and nothing else), else `None`.
fn parse_object(json: &[u8]) -> Option<Vec<(String, Value)>> {
    serde_json::from_slice::<Members>(json)
        .ok()
        .map(|members| members.0)
}

fn decode_part(part: &str, reason: &'static str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed { reason })
}

/// The `kid` of a public key: unpadded base64url of the first 8 bytes of its SHA-256.
fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..8])
}

fn unix_secs(time: SystemTime) -> Result<u64, TokenError> {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| TokenError::Clock)
}

fn check_issuer(issuer: &str) -> Result<(), TokenError> {
    let reason = if issuer.is_empty() {
        "is empty"
    } else if issuer.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(TokenError::BadClaim {
        claim: "iss",
        reason,
    })
}

/// A workload group's name is a Kubernetes object name: a DNS-1123 subdomain, which is what a
/// service account is too.
fn check_group(group: &str) -> Result<(), TokenError> {
    match SpiffeId::new("cluster.local", "default", group) {
        Ok(_) => Ok(()),
        Err(IdentityError::ServiceAccount { reason, .. }) => Err(TokenError::BadName {
            claim: "group",
            reason,
        }),
        Err(_) => Err(TokenError::BadName {
            claim: "group",
            reason: "is not a DNS-1123 subdomain",
        }),
    }
}

/// An identity error, without the rejected text.
fn bad_name(err: IdentityError) -> TokenError {
    let (claim, reason) = match err {
        IdentityError::Namespace { reason, .. } => ("namespace", reason),
        IdentityError::ServiceAccount { reason, .. } => ("service_account", reason),
        IdentityError::TrustDomain { reason, .. } => ("trust domain", reason),
        _ => ("identity", "does not make a valid SPIFFE ID"),
    };
    TokenError::BadName { claim, reason }
}

/// Reads the key file's PKCS#8 bytes; `None` if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<Vec<u8>>, TokenError> {
    let io_err = |source| TokenError::KeyIo {
        path: path.to_owned(),
        source,
    };
    let invalid = |reason| TokenError::KeyInvalid {
        path: path.to_owned(),
        reason,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(invalid("is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(invalid("is too large to be a P-256 key"));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid("is not PEM text"))?;
    decode_pem(text)
        .map(Some)
        .ok_or_else(|| invalid("is not one PEM \"PRIVATE KEY\" (PKCS#8) block"))
}

/// Creates the key file atomically: written to a private temporary file, then hard-linked into
/// place, so a concurrent loader sees either no key or a whole one; if another process won the
/// race, its key is used.
fn create_key_file(dir: &Path, path: &Path, rng: &SystemRandom) -> Result<Vec<u8>, TokenError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TokenError::KeyIo { path, source }
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))?;

    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .map_err(|_| TokenError::Crypto)?;
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix).map_err(|_| TokenError::Crypto)?;
    let tmp = dir.join(format!(
        ".{KEY_FILE}.{}.tmp",
        URL_SAFE_NO_PAD.encode(suffix)
    ));
    let written = write_private(&tmp, encode_pem(pkcs8.as_ref()).as_bytes());
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    // The temporary name goes in every case; a failure to remove it changes nothing.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
            tracing::info!(path = %path.display(), "created a new token signing key");
            Ok(pkcs8.as_ref().to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read_key_file(path)?.ok_or_else(|| TokenError::KeyIo {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "key file vanished while created"),
            })
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `bytes` to a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn encode_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + 80);
    pem.push_str(PEM_BEGIN);
    pem.push('\n');
    for line in b64.as_bytes().chunks(64) {
        pem.extend(line.iter().map(|&b| char::from(b)));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// The DER inside one `PRIVATE KEY` PEM block (surrounding whitespace and CRLF tolerated).
fn decode_pem(text: &str) -> Option<Vec<u8>> {
    let body = text.trim().strip_prefix(PEM_BEGIN)?.strip_suffix(PEM_END)?;
    let b64: String = body.split_whitespace().collect();
    if b64.contains('-') {
        return None;
    }
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests;

//! Everything a certificate signing request must satisfy before the CA signs anything.
//!
//! [`validate`] is the only way to obtain a [`ValidCsr`], and a [`ValidCsr`] is the only thing
//! the signer issues a certificate for. The signer takes nothing from the CSR but its public
//! key: the leaf's name, extensions and lifetime are built by the CA. The CSR's extensions are
//! inspected only to refuse a request that asks for something it must not have (to be a CA,
//! another identity, several names), so that a bad client learns why instead of silently
//! getting less than it asked for.
//!
//! Accepted keys: ECDSA on P-256 or P-384 (uncompressed points), and RSA (`rsaEncryption`)
//! with a modulus of 2048 to 4096 bits. Refused: other curves (secp256k1, P-521 — ring, which
//! verifies the CSR's self-signature, does not implement P-521, and Envoy's defaults do not
//! offer it), Ed25519 and Ed448 (Envoy and Istio workloads use ECDSA or RSA certificates),
//! RSA-PSS keys, DSA, and anything else. Accepted self-signature algorithms: ECDSA with SHA-256
//! or SHA-384, RSA PKCS#1 v1.5 with SHA-256/384/512, and RSA-PSS; SHA-1 and MD5 are refused.

use std::fmt;

use base64::Engine as _;
use strait_proto::identity::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Largest CSR accepted, in bytes of PEM text. A workload CSR is well under 2 KiB (an RSA-4096
/// one about 1.7 KiB); anything near this limit is not a CSR a workload made.
pub const MAX_CSR_LEN: usize = 64 * 1024;

/// The one PEM label a CSR may carry.
pub const CSR_PEM_LABEL: &str = "CERTIFICATE REQUEST";

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: u32 = 4096;

/// How many characters of a caller-supplied string an error message quotes.
const EXCERPT_CHARS: usize = 200;

/// Why a CSR was refused. Nothing is signed when [`validate`] returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The input is longer than [`MAX_CSR_LEN`]; it was refused before any parsing.
    #[error(
        "CSR is {len} bytes, over the {max}-byte limit: a workload CSR is under 2 KiB, so this \
         was refused without being parsed"
    )]
    TooLarge {
        /// The input's length in bytes.
        len: usize,
        /// The limit, [`MAX_CSR_LEN`].
        max: usize,
    },
    /// The input has no `-----BEGIN ` line at all.
    #[error("CSR is not PEM: no \"-----BEGIN CERTIFICATE REQUEST-----\" line was found")]
    NotPem,
    /// The input holds more than one PEM block.
    #[error(
        "CSR input holds {count} PEM blocks: exactly one CERTIFICATE REQUEST block is expected"
    )]
    SeveralPemBlocks {
        /// How many `-----BEGIN ` lines were found.
        count: usize,
    },
    /// The PEM block's label is not `CERTIFICATE REQUEST`.
    #[error("PEM block is labelled {label:?}, not \"CERTIFICATE REQUEST\"")]
    WrongPemLabel {
        /// The label found (its beginning, if long).
        label: String,
    },
    /// The PEM text is malformed: text around the block, a missing or mismatched END line,
    /// headers, or a body that is not base64.
    #[error("CSR PEM is malformed: {reason}")]
    PemGarbage {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The PEM body decodes, but not to a PKCS#10 request.
    #[error("CSR does not parse as a PKCS#10 request: {reason}")]
    Der {
        /// What the parser said.
        reason: String,
    },
    /// The public key is of an algorithm the CA does not certify.
    #[error(
        "CSR key algorithm {algorithm} is not supported: only ECDSA (P-256, P-384) and RSA \
         (2048-4096 bits) keys are certified"
    )]
    UnsupportedKeyAlgorithm {
        /// The algorithm's name or OID.
        algorithm: String,
    },
    /// The public key is an ECDSA key on a curve other than P-256 or P-384.
    #[error(
        "CSR key is on curve {curve}: only P-256 and P-384 are accepted (P-521 is refused because \
         the verifier does not implement it, and Envoy does not offer it by default)"
    )]
    UnsupportedCurve {
        /// The curve's name or OID.
        curve: String,
    },
    /// The public key is Ed25519.
    #[error(
        "CSR key is Ed25519: refused because Envoy and Istio workloads use ECDSA or RSA \
         certificates; generate an ECDSA P-256 key"
    )]
    Ed25519Key,
    /// The RSA modulus is shorter than 2048 or longer than 4096 bits.
    #[error(
        "CSR RSA key has a {bits}-bit modulus: only 2048 to 4096 bits are accepted (shorter is \
         breakable, longer only costs the CA and every peer time)"
    )]
    RsaKeySize {
        /// The modulus length in bits.
        bits: u32,
    },
    /// The public key is of a supported type but badly encoded.
    #[error("CSR public key is malformed: {reason}")]
    MalformedKey {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The self-signature uses an algorithm that is refused, or one that does not fit the key.
    #[error("CSR is signed with {algorithm}, which is refused: {reason}")]
    UnsupportedSignatureAlgorithm {
        /// The algorithm's name or OID.
        algorithm: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The self-signature does not verify with the key the CSR carries.
    #[error(
        "CSR self-signature does not verify: the request was altered or was not signed by the \
         key it carries"
    )]
    BadSignature,
    /// The CSR asks for a basicConstraints extension with `CA:TRUE`.
    #[error("CSR asks to be a CA (basicConstraints CA:TRUE): workload certificates are never CAs")]
    RequestsCa,
    /// An extension the CA inspects (subjectAltName, basicConstraints) does not parse.
    #[error("CSR {extension} extension is malformed: {reason}")]
    MalformedExtension {
        /// The extension's name.
        extension: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The CSR carries no subject alternative name.
    #[error(
        "CSR carries no subject alternative name: it must name the caller's SPIFFE ID as its \
         one URI SAN"
    )]
    NoSan,
    /// The CSR carries more than one subject alternative name.
    #[error(
        "CSR carries {count} subject alternative names: exactly one, the caller's SPIFFE ID, is \
         allowed"
    )]
    SeveralSans {
        /// How many SAN entries it carries, over all its SAN extensions.
        count: usize,
    },
    /// The one SAN is not a URI.
    #[error(
        "CSR SAN is a {kind} ({value:?}): only a URI SAN holding the caller's SPIFFE ID is allowed"
    )]
    NonUriSan {
        /// The kind of name (DNS name, IP address, email address, …).
        kind: &'static str,
        /// The name (its beginning, if long).
        value: String,
    },
    /// The URI SAN holds a NUL or another control character.
    #[error("CSR URI SAN {uri:?} contains a control character (NUL, newline, …)")]
    ControlCharacterInSan {
        /// The URI (its beginning, if long), with control characters escaped.
        uri: String,
    },
    /// The URI SAN names someone other than the caller.
    #[error(
        "CSR asks for identity {requested:?} but the caller is {caller}: a workload may only \
         request a certificate for its own identity"
    )]
    WrongIdentity {
        /// The URI the CSR asked for (its beginning, if long).
        requested: String,
        /// The caller's authenticated identity.
        caller: String,
    },
}

/// The kind of public key a validated CSR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256 (secp256r1).
    EcdsaP256,
    /// ECDSA on NIST P-384 (secp384r1).
    EcdsaP384,
    /// RSA with a modulus of `bits` bits (2048 to 4096).
    Rsa {
        /// The modulus length in bits.
        bits: u32,
    },
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyType::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyType::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// A CSR that passed [`validate`]: the identity it was checked against and the public key the
/// leaf will be issued for. Only [`validate`] makes one.
#[derive(Debug, Clone)]
pub struct ValidCsr {
    identity: SpiffeId,
    spki_der: Vec<u8>,
    key_type: KeyType,
    public_key: rcgen::SubjectPublicKeyInfo,
}

impl ValidCsr {
    /// The identity the CSR was validated against (and names, exactly, as its one URI SAN).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The CSR's SubjectPublicKeyInfo, DER: exactly the key the leaf will certify.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The kind of key.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The public key in the form rcgen signs; it re-encodes to exactly [`Self::spki_der`].
    pub(crate) fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.public_key
    }
}

/// Checks a PEM CSR against the caller's authenticated identity. Run before anything is signed;
/// see the module documentation for what is accepted.
///
/// Checks, in order: size (before parsing), PEM framing, DER, key type and size, signature
/// algorithm, self-signature, basicConstraints, SANs (exactly one, a URI, no control
/// characters, equal to `expected`).
pub fn validate(csr_pem: &str, expected: &SpiffeId) -> Result<ValidCsr, CsrError> {
    if csr_pem.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge {
            len: csr_pem.len(),
            max: MAX_CSR_LEN,
        });
    }
    let der = pem_to_der(csr_pem)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Der {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CsrError::Der {
            reason: format!("{} bytes follow the request", rest.len()),
        });
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::Der {
            reason: format!("version is {}, only v1 (0) exists", info.version.0),
        });
    }

    let key_type = check_key(&info.subject_pki)?;
    check_signature(&csr, key_type)?;
    let san = single_san(&csr)?;
    check_san(san, expected)?;

    let spki_der = info.subject_pki.raw.to_vec();
    let public_key =
        rcgen::SubjectPublicKeyInfo::from_der(&spki_der).map_err(|_| CsrError::MalformedKey {
            reason: "the key's algorithm identifier is not in its standard form",
        })?;
    // The leaf must certify exactly the bytes that were checked above.
    if rcgen::PublicKeyData::subject_public_key_info(&public_key) != spki_der {
        return Err(CsrError::MalformedKey {
            reason: "the key's encoding is not canonical DER",
        });
    }
    Ok(ValidCsr {
        identity: expected.clone(),
        spki_der,
        key_type,
        public_key,
    })
}

/// Decodes exactly one `CERTIFICATE REQUEST` PEM block, with nothing but whitespace around it.
fn pem_to_der(input: &str) -> Result<Vec<u8>, CsrError> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----";
    let count = input.matches(BEGIN).count();
    if count == 0 {
        return Err(CsrError::NotPem);
    }
    if count > 1 {
        return Err(CsrError::SeveralPemBlocks { count });
    }
    let text = input.trim_matches(|c: char| c.is_ascii_whitespace());
    let Some(rest) = text.strip_prefix(BEGIN) else {
        return Err(CsrError::PemGarbage {
            reason: "text precedes the BEGIN line",
        });
    };
    let Some((label, rest)) = rest.split_once(DASHES) else {
        return Err(CsrError::PemGarbage {
            reason: "the BEGIN line does not end with \"-----\"",
        });
    };
    if label != CSR_PEM_LABEL {
        return Err(CsrError::WrongPemLabel {
            label: excerpt(label),
        });
    }
    let Some((body, end_line)) = rest.rsplit_once(END) else {
        return Err(CsrError::PemGarbage {
            reason: "there is no END line",
        });
    };
    let Some(end_label) = end_line.strip_suffix(DASHES) else {
        return Err(CsrError::PemGarbage {
            reason: "text follows the END line, or it does not end with \"-----\"",
        });
    };
    if end_label != label {
        return Err(CsrError::PemGarbage {
            reason: "the END line's label differs from the BEGIN line's",
        });
    }
    if !body.starts_with(['\n', '\r']) {
        return Err(CsrError::PemGarbage {
            reason: "the BEGIN line is not followed by a line break",
        });
    }
    if body.contains(':') {
        return Err(CsrError::PemGarbage {
            reason: "PEM headers (encrypted or annotated PEM) are not accepted",
        });
    }
    // Bytes, not chars: no byte of a multi-byte character is ASCII whitespace, so the result
    // is the same, without decoding UTF-8 on every call.
    let mut b64 = Vec::with_capacity(body.len());
    b64.extend(body.bytes().filter(|b| !b.is_ascii_whitespace()));
    if b64.is_empty() {
        return Err(CsrError::PemGarbage {
            reason: "there is no data between the BEGIN and END lines",
        });
    }
    base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .map_err(|_| CsrError::PemGarbage {
            reason: "the body is not valid base64",
        })
}

/// Accepts ECDSA P-256/P-384 and RSA 2048–4096; refuses everything else with its reason.
fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let Some(curve) = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
        else {
            return Err(CsrError::UnsupportedCurve {
                curve: "explicit or missing curve parameters (only named curves are accepted)"
                    .to_owned(),
            });
        };
        let (key_type, point_len) = if curve == OID_EC_P256 {
            (KeyType::EcdsaP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyType::EcdsaP384, 97)
        } else {
            return Err(CsrError::UnsupportedCurve {
                curve: curve_name(&curve.to_id_string()),
            });
        };
        let point: &[u8] = &spki.subject_public_key.data;
        if point.len() != point_len || point.first() != Some(&4) {
            return Err(CsrError::MalformedKey {
                reason: "the EC public key is not an uncompressed point of its curve's size",
            });
        }
        Ok(key_type)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::MalformedKey {
                reason: "the RSA public key does not parse",
            });
        };
        if rsa.modulus.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(CsrError::MalformedKey {
                reason: "the RSA modulus is negative",
            });
        }
        let bits = integer_bits(rsa.modulus);
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::RsaKeySize { bits });
        }
        Ok(KeyType::Rsa { bits })
    } else if *alg == OID_SIG_ED25519 {
        Err(CsrError::Ed25519Key)
    } else {
        let oid = alg.to_id_string();
        let name = match oid.as_str() {
            "1.3.101.113" => "Ed448 (1.3.101.113)".to_owned(),
            "1.3.101.110" | "1.3.101.111" => format!("X25519/X448, a key-agreement key ({oid})"),
            "1.2.840.113549.1.1.10" => "RSASSA-PSS (1.2.840.113549.1.1.10)".to_owned(),
            "1.2.840.10040.4.1" => "DSA (1.2.840.10040.4.1)".to_owned(),
            _ => oid,
        };
        Err(CsrError::UnsupportedKeyAlgorithm { algorithm: name })
    }
}

/// Bits in a big-endian unsigned integer, leading zeros not counted.
fn integer_bits(bytes: &[u8]) -> u32 {
    let significant: &[u8] = match bytes.iter().position(|&b| b != 0) {
        Some(i) => &bytes[i..],
        None => &[],
    };
    match significant.first() {
        None => 0,
        Some(first) => {
            let len = u32::try_from(significant.len()).unwrap_or(u32::MAX / 8);
            len.saturating_mul(8).saturating_sub(first.leading_zeros())
        }
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.10" => "secp256k1 (1.3.132.0.10)".to_owned(),
        "1.3.132.0.35" => "P-521 (1.3.132.0.35)".to_owned(),
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1 (1.3.36.3.3.2.8.1.1.7)".to_owned(),
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1 (1.3.36.3.3.2.8.1.1.11)".to_owned(),
        "1.2.840.10045.3.1.1" => "P-192 (1.2.840.10045.3.1.1)".to_owned(),
        "1.3.132.0.33" => "P-224 (1.3.132.0.33)".to_owned(),
        other => other.to_owned(),
    }
}

/// Checks the signature algorithm against an allow-list and the key, then verifies it.
fn check_signature(csr: &X509CertificationRequest<'_>, key_type: KeyType) -> Result<(), CsrError> {
    let alg = &csr.signature_algorithm.algorithm;
    let is_ecdsa = *alg == OID_SIG_ECDSA_WITH_SHA256 || *alg == OID_SIG_ECDSA_WITH_SHA384;
    let is_rsa = *alg == OID_PKCS1_SHA256WITHRSA
        || *alg == OID_PKCS1_SHA384WITHRSA
        || *alg == OID_PKCS1_SHA512WITHRSA
        || *alg == OID_PKCS1_RSASSAPSS;
    let name = || signature_name(&alg.to_id_string());
    if !is_ecdsa && !is_rsa {
        return Err(CsrError::UnsupportedSignatureAlgorithm {
            algorithm: name(),
            reason: "only ECDSA with SHA-256/384 and RSA with SHA-256/384/512 are accepted",
        });
    }
    let key_is_ec = matches!(key_type, KeyType::EcdsaP256 | KeyType::EcdsaP384);
    if key_is_ec != is_ecdsa {
        return Err(CsrError::UnsupportedSignatureAlgorithm {
            algorithm: name(),
            reason: "it does not fit the CSR's key type",
        });
    }
    csr.verify_signature().map_err(|e| match e {
        x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
            CsrError::UnsupportedSignatureAlgorithm {
                algorithm: name(),
                reason: "its parameters are not supported",
            }
        }
        _ => CsrError::BadSignature,
    })
}

fn signature_name(oid: &str) -> String {
    let name = match oid {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.3.101.112" => "Ed25519",
        _ => return oid.to_owned(),
    };
    format!("{name} ({oid})")
}

/// Refuses `CA:TRUE` and returns the one SAN entry, over every extension request.
fn single_san<'a>(csr: &'a X509CertificationRequest<'a>) -> Result<&'a GeneralName<'a>, CsrError> {
    let mut sans: Vec<&GeneralName<'_>> = Vec::new();
    for attribute in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            if extension.oid == OID_X509_EXT_BASIC_CONSTRAINTS {
                match extension.parsed_extension() {
                    ParsedExtension::BasicConstraints(bc) => {
                        if bc.ca {
                            return Err(CsrError::RequestsCa);
                        }
                    }
                    other => {
                        return Err(CsrError::MalformedExtension {
                            extension: "basicConstraints",
                            reason: parse_failure(other),
                        });
                    }
                }
            } else if extension.oid == OID_X509_EXT_SUBJECT_ALT_NAME {
                match extension.parsed_extension() {
                    ParsedExtension::SubjectAlternativeName(san) => {
                        sans.extend(san.general_names.iter());
                    }
                    other => {
                        return Err(CsrError::MalformedExtension {
                            extension: "subjectAltName",
                            reason: parse_failure(other),
                        });
                    }
                }
            }
        }
    }
    match sans.as_slice() {
        [] => Err(CsrError::NoSan),
        [one] => Ok(one),
        several => Err(CsrError::SeveralSans {
            count: several.len(),
        }),
    }
}

fn parse_failure(parsed: &ParsedExtension<'_>) -> String {
    match parsed.error() {
        Some(e) => format!("it does not parse ({e})"),
        None => "it does not parse".to_owned(),
    }
}

/// The one SAN must be a URI, free of control characters, equal to the caller's identity.
fn check_san(san: &GeneralName<'_>, expected: &SpiffeId) -> Result<(), CsrError> {
    let non_uri = |kind: &'static str, value: String| CsrError::NonUriSan {
        kind,
        value: excerpt(&value),
    };
    let uri = match san {
        GeneralName::URI(uri) => *uri,
        GeneralName::DNSName(name) => return Err(non_uri("DNS name", (*name).to_owned())),
        GeneralName::RFC822Name(name) => return Err(non_uri("email address", (*name).to_owned())),
        GeneralName::IPAddress(bytes) => return Err(non_uri("IP address", ip_text(bytes))),
        GeneralName::OtherName(oid, _) => return Err(non_uri("otherName", oid.to_id_string())),
        GeneralName::DirectoryName(name) => {
            return Err(non_uri("directory name", name.to_string()));
        }
        GeneralName::RegisteredID(oid) => return Err(non_uri("registered ID", oid.to_id_string())),
        GeneralName::X400Address(_) => return Err(non_uri("X.400 address", String::new())),
        GeneralName::EDIPartyName(_) => return Err(non_uri("EDI party name", String::new())),
        GeneralName::Invalid(_, _) => {
            return Err(CsrError::MalformedExtension {
                extension: "subjectAltName",
                reason: "its entry is not valid text or not a known name form".to_owned(),
            });
        }
    };
    if uri.chars().any(char::is_control) {
        return Err(CsrError::ControlCharacterInSan {
            uri: excerpt(&uri.escape_default().to_string()),
        });
    }
    let caller = expected.to_string();
    if uri != caller {
        return Err(CsrError::WrongIdentity {
            requested: excerpt(uri),
            caller,
        });
    }
    Ok(())
}

fn ip_text(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        std::net::Ipv4Addr::from(v4).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        std::net::Ipv6Addr::from(v6).to_string()
    } else {
        format!("{} bytes", bytes.len())
    }
}

/// The beginning of a caller-supplied string, for an error message.
fn excerpt(s: &str) -> String {
    if s.chars().count() <= EXCERPT_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(EXCERPT_CHARS).collect();
        out.push('…');
        out
    }
}

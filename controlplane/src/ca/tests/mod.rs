//! Tests of the CA: hostile CSRs (each refused with its own reason, nothing issued), the leaf's
//! shape and lifetime rules, roots and intermediates on disk, and chain verification.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    Attribute, BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
};
use strait_proto::identity::SpiffeId;
use x509_parser::prelude::*;

use super::{CaError, DEFAULT_MAX_TTL, Signer, unix_now, verify_chain, verify_chain_der};
use crate::ca::csr::{self, CsrError, KeyType};
use crate::ca::files::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, make_intermediate, make_root,
};

const CALLER: &str = "spiffe://cluster.local/ns/prod/sa/api";
const HOUR: Duration = Duration::from_secs(3600);

fn caller() -> SpiffeId {
    CALLER.parse().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

fn params(sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = sans;
    p
}

fn csr_pem(p: &CertificateParams, key: &KeyPair) -> String {
    p.serialize_request(key).unwrap().pem().unwrap()
}

fn good_csr(key: &KeyPair) -> String {
    csr_pem(&params(vec![uri(CALLER)]), key)
}

fn p256() -> KeyPair {
    KeyPair::generate().unwrap()
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 128 {
        v.push(n as u8);
    } else if n < 256 {
        v.extend([0x81, n as u8]);
    } else {
        v.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

/// GeneralNames holding one URI.
fn uri_general_names(s: &str) -> Vec<u8> {
    tlv(0x30, &tlv(0x86, s.as_bytes()))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn der_of(pem_text: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    p.contents
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/ca/tests/fixtures")
        .join(name);
    fs::read_to_string(path).unwrap()
}

fn new_root(dir: &Path, ttl: Option<Duration>) -> Signer {
    make_root(dir, "cluster.local", ttl, false).unwrap();
    Signer::from_dir(dir).unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn not_after_of(pem_text: &str) -> i64 {
    let der = der_of(pem_text);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.validity().not_after.timestamp()
}

// ---------------------------------------------------------------------------------------------
// Hostile CSRs

struct Case {
    name: &'static str,
    csr: String,
    expect: fn(&CsrError) -> bool,
}

fn hostile_cases() -> Vec<Case> {
    let key = p256();
    let good = good_csr(&key);
    let good_der = der_of(&good);

    let mut bad_sig = good_der.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;

    let mut ca = params(vec![uri(CALLER)]);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);

    let mut ca_constrained = params(vec![uri(CALLER)]);
    ca_constrained.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));

    let mut two_san_exts = params(vec![uri(CALLER)]);
    two_san_exts
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            uri_general_names("spiffe://cluster.local/ns/kube-system/sa/admin"),
        ));

    // A second extensionRequest attribute carrying a DNS SAN.
    let dns_ext = tlv(
        0x30,
        &[
            tlv(0x06, &[0x55, 0x1d, 0x11]),
            tlv(0x04, &tlv(0x30, &tlv(0x82, b"evil.example.com"))),
        ]
        .concat(),
    );
    let second_request = Attribute {
        oid: &[1, 2, 840, 113549, 1, 9, 14],
        values: tlv(0x31, &tlv(0x30, &dns_ext)),
    };
    let hidden_san = params(vec![uri(CALLER)])
        .serialize_request_with_attributes(&key, vec![second_request])
        .unwrap()
        .pem()
        .unwrap();

    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();

    vec![
        Case {
            name: "1 MB of input",
            csr: format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                "QUFB".repeat(256 * 1024)
            ),
            expect: |e| matches!(e, CsrError::TooLarge { len, .. } if *len > 1_000_000),
        },
        Case {
            name: "empty",
            csr: String::new(),
            expect: |e| matches!(e, CsrError::NotPem),
        },
        Case {
            name: "not PEM",
            csr: "hello, CA".to_owned(),
            expect: |e| matches!(e, CsrError::NotPem),
        },
        Case {
            name: "base64 garbage in the body",
            csr: "-----BEGIN CERTIFICATE REQUEST-----\n!!not*base64!!\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
            expect: |e| matches!(e, CsrError::PemGarbage { .. }),
        },
        Case {
            name: "text before the block",
            csr: format!("junk\n{good}"),
            expect: |e| matches!(e, CsrError::PemGarbage { .. }),
        },
        Case {
            name: "text after the block",
            csr: format!("{good}junk\n"),
            expect: |e| matches!(e, CsrError::PemGarbage { .. }),
        },
        Case {
            name: "no END line",
            csr: good.replace("-----END CERTIFICATE REQUEST-----", ""),
            expect: |e| matches!(e, CsrError::PemGarbage { .. }),
        },
        Case {
            name: "PEM headers",
            csr: good.replace(
                "-----BEGIN CERTIFICATE REQUEST-----\n",
                "-----BEGIN CERTIFICATE REQUEST-----\nProc-Type: 4,ENCRYPTED\n\n",
            ),
            expect: |e| matches!(e, CsrError::PemGarbage { .. }),
        },
        Case {
            name: "two PEM blocks",
            csr: format!("{good}{good}"),
            expect: |e| matches!(e, CsrError::SeveralPemBlocks { count: 2 }),
        },
        Case {
            name: "wrong PEM label",
            csr: pem("CERTIFICATE", &good_der),
            expect: |e| matches!(e, CsrError::WrongPemLabel { label } if label == "CERTIFICATE"),
        },
        Case {
            name: "DER that is not a CSR",
            csr: pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
            expect: |e| matches!(e, CsrError::Der { .. }),
        },
        Case {
            name: "trailing bytes after the DER",
            csr: pem("CERTIFICATE REQUEST", &[good_der.as_slice(), &[0, 0]].concat()),
            expect: |e| matches!(e, CsrError::Der { .. }),
        },
        Case {
            name: "bad self-signature",
            csr: pem("CERTIFICATE REQUEST", &bad_sig),
            expect: |e| matches!(e, CsrError::BadSignature),
        },
        Case {
            name: "asks to be a CA",
            csr: csr_pem(&ca, &key),
            expect: |e| matches!(e, CsrError::RequestsCa),
        },
        Case {
            name: "asks to be a CA with pathlen 0",
            csr: csr_pem(&ca_constrained, &key),
            expect: |e| matches!(e, CsrError::RequestsCa),
        },
        Case {
            name: "no SAN",
            csr: csr_pem(&params(vec![]), &key),
            expect: |e| matches!(e, CsrError::NoSan),
        },
        Case {
            name: "two URI SANs, one of them the caller",
            csr: csr_pem(
                &params(vec![
                    uri(CALLER),
                    uri("spiffe://cluster.local/ns/kube-system/sa/admin"),
                ]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::SeveralSans { count: 2 }),
        },
        Case {
            name: "the caller plus a DNS SAN",
            csr: csr_pem(
                &params(vec![
                    uri(CALLER),
                    SanType::DnsName(Ia5String::try_from("api.prod.svc").unwrap()),
                ]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::SeveralSans { count: 2 }),
        },
        Case {
            name: "two SAN extensions",
            csr: csr_pem(&two_san_exts, &key),
            expect: |e| matches!(e, CsrError::SeveralSans { count: 2 }),
        },
        Case {
            name: "a SAN hidden in a second extensionRequest",
            csr: hidden_san,
            expect: |e| matches!(e, CsrError::SeveralSans { count: 2 }),
        },
        Case {
            name: "DNS SAN",
            csr: csr_pem(
                &params(vec![SanType::DnsName(
                    Ia5String::try_from("api.prod.svc.cluster.local").unwrap(),
                )]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::NonUriSan { kind: "DNS name", .. }),
        },
        Case {
            name: "IP SAN",
            csr: csr_pem(
                &params(vec![SanType::IpAddress("10.0.0.1".parse().unwrap())]),
                &key,
            ),
            expect: |e| {
                matches!(e, CsrError::NonUriSan { kind: "IP address", value } if value == "10.0.0.1")
            },
        },
        Case {
            name: "email SAN",
            csr: csr_pem(
                &params(vec![SanType::Rfc822Name(
                    Ia5String::try_from("root@example.com").unwrap(),
                )]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::NonUriSan { kind: "email address", .. }),
        },
        Case {
            name: "NUL in the URI SAN",
            csr: csr_pem(
                &params(vec![uri(
                    "spiffe://cluster.local/ns/prod/sa/api\0.kube-system/sa/admin",
                )]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::ControlCharacterInSan { .. }),
        },
        Case {
            name: "newline in the URI SAN",
            csr: csr_pem(
                &params(vec![uri("spiffe://cluster.local/ns/prod/sa/api\n")]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::ControlCharacterInSan { .. }),
        },
        Case {
            name: "another namespace's identity",
            csr: csr_pem(
                &params(vec![uri("spiffe://cluster.local/ns/kube-system/sa/api")]),
                &key,
            ),
            expect: |e| {
                matches!(e, CsrError::WrongIdentity { requested, caller }
                    if requested == "spiffe://cluster.local/ns/kube-system/sa/api"
                        && caller == CALLER)
            },
        },
        Case {
            name: "another service account",
            csr: csr_pem(
                &params(vec![uri("spiffe://cluster.local/ns/prod/sa/admin")]),
                &key,
            ),
            expect: |e| matches!(e, CsrError::WrongIdentity { .. }),
        },
        Case {
            name: "another trust domain",
            csr: csr_pem(&params(vec![uri("spiffe://evil.example/ns/prod/sa/api")]), &key),
            expect: |e| matches!(e, CsrError::WrongIdentity { .. }),
        },
        Case {
            name: "the caller's id with a suffix",
            csr: csr_pem(&params(vec![uri(&format!("{CALLER}/x"))]), &key),
            expect: |e| matches!(e, CsrError::WrongIdentity { .. }),
        },
        Case {
            name: "Ed25519 key",
            csr: good_csr(&ed),
            expect: |e| matches!(e, CsrError::Ed25519Key),
        },
        Case {
            name: "RSA-512",
            csr: fixture("rsa512.csr"),
            expect: |e| matches!(e, CsrError::RsaKeySize { bits: 512 }),
        },
        Case {
            name: "RSA-16384",
            csr: fixture("rsa16384.csr"),
            expect: |e| matches!(e, CsrError::RsaKeySize { bits: 16384 }),
        },
        Case {
            name: "secp256k1",
            csr: fixture("secp256k1.csr"),
            expect: |e| matches!(e, CsrError::UnsupportedCurve { curve } if curve.contains("secp256k1")),
        },
        Case {
            name: "P-521",
            csr: fixture("p521.csr"),
            expect: |e| matches!(e, CsrError::UnsupportedCurve { curve } if curve.contains("P-521")),
        },
        Case {
            name: "ECDSA with SHA-1",
            csr: fixture("p256-sha1.csr"),
            expect: |e| matches!(e, CsrError::UnsupportedSignatureAlgorithm { .. }),
        },
    ]
}

#[test]
fn hostile_csrs_are_refused_with_their_reason_and_nothing_is_issued() {
    let dir = tmp();
    let signer = new_root(dir.path(), None);
    let mut failures = Vec::new();
    for case in hostile_cases() {
        match csr::validate(&case.csr, &caller()) {
            Ok(_) => failures.push(format!("{}: validate accepted it", case.name)),
            Err(e) if !(case.expect)(&e) => {
                failures.push(format!("{}: validate refused it with {e:?}", case.name));
            }
            Err(e) => {
                // Every refusal explains itself.
                assert!(e.to_string().len() > 20, "{}: terse message {e}", case.name);
            }
        }
        match signer.sign(&case.csr, &caller(), None) {
            Ok(_) => failures.push(format!("{}: the signer issued a certificate", case.name)),
            Err(CaError::Csr(e)) if (case.expect)(&e) => {}
            Err(e) => failures.push(format!("{}: the signer refused it with {e:?}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn csr_error_messages_say_who_asked_for_what() {
    let csr = csr_pem(
        &params(vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")]),
        &p256(),
    );
    let msg = csr::validate(&csr, &caller()).unwrap_err().to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/kube-system/sa/admin"),
        "{msg}"
    );
    assert!(msg.contains(CALLER), "{msg}");

    let msg = csr::validate(&fixture("rsa512.csr"), &caller())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("512-bit") && msg.contains("2048"), "{msg}");

    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let msg = csr::validate(&good_csr(&ed), &caller())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("Ed25519") && msg.contains("ECDSA"), "{msg}");
}

#[test]
fn supported_keys_are_accepted_and_certified_exactly() {
    let dir = tmp();
    let signer = new_root(dir.path(), None);
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let cases = [
        (good_csr(&p256()), KeyType::EcdsaP256),
        (good_csr(&p384), KeyType::EcdsaP384),
        (fixture("rsa2048.csr"), KeyType::Rsa { bits: 2048 }),
        (fixture("rsa4096.csr"), KeyType::Rsa { bits: 4096 }),
    ];
    for (csr_text, key_type) in cases {
        let valid = csr::validate(&csr_text, &caller()).unwrap();
        assert_eq!(valid.key_type(), key_type);
        assert_eq!(valid.identity(), &caller());
        let chain = signer.sign(&csr_text, &caller(), None).unwrap();
        let leaf_der = der_of(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert_eq!(
            leaf.public_key().raw,
            valid.spki_der(),
            "{key_type}: the leaf certifies exactly the CSR's key"
        );
        assert_eq!(
            verify_chain(&chain[0], &chain[1..], signer.root_pem()).unwrap(),
            caller()
        );
    }
}

#[test]
fn pem_with_crlf_and_surrounding_whitespace_is_accepted() {
    let csr_text = good_csr(&p256()).replace('\n', "\r\n");
    csr::validate(&format!("\n  {csr_text}\n\n"), &caller()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The leaf

#[test]
fn leaf_has_exactly_what_the_ca_decides() {
    let dir = tmp();
    let signer = new_root(dir.path(), None);
    // The CSR asks for extras: a subject, CA-ish key usages, code signing, a custom extension.
    let mut p = params(vec![uri(CALLER)]);
    p.distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    p.distinguished_name.push(DnType::CommonName, "admin");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p.custom_extensions.push(CustomExtension::from_oid_content(
        &[1, 2, 3, 4],
        vec![0x05, 0x00],
    ));
    let key = p256();
    let csr_text = csr_pem(&p, &key);

    let before = unix_now();
    let chain = signer.sign(&csr_text, &caller(), None).unwrap();
    let after = unix_now();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], signer.root_pem());
    assert_eq!(&chain[1..], signer.chain_pem());

    let leaf_der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let root_der = der_of(&chain[1]);
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();

    assert!(leaf.subject().as_raw().len() <= 2, "empty subject");
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info());

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    assert_eq!(san.value.general_names, vec![GeneralName::URI(CALLER)]);

    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.code_signing && eku.other.is_empty());

    let oids: Vec<String> = leaf
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    for oid in &oids {
        assert!(
            [
                "2.5.29.17",
                "2.5.29.15",
                "2.5.29.37",
                "2.5.29.19",
                "2.5.29.14",
                "2.5.29.35"
            ]
            .contains(&oid.as_str()),
            "unexpected extension {oid} in the leaf"
        );
    }

    let serial = leaf.raw_serial();
    assert!(
        (15..=17).contains(&serial.len()),
        "128-bit serial, got {} bytes",
        serial.len()
    );

    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert!(
        nb >= before - 61 && nb <= after - 59,
        "notBefore is now - 1 min"
    );
    assert!(
        na >= before + 86_400 && na <= after + 86_400,
        "24 h by default"
    );
}

#[test]
fn serials_differ() {
    let dir = tmp();
    let signer = new_root(dir.path(), None);
    let csr_text = good_csr(&p256());
    let a = der_of(&signer.sign(&csr_text, &caller(), None).unwrap()[0]);
    let b = der_of(&signer.sign(&csr_text, &caller(), None).unwrap()[0]);
    let (_, a) = X509Certificate::from_der(&a).unwrap();
    let (_, b) = X509Certificate::from_der(&b).unwrap();
    assert_ne!(a.raw_serial(), b.raw_serial());
}

#[test]
fn ttl_rules() {
    let dir = tmp();
    let mut signer = new_root(dir.path(), None);
    let csr_text = good_csr(&p256());
    let now = unix_now();

    let chain = signer.sign(&csr_text, &caller(), Some(HOUR)).unwrap();
    let na = not_after_of(&chain[0]);
    assert!((now + 3600..=now + 3605).contains(&na), "an explicit hour");

    let chain = signer
        .sign(
            &csr_text,
            &caller(),
            Some(Duration::from_secs(200 * 86_400)),
        )
        .unwrap();
    let na = not_after_of(&chain[0]);
    let max = i64::try_from(DEFAULT_MAX_TTL.as_secs()).unwrap();
    assert!(
        (now + max..=now + max + 5).contains(&na),
        "capped at 90 days"
    );

    signer.set_max_ttl(2 * HOUR);
    assert_eq!(signer.max_ttl(), 2 * HOUR);
    let chain = signer.sign(&csr_text, &caller(), Some(3 * HOUR)).unwrap();
    let na = not_after_of(&chain[0]);
    assert!((now + 7200..=now + 7205).contains(&na), "capped at max_ttl");

    let err = signer
        .sign(&csr_text, &caller(), Some(Duration::ZERO))
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument { .. }), "{err:?}");
}

#[test]
fn never_issues_past_the_signers_expiry() {
    let dir = tmp();
    let signer = new_root(dir.path(), Some(2 * HOUR));
    let ca_not_after = signer
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ca_not_after = i64::try_from(ca_not_after).unwrap();
    let csr_text = good_csr(&p256());

    // Explicitly asking past the CA: refused, with the reason.
    let err = signer
        .sign(&csr_text, &caller(), Some(3 * HOUR))
        .unwrap_err();
    match &err {
        CaError::TtlPastCaExpiry { remaining_secs, .. } => {
            assert!(*remaining_secs <= 7200 && *remaining_secs > 7000);
        }
        other => panic!("expected TtlPastCaExpiry, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("requested validity") && msg.contains("after the CA's own expiry"),
        "{msg}"
    );

    // The default (24 h) is cut short at the CA's expiry instead.
    let chain = signer.sign(&csr_text, &caller(), None).unwrap();
    assert_eq!(not_after_of(&chain[0]), ca_not_after);

    // An explicit request that fits is honoured.
    let chain = signer.sign(&csr_text, &caller(), Some(HOUR)).unwrap();
    assert!(not_after_of(&chain[0]) < ca_not_after);
}

#[test]
fn identities_of_another_trust_domain_are_refused() {
    let dir = tmp();
    let mut signer = new_root(dir.path(), None);
    assert_eq!(signer.trust_domain(), "cluster.local");
    let other: SpiffeId = "spiffe://other.mesh/ns/prod/sa/api".parse().unwrap();
    let csr_text = csr_pem(&params(vec![uri(&other.to_string())]), &p256());
    let err = signer.sign(&csr_text, &other, None).unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");

    signer.set_trust_domain("other.mesh").unwrap();
    signer.sign(&csr_text, &other, None).unwrap();
    assert!(signer.set_trust_domain("Not A Domain").is_err());
}

// ---------------------------------------------------------------------------------------------
// Files: roots and intermediates

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn root_files_follow_the_cacerts_layout() {
    let base = tmp();
    let dir = base.path().join("a/b/root");
    make_root(&dir, "cluster.local", None, false).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    let key = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    let ca = fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    assert_eq!(ca, fs::read_to_string(dir.join(ROOT_CERT_FILE)).unwrap());
    assert_eq!(ca, fs::read_to_string(dir.join(CERT_CHAIN_FILE)).unwrap());
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let der = der_of(&ca);
    let (_, root) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(root.subject().to_string(), "O=cluster.local, CN=Root CA");
    assert_eq!(root.subject().as_raw(), root.issuer().as_raw());
    root.verify_signature(None).unwrap();
    assert!(root.basic_constraints().unwrap().unwrap().value.ca);
    let ku = root.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let lifetime = root.validity().not_after.timestamp() - unix_now();
    let ten_years = 10 * 365 * 86_400;
    assert!(
        (ten_years - 10..=ten_years).contains(&lifetime),
        "10 years by default, got {lifetime} s"
    );
    assert_eq!(
        root.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );

    // Never replaced unless asked.
    let err = make_root(&dir, "cluster.local", None, false).unwrap_err();
    assert!(matches!(err, CaError::KeyFileExists { .. }), "{err:?}");
    assert_eq!(fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap(), key);
    make_root(&dir, "cluster.local", None, true).unwrap();
    assert_ne!(fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap(), key);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);

    assert!(make_root(&base.path().join("x"), "", None, false).is_err());
    assert!(
        make_root(
            &base.path().join("y"),
            "o",
            Some(Duration::from_secs(5)),
            false
        )
        .is_err()
    );
}

#[test]
fn intermediates_of_one_root_verify_to_it_and_not_to_another() {
    let base = tmp();
    let root_dir = base.path().join("root");
    make_root(&root_dir, "mesh", None, false).unwrap();
    let a_dir = base.path().join("cluster-a");
    let b_dir = base.path().join("cluster-b");
    let a2_dir = base.path().join("cluster-a-again");
    make_intermediate(&root_dir, "cluster-a", &a_dir, None, false).unwrap();
    make_intermediate(&root_dir, "cluster-b", &b_dir, None, false).unwrap();
    make_intermediate(&root_dir, "cluster-a", &a2_dir, None, false).unwrap();

    let other_root = base.path().join("other-root");
    make_root(&other_root, "mesh", None, false).unwrap();
    let c_dir = base.path().join("cluster-c");
    make_intermediate(&other_root, "cluster-c", &c_dir, None, false).unwrap();

    let root_pem = fs::read_to_string(root_dir.join(ROOT_CERT_FILE)).unwrap();
    let a = Signer::from_dir(&a_dir).unwrap();
    let b = Signer::from_dir(&b_dir).unwrap();
    let a2 = Signer::from_dir(&a2_dir).unwrap();
    let c = Signer::from_dir(&c_dir).unwrap();
    assert_eq!(a.root_pem(), root_pem);
    assert_eq!(b.root_pem(), root_pem);

    let csr_text = good_csr(&p256());
    let from_a = a.sign(&csr_text, &caller(), None).unwrap();
    let from_b = b.sign(&csr_text, &caller(), None).unwrap();
    let from_a2 = a2.sign(&csr_text, &caller(), None).unwrap();
    let from_c = c.sign(&csr_text, &caller(), None).unwrap();
    assert_eq!(from_a.len(), 3, "leaf, intermediate, root");
    assert_eq!(from_a[2], root_pem);

    // Each verifies to the shared root, also when given as the whole chain or intermediates only.
    for chain in [&from_a, &from_b, &from_a2] {
        assert_eq!(
            verify_chain(&chain[0], &chain[1..], &root_pem).unwrap(),
            caller()
        );
        assert_eq!(verify_chain(&chain[0], chain, &root_pem).unwrap(), caller());
        assert_eq!(
            verify_chain(&chain[0], &chain[1..2], &root_pem).unwrap(),
            caller()
        );
        // Checked link by link with x509-parser too.
        let ders: Vec<Vec<u8>> = chain.iter().map(|p| der_of(p)).collect();
        let certs: Vec<X509Certificate<'_>> = ders
            .iter()
            .map(|d| X509Certificate::from_der(d).unwrap().1)
            .collect();
        for pair in certs.windows(2) {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .unwrap();
        }
        certs[2].verify_signature(None).unwrap();
    }

    // Not without its intermediate; not through a sibling's; not to another root.
    assert!(verify_chain(&from_a[0], &[], &root_pem).is_err());
    assert!(verify_chain(&from_a[0], &from_b[1..], &root_pem).is_err());
    let err = verify_chain(&from_a[0], &from_a2[1..], &root_pem).unwrap_err();
    assert!(
        err.to_string().contains("signature"),
        "same name, other key: {err}"
    );
    assert!(verify_chain(&from_c[0], &from_c[1..], &root_pem).is_err());
    assert!(verify_chain(&from_a[0], &from_a[1..], c.root_pem()).is_err());

    // The intermediate's shape.
    let der = der_of(&from_a[1]);
    let (_, inter) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        inter.subject().to_string(),
        "O=cluster-a, CN=Intermediate CA"
    );
    let bc = inter.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let chain_file = fs::read_to_string(a_dir.join(CERT_CHAIN_FILE)).unwrap();
    assert_eq!(chain_file, format!("{}{}", from_a[1], root_pem));
    assert_eq!(mode(&a_dir.join(CA_KEY_FILE)), 0o600);
}

#[test]
fn intermediate_never_outlives_its_root() {
    let base = tmp();
    let root_dir = base.path().join("root");
    make_root(&root_dir, "mesh", Some(3 * HOUR), false).unwrap();
    let root_na = not_after_of(&fs::read_to_string(root_dir.join(CA_CERT_FILE)).unwrap());
    let dir = base.path().join("inter");
    make_intermediate(&root_dir, "c1", &dir, None, false).unwrap();
    let na = not_after_of(&fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap());
    assert_eq!(na, root_na);

    let short = base.path().join("short");
    make_intermediate(&root_dir, "c1", &short, Some(HOUR), false).unwrap();
    let na = not_after_of(&fs::read_to_string(short.join(CA_CERT_FILE)).unwrap());
    assert!(na < root_na);
}

#[test]
fn intermediates_are_made_from_a_root_only_and_never_over_it() {
    let base = tmp();
    let root_dir = base.path().join("root");
    make_root(&root_dir, "mesh", None, false).unwrap();
    let inter = base.path().join("inter");
    make_intermediate(&root_dir, "c1", &inter, None, false).unwrap();

    let err = make_intermediate(&inter, "c2", &base.path().join("x"), None, false).unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument { .. }), "{err:?}");
    let err = make_intermediate(&root_dir, "c2", &root_dir, None, true).unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument { .. }), "{err:?}");
    Signer::from_dir(&root_dir).unwrap();

    let err = make_intermediate(&root_dir, "c1", &inter, None, false).unwrap_err();
    assert!(matches!(err, CaError::KeyFileExists { .. }), "{err:?}");
    make_intermediate(&root_dir, "c1", &inter, None, true).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Loading

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for name in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn setup_two_clusters(base: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let root_dir = base.join("root");
    make_root(&root_dir, "mesh", None, false).unwrap();
    let a = base.join("a");
    let b = base.join("b");
    make_intermediate(&root_dir, "a", &a, None, false).unwrap();
    make_intermediate(&root_dir, "b", &b, None, false).unwrap();
    (root_dir, a, b)
}

#[test]
fn from_dir_refuses_inconsistent_plug_in_files() {
    let base = tmp();
    let (_root, a, b) = setup_two_clusters(base.path());

    // Key of another CA.
    let d = base.path().join("mismatch");
    copy_dir(&a, &d);
    fs::copy(b.join(CA_KEY_FILE), d.join(CA_KEY_FILE)).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");

    // Chain that does not start with ca-cert.pem.
    let d = base.path().join("chain-order");
    copy_dir(&a, &d);
    fs::copy(b.join(CERT_CHAIN_FILE), d.join(CERT_CHAIN_FILE)).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::Chain { .. }), "{err:?}");

    // Chain that ends at a root other than root-cert.pem.
    let other = base.path().join("other-root");
    make_root(&other, "mesh", None, false).unwrap();
    let d = base.path().join("wrong-root");
    copy_dir(&a, &d);
    fs::copy(other.join(ROOT_CERT_FILE), d.join(ROOT_CERT_FILE)).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::Chain { .. }), "{err:?}");
    assert!(err.to_string().contains("trusted root"), "{err}");

    // cert-chain.pem without the root is fine: the root comes from root-cert.pem.
    let d = base.path().join("no-root-in-chain");
    copy_dir(&a, &d);
    fs::copy(a.join(CA_CERT_FILE), d.join(CERT_CHAIN_FILE)).unwrap();
    let s = Signer::from_dir(&d).unwrap();
    assert_eq!(s.chain_pem().len(), 2);

    // A key in SEC1 form: refused with the conversion command.
    let d = base.path().join("sec1");
    copy_dir(&a, &d);
    fs::write(d.join(CA_KEY_FILE), pem("EC PRIVATE KEY", b"\x30\x00")).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::Key { .. }), "{err:?}");
    assert!(err.to_string().contains("openssl pkcs8"), "{err}");

    // A missing file names itself.
    let d = base.path().join("missing");
    copy_dir(&a, &d);
    fs::remove_file(d.join(ROOT_CERT_FILE)).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(ROOT_CERT_FILE), "{err}");
}

/// Issued leaves are not re-verified one by one: the probe certificate issued at load is what
/// shows that the signing key and the CA certificate agree. Two CAs with the same name under
/// one root differ only in their keys; mixed up, they must not start.
#[test]
fn a_signing_key_that_does_not_verify_with_the_ca_certificate_is_refused_at_load() {
    let base = tmp();
    let root = base.path().join("root");
    make_root(&root, "mesh", None, false).unwrap();
    let a = base.path().join("a");
    let twin = base.path().join("twin");
    make_intermediate(&root, "a", &a, None, false).unwrap();
    make_intermediate(&root, "a", &twin, None, false).unwrap();

    // On disk: the twin's key next to a's certificate.
    let d = base.path().join("mixed");
    copy_dir(&a, &d);
    fs::copy(twin.join(CA_KEY_FILE), d.join(CA_KEY_FILE)).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");

    // In memory, past the file checks: a's certificate and chain, the twin's signing key.
    let good = Signer::from_dir(&a).unwrap();
    let Signer { issuer, .. } = Signer::from_dir(&twin).unwrap();
    let mixed = Signer { issuer, ..good };
    let key = p256();
    let chain = mixed.sign(&good_csr(&key), &caller(), None).unwrap();
    let err = verify_chain(&chain[0], &chain[1..], mixed.root_pem()).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    let err = mixed.self_test().unwrap_err();
    assert!(
        err.to_string()
            .contains("does not verify with the CA certificate's key"),
        "{err}"
    );
    Signer::from_dir(&a).unwrap().self_test().unwrap();
}

#[test]
fn from_dir_refuses_a_ca_cert_that_is_not_a_ca() {
    let base = tmp();
    let root_dir = base.path().join("root");
    let root = new_root(&root_dir, None);
    let key = p256();
    let chain = root.sign(&good_csr(&key), &caller(), None).unwrap();
    let d = base.path().join("leaf-as-ca");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(CA_CERT_FILE), &chain[0]).unwrap();
    fs::write(d.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    fs::write(d.join(CERT_CHAIN_FILE), chain.concat()).unwrap();
    fs::write(d.join(ROOT_CERT_FILE), root.root_pem()).unwrap();
    let err = Signer::from_dir(&d).unwrap_err();
    assert!(matches!(err, CaError::Certificate { .. }), "{err:?}");
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn load_or_create_makes_a_root_once_then_loads_it() {
    let base = tmp();
    let dir = base.path().join("cacerts");
    let first = Signer::load_or_create(&dir, "example.org").unwrap();
    assert_eq!(first.trust_domain(), "example.org");
    assert_eq!(first.chain_pem().len(), 1);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    let der = der_of(first.root_pem());
    let (_, root) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(root.subject().to_string(), "O=example.org, CN=Root CA");

    let second = Signer::load_or_create(&dir, "example.org").unwrap();
    assert_eq!(first.root_pem(), second.root_pem());
    assert!(format!("{second:?}").contains("[elided]"));
    assert!(!format!("{second:?}").contains("PRIVATE"));

    // Plug-in intermediates are used as they are.
    let (_root, a, _b) = setup_two_clusters(&base.path().join("plug"));
    let s = Signer::load_or_create(&a, "cluster.local").unwrap();
    assert_eq!(s.chain_pem().len(), 2);

    // A stray key without a certificate is not silently replaced.
    let stray = base.path().join("stray");
    fs::create_dir_all(&stray).unwrap();
    fs::write(stray.join(CA_KEY_FILE), "not mine to delete").unwrap();
    let err = Signer::load_or_create(&stray, "cluster.local").unwrap_err();
    assert!(matches!(err, CaError::KeyFileExists { .. }), "{err:?}");

    let err = Signer::load_or_create(&base.path().join("bad"), "Bad Domain").unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Chain verification

#[test]
fn verify_chain_refuses_non_ca_issuers_pathlen_violations_and_expiry() {
    let base = tmp();
    let (root_dir, a_dir, _b) = setup_two_clusters(base.path());
    let root_pem = fs::read_to_string(root_dir.join(ROOT_CERT_FILE)).unwrap();
    let a = Signer::from_dir(&a_dir).unwrap();

    // A leaf used as an issuer.
    let leaf_key = p256();
    let chain = a.sign(&good_csr(&leaf_key), &caller(), None).unwrap();
    let leaf_issuer = Issuer::from_ca_cert_pem(&chain[0], leaf_key).unwrap();
    let forged = params(vec![uri(CALLER)])
        .signed_by(&p256(), &leaf_issuer)
        .unwrap()
        .pem();
    let err = verify_chain(&forged, &chain, &root_pem).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    // A sub-CA under the pathlen-0 intermediate.
    let inter_key =
        KeyPair::from_pem(&fs::read_to_string(a_dir.join(CA_KEY_FILE)).unwrap()).unwrap();
    let inter_issuer = Issuer::from_ca_cert_pem(&chain[1], inter_key).unwrap();
    let mut sub = params(vec![]);
    sub.distinguished_name.push(DnType::CommonName, "sub");
    sub.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    sub.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let sub_key = p256();
    let sub_cert = sub.signed_by(&sub_key, &inter_issuer).unwrap().pem();
    let sub_issuer = Issuer::new(sub, sub_key);
    let deep_leaf = params(vec![uri(CALLER)])
        .signed_by(&p256(), &sub_issuer)
        .unwrap()
        .pem();
    let err = verify_chain(&deep_leaf, &[sub_cert, chain[1].clone()], &root_pem).unwrap_err();
    assert!(err.to_string().contains("pathLenConstraint"), "{err}");

    // Expired, and not yet valid.
    let leaf = der_of(&chain[0]);
    let inter = der_of(&chain[1]);
    let root = der_of(&root_pem);
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    let err = verify_chain_der(&leaf, &[&inter], &[&root], later).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let earlier = SystemTime::now() - Duration::from_secs(3600);
    let err = verify_chain_der(&leaf, &[&inter], &[&root], earlier).unwrap_err();
    assert!(err.to_string().contains("not valid before"), "{err}");
    assert_eq!(
        verify_chain_der(&leaf, &[&inter], &[&root], SystemTime::now()).unwrap(),
        caller()
    );

    // No roots, garbage, a CA as the leaf.
    assert!(verify_chain_der(&leaf, &[&inter], &[], SystemTime::now()).is_err());
    assert!(verify_chain("garbage", &[], &root_pem).is_err());
    assert!(verify_chain(&chain[0], &["garbage".to_owned()], &root_pem).is_err());
    let err = verify_chain(&chain[1], &[], &root_pem).unwrap_err();
    assert!(err.to_string().contains("CA"), "{err}");

    // A bundle of several roots: the right one anchors.
    let other = base.path().join("other");
    make_root(&other, "mesh", None, false).unwrap();
    let bundle = format!(
        "{}{root_pem}",
        fs::read_to_string(other.join(ROOT_CERT_FILE)).unwrap()
    );
    assert_eq!(
        verify_chain(&chain[0], &chain[1..], &bundle).unwrap(),
        caller()
    );
}

#[test]
fn verify_chain_requires_exactly_one_spiffe_uri() {
    let dir = tmp();
    let root = new_root(dir.path(), None);
    let root_key =
        KeyPair::from_pem(&fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(root.root_pem(), root_key).unwrap();
    let two = params(vec![uri(CALLER), uri("spiffe://cluster.local/ns/a/sa/b")])
        .signed_by(&p256(), &issuer)
        .unwrap()
        .pem();
    assert!(verify_chain(&two, &[], root.root_pem()).is_err());
    let none = params(vec![SanType::DnsName(Ia5String::try_from("a.b").unwrap())])
        .signed_by(&p256(), &issuer)
        .unwrap()
        .pem();
    assert!(verify_chain(&none, &[], root.root_pem()).is_err());
    let not_spiffe = params(vec![uri("https://example.com/")])
        .signed_by(&p256(), &issuer)
        .unwrap()
        .pem();
    assert!(verify_chain(&not_spiffe, &[], root.root_pem()).is_err());
}

#[test]
fn a_sec1_ca_key_is_read_like_a_pkcs8_one() {
    use x509_parser::der_parser::der::parse_der;
    let base = tmp();
    let dir = base.path().join("root");
    make_root(&dir, "cluster.local", None, false).unwrap();
    let pkcs8 = der_of(&fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap());
    let (_, info) = parse_der(&pkcs8).unwrap();
    let fields = info.as_sequence().unwrap();
    let sec1 = fields[2].as_slice().unwrap();
    fs::write(dir.join(CA_KEY_FILE), pem("EC PRIVATE KEY", sec1)).unwrap();
    let signer = Signer::from_dir(&dir).unwrap();
    let chain = signer.sign(&good_csr(&p256()), &caller(), None).unwrap();
    assert_eq!(
        verify_chain(&chain[0], &chain[1..], signer.root_pem()).unwrap(),
        caller()
    );
}

#[test]
fn signer_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Signer>();
    send_sync::<CaError>();
}

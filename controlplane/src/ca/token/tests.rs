#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::*;

const ISSUER: &str = "strait://test";
const TD: &str = "cluster.local";

/// 2026-01-01T00:00:00Z, the time every test pretends it is.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn issuer_named(iss: &str) -> (TempDir, TokenIssuer) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path(), iss.to_owned()).unwrap();
    (dir, issuer)
}

fn issuer() -> (TempDir, TokenIssuer) {
    issuer_named(ISSUER)
}

fn request() -> TokenRequest {
    TokenRequest {
        namespace: "vm".into(),
        service_account: "reviews".into(),
        group: Some("reviews-vms".into()),
        audience: None,
        ttl: Duration::from_secs(3600),
    }
}

/// The header `issue` writes.
fn header(issuer: &TokenIssuer) -> Value {
    json!({"alg": "ES256", "typ": "JWT", "kid": issuer.kid()})
}

/// Claims as `issue` writes them for [`request`] at [`now`], to be changed by a test.
fn claims() -> Value {
    let now = secs(now());
    json!({
        "iss": ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": "spiffe://cluster.local/ns/vm/sa/reviews",
        "namespace": "vm",
        "service_account": "reviews",
        "group": "reviews-vms",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": URL_SAFE_NO_PAD.encode([7u8; 16]),
    })
}

fn with(mut value: Value, key: &str, new: Value) -> Value {
    value[key] = new;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

/// Signs raw header and claims bytes with the issuer's real key.
fn sign_raw(issuer: &TokenIssuer, header: &[u8], claims: &[u8]) -> String {
    issuer.sign(header, claims).unwrap()
}

fn sign(issuer: &TokenIssuer, header: &Value, claims: &Value) -> String {
    sign_raw(
        issuer,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

/// `header.claims.signature` from parts given as bytes.
fn assemble(header: &[u8], claims: &[u8], signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// The token's `header.claims`, the bytes a JWS signature covers.
fn signing_input(token: &str) -> &str {
    &token[..token.rfind('.').unwrap()]
}

fn hs256(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The public key as an X.509 SubjectPublicKeyInfo, DER, and as PEM text.
fn spki(issuer: &TokenIssuer) -> (Vec<u8>, String) {
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(issuer.public_key());
    let b64 = STANDARD.encode(&der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    );
    (der, pem)
}

/// The issuer's PKCS#8 key, read back from its directory.
fn pkcs8(dir: &TempDir) -> Vec<u8> {
    let text = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    decode_pem(&text).unwrap()
}

#[test]
fn round_trip() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    let claims = verifier.verify(&token, now()).unwrap();
    assert_eq!(claims.identity, SpiffeId::new(TD, "vm", "reviews").unwrap());
    assert_eq!(claims.group.as_deref(), Some("reviews-vms"));
    assert_eq!(claims.expires, now() + Duration::from_secs(3600));
    assert_eq!(URL_SAFE_NO_PAD.decode(&claims.jti).unwrap().len(), 16);

    // The header is exactly the documented one.
    let header_b64 = token.split('.').next().unwrap();
    let header_json: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
    assert_eq!(header_json, header(&issuer));
    let claims_b64 = token.split('.').nth(1).unwrap();
    let claims_json: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).unwrap()).unwrap();
    assert_eq!(
        with(claims_json, "jti", Value::Null),
        with(self::claims(), "jti", Value::Null)
    );

    // Each token has its own jti.
    let again = issuer.issue_at(&request(), TD, now()).unwrap();
    assert_ne!(verifier.verify(&again, now()).unwrap().jti, claims.jti);

    // No group; now-time issue; the last second before expiry (with skew).
    let no_group = TokenRequest {
        group: None,
        ..request()
    };
    let token = issuer.issue(&no_group, "example.org").unwrap();
    let claims = verifier.verify(&token, SystemTime::now()).unwrap();
    assert_eq!(claims.group, None);
    assert_eq!(claims.identity.trust_domain(), "example.org");
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    let last = now() + Duration::from_secs(3600 + 59);
    assert!(verifier.verify(&token, last).is_ok());

    // Another audience, when asked for, and a verifier for it.
    let custom = TokenRequest {
        audience: Some("strait-ca".into()),
        ..request()
    };
    let token = issuer.issue_at(&custom, TD, now()).unwrap();
    assert!(matches!(
        verifier.verify(&token, now()),
        Err(TokenError::WrongAudience)
    ));
    let custom_verifier = verifier.clone().with_audience("strait-ca");
    assert!(custom_verifier.verify(&token, now()).is_ok());
}

#[test]
fn aud_may_be_an_array_holding_ours() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let token = sign(
        &issuer,
        &header(&issuer),
        &with(claims(), "aud", json!(["other", DEFAULT_AUDIENCE])),
    );
    assert!(verifier.verify(&token, now()).is_ok());
    let token = sign(
        &issuer,
        &header(&issuer),
        &with(claims(), "aud", json!(["other", "more"])),
    );
    assert!(matches!(
        verifier.verify(&token, now()),
        Err(TokenError::WrongAudience)
    ));
    let token = sign(&issuer, &header(&issuer), &with(claims(), "aud", json!([])));
    assert!(matches!(
        verifier.verify(&token, now()),
        Err(TokenError::WrongAudience)
    ));
}

#[test]
fn clock_skew_is_sixty_seconds_each_way() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let at = |offset: i64| {
        if offset >= 0 {
            now() + Duration::from_secs(offset.unsigned_abs())
        } else {
            now() - Duration::from_secs(offset.unsigned_abs())
        }
    };
    let n = secs(now());
    let token = |claims: Value| sign(&issuer, &header(&issuer), &claims);

    // exp just passed, within the skew: accepted; 60 s past: refused.
    let expiring = token(with(claims(), "exp", json!(n)));
    assert!(verifier.verify(&expiring, at(59)).is_ok());
    assert!(matches!(
        verifier.verify(&expiring, at(60)),
        Err(TokenError::Expired { ago_secs: 60 })
    ));
    // nbf and iat up to 60 s ahead of us: accepted; 61 s: refused.
    let ahead = token(with(
        with(claims(), "nbf", json!(n + 60)),
        "iat",
        json!(n + 60),
    ));
    assert!(verifier.verify(&ahead, now()).is_ok());
    let nbf_ahead = token(with(claims(), "nbf", json!(n + 61)));
    assert!(matches!(
        verifier.verify(&nbf_ahead, now()),
        Err(TokenError::NotYetValid { in_secs: 61 })
    ));
    let iat_ahead = token(with(claims(), "iat", json!(n + 61)));
    assert!(matches!(
        verifier.verify(&iat_ahead, now()),
        Err(TokenError::IssuedInFuture { in_secs: 61 })
    ));
    // A verifier clock before 1970.
    assert!(matches!(
        verifier.verify(&expiring, UNIX_EPOCH - Duration::from_secs(1)),
        Err(TokenError::Clock)
    ));
}

#[test]
fn issue_refuses_bad_requests() {
    let (_dir, issuer) = issuer();
    let issue = |req: TokenRequest, td: &str| issuer.issue_at(&req, td, now()).unwrap_err();
    let ttl = |ttl| TokenRequest { ttl, ..request() };

    assert!(matches!(
        issue(ttl(Duration::ZERO), TD),
        TokenError::ZeroTtl
    ));
    assert!(matches!(
        issue(ttl(Duration::from_millis(999)), TD),
        TokenError::ZeroTtl
    ));
    let err = issue(ttl(MAX_TTL + Duration::from_secs(1)), TD);
    assert!(matches!(
        err,
        TokenError::TtlTooLong {
            requested_secs: 2_592_001,
            max_secs: 2_592_000
        }
    ));
    assert_eq!(
        err.to_string(),
        "token lifetime of 2592001 s is over the maximum of 2592000 s"
    );
    assert!(issuer.issue_at(&ttl(MAX_TTL), TD, now()).is_ok());

    let name_cases: &[(TokenRequest, &str, &str)] = &[
        (
            TokenRequest {
                namespace: "Bad_NS".into(),
                ..request()
            },
            TD,
            "namespace",
        ),
        (
            TokenRequest {
                service_account: "a/b".into(),
                ..request()
            },
            TD,
            "service_account",
        ),
        (
            TokenRequest {
                namespace: String::new(),
                ..request()
            },
            TD,
            "namespace",
        ),
        (request(), "Cluster.Local", "trust domain"),
        (
            TokenRequest {
                group: Some("no spaces".into()),
                ..request()
            },
            TD,
            "group",
        ),
    ];
    for (req, td, which) in name_cases {
        match issue(req.clone(), td) {
            TokenError::BadName { claim, .. } => assert_eq!(claim, *which),
            other => panic!("{which}: {other:?}"),
        }
    }
    let empty_aud = TokenRequest {
        audience: Some(String::new()),
        ..request()
    };
    assert!(matches!(
        issue(empty_aud, TD),
        TokenError::BadClaim { claim: "aud", .. }
    ));
    assert!(matches!(
        issuer.issue_at(&request(), TD, UNIX_EPOCH - Duration::from_secs(1)),
        Err(TokenError::Clock)
    ));
}

#[test]
fn key_is_persisted_private_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("state").join("ca");
    let first = TokenIssuer::load_or_create(&nested, ISSUER.into()).unwrap();
    let path = nested.join(KEY_FILE);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&nested).unwrap().count(), 1);

    let second = TokenIssuer::load_or_create(&nested, ISSUER.into()).unwrap();
    assert_eq!(first.kid(), second.kid());
    assert_eq!(first.public_key(), second.public_key());
    let token = first.issue_at(&request(), TD, now()).unwrap();
    assert!(second.verifier().verify(&token, now()).is_ok());

    // kid: base64url of the first 8 bytes of SHA-256 of the SEC1 point.
    assert_eq!(first.public_key().len(), 65);
    let digest = ring::digest::digest(&ring::digest::SHA256, first.public_key());
    assert_eq!(first.kid(), URL_SAFE_NO_PAD.encode(&digest.as_ref()[..8]));
    assert_eq!(first.kid().len(), 11);

    // Debug shows neither key half.
    let debug = format!("{first:?}");
    assert!(debug.contains(first.kid()));
    let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
    assert!(!debug.contains(&body), "{debug}");

    // A key file others can read is refused, and so is one that is not a key.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = TokenIssuer::load_or_create(&nested, ISSUER.into()).unwrap_err();
    assert!(
        matches!(err, TokenError::KeyPermissions { mode: 0o640, .. }),
        "{err}"
    );
    let secret_looking =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
    let garbage: &[&str] = &[
        secret_looking,
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n",
        "not pem at all",
        "",
    ];
    for text in garbage {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = TokenIssuer::load_or_create(&nested, ISSUER.into()).unwrap_err();
        assert!(matches!(err, TokenError::KeyInvalid { .. }), "{err}");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }
    std::fs::write(&path, vec![b'A'; 20_000]).unwrap();
    let err = TokenIssuer::load_or_create(&nested, ISSUER.into()).unwrap_err();
    assert!(matches!(err, TokenError::KeyInvalid { .. }), "{err}");

    // An issuer string is required.
    let err = TokenIssuer::load_or_create(dir.path(), String::new()).unwrap_err();
    assert!(matches!(err, TokenError::BadClaim { claim: "iss", .. }));
}

#[test]
fn concurrent_creation_ends_with_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let kids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    TokenIssuer::load_or_create(dir.path(), ISSUER.into())
                        .unwrap()
                        .kid()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn rotation_trusts_a_second_key() {
    let (_a_dir, old) = issuer();
    let (_b_dir, new) = issuer();
    assert_ne!(old.kid(), new.kid());
    let old_token = old.issue_at(&request(), TD, now()).unwrap();

    let mut verifier = new.verifier();
    assert!(matches!(
        verifier.verify(&old_token, now()),
        Err(TokenError::UnknownKey)
    ));
    assert_eq!(verifier.add_key(old.public_key()).unwrap(), old.kid());
    let mut kids: Vec<&str> = verifier.kids().collect();
    kids.sort_unstable();
    let mut want = vec![old.kid(), new.kid()];
    want.sort_unstable();
    assert_eq!(kids, want);
    assert!(verifier.verify(&old_token, now()).is_ok());
    let new_token = new.issue_at(&request(), TD, now()).unwrap();
    assert!(verifier.verify(&new_token, now()).is_ok());

    // A verifier built by hand is the same thing.
    let mut by_hand = TokenVerifier::new(ISSUER, DEFAULT_AUDIENCE);
    assert!(matches!(
        by_hand.verify(&new_token, now()),
        Err(TokenError::UnknownKey)
    ));
    by_hand.add_key(new.public_key()).unwrap();
    assert!(by_hand.verify(&new_token, now()).is_ok());

    // Only uncompressed P-256 points are keys.
    let (der, _) = spki(&new);
    for bad in [&der[..], &new.public_key()[1..], &[], &[0x02; 33]] {
        assert!(matches!(
            by_hand.add_key(bad),
            Err(TokenError::BadPublicKey)
        ));
    }
}

#[test]
fn trust_domain_can_be_pinned() {
    let (_dir, issuer) = issuer();
    let token = issuer.issue_at(&request(), "other.domain", now()).unwrap();
    assert!(issuer.verifier().verify(&token, now()).is_ok());
    let pinned = issuer.verifier().with_trust_domain(TD);
    assert!(matches!(
        pinned.verify(&token, now()),
        Err(TokenError::WrongTrustDomain)
    ));
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    assert!(pinned.verify(&token, now()).is_ok());
}

type Expect = fn(&TokenError) -> bool;

#[test]
fn hostile_tokens_are_refused_each_for_its_reason() {
    let (_stranger_dir, stranger) = issuer_named(ISSUER);
    let (dir, issuer) = issuer();
    let (_other_dir, other_issuer) = issuer_named("strait://other");
    let mut verifier = issuer.verifier();
    // The other issuer's key is trusted, so that its tokens fail on `iss`, not on `kid`.
    verifier.add_key(other_issuer.public_key()).unwrap();

    let h = header(&issuer);
    let valid = issuer.issue_at(&request(), TD, now()).unwrap();
    let n = secs(now());

    // alg none / HS256 / others.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let none_with_kid = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(with(h.clone(), "alg", json!("none")).to_string()),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let hs = with(h.clone(), "alg", json!("HS256"));
    let (spki_der, spki_pem) = spki(&issuer);
    let hs_sec1 = hs256(issuer.public_key(), &hs, &claims());
    let hs_der = hs256(&spki_der, &hs, &claims());
    let hs_pem = hs256(spki_pem.as_bytes(), &hs, &claims());
    let hs_pem_no_kid = hs256(spki_pem.as_bytes(), &without(hs.clone(), "kid"), &claims());
    let valid_sig = URL_SAFE_NO_PAD
        .decode(valid.rsplit('.').next().unwrap())
        .unwrap();
    let with_alg = |alg: &str| {
        assemble(
            with(h.clone(), "alg", json!(alg)).to_string().as_bytes(),
            claims().to_string().as_bytes(),
            &valid_sig,
        )
    };

    // Signature trouble.
    let (valid_input, _) = valid.rsplit_once('.').unwrap();
    let sig_of = |bytes: &[u8]| format!("{valid_input}.{}", URL_SAFE_NO_PAD.encode(bytes));
    let mut flipped = valid_sig.clone();
    flipped[10] ^= 1;
    let der_signer = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8(&dir),
        &SystemRandom::new(),
    )
    .unwrap();
    let der_sig = der_signer
        .sign(&SystemRandom::new(), valid_input.as_bytes())
        .unwrap();
    // Same kid, other key: a forged kid.
    let forged_kid = sign(&stranger, &h, &claims());

    // Tampered claims (another account, consistently), original signature.
    let tampered = {
        let claims = with(
            with(claims(), "service_account", json!("admin")),
            "sub",
            json!("spiffe://cluster.local/ns/vm/sa/admin"),
        );
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        parts.join(".")
    };

    let cases: Vec<(&str, String, Expect)> = vec![
        (
            "expired",
            issuer
                .issue_at(&request(), TD, now() - Duration::from_secs(7200))
                .unwrap(),
            |e| matches!(e, TokenError::Expired { ago_secs: 3600 }),
        ),
        (
            "not yet valid",
            issuer
                .issue_at(&request(), TD, now() + Duration::from_secs(3600))
                .unwrap(),
            |e| matches!(e, TokenError::NotYetValid { in_secs: 3600 }),
        ),
        (
            "issued in the future",
            sign(&issuer, &h, &with(claims(), "iat", json!(n + 600))),
            |e| matches!(e, TokenError::IssuedInFuture { in_secs: 600 }),
        ),
        (
            "wrong audience",
            issuer
                .issue_at(
                    &TokenRequest {
                        audience: Some("kubernetes".into()),
                        ..request()
                    },
                    TD,
                    now(),
                )
                .unwrap(),
            |e| matches!(e, TokenError::WrongAudience),
        ),
        (
            "wrong issuer",
            other_issuer.issue_at(&request(), TD, now()).unwrap(),
            |e| matches!(e, TokenError::WrongIssuer),
        ),
        ("alg none, empty signature", none, |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "none" })
        }),
        ("alg none with our kid", none_with_kid, |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "none" })
        }),
        ("alg None", with_alg("None"), |e| {
            matches!(
                e,
                TokenError::UnsupportedAlgorithm {
                    alg: "an unrecognised algorithm"
                }
            )
        }),
        ("alg es256", with_alg("es256"), |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { .. })
        }),
        ("HS256 keyed with the SEC1 public key", hs_sec1, |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "HS256" })
        }),
        ("HS256 keyed with the SPKI DER", hs_der, |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "HS256" })
        }),
        ("HS256 keyed with the PEM text", hs_pem, |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "HS256" })
        }),
        ("HS256 without kid", hs_pem_no_kid, |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "HS256" })
        }),
        ("ES384", with_alg("ES384"), |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "ES384" })
        }),
        ("RS256", with_alg("RS256"), |e| {
            matches!(e, TokenError::UnsupportedAlgorithm { alg: "RS256" })
        }),
        (
            "unknown kid",
            sign(
                &issuer,
                &with(h.clone(), "kid", json!("AAAAAAAAAAA")),
                &claims(),
            ),
            |e| matches!(e, TokenError::UnknownKey),
        ),
        (
            "a stranger's key with its own kid",
            stranger.issue_at(&request(), TD, now()).unwrap(),
            |e| matches!(e, TokenError::UnknownKey),
        ),
        ("a stranger's key with our kid", forged_kid, |e| {
            matches!(e, TokenError::BadSignature)
        }),
        (
            "another account's sub",
            sign(
                &issuer,
                &h,
                &with(
                    claims(),
                    "sub",
                    json!("spiffe://cluster.local/ns/vm/sa/admin"),
                ),
            ),
            |e| matches!(e, TokenError::SubjectMismatch),
        ),
        (
            "another namespace's sub",
            sign(
                &issuer,
                &h,
                &with(
                    claims(),
                    "sub",
                    json!("spiffe://cluster.local/ns/kube-system/sa/reviews"),
                ),
            ),
            |e| matches!(e, TokenError::SubjectMismatch),
        ),
        (
            "sub not a SPIFFE ID",
            sign(&issuer, &h, &with(claims(), "sub", json!("reviews"))),
            |e| matches!(e, TokenError::SubjectMismatch),
        ),
        ("tampered claims, original signature", tampered, |e| {
            matches!(e, TokenError::BadSignature)
        }),
        ("one bit of the signature flipped", sig_of(&flipped), |e| {
            matches!(e, TokenError::BadSignature)
        }),
        ("signature of 63 bytes", sig_of(&valid_sig[..63]), |e| {
            matches!(e, TokenError::SignatureLength { len: 63 })
        }),
        (
            "signature of 65 bytes",
            sig_of(&[valid_sig.as_slice(), &[0]].concat()),
            |e| matches!(e, TokenError::SignatureLength { len: 65 }),
        ),
        ("ASN.1 DER signature", sig_of(der_sig.as_ref()), |e| {
            matches!(e, TokenError::SignatureLength { .. })
        }),
        ("empty signature", sig_of(&[]), |e| {
            matches!(e, TokenError::SignatureLength { len: 0 })
        }),
        ("huge", "a".repeat(MAX_TOKEN_LEN + 1), |e| {
            matches!(
                e,
                TokenError::TooLong {
                    len: 8193,
                    max: 8192
                }
            )
        }),
        (
            "huge, valid-looking",
            format!("{valid}{}", "A".repeat(1 << 20)),
            |e| matches!(e, TokenError::TooLong { .. }),
        ),
        ("non-base64 garbage", "!!!.@@@.###".into(), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        ("padded base64", format!("{valid}="), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        (
            "standard-alphabet character",
            format!("+{}", &valid[1..]),
            |e| matches!(e, TokenError::Malformed { .. }),
        ),
        (
            "standard-alphabet character in the signature",
            format!("{}/", &valid[..valid.len() - 1]),
            |e| matches!(e, TokenError::Malformed { .. }),
        ),
        ("non-ASCII", "é.é.é".into(), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        ("whitespace around", format!(" {valid}\n"), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        ("Bearer prefix", format!("Bearer {valid}"), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        ("empty", String::new(), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        ("two parts", signing_input(&valid).to_owned(), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        ("four parts", format!("{valid}.{valid_input}"), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        (
            "empty header",
            format!(".{}", valid.split_once('.').unwrap().1),
            |e| matches!(e, TokenError::Malformed { .. }),
        ),
        ("dots only", "..".into(), |e| {
            matches!(e, TokenError::Malformed { .. })
        }),
        (
            "header not JSON",
            sign_raw(&issuer, b"not json", claims().to_string().as_bytes()),
            |e| matches!(e, TokenError::HeaderNotJson),
        ),
        (
            "header a JSON array",
            sign_raw(&issuer, b"[\"ES256\"]", claims().to_string().as_bytes()),
            |e| matches!(e, TokenError::HeaderNotJson),
        ),
        (
            "header with trailing bytes",
            sign_raw(
                &issuer,
                format!("{h}x").as_bytes(),
                claims().to_string().as_bytes(),
            ),
            |e| matches!(e, TokenError::HeaderNotJson),
        ),
        (
            "header not UTF-8",
            sign_raw(
                &issuer,
                b"{\"alg\":\"\xff\"}",
                claims().to_string().as_bytes(),
            ),
            |e| matches!(e, TokenError::HeaderNotJson),
        ),
        (
            "crit header",
            sign(&issuer, &with(h.clone(), "crit", json!(["exp"])), &claims()),
            |e| matches!(e, TokenError::ForbiddenHeader { field: "crit" }),
        ),
        (
            "crit: null header",
            sign(&issuer, &with(h.clone(), "crit", Value::Null), &claims()),
            |e| matches!(e, TokenError::ForbiddenHeader { field: "crit" }),
        ),
        (
            "jku header",
            sign(
                &issuer,
                &with(h.clone(), "jku", json!("https://evil.example/keys")),
                &claims(),
            ),
            |e| matches!(e, TokenError::ForbiddenHeader { field: "jku" }),
        ),
        (
            "jwk header",
            sign(
                &issuer,
                &with(h.clone(), "jwk", json!({"kty": "EC", "crv": "P-256"})),
                &claims(),
            ),
            |e| matches!(e, TokenError::ForbiddenHeader { field: "jwk" }),
        ),
        (
            "x5u header",
            sign(
                &issuer,
                &with(h.clone(), "x5u", json!("https://evil.example/cert")),
                &claims(),
            ),
            |e| matches!(e, TokenError::ForbiddenHeader { field: "x5u" }),
        ),
        (
            "x5c header",
            sign(&issuer, &with(h.clone(), "x5c", json!(["MIIB"])), &claims()),
            |e| matches!(e, TokenError::ForbiddenHeader { field: "x5c" }),
        ),
        (
            "unknown header field",
            sign(&issuer, &with(h.clone(), "foo", json!(1)), &claims()),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "repeated alg",
            sign_raw(
                &issuer,
                format!(
                    r#"{{"alg":"ES256","typ":"JWT","kid":"{}","alg":"ES256"}}"#,
                    issuer.kid()
                )
                .as_bytes(),
                claims().to_string().as_bytes(),
            ),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "no typ",
            sign(&issuer, &without(h.clone(), "typ"), &claims()),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "typ of another token kind",
            sign(&issuer, &with(h.clone(), "typ", json!("at+jwt")), &claims()),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "no kid",
            sign(&issuer, &without(h.clone(), "kid"), &claims()),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "alg not a string",
            sign(&issuer, &with(h.clone(), "alg", json!(256)), &claims()),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "no alg",
            sign(&issuer, &without(h.clone(), "alg"), &claims()),
            |e| matches!(e, TokenError::BadHeader { .. }),
        ),
        (
            "claims not JSON",
            sign_raw(&issuer, h.to_string().as_bytes(), b"{\"iss\":"),
            |e| matches!(e, TokenError::ClaimsNotJson),
        ),
        (
            "claims a JSON string",
            sign_raw(&issuer, h.to_string().as_bytes(), b"\"claims\""),
            |e| matches!(e, TokenError::ClaimsNotJson),
        ),
        (
            "repeated sub",
            sign_raw(
                &issuer,
                h.to_string().as_bytes(),
                claims()
                    .to_string()
                    .replacen('{', r#"{"sub":"spiffe://cluster.local/ns/vm/sa/admin","#, 1)
                    .as_bytes(),
            ),
            |e| matches!(e, TokenError::DuplicateClaim { claim: "sub" }),
        ),
        (
            "namespace not a name",
            sign(
                &issuer,
                &h,
                &with(
                    with(claims(), "namespace", json!("VM")),
                    "sub",
                    json!("spiffe://cluster.local/ns/VM/sa/reviews"),
                ),
            ),
            |e| {
                matches!(
                    e,
                    TokenError::BadName {
                        claim: "namespace",
                        ..
                    }
                )
            },
        ),
        (
            "service account not a name",
            sign(
                &issuer,
                &h,
                &with(claims(), "service_account", json!("../admin")),
            ),
            |e| {
                matches!(
                    e,
                    TokenError::BadName {
                        claim: "service_account",
                        ..
                    }
                )
            },
        ),
        (
            "group not a name",
            sign(&issuer, &h, &with(claims(), "group", json!("A B"))),
            |e| matches!(e, TokenError::BadName { claim: "group", .. }),
        ),
        (
            "jti not 128 bits",
            sign(&issuer, &h, &with(claims(), "jti", json!("short"))),
            |e| matches!(e, TokenError::BadClaim { claim: "jti", .. }),
        ),
    ];

    assert!(verifier.verify(&valid, now()).is_ok());
    for (name, token, expect) in &cases {
        let err = match verifier.verify(token, now()) {
            Ok(claims) => panic!("{name}: accepted as {claims:?}"),
            Err(err) => err,
        };
        assert!(
            expect(&err),
            "{name}: refused for the wrong reason: {err:?}"
        );
        let message = err.to_string();
        assert!(!message.is_empty());
        for part in token.split(['.', ' ']).filter(|p| p.len() >= 8) {
            let excerpt: String = part.chars().take(16).collect();
            assert!(
                !message.contains(&excerpt),
                "{name}: the message quotes the token: {message}"
            );
        }
    }
}

#[test]
fn claims_missing_or_mistyped() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let h = header(&issuer);
    let required = [
        "iss",
        "aud",
        "sub",
        "namespace",
        "service_account",
        "iat",
        "nbf",
        "exp",
        "jti",
    ];
    for claim in required {
        let token = sign(&issuer, &h, &without(claims(), claim));
        match verifier.verify(&token, now()) {
            Err(TokenError::MissingClaim { claim: missing }) => assert_eq!(missing, claim),
            other => panic!("without {claim}: {other:?}"),
        }
    }
    // group is optional.
    let token = sign(&issuer, &h, &without(claims(), "group"));
    assert_eq!(verifier.verify(&token, now()).unwrap().group, None);

    let n = secs(now());
    let mistyped: &[(&str, Value)] = &[
        ("iss", json!(1)),
        ("aud", json!(1)),
        ("aud", json!({"aud": DEFAULT_AUDIENCE})),
        ("aud", json!([DEFAULT_AUDIENCE, 1])),
        ("sub", json!(["spiffe://cluster.local/ns/vm/sa/reviews"])),
        ("namespace", Value::Null),
        ("service_account", json!(true)),
        ("group", Value::Null),
        ("group", json!(["reviews-vms"])),
        ("iat", json!(n.to_string())),
        ("nbf", json!(-1)),
        ("exp", json!(n as f64 + 3600.5)),
        ("exp", json!(1e300)),
        ("jti", json!(16)),
    ];
    for (claim, value) in mistyped {
        let token = sign(&issuer, &h, &with(claims(), claim, value.clone()));
        match verifier.verify(&token, now()) {
            Err(TokenError::ClaimType { claim: which, .. }) => assert_eq!(which, *claim),
            other => panic!("{claim} = {value}: {other:?}"),
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    assert!(verifier.verify(&token, now()).is_ok());
    for len in 0..token.len() {
        let cut = &token[..len];
        match verifier.verify(cut, now()) {
            Err(TokenError::Malformed { .. } | TokenError::SignatureLength { .. }) => {}
            other => panic!("cut at {len}: {other:?}"),
        }
        // Cut from the front too.
        let tail = &token[len + 1..];
        assert!(verifier.verify(tail, now()).is_err(), "tail from {len}");
    }
}

#[test]
fn size_limit_is_on_the_token_text() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let h = header(&issuer);
    let mut accepted_near_limit = false;
    let mut refused_over_limit = false;
    for pad in 5500..6000 {
        let token = sign(&issuer, &h, &with(claims(), "pad", json!("x".repeat(pad))));
        let result = verifier.verify(&token, now());
        if token.len() <= MAX_TOKEN_LEN {
            assert!(result.is_ok(), "{} bytes: {result:?}", token.len());
            accepted_near_limit |= token.len() > MAX_TOKEN_LEN - 4;
        } else {
            assert!(
                matches!(result, Err(TokenError::TooLong { .. })),
                "{} bytes: {result:?}",
                token.len()
            );
            refused_over_limit = true;
        }
    }
    assert!(accepted_near_limit && refused_over_limit);
}

/// Rewrites the fuzz target's seed corpus and its public key. Run by hand after changing the
/// token format: `cargo test -p strait-controlplane ca::token::tests::write_fuzz_seed_corpus
/// -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/token and the fixture key; run by hand"]
fn write_fuzz_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("src/ca/token/fixtures");
    let corpus = root.join("../fuzz/corpus/token");
    std::fs::create_dir_all(&fixtures).unwrap();
    std::fs::create_dir_all(&corpus).unwrap();

    let (dir, issuer) = issuer_named("strait://fuzz");
    std::fs::write(fixtures.join("fuzz-public-key.sec1"), issuer.public_key()).unwrap();
    // The fuzz target verifies at 2026-01-01T00:01:00Z; tokens are issued a minute before.
    let request = TokenRequest {
        ttl: MAX_TTL,
        ..request()
    };
    let valid = issuer.issue_at(&request, TD, now()).unwrap();
    let h = header(&issuer);
    let mut c = claims();
    c["iss"] = json!("strait://fuzz");
    c["exp"] = json!(secs(now()) + MAX_TTL.as_secs());
    let (input, _) = valid.rsplit_once('.').unwrap();
    let (spki_der, _) = spki(&issuer);
    let der_sig = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8(&dir),
        &SystemRandom::new(),
    )
    .unwrap()
    .sign(&SystemRandom::new(), input.as_bytes())
    .unwrap();
    let seeds: Vec<(&str, String)> = vec![
        ("valid", valid.clone()),
        (
            "valid-aud-array",
            sign(
                &issuer,
                &h,
                &with(c.clone(), "aud", json!(["x", DEFAULT_AUDIENCE])),
            ),
        ),
        (
            "invalid-alg-none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
                URL_SAFE_NO_PAD.encode(c.to_string())
            ),
        ),
        (
            "invalid-hs256-public-key",
            hs256(&spki_der, &with(h.clone(), "alg", json!("HS256")), &c),
        ),
        (
            "invalid-crit",
            sign(&issuer, &with(h.clone(), "crit", json!(["exp"])), &c),
        ),
        (
            "invalid-unknown-kid",
            sign(&issuer, &with(h.clone(), "kid", json!("AAAAAAAAAAA")), &c),
        ),
        (
            "invalid-sub-mismatch",
            sign(
                &issuer,
                &h,
                &with(
                    c.clone(),
                    "sub",
                    json!("spiffe://cluster.local/ns/vm/sa/admin"),
                ),
            ),
        ),
        (
            "invalid-expired",
            sign(
                &issuer,
                &h,
                &with(c.clone(), "exp", json!(secs(now()) - 3600)),
            ),
        ),
        (
            "invalid-missing-claim",
            sign(&issuer, &h, &without(c.clone(), "namespace")),
        ),
        (
            "invalid-der-signature",
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(der_sig.as_ref())),
        ),
        ("invalid-truncated", valid[..valid.len() - 5].to_owned()),
        ("invalid-garbage", "!!!.@@@.###".into()),
        ("invalid-two-parts", input.to_owned()),
        (
            "invalid-header-not-json",
            sign_raw(&issuer, b"not json", c.to_string().as_bytes()),
        ),
    ];
    for (name, token) in seeds {
        std::fs::write(corpus.join(name), token).unwrap();
    }
}

/// The decision of a verifier that has never seen `token`, as text (errors have no `PartialEq`).
fn fresh_decision(verifier: &TokenVerifier, token: &str, at: SystemTime) -> String {
    let fresh = verifier.clone();
    assert_eq!(fresh.cache.len(), 0);
    format!("{:?}", fresh.verify(token, at))
}

#[test]
fn a_cached_token_is_refused_once_it_expires_as_a_fresh_one_is() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    let claims = verifier.verify(&token, now()).unwrap();
    assert_eq!(verifier.cache.len(), 1);
    // A hit gives the same claims.
    assert_eq!(verifier.verify(&token, now()).unwrap(), claims);

    // The last second allowed, then the first refused; each as a fresh verifier decides.
    let last = now() + Duration::from_secs(3600 + 59);
    let first_refused = last + Duration::from_secs(1);
    for at in [last, first_refused] {
        assert_eq!(
            format!("{:?}", verifier.verify(&token, at)),
            fresh_decision(&verifier, &token, at)
        );
    }
    assert!(matches!(
        verifier.verify(&token, first_refused),
        Err(TokenError::Expired { ago_secs: 60 })
    ));
    // The expired entry is gone, and the token stays refused.
    assert_eq!(verifier.cache.len(), 0);
    assert!(verifier.verify(&token, first_refused).is_err());

    // A clock set back before nbf (with skew): refused from the cache as a fresh verifier does.
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    verifier.verify(&token, now()).unwrap();
    let early = now() - Duration::from_secs(61);
    let decision = format!("{:?}", verifier.verify(&token, early));
    assert!(decision.contains("NotYetValid"), "{decision}");
    assert_eq!(decision, fresh_decision(&verifier, &token, early));
}

#[test]
fn a_cached_token_of_a_removed_key_is_refused() {
    let (_old_dir, old) = issuer();
    let (_new_dir, new) = issuer();
    let mut verifier = new.verifier();
    verifier.add_key(old.public_key()).unwrap();
    let old_token = old.issue_at(&request(), TD, now()).unwrap();
    let new_token = new.issue_at(&request(), TD, now()).unwrap();
    verifier.verify(&old_token, now()).unwrap();
    verifier.verify(&new_token, now()).unwrap();
    assert_eq!(verifier.cache.len(), 2);

    assert!(verifier.remove_key(old.kid()));
    assert!(!verifier.remove_key(old.kid()));
    assert!(matches!(
        verifier.verify(&old_token, now()),
        Err(TokenError::UnknownKey)
    ));
    verifier.verify(&new_token, now()).unwrap();

    // The hit itself checks the key, whatever empties the cache: an entry whose kid no longer
    // names the key that verified it is not used.
    let mut verifier = new.verifier();
    verifier.add_key(old.public_key()).unwrap();
    verifier.verify(&old_token, now()).unwrap();
    verifier.keys.remove(old.kid());
    assert_eq!(verifier.cache.len(), 1);
    assert!(matches!(
        verifier.verify(&old_token, now()),
        Err(TokenError::UnknownKey)
    ));
    assert_eq!(verifier.cache.len(), 0);
    // …and neither is one whose kid now names another key.
    verifier
        .keys
        .insert(old.kid().to_owned(), old.public_key().to_vec());
    verifier.verify(&old_token, now()).unwrap();
    verifier
        .keys
        .insert(old.kid().to_owned(), new.public_key().to_vec());
    assert!(matches!(
        verifier.verify(&old_token, now()),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn changing_a_verifier_forgets_what_it_verified() {
    let (_dir, issuer) = issuer();
    let (_other_dir, other) = issuer_named("strait://other");
    let verifier = issuer.verifier();
    let token = issuer.issue_at(&request(), TD, now()).unwrap();
    verifier.verify(&token, now()).unwrap();

    let audience = verifier.clone().with_audience("strait-ca");
    assert!(matches!(
        audience.verify(&token, now()),
        Err(TokenError::WrongAudience)
    ));
    let mut moved = verifier;
    moved.add_key(other.public_key()).unwrap();
    assert_eq!(moved.cache.len(), 0);
    moved.verify(&token, now()).unwrap();
    let pinned = moved.with_trust_domain("example.org");
    assert_eq!(pinned.cache.len(), 0);
    assert!(matches!(
        pinned.verify(&token, now()),
        Err(TokenError::WrongTrustDomain)
    ));
}

#[test]
fn another_token_with_the_same_claims_is_not_taken_for_a_cached_one() {
    let (_dir, issuer) = issuer();
    let verifier = issuer.verifier();
    let header = header(&issuer);
    let claims = claims();
    let token = sign(&issuer, &header, &claims);
    verifier.verify(&token, now()).unwrap();

    // The same header and claims under a signature that is not the key's.
    let input = signing_input(&token);
    let mut signature = URL_SAFE_NO_PAD.decode(&token[input.len() + 1..]).unwrap();
    signature[10] ^= 1;
    let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature));
    assert!(matches!(
        verifier.verify(&forged, now()),
        Err(TokenError::BadSignature)
    ));
    // Refusals are not cached; the genuine token still verifies.
    assert_eq!(verifier.cache.len(), 1);
    assert!(matches!(
        verifier.verify(&forged, now()),
        Err(TokenError::BadSignature)
    ));

    // The same claims signed again (ECDSA: another signature), and the same claims signed by
    // a key the verifier does not know: each decided on its own.
    let again = sign(&issuer, &header, &claims);
    assert_ne!(again, token);
    verifier.verify(&again, now()).unwrap();
    assert_eq!(verifier.cache.len(), 2);
    let (_stranger_dir, stranger) = issuer_named(ISSUER);
    let foreign = sign(&stranger, &header, &claims);
    assert!(matches!(
        verifier.verify(&foreign, now()),
        Err(TokenError::BadSignature)
    ));
    // The claims' jti is the same in all three: the cache is not keyed on claims.
    assert_eq!(
        verifier.verify(&token, now()).unwrap().jti,
        verifier.verify(&again, now()).unwrap().jti
    );
}

#[test]
fn the_cache_keeps_at_most_its_bound() {
    let (_dir, issuer) = issuer();
    assert_eq!(issuer.verifier().cache.capacity(), cache::DEFAULT_CAPACITY);
    let verifier = issuer.verifier().with_cache_capacity(3);
    let tokens: Vec<String> = (0..5)
        .map(|_| issuer.issue_at(&request(), TD, now()).unwrap())
        .collect();
    for token in &tokens {
        verifier.verify(token, now()).unwrap();
        assert!(verifier.cache.len() <= 3);
    }
    // The least recently used went; an evicted token still verifies (afresh).
    for token in &tokens[2..] {
        assert!(verifier.cache.get(&token_digest(token)).is_some());
    }
    assert!(verifier.cache.get(&token_digest(&tokens[0])).is_none());
    verifier.verify(&tokens[0], now()).unwrap();
    assert_eq!(verifier.cache.len(), 3);

    let uncached = issuer.verifier().with_cache_capacity(0);
    uncached.verify(&tokens[0], now()).unwrap();
    assert_eq!(uncached.cache.len(), 0);
}

//! Bootstrap-token parsing (`strait_controlplane::ca::token::TokenVerifier::verify`) on
//! arbitrary input, read as lossy UTF-8: it must refuse or accept, never panic, hang or allocate
//! without bound.
//!
//! The verifier is fixed (issuer `strait://fuzz`, the fixture public key, a fixed time), so the
//! seed corpus's `valid` token verifies. The fuzzer cannot forge signatures, so what it explores
//! is everything before the signature check: the size limit, the compact framing, base64url,
//! the header's JSON and its rules, `alg` and `kid`, the signature's length.

#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use strait_controlplane::ca::token::{DEFAULT_AUDIENCE, TokenVerifier};

/// 2026-01-01T00:01:00Z: a minute after the seed tokens were issued.
const NOW_SECS: u64 = 1_767_225_660;

static VERIFIER: LazyLock<Option<TokenVerifier>> = LazyLock::new(|| {
    let mut verifier = TokenVerifier::new("strait://fuzz", DEFAULT_AUDIENCE);
    verifier
        .add_key(include_bytes!(
            "../../controlplane/src/ca/token/fixtures/fuzz-public-key.sec1"
        ))
        .ok()?;
    Some(verifier)
});

fuzz_target!(|data: &[u8]| {
    let Some(verifier) = VERIFIER.as_ref() else {
        return;
    };
    let token = String::from_utf8_lossy(data);
    let now: SystemTime = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    if let Ok(claims) = verifier.verify(&token, now) {
        // Whatever verifies is within its lifetime, allowing for the clock skew.
        assert!(claims.expires + Duration::from_secs(60) > now);
    }
});

//! Replays the `token` fuzz target's corpus (seeds, and anything the fuzzer left there or found
//! crashing) through `TokenVerifier::verify`, with the fuzz target's verifier: nothing panics,
//! the `valid*` seeds verify, the `invalid-*` seeds are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use strait_controlplane::ca::token::{DEFAULT_AUDIENCE, TokenVerifier};

/// The fuzz target's verifier: issuer `strait://fuzz`, the fixture key, at 2026-01-01T00:01:00Z.
fn verify(token: &str) -> Result<(), String> {
    let mut verifier = TokenVerifier::new("strait://fuzz", DEFAULT_AUDIENCE);
    verifier
        .add_key(include_bytes!(
            "../src/ca/token/fixtures/fuzz-public-key.sec1"
        ))
        .unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_660);
    verifier
        .verify(token, now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn token_corpus_replays_without_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = files(&fuzz.join("corpus/token"));
    let seeds = corpus
        .iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("valid") || name.starts_with("invalid-")
        })
        .count();
    assert!(seeds >= 10, "the token seed corpus is missing: {corpus:?}");

    let artifacts = files(&fuzz.join("artifacts/token"));
    for path in corpus.iter().chain(&artifacts) {
        let bytes = std::fs::read(path).unwrap();
        let token = String::from_utf8_lossy(&bytes);
        let result = std::panic::catch_unwind(|| verify(&token));
        let name = path.file_name().unwrap().to_string_lossy();
        let result = result.unwrap_or_else(|_| panic!("{} panicked", path.display()));
        if name.starts_with("valid") {
            assert!(result.is_ok(), "{name} refused: {result:?}");
        } else if name.starts_with("invalid-") {
            assert!(result.is_err(), "{name} accepted");
        }
    }
}

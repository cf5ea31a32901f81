//! Replays the CSR fuzz corpus (`fuzz/corpus/csr/`, and `fuzz/artifacts/csr/` when a fuzz run
//! left crashes there) through `ca::csr::validate`, the way the fuzz target does: as lossy
//! text and as the DER body of a PEM block. Nothing may panic; seeds named `valid-*` must be
//! accepted (`.der` ones once wrapped in PEM) and seeds named `invalid-*` refused both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use strait_controlplane::ca::csr;
use strait_proto::identity::SpiffeId;

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn wrap(data: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
}

#[test]
fn csr_fuzz_corpus_replays_without_panics() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = files_in(&fuzz.join("corpus/csr"));
    assert!(
        corpus.len() >= 10,
        "the seed corpus in {} is missing",
        fuzz.display()
    );
    let caller = SpiffeId::new("cluster.local", "prod", "api").unwrap();
    let mut wrong = Vec::new();
    let mut accepted = 0;
    for path in corpus.iter().chain(&files_in(&fuzz.join("artifacts/csr"))) {
        let data = fs::read(path).unwrap();
        let as_text = csr::validate(&String::from_utf8_lossy(&data), &caller);
        let as_der = csr::validate(&wrap(&data), &caller);
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("valid-") {
            let result = if name.ends_with(".der") {
                &as_der
            } else {
                &as_text
            };
            match result {
                Ok(valid) => {
                    assert_eq!(valid.identity(), &caller);
                    accepted += 1;
                }
                Err(e) => wrong.push(format!("{name}: refused: {e}")),
            }
        } else if name.starts_with("invalid-") && (as_text.is_ok() || as_der.is_ok()) {
            wrong.push(format!("{name}: accepted"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(accepted >= 3, "only {accepted} valid seeds were accepted");
}

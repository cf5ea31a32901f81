//! Replays the SNI fuzz corpus (`fuzz/corpus/sni/`, and `fuzz/artifacts/sni/` when a fuzz run
//! left crashes there) through the gateway's decision on first bytes
//! ([`strait_gateway::sni::classify`], i.e. `tls::detect::parse` then `SniName::from_bytes`).
//! Nothing may panic; every prefix of every seed must decide the same way or ask for more; seeds
//! named `valid-*` must yield a routable name, `invalid-*` a refusal.
//!
//! `write_seed_corpus` (ignored) regenerates the seeds: ClientHellos captured from rustls
//! (TLS 1.3 and 1.2, with and without ALPN, split across records) and hostile ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strait_gateway::sni::classify;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

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

#[test]
fn sni_fuzz_corpus_replays_without_panics() {
    let fuzz = fuzz_dir();
    let corpus = files_in(&fuzz.join("corpus/sni"));
    assert!(
        corpus.len() >= 15,
        "the seed corpus in {} is missing",
        fuzz.display()
    );
    let mut wrong = Vec::new();
    for path in corpus.iter().chain(&files_in(&fuzz.join("artifacts/sni"))) {
        let data = fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let verdict = classify(&data);
        // The gateway decides on a prefix: once decided, more bytes never change it.
        let mut first = None;
        for end in 0..=data.len() {
            if let Some(v) = classify(&data[..end]) {
                first.get_or_insert((end, v));
            }
        }
        if let Some((end, v)) = &first
            && Some(v) != verdict.as_ref()
        {
            wrong.push(format!(
                "{name}: decided {v:?} at {end} bytes, {verdict:?} at the end"
            ));
        }
        if name.starts_with("valid-") && !matches!(verdict, Some(Ok(_))) {
            wrong.push(format!("{name}: not routable: {verdict:?}"));
        }
        if name.starts_with("invalid-") && matches!(verdict, Some(Ok(_))) {
            wrong.push(format!("{name}: routable: {verdict:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `msg` (a handshake message) cut into records of at most `chunk` bytes.
fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in msg.chunks(chunk) {
        out.extend([0x16, 0x03, 0x01]);
        out.extend(u16::try_from(part.len()).unwrap().to_be_bytes());
        out.extend(part);
    }
    out
}

/// The handshake message inside a one-record ClientHello.
fn message(record: &[u8]) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record[5..5 + len].to_vec()
}

/// A hand-made ClientHello whose SNI extension holds `names` (type, bytes).
fn hello_with_names(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0, 2, 0x13, 0x01, 1, 0]);
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
        list.extend(*name);
    }
    let mut ext = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    ext.extend(list);
    let mut exts = vec![0, 0];
    exts.extend(u16::try_from(ext.len()).unwrap().to_be_bytes());
    exts.extend(ext);
    body.extend(u16::try_from(exts.len()).unwrap().to_be_bytes());
    body.extend(exts);
    let mut msg = vec![1u8];
    msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend(body);
    records(&msg, 1 << 14)
}

fn tls12_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
#[ignore = "writes fuzz/corpus/sni; run by hand to regenerate the seeds"]
fn write_seed_corpus() {
    let dir = fuzz_dir().join("corpus/sni");
    fs::create_dir_all(&dir).unwrap();
    let reviews = "outbound_.9080_._.reviews.default.svc.cluster.local";
    let v1 = "outbound_.9080_.v1_.reviews.default.svc.cluster.local";
    let rustls13 = support::rustls_client_hello(Some(reviews));
    let msg = message(&rustls13);
    let long_name = format!("outbound_.80_._.{}.svc", "a".repeat(300));
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("valid-rustls13-reviews", rustls13.clone()),
        (
            "valid-rustls13-subset",
            support::rustls_client_hello(Some(v1)),
        ),
        ("valid-rustls12-reviews", tls12_hello(reviews)),
        ("valid-split-7-byte-records", records(&msg, 7)),
        ("valid-split-1-byte-records", records(&msg, 1)),
        (
            "valid-handmade-uppercase",
            hello_with_names(&[(0, b"OUTBOUND_.80_._.A.B.SVC")]),
        ),
        (
            "invalid-rustls13-no-sni",
            support::rustls_client_hello(None),
        ),
        (
            "invalid-rustls13-plain-host",
            support::rustls_client_hello(Some("reviews.default.svc.cluster.local")),
        ),
        (
            "invalid-reserved-port",
            support::rustls_client_hello(Some(
                "outbound_.15012_._.istiod.istio-system.svc.cluster.local",
            )),
        ),
        (
            "invalid-inbound-form",
            hello_with_names(&[(0, b"inbound_.80_._.a.b.svc")]),
        ),
        (
            "invalid-sni-not-utf8",
            hello_with_names(&[(0, b"outbound_.80_._.\xff\xfe.svc")]),
        ),
        (
            "invalid-sni-nul",
            hello_with_names(&[(0, b"outbound_.80_._.a\0b.svc")]),
        ),
        (
            "invalid-sni-too-long",
            hello_with_names(&[(0, long_name.as_bytes())]),
        ),
        ("invalid-sni-empty", hello_with_names(&[(0, b"")])),
        (
            "invalid-sni-wrong-type",
            hello_with_names(&[(1, reviews.as_bytes())]),
        ),
        (
            "invalid-sni-port-zero",
            hello_with_names(&[(0, b"outbound_.0_._.a.b.svc")]),
        ),
        (
            "invalid-http",
            b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n".to_vec(),
        ),
        (
            "invalid-h2-preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "invalid-sslv2-hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00],
        ),
        (
            "invalid-server-hello",
            vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00],
        ),
        (
            "invalid-zero-length-record",
            vec![0x16, 0x03, 0x01, 0x00, 0x00],
        ),
        (
            "invalid-oversized-hello",
            vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x7f, 0xff, 0xff],
        ),
        (
            "invalid-record-over-16k",
            vec![0x16, 0x03, 0x01, 0x40, 0x01, 0x01],
        ),
        ("invalid-alert-in-split", {
            let mut b = records(&msg[..20], 20);
            b.extend([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
            b
        }),
        ("invalid-truncated-body", {
            let mut m = msg.clone();
            m.truncate(50);
            m[1..4].copy_from_slice(&[0, 0, 46]);
            records(&m, 1 << 14)
        }),
        (
            "invalid-garbage",
            (0..200u8).map(|i| i.wrapping_mul(37)).collect(),
        ),
    ];
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

//! CSR validation (`strait_controlplane::ca::csr::validate`) on arbitrary input: it must refuse
//! or accept, never panic, hang or allocate without bound.
//!
//! Each input is tried twice: as text (lossy UTF-8), which exercises the size limit and the PEM
//! framing; and as the DER body of a well-formed `CERTIFICATE REQUEST` PEM block, so that the
//! fuzzer's mutations reach the DER parser, the key checks, the signature and the SAN rules.

#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use strait_controlplane::ca::csr;
use strait_proto::identity::SpiffeId;

/// The caller every input is checked against (the seed corpus asks for this identity).
static CALLER: LazyLock<Option<SpiffeId>> =
    LazyLock::new(|| SpiffeId::new("cluster.local", "prod", "api").ok());

fuzz_target!(|data: &[u8]| {
    let Some(caller) = CALLER.as_ref() else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let _ = csr::validate(&text, caller);

    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let wrapped = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
    );
    let _ = csr::validate(&wrapped, caller);
});

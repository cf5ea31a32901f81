//! The ClientHello/SNI parser the east-west gateway routes on (`strait_proxy::tls::detect::parse`,
//! then `strait_proto::sni::SniName::from_bytes`, as `strait_gateway::sni::classify` chains them),
//! on arbitrary first bytes of a connection: it must decide or ask for more, never panic, hang
//! or allocate without bound.
//!
//! Checked besides "no panic": a verdict never changes once reached when more bytes follow
//! (the gateway decides on a prefix of the stream); an accepted name round-trips through its
//! text form; a name is only ever accepted from a complete ClientHello.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proto::sni::SniName;
use strait_proxy::tls::detect::{Parse, parse};

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    if let Parse::ClientHello(hello) = &verdict {
        if let Some(sni) = &hello.sni {
            if let Ok(name) = SniName::from_bytes(sni.as_bytes()) {
                let text = name.to_string();
                let again: SniName = text.parse().expect("an accepted name re-parses");
                assert_eq!(again, name);
                assert!(text.len() <= strait_proto::sni::MAX_SNI_LEN);
            }
        }
    }
    // Appending bytes never changes a decision already made.
    if !matches!(verdict, Parse::NeedMore) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x01]);
        assert_eq!(
            parse(&longer),
            verdict,
            "a decision changed with more bytes"
        );
    }
});

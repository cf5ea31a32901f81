//! A hand-made TLS 1.3 ClientHello record naming one SNI (the tests crate has no rustls client):
//! what an mTLS client's first flight looks like to an SNI router (Envoy's `tls_inspector`, the
//! Strait gateway), which parse it like a real one.

/// The ClientHello record for `sni`: TLS 1.3 in `supported_versions`, one cipher suite.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0, 2, 0x13, 0x01, 1, 0]);
    let mut list = vec![0u8];
    list.extend((name.len() as u16).to_be_bytes());
    list.extend(name);
    let mut ext = (list.len() as u16).to_be_bytes().to_vec();
    ext.extend(list);
    // server_name, then supported_versions: TLS 1.3 (Envoy's inspector reads both).
    let mut exts = vec![0, 0];
    exts.extend((ext.len() as u16).to_be_bytes());
    exts.extend(ext);
    exts.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut msg = vec![1u8];
    msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((msg.len() as u16).to_be_bytes());
    record.extend(msg);
    record
}

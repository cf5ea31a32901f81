//! Capture (iptables `REDIRECT` to `virtualOutbound` on 15001): the connection's original
//! destination, read with `SO_ORIGINAL_DST`, picks the listener it is handed to, as Envoy's
//! `use_original_dst` does: the `bind_to_port: false` listener of exactly that address, else
//! of `0.0.0.0:<port>`, else the capturing listener's own chains (Passthrough / BlackHole).
//! Inbound capture (REDIRECT to `virtualInbound` on 15006, the `original_dst` listener filter
//! alone) reads the same address, but only for its own chains and its ORIGINAL_DST clusters,
//! which reach the application from 127.0.0.6 so that Istio's rules do not capture them again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

use super::Compiled;

/// The `bind_to_port: false` listeners, by address.
pub(crate) type Handoff = HashMap<SocketAddr, Arc<Compiled>>;

/// The destination before NAT; None when the connection was not redirected (no conntrack
/// entry) or the address is not IPv4.
pub(crate) fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let sa = getsockopt(tcp, sockopt::OriginalDst).ok()?;
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Some(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(sa.sin_port),
    )))
}

/// The listener `original` is handed to, if any.
pub(crate) fn handoff(listeners: &Handoff, original: SocketAddr) -> Option<Arc<Compiled>> {
    listeners
        .get(&original)
        .or_else(|| {
            let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), original.port());
            listeners.get(&any)
        })
        .cloned()
}

//! Loopback ports and addresses that parallel tests do not fight over.
//!
//! Linux routes all of 127.0.0.0/8 to `lo`, so every test can have an address of its own and
//! bind Istio's fixed ports there: two control planes listen on 15010 side by side as
//! `127.a.b.1:15010` and `127.a.b.2:15010`. Addresses come from 127.1.0.0–127.250.255.255, derived
//! from the process id (nextest runs each test in its own process) and a per-process counter, and
//! [`loopback_with_ports`] checks that the ports are really free there before handing one out.
//! 127.0.0.0/16 (127.0.0.1, systemd-resolved's 127.0.0.53, ...) is never used.
//!
//! A port from [`free_port`] is free when returned, but nothing reserves it: bind it soon. Where a
//! program can report the port it bound (Envoy's `--admin-address-path`, port 0 listeners), prefer
//! that.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// The control plane's fixed ports: plaintext xDS, xDS+CA over TLS, metrics/debug.
pub const ISTIO_CONTROL_PLANE_PORTS: [u16; 3] = [15010, 15012, 15014];

/// A port that is free on 127.0.0.1 right now.
pub fn free_port() -> Result<u16> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port that is free on `ip` right now (bind port 0, read it, let go).
pub fn free_port_on(ip: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(listener.local_addr()?.port())
}

/// `ip:port` with a port free right now.
pub fn free_addr_on(ip: IpAddr) -> Result<SocketAddr> {
    Ok(SocketAddr::new(ip, free_port_on(ip)?))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback address no other call in this process returned, and very likely no other process
/// either: `127.<1 + pid % 250>.<pid / 250 + n / 254>.<1 + n % 254>` for the n-th call.
pub fn unique_loopback() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    loopback_for(std::process::id(), n)
}

fn loopback_for(pid: u32, n: u32) -> Ipv4Addr {
    let b = 1 + pid % 250;
    let c = (pid / 250 + n / 254) % 256;
    let d = 1 + n % 254;
    // Each value is below 256 by construction.
    Ipv4Addr::new(127, b as u8, c as u8, d as u8)
}

/// A [`unique_loopback`] address on which every one of `ports` is free right now (checked by
/// binding them). Skips candidates another process is using.
pub fn loopback_with_ports(ports: &[u16]) -> Result<Ipv4Addr> {
    let mut last = String::new();
    for _ in 0..64 {
        let ip = unique_loopback();
        let held: Result<Vec<TcpListener>, _> =
            ports.iter().map(|&p| TcpListener::bind((ip, p))).collect();
        match held {
            Ok(_) => return Ok(ip),
            Err(e) => last = format!("{ip}: {e}"),
        }
    }
    bail!("found no loopback address with ports {ports:?} free after 64 tries; last: {last}")
}

/// An address for a control plane: Istio's ports 15010, 15012 and 15014 are free on it.
pub fn control_plane_ip() -> Result<Ipv4Addr> {
    loopback_with_ports(&ISTIO_CONTROL_PLANE_PORTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_loopback_and_out_of_127_0() {
        for pid in [1, 249, 250, 4_194_303, 63_999, 64_000] {
            for n in [0, 1, 253, 254, 255, 10_000] {
                let ip = loopback_for(pid, n);
                assert!(ip.is_loopback(), "{ip}");
                let [_, b, _, d] = ip.octets();
                assert!((1..=250).contains(&b), "{ip}");
                assert!((1..=254).contains(&d), "{ip}");
            }
        }
    }

    #[test]
    fn calls_in_one_process_differ() {
        let a = unique_loopback();
        let b = unique_loopback();
        assert_ne!(a, b);
    }

    #[test]
    fn two_control_plane_addresses_bind_the_same_fixed_ports() -> Result<()> {
        let a = control_plane_ip()?;
        let b = control_plane_ip()?;
        let _la = TcpListener::bind((a, 15010))?;
        let _lb = TcpListener::bind((b, 15010))?;
        assert_ne!(a, b);
        Ok(())
    }
}

//! Strait's east-west gateway, a library first (the binary `strait-gateway` only parses flags).
//!
//! - [`sni`]: port 15443. Peeks the TLS ClientHello (also when split across records and TCP
//!   segments), reads the SNI name `outbound_.<port>_.<subset>_.<fqdn>`, and forwards the
//!   untouched bytes to an endpoint of the matching cluster. It never decrypts. Unknown names,
//!   other forms, no SNI, plaintext, garbage and a ClientHello slower than the handshake
//!   deadline are refused, as are connections beyond the limit.
//! - [`table`]: the SNI table, built from the xDS config straitd sends an east-west gateway
//!   (filter chains with `server_names` ending in a `tcp_proxy`, EDS endpoints).
//! - [`control_plane`]: port 15012, plain TCP passthrough to straitd, so VMs and remote control
//!   planes need one stable address per network; a connection limit and no parsing.
//! - [`forward`]: both directions with half-close, by splice(2) through a pipe (zero-copy) or a
//!   copy with large buffers.
//! - [`admin`]: health on 15021 (`/healthz/ready`), Prometheus metrics on 15090 ([`metrics`]).
//! - [`app`]: wires it all and returns the bound addresses.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod accept;
pub mod admin;
pub mod app;
pub mod control_plane;
pub mod forward;
pub mod metrics;
pub mod sni;
pub mod table;

pub use app::{App, Bound, Config};

//! Strait's data plane, a library first: the east-west gateway and the VM agent embed it.
//!
//! - [`certs`]: obtains, caches and rotates the workload certificate from the control plane's
//!   CA, and serves it to a stock Envoy over SDS.
//! - [`tls`]: mutual TLS between workloads with SPIFFE verification, and TLS detection on
//!   PERMISSIVE ports.
#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod certs;
pub mod tls;

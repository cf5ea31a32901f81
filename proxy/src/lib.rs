//! Strait's data plane, a library first: the east-west gateway and the VM agent embed it.
//!
//! - [`certs`]: obtains, caches and rotates the workload certificate from the control plane's
//!   CA, and serves it to a stock Envoy over SDS.
#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod certs;

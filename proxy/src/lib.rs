//! Strait's data plane, a library first: the east-west gateway and the VM agent embed it.
//!
//! - [`authz`]: Envoy's RBAC (what straitd emits for AuthorizationPolicies), compiled once and
//!   evaluated per connection or request, and the path normalisation that precedes it.
//! - [`certs`]: obtains, caches and rotates the workload certificate from the control plane's
//!   CA, and serves it to a stock Envoy over SDS.
//! - [`config`]: the typed, validated, immutable config decoded from xDS.
//! - [`lb`]: load balancing over an endpoint set with priorities, panic and outlier detection.
//! - [`xds`]: the delta ADS client, the one writer of the config.
//! - [`tls`]: mutual TLS between workloads with SPIFFE verification, and TLS detection on
//!   PERMISSIVE ports.
#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod authz;
pub mod certs;
pub mod config;
pub mod lb;
pub mod tls;
pub mod xds;

//! Strait's data plane, a library first: the east-west gateway and the VM agent embed it.
//!
//! - [`app`]: start-up in one place (certificates, xDS, listeners, [`admin`] and health).
//! - [`authz`]: Envoy's RBAC (what straitd emits for AuthorizationPolicies), compiled once and
//!   evaluated per connection or request, and the path normalisation that precedes it.
//! - [`certs`]: obtains, caches and rotates the workload certificate from the control plane's
//!   CA, and serves it to a stock Envoy over SDS.
//! - [`config`]: the typed, validated, immutable config decoded from xDS.
//! - [`lb`]: load balancing over an endpoint set with priorities, panic and outlier detection.
//! - [`xds`]: the delta ADS client, the one writer of the config.
//! - [`listener`]: binds the config's listeners, picks filter chains, terminates mTLS and
//!   enforces network RBAC; [`tcp`] and [`http`] proxy what they accept, through
//!   [`upstream`] (endpoint choice, connect, mTLS origination); [`error`]: the data path's
//!   failures with blame and retry safety.
//! - [`telemetry`]: Istio's standard metrics (prometheus-client) and access logs.
//! - [`tls`]: mutual TLS between workloads with SPIFFE verification, and TLS detection on
//!   PERMISSIVE ports.
#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod certs;
pub mod config;
pub mod error;
pub mod http;
pub mod lb;
pub mod listener;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod xds;

//! Test harness: real processes, real sockets.
//!
//! - [`process`]: [`Child`], a process guard that logs to a file and cannot outlive its test;
//! - [`agent`]: strait-proxy's SDS agent feeding a stock Envoy certificates from straitd's CA;
//! - [`bins`]: where the workspace binaries (`straitd`, `straitctl`) are;
//! - [`controlplane`]: a real `straitd` on its own loopback address, and `straitctl` against it;
//! - [`wait`]: [`eventually`] and [`assert_eventually!`], waiting on conditions instead of sleeps;
//! - [`ports`]: free loopback ports and a loopback address per test (Istio's fixed ports side by side);
//! - [`fixtures`]: shared config: the kitchen sink of every field straitd accepts, and builders
//!   of the Istio resources the mesh scenarios repeat;
//! - [`envoy`]: a stock Envoy with an Istio-style bootstrap, and its admin API;
//! - [`mesh`]: a small mTLS mesh whose sidecars are stock Envoys or strait-proxy (conformance);
//! - [`multinet`]: a two-network mesh inside a topology (straitd, sidecars, gateway in namespaces);
//! - [`upstream`]: an HTTP echo server and a one-shot HTTP client;
//! - [`recorder`]: an application that records every request it receives (target, headers,
//!   peer) and answers as the test says;
//! - [`raw`]: raw HTTP/1.1 bytes on a socket, for malformed and unnormalised requests;
//! - [`h2raw`]: HTTP/2 frames written by hand on h2c, for what no client library sends;
//! - [`telemetry`]: what a sidecar reports: Istio's metrics scraped from it, its access events;
//! - [`loadgen`]: an open-loop load generator (latency from the intended send time) and its echo app;
//! - [`topology`]: networks on one machine from network namespaces (hosts, gateways, a wan).

pub mod agent;
pub mod bins;
pub mod client_hello;
pub mod controlplane;
pub mod envoy;
pub mod fixtures;
pub mod h2raw;
pub mod loadgen;
pub mod mesh;
pub mod multinet;
pub mod ports;
pub mod process;
pub mod raw;
pub mod recorder;
pub mod telemetry;
pub mod topology;
pub mod upstream;
pub mod wait;

pub use process::Child;
pub use wait::{PATIENCE, eventually, eventually_matches};

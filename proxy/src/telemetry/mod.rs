//! Istio's standard metrics ([`metrics`]) and access logs ([`access_log`]): what the data path
//! records per request and per connection, served on 15090 and 15020 `/stats/prometheus`; the
//! peer's workload for their labels from Istio's HTTP metadata exchange ([`peer`]); the trace id
//! of a request for its access event ([`trace`]).

pub mod access_log;
pub mod metrics;
pub mod peer;
pub mod request;
pub mod trace;

pub use metrics::{Direction, Flow, Local, Telemetry};

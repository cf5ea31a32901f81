//! Istio's standard metrics ([`metrics`]) and access logs ([`access_log`]): what the data path
//! records per request and per connection, served on 15090 and 15020 `/stats/prometheus`.

pub mod access_log;
pub mod metrics;
pub mod request;

pub use metrics::{Direction, Flow, Local, Telemetry};

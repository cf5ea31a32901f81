//! straitctl's pieces: reading config files, talking to straitd's HTTP API, printing results.

pub mod client;
pub mod files;
pub mod output;

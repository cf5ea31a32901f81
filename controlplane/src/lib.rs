//! Strait's control plane: the mesh model, the config store, xDS generation and serving, and
//! the HTTP API that `straitctl` speaks. `app` wires them; the binaries are thin.

pub mod api;
pub mod app;
pub mod ca;
pub mod cli;
pub mod dns;
pub mod identity;
pub mod model;
pub mod store;
pub mod tls;
pub mod xds;

//! Strait control plane.

pub mod model;

//! Strait control plane.

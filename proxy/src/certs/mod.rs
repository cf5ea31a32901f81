//! Certificate manager.

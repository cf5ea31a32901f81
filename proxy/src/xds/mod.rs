//! xDS client.

//! Test harness: real processes, real sockets.

//! xDS: who is connected ([`proxy`]), what each proxy gets ([`generate`], cached per proxy class
//! in a [`snapshot`]), and serving it over ADS, state-of-the-world ([`sotw`]) and [`delta`].

pub mod connection;
pub mod delta;
pub mod generate;
pub mod metrics;
pub mod proxy;
pub mod push;
pub mod server;
pub mod snapshot;
pub mod sotw;
pub mod status;

/// Errors on an xDS stream. Each names the field or resource at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first request's `Node` is malformed.
    #[error("bad node: {0}")]
    BadNode(String),
    /// The stream's first message carried no node.
    #[error("the first request on a stream must carry node")]
    MissingNode,
}

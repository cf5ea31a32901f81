//! The certificate manager against a fake CA and real sockets: the CA client and its checks,
//! rotation and renewal, and the SDS server as Envoy sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ca_client;
mod manager;
mod sds;

use std::future::Future;
use std::time::Duration;

use strait_proto::identity::SpiffeId;
use strait_proxy::certs::CaClientConfig;
use strait_proxy::certs::testing::{FakeCa, FakeCaConfig};
use tempfile::TempDir;

/// The identity the tests ask for.
pub fn web() -> SpiffeId {
    "spiffe://cluster.local/ns/default/sa/web".parse().unwrap()
}

/// A fake CA, a directory holding its root and token, and a client configuration for it.
pub async fn fake_ca(config: FakeCaConfig) -> (FakeCa, TempDir, CaClientConfig) {
    let ca = FakeCa::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = ca.write_files(dir.path()).unwrap();
    (ca, dir, client)
}

/// `fut`, or a panic naming `what` after `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

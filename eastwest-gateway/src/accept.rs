//! The accept loop both gateway ports share: a bounded number of connections at once (beyond it a
//! connection is closed and counted as a refusal), each served on its own task and counted in
//! the port's `active` gauge.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, Refusal};

/// Accepts on `listener` until the task is dropped, running `serve` for each connection while
/// fewer than `max` are open.
pub async fn limited<F, Fut>(
    listener: TcpListener,
    port: &'static str,
    max: usize,
    over_limit: Refusal,
    metrics: Metrics,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max));
    let active = metrics.active(port);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off a little rather than spin.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics.refuse(over_limit);
            tracing::debug!(port, %peer, limit = max, "connection limit reached; closed");
            continue;
        };
        let (task, active) = (serve(stream, peer), active.clone());
        tokio::spawn(async move {
            active.inc();
            task.await;
            active.dec();
            drop(permit);
        });
    }
}

//! State-of-the-world ADS: every response carries the whole set of a type.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use strait_proto::xds::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tonic::Status;

use super::Error;
use super::connection::{Conn, Shared};
use super::proxy::Proxy;
use super::snapshot::{self, PUSH_ORDER, is_named_type};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

/// Per-type subscription state.
#[derive(Debug, Default)]
struct Sub {
    names: Vec<String>,
    nonce: String,
    version: String,
    sent_snapshot: u64,
}

pub async fn serve(
    shared: Arc<Shared>,
    mut requests: impl Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
    tx: Tx,
) {
    let Some(Ok(first)) = requests.next().await else {
        return;
    };
    let proxy = match first
        .node
        .as_ref()
        .ok_or(Error::MissingNode)
        .and_then(Proxy::from_node)
    {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    let mut snapshots = shared.snapshots.clone();
    let mut conn = Conn::open(shared, proxy, "sotw");
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut next = Some(first);
    loop {
        if let Some(req) = next.take()
            && handle(&mut conn, &mut subs, req, &tx).await.is_err()
        {
            return;
        }
        tokio::select! {
            req = requests.next() => match req {
                Some(Ok(r)) => next = Some(r),
                Some(Err(e)) => {
                    tracing::debug!(conn = conn.id, error = %e, "xDS stream error");
                    return;
                }
                None => return,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                conn.snapshot = snapshots.borrow_and_update().clone();
                if push_all(&mut conn, &mut subs, &tx).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Closed;

async fn handle(
    conn: &mut Conn,
    subs: &mut HashMap<String, Sub>,
    req: DiscoveryRequest,
    tx: &Tx,
) -> Result<(), Closed> {
    let type_url = req.type_url.clone();
    if !PUSH_ORDER.contains(&type_url.as_str()) {
        tracing::warn!(
            conn = conn.id,
            type_url,
            "request for a type we do not serve; ignored"
        );
        return Ok(());
    }
    let sub = subs.entry(type_url.clone()).or_default();
    if !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
        return Ok(()); // An answer to a response that a newer one replaced.
    }
    let mut names = req.resource_names;
    names.sort();
    names.dedup();
    if let Some(err) = req.error_detail {
        conn.record_nack(&type_url, &err.message);
        return Ok(());
    }
    if req.response_nonce.is_empty() {
        sub.names = names;
        return send(conn, &type_url, sub, tx).await;
    }
    conn.record_ack(&type_url, sub.sent_snapshot, &req.version_info);
    if is_named_type(&type_url) && names != sub.names {
        sub.names = names;
        return send(conn, &type_url, sub, tx).await;
    }
    Ok(())
}

async fn push_all(conn: &mut Conn, subs: &mut HashMap<String, Sub>, tx: &Tx) -> Result<(), Closed> {
    for type_url in PUSH_ORDER {
        let Some(sub) = subs.get_mut(type_url) else {
            continue;
        };
        let resources = conn.snapshot.resources(type_url, &conn.proxy, &sub.names);
        if snapshot::set_version(&resources) != sub.version {
            send(conn, type_url, sub, tx).await?;
        }
    }
    Ok(())
}

async fn send(conn: &mut Conn, type_url: &str, sub: &mut Sub, tx: &Tx) -> Result<(), Closed> {
    let resources = conn.snapshot.resources(type_url, &conn.proxy, &sub.names);
    let version = snapshot::set_version(&resources);
    let nonce = conn.next_nonce();
    let response = DiscoveryResponse {
        version_info: version.clone(),
        resources: resources.iter().map(|r| r.any.clone()).collect(),
        type_url: type_url.to_string(),
        nonce: nonce.clone(),
        ..Default::default()
    };
    conn.record_send(
        type_url,
        &version,
        &nonce,
        resources.len(),
        snapshot::encoded_len(&resources),
    );
    sub.nonce = nonce;
    sub.version = version;
    sub.sent_snapshot = conn.snapshot.version;
    tx.send(Ok(response)).await.map_err(|_| Closed)
}

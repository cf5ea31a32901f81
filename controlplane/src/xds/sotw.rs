//! State-of-the-world ADS: every response carries the whole set of a type.

use std::collections::HashMap;

use strait_proto::xds::envoy::config::core::v3::Node;
use strait_proto::xds::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::connection::{self, Closed, Conn, Flavour};
use super::snapshot::{self, PUSH_ORDER, is_named_type};

type Tx = connection::Tx<DiscoveryResponse>;

/// State-of-the-world subscriptions of one stream, by type URL.
#[derive(Debug, Default)]
pub struct Sotw {
    subs: HashMap<String, Sub>,
}

impl Flavour for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    async fn handle(
        &mut self,
        conn: &mut Conn,
        req: DiscoveryRequest,
        tx: &Tx,
    ) -> Result<(), Closed> {
        handle(conn, &mut self.subs, req, tx).await
    }

    async fn push(&mut self, conn: &mut Conn, tx: &Tx) -> Result<(), Closed> {
        push_all(conn, &mut self.subs, tx).await
    }
}

/// Per-type subscription state.
#[derive(Debug, Default)]
struct Sub {
    names: Vec<String>,
    nonce: String,
    version: String,
    sent_snapshot: u64,
}

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

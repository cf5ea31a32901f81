//! Incremental (delta) ADS: only what changed is sent, and removals are named.

use std::collections::{BTreeSet, HashMap};

use strait_proto::xds::envoy::config::core::v3::Node;
use strait_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::connection::{self, Closed, Conn, Flavour};
use super::snapshot::{PUSH_ORDER, is_named_type};

type Tx = connection::Tx<DeltaDiscoveryResponse>;

/// Delta subscriptions of one stream, by type URL.
#[derive(Debug, Default)]
pub struct Delta {
    subs: HashMap<String, Sub>,
}

impl Flavour for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    async fn handle(
        &mut self,
        conn: &mut Conn,
        req: DeltaDiscoveryRequest,
        tx: &Tx,
    ) -> Result<(), Closed> {
        handle(conn, &mut self.subs, req, tx).await
    }

    async fn push(&mut self, conn: &mut Conn, tx: &Tx) -> Result<(), Closed> {
        for type_url in PUSH_ORDER {
            if let Some(sub) = self.subs.get_mut(type_url) {
                send_diff(conn, type_url, sub, false, tx).await?;
            }
        }
        Ok(())
    }
}

/// Per-type subscription state.
#[derive(Debug, Default)]
struct Sub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name → version.
    known: HashMap<String, String>,
    nonce: String,
    sent_snapshot: u64,
}

async fn handle(
    conn: &mut Conn,
    subs: &mut HashMap<String, Sub>,
    req: DeltaDiscoveryRequest,
    tx: &Tx,
) -> Result<(), Closed> {
    let type_url = req.type_url.as_str();
    if !PUSH_ORDER.contains(&type_url) {
        tracing::warn!(
            conn = conn.id,
            type_url,
            "request for a type we do not serve; ignored"
        );
        return Ok(());
    }
    let is_new = !subs.contains_key(type_url);
    let sub = subs.entry(type_url.to_string()).or_default();
    if !req.response_nonce.is_empty() && req.response_nonce == sub.nonce {
        match &req.error_detail {
            Some(err) => conn.record_nack(type_url, &err.message),
            None => conn.record_ack(type_url, sub.sent_snapshot, &sub.sent_snapshot.to_string()),
        }
    }
    let mut changed = is_new;
    if is_new {
        sub.known = req.initial_resource_versions.clone();
        // An empty first subscription means "everything" for the wildcard-capable types.
        sub.wildcard = !is_named_type(type_url) && req.resource_names_subscribe.is_empty();
    }
    for name in req.resource_names_subscribe {
        changed = true;
        if name == "*" {
            sub.wildcard = true;
        } else {
            sub.names.insert(name);
        }
    }
    for name in req.resource_names_unsubscribe {
        changed = true;
        if name == "*" {
            sub.wildcard = false;
        } else {
            sub.names.remove(&name);
            sub.known.remove(&name);
        }
    }
    if changed {
        send_diff(conn, type_url, sub, is_new, tx).await?;
    }
    Ok(())
}

/// Sends what the proxy lacks or holds in an older version, and names what it must drop.
/// `always` answers even when nothing changed (a new subscription expects a response).
async fn send_diff(
    conn: &mut Conn,
    type_url: &str,
    sub: &mut Sub,
    always: bool,
    tx: &Tx,
) -> Result<(), Closed> {
    let names: Vec<String> = sub.names.iter().cloned().collect();
    let generated = conn.snapshot.resources(type_url, &conn.proxy, &names);
    let wanted = |name: &str| sub.wildcard || sub.names.contains(name);
    let desired: Vec<_> = generated.iter().filter(|r| wanted(&r.name)).collect();
    let updated: Vec<_> = desired
        .iter()
        .filter(|r| sub.known.get(&r.name) != Some(&r.version))
        .collect();
    let desired_names: BTreeSet<&str> = desired.iter().map(|r| r.name.as_str()).collect();
    let removed: Vec<String> = sub
        .known
        .keys()
        .filter(|n| !desired_names.contains(n.as_str()))
        .cloned()
        .collect();
    if updated.is_empty() && removed.is_empty() && !always {
        return Ok(());
    }
    let bytes: usize = updated
        .iter()
        .map(|r| prost::Message::encoded_len(&r.any))
        .sum();
    let resources: Vec<Resource> = updated
        .iter()
        .map(|r| Resource {
            name: r.name.clone(),
            version: r.version.clone(),
            resource: Some(r.any.clone()),
            ..Default::default()
        })
        .collect();
    for r in &updated {
        sub.known.insert(r.name.clone(), r.version.clone());
    }
    for n in &removed {
        sub.known.remove(n);
    }
    let nonce = conn.next_nonce();
    let version = conn.snapshot.version.to_string();
    conn.record_send(type_url, &version, &nonce, desired.len(), bytes);
    sub.nonce = nonce.clone();
    sub.sent_snapshot = conn.snapshot.version;
    let response = DeltaDiscoveryResponse {
        system_version_info: version,
        resources,
        type_url: type_url.to_string(),
        removed_resources: removed,
        nonce,
        ..Default::default()
    };
    tx.send(Ok(response)).await.map_err(|_| Closed)
}

//! Envoy's xDS v3 types and the type URLs Strait serves.

pub use envoy_types::pb::envoy;
pub use envoy_types::pb::google;

/// Type URL of a listener (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of a route configuration (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of a cluster (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of an endpoint assignment (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of a secret (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Packs a message into `google.protobuf.Any` with its canonical type URL.
pub fn to_any<M: prost::Name>(msg: &M) -> google::protobuf::Any {
    google::protobuf::Any {
        type_url: M::type_url(),
        value: prost::Message::encode_to_vec(msg),
    }
}

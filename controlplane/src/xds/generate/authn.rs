//! The mutual TLS mode a workload's port accepts, from PeerAuthentication, with Istio's
//! precedence: the port-level mode of a policy selecting the workload, then that policy's own
//! mode, then the namespace-wide policy (no selector) of the workload's namespace, then the
//! mesh-wide one (no selector, root namespace). `UNSET` inherits from the next level; with
//! nothing set the mode is PERMISSIVE.
//!
//! Where Istio picks the oldest of several policies at one level, Strait keeps no creation
//! time and takes the first in config order (namespace, then name).

use crate::model::mesh::{Config, Mesh, selects};
use crate::model::networking::Labels;
use crate::model::security::{Mtls, MtlsMode, PeerAuthentication};

use super::scope::ROOT_NAMESPACE;

/// The mode in effect: never `Unset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
    Disable,
}

/// The mode for `port` of a workload in `namespace` with `labels`.
pub(super) fn mode(mesh: &Mesh, namespace: &str, labels: &Labels, port: u32) -> Mode {
    resolve(mesh, namespace, labels, Some(port))
}

/// The mode of the workload's ports that no port-level setting names: what Istio's inbound
/// passthrough chains (ports no service declares) accept.
pub(super) fn workload_mode(mesh: &Mesh, namespace: &str, labels: &Labels) -> Mode {
    resolve(mesh, namespace, labels, None)
}

/// The ports the workload's own policy gives a mode of their own (`portLevelMtls`), sorted.
pub(super) fn port_level_ports(mesh: &Mesh, namespace: &str, labels: &Labels) -> Vec<u32> {
    workload_policy(mesh, namespace, labels)
        .map(|w| w.port_level_mtls.keys().copied().collect())
        .unwrap_or_default()
}

/// The first policy of the workload's namespace whose selector it matches.
fn workload_policy<'a>(
    mesh: &'a Mesh,
    namespace: &str,
    labels: &Labels,
) -> Option<&'a PeerAuthentication> {
    // In the root namespace a policy with a selector is never workload-level (Istio ignores it).
    if namespace == ROOT_NAMESPACE {
        return None;
    }
    mesh.peer_authentications
        .iter()
        .filter(|p| p.meta.namespace == namespace && has_selector(p))
        .find(|p| {
            p.spec
                .selector
                .as_ref()
                .is_some_and(|s| selects(&s.match_labels, labels))
        })
        .map(|p| &p.spec)
}

fn resolve(mesh: &Mesh, namespace: &str, labels: &Labels, port: Option<u32>) -> Mode {
    let policies = &mesh.peer_authentications;
    let without_selector = |ns: &str| {
        policies
            .iter()
            .find(|p| p.meta.namespace == ns && !has_selector(p))
            .map(|p| &p.spec)
    };
    let mesh_wide = without_selector(ROOT_NAMESPACE);
    // In the root namespace a policy without selector is the mesh-wide one.
    let namespace_wide = (namespace != ROOT_NAMESPACE)
        .then(|| without_selector(namespace))
        .flatten();
    let workload = workload_policy(mesh, namespace, labels);

    let mut mode = MtlsMode::Permissive;
    for level in [mesh_wide, namespace_wide, workload].into_iter().flatten() {
        mode = inherit(level.mtls.as_ref(), mode);
    }
    if let Some(port_level) = workload.and_then(|w| port.and_then(|p| w.port_level_mtls.get(&p))) {
        mode = inherit(Some(port_level), mode);
    }
    match mode {
        MtlsMode::Strict => Mode::Strict,
        MtlsMode::Disable => Mode::Disable,
        MtlsMode::Permissive | MtlsMode::Unset => Mode::Permissive,
    }
}

fn has_selector(p: &Config<PeerAuthentication>) -> bool {
    p.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

fn inherit(mtls: Option<&Mtls>, parent: MtlsMode) -> MtlsMode {
    match mtls.map(|m| m.mode) {
        None | Some(MtlsMode::Unset) => parent,
        Some(mode) => mode,
    }
}

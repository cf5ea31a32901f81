//! The certificate flags every Strait binary that asks the CA for its workload certificate
//! shares (`strait-proxy run|sds`, `strait-gateway`), flattened into each one's clap `Args`.
//! Where the CA is and who the workload is stay with each binary: their defaults differ.

use std::path::PathBuf;
use std::time::Duration;

use strait_proto::identity::SpiffeId;

use super::client::CaClientConfig;
use super::manager::CertManagerConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct CertFlags {
    /// Name the CA's certificate must carry (default: Istio's `istiod.istio-system.svc`).
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub ca_server_name: String,
    /// The bootstrap token file (`straitctl token create ...`), re-read at each use, so a
    /// rotated token is picked up.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Certificate lifetime to ask for, in seconds (the CA may shorten it).
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl_seconds: u64,
    /// Where to keep the current certificate across restarts.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl CertFlags {
    /// The certificate manager's config for `identity` from the CA at `ca_address`, trusting
    /// `root_cert`; `cluster` is sent to the CA as Istio's `ClusterID`.
    pub fn manager_config(
        &self,
        ca_address: String,
        root_cert: PathBuf,
        identity: SpiffeId,
        cluster: &str,
    ) -> CertManagerConfig {
        let mut ca = CaClientConfig::new(ca_address, root_cert, cluster);
        ca.server_name = Some(self.ca_server_name.clone());
        ca.token_file = self.token_file.clone();
        let mut config = CertManagerConfig::new(ca, identity);
        config.ttl = Duration::from_secs(self.ttl_seconds);
        config.cache_dir = self.cache_dir.clone();
        config
    }
}

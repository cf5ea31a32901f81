//! straitd's identity side: the CA (signer and token issuer, persisted in the CA directory),
//! straitd's own serving certificate (rotated at half-life), and the TLS port 15012 that
//! serves the CA and xDS over mTLS.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use strait_proto::identity::SpiffeId;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::authn::Authenticators;
use crate::ca::server::CaService;
use crate::ca::signer::Signer;
use crate::ca::token::TokenIssuer;
use crate::ca::tokenreview::TokenReviewer;
use crate::tls::{self, ServerCert};
use crate::xds::connection::Shared;
use crate::xds::server::AdsServer;

/// straitd's own certificate lives this long and is renewed at half of it.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// The DNS names straitd's certificate carries: Istio's names for istiod, so agents that verify
/// `istiod.istio-system.svc` connect unchanged, and `straitd`.
pub const SERVING_NAMES: [&str; 4] = [
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "istiod",
    "straitd",
];

/// The CA and everything it signs with.
pub struct Identity {
    pub signer: Arc<Signer>,
    pub tokens: Arc<TokenIssuer>,
    pub trust_domain: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("signer", &self.signer)
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl Identity {
    /// Loads the CA from `dir` (plug-in `cacerts` files, or a root created there on first start)
    /// and the token signing key beside it.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        cluster_id: &str,
    ) -> anyhow::Result<Identity> {
        let signer = Signer::load_or_create(dir, trust_domain)
            .with_context(|| format!("loading the CA in {}", dir.display()))?;
        let tokens = TokenIssuer::load_or_create(dir, format!("strait://{cluster_id}"))
            .with_context(|| format!("loading the token key in {}", dir.display()))?;
        Ok(Identity {
            signer: Arc::new(signer),
            tokens: Arc::new(tokens),
            trust_domain: trust_domain.to_string(),
        })
    }

    fn serving_identity(&self) -> anyhow::Result<SpiffeId> {
        Ok(SpiffeId::new(
            self.trust_domain.clone(),
            "istio-system",
            "straitd",
        )?)
    }

    /// A serving certificate for straitd: its SPIFFE id, Istio's istiod DNS names and the bind
    /// address, signed by this CA, never past the CA's own expiry. Returns (chain, key PEM).
    fn issue_serving(&self, bind: IpAddr) -> anyhow::Result<(Vec<String>, String)> {
        use rcgen::{
            CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let key = KeyPair::generate()?;
        let names: Vec<String> = SERVING_NAMES.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.subject_alt_names.push(SanType::URI(
            self.serving_identity()?.to_string().try_into()?,
        ));
        params.subject_alt_names.push(SanType::IpAddress(bind));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + SERVING_TTL).min(self.signer.not_after()).into();
        let cert = params.signed_by(&key, self.signer.issuer())?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.signer.chain_pem().iter().cloned());
        Ok((chain, key.serialize_pem()))
    }

    /// Serves the CA and xDS (mTLS required for xDS) on `listener` until the process ends.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        bind: IpAddr,
        xds: Arc<Shared>,
        cluster_id: String,
        token_review: Option<Arc<TokenReviewer>>,
    ) -> anyhow::Result<()> {
        let (chain, key) = self.issue_serving(bind)?;
        let cert = ServerCert::new(&chain, &key)?;
        let config = tls::server_config(cert.clone(), self.signer.root_pem())?;
        tokio::spawn(rotate(self.clone(), cert, bind));
        let authn = Arc::new(Authenticators {
            tokens: self
                .tokens
                .verifier()
                .with_trust_domain(self.trust_domain.clone()),
            trust_domain: self.trust_domain.clone(),
            token_review,
        });
        let ca = CaService::new(self.signer.clone(), authn, cluster_id).into_service();
        let ads = AdsServer::new(xds)
            .require_identity(self.trust_domain.clone())
            .into_service();
        let incoming = ReceiverStream::new(tls::accept(listener, config));
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(ca)
            .add_service(ads)
            .serve_with_incoming(incoming)
            .await
            .context("the TLS port stopped")
    }
}

/// Renews straitd's serving certificate at half its lifetime; a failure is retried each minute
/// while the old certificate keeps serving.
async fn rotate(identity: Arc<Identity>, cert: Arc<ServerCert>, bind: IpAddr) {
    let mut wait = SERVING_TTL / 2;
    loop {
        tokio::time::sleep(wait).await;
        match identity
            .issue_serving(bind)
            .and_then(|(chain, key)| Ok(cert.set(&chain, &key)?))
        {
            Ok(()) => {
                tracing::info!("straitd serving certificate renewed");
                wait = SERVING_TTL / 2;
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing straitd's serving certificate failed; retrying in a minute");
                wait = Duration::from_secs(60);
            }
        }
    }
}

/// Where the CA lives: `--ca-dir`, else `<store>/ca`, else a fresh private directory (the CA
/// then lasts as long as the process).
pub fn ca_dir(explicit: Option<&Path>, store: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if let Some(s) = store {
        return Ok(s.join("ca"));
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("strait-ca-{}-{nanos}", std::process::id()));
    tracing::warn!(dir = %dir.display(), "no --store or --ca-dir: the CA is ephemeral");
    Ok(dir)
}

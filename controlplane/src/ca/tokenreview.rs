//! Kubernetes service-account tokens, checked the way istiod checks them: the token goes to the
//! cluster's API server as a `TokenReview` (authentication.k8s.io/v1) with the CA's audiences,
//! and the caller is accepted only when the API server says the token is authenticated, names
//! a service account (`system:serviceaccount:<ns>:<sa>`, in the `system:serviceaccounts`
//! group) and is meant for one of those audiences.
//!
//! This layer is thin on purpose: [`load_kubeconfig`] reads the operator's kubeconfig within
//! budgets, [`TokenReviewer::review`] makes one call, and [`verdict`] reads the answer. The token
//! is a bearer credential: it is never logged and never part of an error, even when the API
//! server quotes it back.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Semaphore;

/// How long one TokenReview may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest kubeconfig read. Real ones are a few kilobytes, even with inline certificates.
pub const MAX_KUBECONFIG_BYTES: u64 = 1024 * 1024;
/// TokenReviews in flight at once; callers beyond this wait (within the call timeout).
const MAX_IN_FLIGHT: usize = 64;
/// The group every service account is in (Istio requires it too).
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// Longest excerpt of an API server's message quoted in an error.
const MAX_QUOTE: usize = 200;

/// A kubeconfig that cannot be used: which file, which field (when one is to blame), why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kubeconfig {}: {}{reason}", path.display(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct KubeconfigError {
    pub path: PathBuf,
    pub field: Option<String>,
    pub reason: String,
}

impl KubeconfigError {
    fn new(path: &Path, field: Option<&str>, reason: impl Into<String>) -> Self {
        KubeconfigError {
            path: path.to_path_buf(),
            field: field.map(str::to_string),
            reason: reason.into(),
        }
    }
}

/// Why a TokenReview gave no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server answered, and the answer does not make the token a credential for a
    /// certificate.
    #[error("{0}")]
    Refused(String),
    /// No answer: the API server is down, slow, or refused straitd's own request.
    #[error("{0}")]
    Unavailable(String),
}

/// Budgets for reading a kubeconfig: it comes from the operator, but a mistake (the wrong file)
/// must fail fast, and an alias bomb must not take the control plane down.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 32,
            flow_nesting_limit: 32,
            max_documents: 4,
            max_aliases: 64,
            max_anchors: 64,
            max_nodes: 50_000,
            max_events: 100_000,
            max_recorded_anchor_events: 1_000,
            max_total_scalar_bytes: MAX_KUBECONFIG_BYTES as usize,
        },
    }
}

/// Reads and checks the kubeconfig at `path`: at most [`MAX_KUBECONFIG_BYTES`], one YAML
/// document within parsing budgets, kube's schema (an error names the field), a current context
/// whose cluster (with a server) and user exist. Relative file names inside are resolved
/// against the file's directory, as kubectl does.
pub fn load_kubeconfig(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
    let err = |field: Option<&str>, reason: String| KubeconfigError::new(path, field, reason);
    let file = std::fs::File::open(path).map_err(|e| err(None, format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(None, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(err(None, "is not a regular file".into()));
    }
    if meta.len() > MAX_KUBECONFIG_BYTES {
        return Err(err(
            None,
            format!(
                "is {} bytes; the limit is {MAX_KUBECONFIG_BYTES}",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_KUBECONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(None, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_KUBECONFIG_BYTES {
        return Err(err(
            None,
            format!("grew past the {MAX_KUBECONFIG_BYTES}-byte limit while read"),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text =
        std::str::from_utf8(bytes).map_err(|e| err(None, format!("is not UTF-8 text: {e}")))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(|e| {
            let e = e.to_string();
            err(
                None,
                format!("not valid YAML: {}", e.lines().next().unwrap_or_default()),
            )
        })?;
    let mut docs: Vec<serde_json::Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let doc = match docs.len() {
        0 => return Err(err(None, "is empty".into())),
        1 => docs.remove(0),
        n => {
            return Err(err(
                None,
                format!("holds {n} YAML documents; straitd reads one"),
            ));
        }
    };
    if !doc.is_object() {
        return Err(err(None, "is not a YAML mapping".into()));
    }
    let mut config: Kubeconfig = serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        let reason = e.into_inner().to_string();
        KubeconfigError::new(path, (field != ".").then_some(field.as_str()), reason)
    })?;
    check_kubeconfig(path, &config)?;
    if let Some(dir) = path.parent() {
        absolutize(&mut config, dir);
    }
    Ok(config)
}

fn check_kubeconfig(path: &Path, config: &Kubeconfig) -> Result<(), KubeconfigError> {
    let err = |field: &str, reason: String| KubeconfigError::new(path, Some(field), reason);
    let current = match config.current_context.as_deref() {
        Some(c) if !c.is_empty() => c,
        _ => {
            return Err(err(
                "current-context",
                "is missing: straitd uses the current context".into(),
            ));
        }
    };
    let Some((ci, named)) = config
        .contexts
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == current)
    else {
        return Err(err(
            "current-context",
            format!("names context {current:?}, which is not under contexts"),
        ));
    };
    let Some(context) = &named.context else {
        return Err(err(&format!("contexts[{ci}].context"), "is missing".into()));
    };
    let Some((ki, cluster)) = config
        .clusters
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == context.cluster)
    else {
        return Err(err(
            &format!("contexts[{ci}].context.cluster"),
            format!(
                "names cluster {:?}, which is not under clusters",
                context.cluster
            ),
        ));
    };
    let server = cluster
        .cluster
        .as_ref()
        .and_then(|c| c.server.as_deref())
        .unwrap_or_default();
    if server.is_empty() {
        return Err(err(
            &format!("clusters[{ki}].cluster.server"),
            "is missing".into(),
        ));
    }
    match server.parse::<hyper::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some() => {}
        _ => {
            return Err(err(
                &format!("clusters[{ki}].cluster.server"),
                format!("{server:?} is not an http(s) URL"),
            ));
        }
    }
    if let Some(user) = context.user.as_deref().filter(|u| !u.is_empty()) {
        let Some((ui, named)) = config
            .auth_infos
            .iter()
            .enumerate()
            .find(|(_, u)| u.name == user)
        else {
            return Err(err(
                &format!("contexts[{ci}].context.user"),
                format!("names user {user:?}, which is not under users"),
            ));
        };
        if named
            .auth_info
            .as_ref()
            .is_some_and(|a| a.auth_provider.is_some())
        {
            return Err(err(
                &format!("users[{ui}].user.auth-provider"),
                "is not supported: use a token, a client certificate or exec".into(),
            ));
        }
    }
    Ok(())
}

/// File names in a kubeconfig are relative to the kubeconfig's directory.
fn absolutize(config: &mut Kubeconfig, dir: &Path) {
    let abs = |p: &mut Option<String>| {
        if let Some(rel) = p.as_deref().filter(|s| Path::new(s).is_relative())
            && let Some(joined) = dir.join(rel).to_str()
        {
            *p = Some(joined.to_string());
        }
    };
    for c in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        abs(&mut c.certificate_authority);
    }
    for a in config
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        abs(&mut a.client_certificate);
        abs(&mut a.client_key);
        abs(&mut a.token_file);
    }
}

/// Asks one cluster's API server about service-account tokens.
pub struct TokenReviewer {
    client: kube::Client,
    audiences: Vec<String>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    server: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("server", &self.server)
            .field("audiences", &self.audiences)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TokenReviewer {
    /// A reviewer for the current context of the kubeconfig at `path`, asking for tokens meant
    /// for `audiences` (Istio's default: `istio-ca`), each call bounded by `timeout`.
    pub async fn from_kubeconfig(
        path: &Path,
        audiences: Vec<String>,
        timeout: Duration,
    ) -> Result<TokenReviewer, KubeconfigError> {
        let kubeconfig = load_kubeconfig(path)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeconfigError::new(path, None, e.to_string()))?;
        // The whole call is bounded by `timeout` in `review`; these only keep a stuck
        // connection from outliving it by much.
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout * 2);
        config.write_timeout = Some(timeout * 2);
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| KubeconfigError::new(path, None, format!("cannot build a client: {e}")))?;
        Ok(TokenReviewer {
            client,
            audiences,
            timeout,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            server,
        })
    }

    /// The API server this reviewer asks.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Asks the API server about `token`: its `(namespace, service account)`, or why not.
    pub async fn review(&self, token: &str) -> Result<(String, String), ReviewError> {
        let started = std::time::Instant::now();
        let call = async {
            let _permit =
                self.in_flight.acquire().await.map_err(|_| {
                    ReviewError::Unavailable("the reviewer is shutting down".into())
                })?;
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..Default::default()
            };
            Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError::Unavailable(describe_kube_error(&e, token)))
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(server = %self.server, error = %e, "TokenReview failed");
                return Err(e);
            }
            Err(_) => {
                let e = ReviewError::Unavailable(format!(
                    "the API server did not answer within {} ms",
                    self.timeout.as_millis()
                ));
                tracing::warn!(server = %self.server, error = %e, "TokenReview failed");
                return Err(e);
            }
        };
        let result = verdict(answer.status.as_ref(), &self.audiences)
            .map_err(|why| ReviewError::Refused(redact(&why, token)));
        match &result {
            Ok((ns, sa)) => {
                tracing::debug!(namespace = %ns, service_account = %sa, elapsed_ms = started.elapsed().as_millis() as u64, "TokenReview authenticated")
            }
            Err(e) => tracing::info!(reason = %e, "TokenReview refused the token"),
        }
        result
    }
}

/// Reads a TokenReview's status as istiod does: authenticated, no error, a service account
/// (group `system:serviceaccounts`, username `system:serviceaccount:<ns>:<sa>`, exactly four
/// colon-separated parts) and, when audiences were asked for, one of them in `status.audiences`.
pub fn verdict(
    status: Option<&TokenReviewStatus>,
    audiences: &[String],
) -> Result<(String, String), String> {
    let Some(status) = status else {
        return Err("the API server's answer has no status".into());
    };
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        return Err(format!(
            "the token is not authenticated: {}",
            quote(error, MAX_QUOTE)
        ));
    }
    if status.authenticated != Some(true) {
        return Err("the token is not authenticated".into());
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let in_group = user
        .and_then(|u| u.groups.as_ref())
        .is_some_and(|g| g.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP));
    let parts: Vec<&str> = username.split(':').collect();
    let (ns, sa) = match parts.as_slice() {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => (*ns, *sa),
        _ => {
            return Err(format!(
                "the token is not a service account's: user {} is not system:serviceaccount:<namespace>:<name>",
                quote(username, 120)
            ));
        }
    };
    if !in_group {
        return Err(format!(
            "the token is not a service account's: user is not in the {SERVICE_ACCOUNTS_GROUP} group"
        ));
    }
    if !audiences.is_empty() {
        let granted = status.audiences.as_deref().unwrap_or_default();
        if !granted.iter().any(|a| audiences.contains(a)) {
            return Err(format!(
                "the token is not meant for this CA: audiences {} include none of {audiences:?}",
                quote(&format!("{granted:?}"), 120)
            ));
        }
    }
    Ok((ns.to_string(), sa.to_string()))
}

/// A failed call, in words that never include the token (an API server may quote its input).
fn describe_kube_error(e: &kube::Error, token: &str) -> String {
    let text = match e {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 | 403 => {
                    " (straitd's own credential: it needs create on tokenreviews, e.g. the system:auth-delegator role)"
                }
                _ => "",
            };
            format!(
                "the API server answered {} {}: {}{hint}",
                status.code,
                status.reason,
                quote(&status.message, MAX_QUOTE)
            )
        }
        other => format!("cannot reach the API server: {other}"),
    };
    redact(&text, token)
}

fn redact(text: &str, token: &str) -> String {
    if token.is_empty() {
        return text.to_string();
    }
    text.replace(token, "<token>")
}

/// `s` quoted, cut at `max` characters.
fn quote(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(auth: bool, user: &str, groups: &[&str], aud: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(auth),
            user: Some(UserInfo {
                username: Some(user.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                ..Default::default()
            }),
            audiences: Some(aud.iter().map(|a| a.to_string()).collect()),
            error: None,
        }
    }

    #[test]
    fn verdicts() {
        let ca = vec!["istio-ca".to_string()];
        let sa_groups = ["system:serviceaccounts", "system:serviceaccounts:default"];
        let ok = status(
            true,
            "system:serviceaccount:default:sleep",
            &sa_groups,
            &["istio-ca"],
        );
        assert_eq!(
            verdict(Some(&ok), &ca),
            Ok(("default".into(), "sleep".into()))
        );
        let cases: Vec<(TokenReviewStatus, &str)> = vec![
            (
                status(
                    false,
                    "system:serviceaccount:default:sleep",
                    &sa_groups,
                    &["istio-ca"],
                ),
                "not authenticated",
            ),
            (
                status(true, "system:admin", &sa_groups, &["istio-ca"]),
                "not a service account",
            ),
            (
                status(
                    true,
                    "system:serviceaccount:default",
                    &sa_groups,
                    &["istio-ca"],
                ),
                "not a service account",
            ),
            (
                status(
                    true,
                    "system:serviceaccount:default:sleep:x",
                    &sa_groups,
                    &["istio-ca"],
                ),
                "not a service account",
            ),
            (
                status(
                    true,
                    "system:serviceaccount::sleep",
                    &sa_groups,
                    &["istio-ca"],
                ),
                "not a service account",
            ),
            (
                status(
                    true,
                    "system:serviceaccount:default:sleep",
                    &["system:authenticated"],
                    &["istio-ca"],
                ),
                "group",
            ),
            (
                status(
                    true,
                    "system:serviceaccount:default:sleep",
                    &sa_groups,
                    &["https://kubernetes.default.svc"],
                ),
                "not meant for this CA",
            ),
            (
                status(true, "system:serviceaccount:default:sleep", &sa_groups, &[]),
                "not meant for this CA",
            ),
        ];
        for (st, says) in cases {
            let why = verdict(Some(&st), &ca).unwrap_err();
            assert!(why.contains(says), "{says}: {why}");
        }
        assert!(verdict(None, &ca).is_err());
        // No audiences asked for: none required back.
        let no_aud = status(true, "system:serviceaccount:default:sleep", &sa_groups, &[]);
        assert!(verdict(Some(&no_aud), &[]).is_ok());
    }

    #[test]
    fn redaction_and_quoting() {
        assert_eq!(
            redact("bad token abc.def.ghi here", "abc.def.ghi"),
            "bad token <token> here"
        );
        assert_eq!(quote(&"x".repeat(5), 3), "\"xxx\"…");
    }
}

//! Registries (OCI Distribution API v2, through oci-client): pulling FROM
//! images into the image store, pushing built images, and a step cache shared
//! through a registry (docs/REGISTRIES.md, docs/CACHE.md).
//!
//! One [`Session`] per build: it holds that build's credentials (forwarded by
//! the client, never logged or persisted), its platform and pull policy, and
//! remembers which registries stopped answering so a dead registry costs one
//! round of retries, not one per blob. Network faults are retried with
//! exponential backoff; what the build can do without the registry (remote
//! cache reads and writes) then falls back to local work and says so.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

mod blobs;
mod cache;
mod platform;
mod pull;
mod push;

pub use cache::{CacheIndex, RemoteCache};
pub use platform::Platform;
pub use pull::name_image;

use backon::{ExponentialBuilder, Retryable};
use memobuild_oci::reference::{self, Reference, ReferenceError};
use memobuild_proto::registry::Credential;
use memobuild_proto::{ErrorKind, RpcError};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// Attempts per registry operation (the first try and the retries).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Daemon-wide registry settings (flags and config file).
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// `HOST:PORT`s spoken to over plain HTTP (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// A remote step cache every build reads and writes (mode=max) unless its
    /// request names its own (`--cache-ref`).
    pub cache_ref: Option<String>,
}

/// `--pull`, as Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only images the store does not have (the default).
    Missing,
    /// Resolve every tag again (a digest already present needs no network).
    Always,
    /// Never touch the network; only stored images.
    Never,
}

impl PullPolicy {
    pub fn parse(text: &str) -> Result<PullPolicy, RpcError> {
        match text {
            "" | "missing" => Ok(PullPolicy::Missing),
            "always" | "true" => Ok(PullPolicy::Always),
            "never" | "false" => Ok(PullPolicy::Never),
            other => Err(RpcError::with_hint(
                format!("--pull={other} is not a pull policy"),
                "use --pull=missing (default), --pull=always or --pull=never",
            )),
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct RegistryError {
    /// The reference or blob concerned.
    pub what: String,
    pub message: String,
    pub hint: Option<String>,
    /// A definite answer (not found, denied) or `Internal`.
    pub kind: ErrorKind,
    /// A network fault that outlasted the retries (not a definite answer
    /// such as "not found" or "denied").
    pub unreachable: bool,
}

impl RegistryError {
    fn new(what: impl Into<String>, message: impl Into<String>) -> RegistryError {
        RegistryError {
            what: what.into(),
            message: message.into(),
            hint: None,
            kind: ErrorKind::Internal,
            unreachable: false,
        }
    }

    fn kind(mut self, kind: ErrorKind) -> RegistryError {
        self.kind = kind;
        self
    }

    fn hint(mut self, hint: impl Into<String>) -> RegistryError {
        self.hint = Some(hint.into());
        self
    }
}

impl From<ReferenceError> for RegistryError {
    fn from(e: ReferenceError) -> RegistryError {
        RegistryError::new(e.name.clone(), e.to_string())
            .hint("write it as [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]")
    }
}

impl From<RegistryError> for RpcError {
    fn from(e: RegistryError) -> RpcError {
        let kind = if e.unreachable {
            ErrorKind::Unavailable
        } else {
            e.kind
        };
        RpcError::of(kind, e.to_string()).hint_opt(e.hint)
    }
}

/// One build's view of the registries.
pub struct Session {
    /// Made at the first registry call: a build that needs no registry
    /// (the common, warm case) never loads TLS roots.
    client: std::sync::OnceLock<oci_client::Client>,
    insecure: Vec<String>,
    credentials: BTreeMap<String, Credential>,
    pub platform: Platform,
    pub policy: PullPolicy,
    /// Registries that failed every retry in this build: later calls fail fast.
    down: Mutex<BTreeSet<String>>,
}

impl Session {
    pub fn new(
        settings: &RegistrySettings,
        credentials: BTreeMap<String, Credential>,
        platform: Platform,
        policy: PullPolicy,
    ) -> Session {
        Session {
            client: std::sync::OnceLock::new(),
            insecure: settings.insecure.clone(),
            credentials,
            platform,
            policy,
            down: Mutex::new(BTreeSet::new()),
        }
    }

    /// The HTTP client, per build because it keeps the build's credentials.
    fn client(&self) -> &oci_client::Client {
        self.client.get_or_init(|| {
            install_crypto_provider();
            oci_client::Client::new(oci_client::client::ClientConfig {
                protocol: oci_client::client::ClientProtocol::HttpsExcept(self.insecure.clone()),
                // Index selection is ours (platform.rs), from the raw manifests.
                platform_resolver: None,
                connect_timeout: Some(Duration::from_secs(5)),
                read_timeout: Some(Duration::from_secs(30)),
                ..Default::default()
            })
        })
    }

    /// The credentials the client forwarded for `reference`'s registry.
    fn auth(&self, reference: &Reference) -> RegistryAuth {
        match self.credentials.get(reference::registry_host(reference)) {
            Some(c) if c.username.is_empty() => {
                RegistryAuth::Bearer(String::from_utf8_lossy(&c.password.0).into_owned())
            }
            Some(c) => RegistryAuth::Basic(
                c.username.clone(),
                String::from_utf8_lossy(&c.password.0).into_owned(),
            ),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Runs `op` against `reference`'s registry, retrying transient faults with
    /// exponential backoff ([`backoff`]: 100 ms doubling, with jitter, [`ATTEMPTS`] tries).
    async fn retry<T, F, Fut>(
        &self,
        reference: &Reference,
        what: &str,
        op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let host = reference::registry_host(reference).to_string();
        if self.is_down(&host) {
            let mut err = RegistryError::new(
                what,
                format!("registry {host} did not answer earlier in this build"),
            );
            err.unreachable = true;
            return Err(err);
        }
        let mut attempt = 1;
        let result = op
            .retry(backoff())
            .sleep(tokio::time::sleep)
            .when(is_transient)
            .notify(|e, delay| {
                tracing::info!(registry = %host, what, attempt, error = %e, ?delay, "registry call failed; retrying");
                attempt += 1;
            })
            .await;
        result.map_err(|e| {
            if is_unreachable(&e) {
                self.down.lock().insert(host.clone());
            }
            let unreachable = is_transient(&e);
            let mut err = self.explain(reference, what, e, attempt);
            err.unreachable = unreachable;
            err
        })
    }

    fn is_down(&self, host: &str) -> bool {
        self.down.lock().contains(host)
    }

    /// One clear error: what failed, and for auth and TLS problems what to do.
    fn explain(
        &self,
        reference: &Reference,
        what: &str,
        e: OciDistributionError,
        attempts: u32,
    ) -> RegistryError {
        let host = reference::registry_host(reference);
        let has_creds = self.credentials.contains_key(host);
        let tries = if attempts > 1 {
            format!(" (after {attempts} attempts)")
        } else {
            String::new()
        };
        match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                let err = RegistryError::new(what, format!("registry {host} denied access: {e}"));
                if has_creds {
                    err.hint(format!("the credentials for {host} in your docker config were rejected; run `docker login {host}` again"))
                } else {
                    err.hint(format!("log in with `docker login {host}`: memobuild-ctl forwards the credentials for the registries a build uses from $DOCKER_CONFIG/config.json (default ~/.docker/config.json)"))
                }
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::Unauthorized
                            | oci_client::errors::OciErrorCode::Denied
                    )
                }) =>
            {
                let mut err = RegistryError::new(what, format!("registry {host} denied access: {e}")).hint(
                    format!("log in with `docker login {host}`; memobuild-ctl forwards those credentials"),
                );
                err.kind = ErrorKind::PermissionDenied;
                err
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                            | oci_client::errors::OciErrorCode::NotFound
                    )
                }) =>
            {
                not_found(reference, what)
            }
            OciDistributionError::ImageManifestNotFoundError(_) => not_found(reference, what),
            OciDistributionError::SpecViolationError(_) => RegistryError::new(
                what,
                format!("registry {host} broke the protocol: {e}"),
            )
            .hint("the registry answered something the OCI distribution spec does not allow"),
            OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
                RegistryError::new(what, format!("cannot reach registry {host}{tries}: {e}")).hint(
                    format!("is {host} up? a registry served over plain HTTP must be listed with --insecure-registry {host} (or insecure-registry in the daemon's config)"),
                )
            }
            _ => RegistryError::new(what, format!("{e}{tries}")),
        }
    }
}

fn not_found(reference: &Reference, what: &str) -> RegistryError {
    RegistryError::new(
        what,
        format!(
            "{} was not found in registry {}",
            reference.whole(),
            reference::registry_host(reference)
        ),
    )
    .hint("check the name and tag (`skopeo inspect docker://NAME` shows what the registry has)")
    .kind(ErrorKind::NotFound)
}

/// Faults worth another try: the network, 5xx, 429, and bytes that did not
/// match their digest on the way.
fn is_transient(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode;
    match e {
        OciDistributionError::RequestError(_)
        | OciDistributionError::IoError(_)
        | OciDistributionError::DigestError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Toomanyrequests)),
        _ => false,
    }
}

/// The registry itself is gone or failing (not just one bad blob).
fn is_unreachable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        _ => false,
    }
}

/// The waits between [`ATTEMPTS`] tries: [`FIRST_BACKOFF`] doubling up to
/// [`MAX_BACKOFF`], each plus a random jitter below itself (so in
/// `[delay, 2 * delay)`), so hosts retrying together spread out.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_factor(2.0)
        .with_max_times(ATTEMPTS as usize - 1)
        .with_jitter()
}

/// reqwest is built against rustls without a default crypto provider (no
/// aws-lc build); install ring's once.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_parse_as_docker() {
        assert_eq!(PullPolicy::parse("").unwrap(), PullPolicy::Missing);
        assert_eq!(PullPolicy::parse("always").unwrap(), PullPolicy::Always);
        assert_eq!(PullPolicy::parse("never").unwrap(), PullPolicy::Never);
        let e = PullPolicy::parse("sometimes").unwrap_err();
        assert!(e.hint.unwrap().contains("--pull=missing"));
    }

    #[test]
    fn network_faults_and_5xx_are_retried_definite_answers_are_not() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        };
        assert!(is_transient(&server(503)) && is_unreachable(&server(503)));
        assert!(is_transient(&server(429)) && !is_unreachable(&server(429)));
        assert!(!is_transient(&server(404)));
        let io = OciDistributionError::IoError(std::io::Error::other("digest mismatch"));
        assert!(is_transient(&io) && !is_unreachable(&io));
        let denied = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert!(!is_transient(&denied) && !is_unreachable(&denied));
        let missing = OciDistributionError::ImageManifestNotFoundError("x".into());
        assert!(!is_transient(&missing));
    }

    #[test]
    fn backoff_doubles_from_100ms_with_jitter_for_4_waits() {
        use backon::BackoffBuilder;
        let mut spread = BTreeSet::new();
        for _ in 0..100 {
            let waits: Vec<Duration> = backoff().build().collect();
            assert_eq!(waits.len(), ATTEMPTS as usize - 1);
            for (wait, base) in waits.iter().zip([100, 200, 400, 800]) {
                let base = Duration::from_millis(base);
                assert!(*wait >= base && *wait < 2 * base, "{waits:?}");
            }
            spread.insert(waits[0]);
        }
        assert!(spread.len() > 10, "jitter varies: {spread:?}");
    }
}

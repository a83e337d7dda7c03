//! The test-facing API: one cluster shared by every test of a run (and by several test binaries at
//! once), and a namespace of its own for each test.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;

use crate::cluster::{self, existing, healthy, UpOptions};
use crate::layout::{Layout, DEFAULT_NAME};
use crate::Error;
use crate::{images, network_policy};

/// Label on every namespace a test makes, so a human can find (and delete) them.
pub const TEST_LABEL: &str = "inflight.dev/test";

/// The namespace label that makes the API server enforce the `restricted` Pod Security Standard.
pub const POD_SECURITY_RESTRICTED: (&str, &str) =
    ("pod-security.kubernetes.io/enforce", "restricted");

/// A test's view of the shared test bed. Dropping it deletes the test's namespace (set
/// `INFLIGHT_KEEP_NAMESPACES=1` to keep them for inspection).
pub struct TestBed {
    layout: Layout,
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed")
            .field("layout", &self.layout)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TestBed {
    /// Brings the shared bed up if it is not (named by `$INFLIGHT_TESTBED`, default `default`),
    /// or reuses it, then creates a fresh namespace for the caller.
    pub async fn shared() -> Result<Self, Error> {
        Self::shared_with(false).await
    }

    /// [`TestBed::shared`], with NetworkPolicies enforced: a shared bed that runs without the
    /// engine (brought up without `--network-policy`) gets it started, once. Tests that do not ask
    /// are not affected by it: where no policy selects a pod, everything is allowed.
    pub async fn shared_with_network_policies() -> Result<Self, Error> {
        Self::shared_with(true).await
    }

    async fn shared_with(network_policy: bool) -> Result<Self, Error> {
        let name = std::env::var("INFLIGHT_TESTBED").unwrap_or_else(|_| DEFAULT_NAME.to_owned());
        let layout = tokio::task::spawn_blocking(move || ensure_up(&name, network_policy))
            .await
            .map_err(|e| Error::Invalid(format!("test bed start-up panicked: {e}")))??;
        let client = crate::api::client(&layout).await?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let namespace = format!(
            "t-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            fastrand_suffix()
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {TEST_LABEL: "true"}}
        }))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            layout,
            client,
            namespace,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.layout.kubeconfig()
    }
    /// From now on the API server refuses, in the test's namespace, every pod that does not pass
    /// the `restricted` Pod Security Standard (`pod-security.kubernetes.io/enforce: restricted`,
    /// at the bed's own version). Call it before the first pod: the tests where our components run
    /// do, so each of them proves the components pass ([`crate::manifests::restricted`]).
    pub async fn enforce_restricted(&self) -> Result<(), Error> {
        let patch = serde_json::json!({"metadata": {"labels": {POD_SECURITY_RESTRICTED.0: POD_SECURITY_RESTRICTED.1}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(
                &self.namespace,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Applies a manifest (JSON: one object or a `List`) in the test's namespace with kubectl.
    pub fn apply(&self, manifest: &serde_json::Value) -> Result<(), Error> {
        self.apply_in(&self.namespace, manifest)
    }

    /// Applies a manifest in namespace `ns`.
    pub fn apply_in(&self, ns: &str, manifest: &serde_json::Value) -> Result<(), Error> {
        static FILE: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "inflight-apply-{}-{}-{}.json",
            std::process::id(),
            FILE.fetch_add(1, Ordering::Relaxed),
            fastrand_suffix()
        ));
        std::fs::write(&path, manifest.to_string()).map_err(|e| Error::io(&path, e))?;
        let result = crate::api::kubectl_run(
            &self.layout,
            &["-n", ns, "apply", "-f", &path.display().to_string()],
        );
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }

    /// `kubectl` as the admin, in the test's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, Error> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        crate::api::kubectl_run(&self.layout, &all)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if std::env::var_os("INFLIGHT_KEEP_NAMESPACES").is_some() {
            return;
        }
        // Drop cannot await; a short-lived thread with its own runtime asks for the deletion (the
        // API server finishes it in the background).
        let layout = self.layout.clone();
        let ns = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = crate::api::client(&layout).await.ok()?;
                Api::<Namespace>::all(client)
                    .delete(&ns, &DeleteParams::background())
                    .await
                    .ok()
            })
        })
        .join();
    }
}

fn fastrand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:05x}", nanos & 0xfffff)
}

/// Starts the bed unless a healthy one runs (and its NetworkPolicy engine if asked and not running).
/// A lock per bed name makes concurrent callers (threads of one test binary, or several binaries)
/// wait for the first one's `up` instead of racing it.
fn ensure_up(name: &str, network_policy: bool) -> Result<Layout, Error> {
    let _lock = cluster::lock(&format!("inflight-testbed-{name}.lock"))?;
    if let Some(layout) = existing(name) {
        if healthy(&layout) {
            // Images rebuilt since (a new binary of ours): the running bed gets them too.
            if images::stale(&layout) {
                images::import(&layout)?;
            }
            if network_policy {
                network_policy::start(&layout)?;
            }
            return Ok(layout);
        }
    }
    cluster::up(
        name,
        &UpOptions {
            network_policy,
            ..UpOptions::default()
        },
    )
}

/// Polls `check` every 250 ms until it returns `Some`, or panics naming `what` after `secs`: how a
/// test waits for something Kubernetes does, on a condition rather than for a time.
#[allow(clippy::panic)]
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() >= until {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

//! `up`, `down` and `status` of one named test bed.
//!
//! `up` starts, in the bed's network namespace: etcd, kube-apiserver (with the aggregation layer),
//! containerd, kube-controller-manager, kube-scheduler, the kubelet and kube-proxy as host
//! processes, like a kubeadm node without static pods; then CoreDNS and KEDA as pods of locally
//! built images. `down` ends them by recorded PID, kills what containerd started, and removes mounts,
//! cgroups, the namespace and the state directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::components::{self, bin, kubectl};
use crate::layout::{self, Layout, CLUSTER_DOMAIN, STATE_ROOT};
use crate::process::{self, Daemon, Recorded};
use crate::{configs, dns, images, network, pki, Error};

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Install KEDA (operator, metrics API server, CRDs, APIService).
    pub keda: bool,
    /// On failure, leave the bed as it is for inspection instead of tearing it down.
    pub keep_on_failure: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            keda: true,
            keep_on_failure: false,
        }
    }
}

/// Order in which `down` stops the daemons: first what makes or runs pods, the store last.
const STOP_ORDER: &[&str] = &[
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "containerd",
    "kube-apiserver",
    "etcd",
];

fn say(msg: &str) {
    eprintln!("[testbed] {msg}");
}

pub(crate) const LOCK_DIR: &str = "/run/lock";

/// Takes a lock that serialises `up` and `down` of every bed on this host (index allocation, and
/// two test binaries asking for the same bed at once). Released when dropped.
pub fn host_lock() -> Result<fs::File, Error> {
    fs::create_dir_all(STATE_ROOT).map_err(|e| Error::io(Path::new(STATE_ROOT), e))?;
    fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(Path::new(LOCK_DIR), e))?;
    let path = Path::new("/run/lock/inflight-testbed.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.lock().map_err(|e| Error::io(path, e))?;
    Ok(file)
}

/// The layout of an existing bed (its index is recorded in its state directory).
pub fn existing(name: &str) -> Option<Layout> {
    let text = fs::read_to_string(layout::state_dir(name).join("index")).ok()?;
    Layout::new(name, text.trim().parse().ok()?).ok()
}

fn allocate_index(name: &str) -> Result<u8, Error> {
    let used: Vec<u8> = fs::read_dir(STATE_ROOT)
        .map_err(|e| Error::io(Path::new(STATE_ROOT), e))?
        .flatten()
        .filter(|e| e.file_name() != name)
        .filter_map(|e| {
            fs::read_to_string(e.path().join("index"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    (0..layout::MAX_BEDS)
        .find(|i| !used.contains(i))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} test beds already run on this host",
                layout::MAX_BEDS
            ))
        })
}

/// Whether the bed finished `up` and every daemon it started still runs.
pub fn healthy(layout: &Layout) -> bool {
    let daemons = process::recorded(layout);
    layout.dir().join("ready").exists()
        && daemons.len() == STOP_ORDER.len()
        && daemons.iter().all(|(_, r)| process::alive(*r))
}

/// Starts the bed `name`. Fails if it already runs; a bed left half-made by a crash is cleared first.
pub fn up(name: &str, opts: &UpOptions) -> Result<Layout, Error> {
    layout::validate_name(name)?;
    components::ensure_built()?;
    let lock = host_lock()?;
    if let Some(old) = existing(name) {
        if healthy(&old) {
            return Err(Error::Invalid(format!(
                "test bed {name:?} is already up; `inflight-testbed down --name {name}` first"
            )));
        }
        say(&format!("clearing what is left of an earlier {name:?}"));
        teardown(&old);
    }
    let layout = Layout::new(name, allocate_index(name)?)?;
    for dir in [layout.dir(), layout.pki(), layout.logs(), layout.pids()] {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    configs::write(&layout.dir().join("index"), &layout.index.to_string())?;
    drop(lock);
    let started = Instant::now();
    match start(&layout, opts) {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            configs::write(&layout.dir().join("ready"), &format!("{secs:.1}\n"))?;
            say(&format!(
                "{name} is up in {secs:.1}s; KUBECONFIG={}",
                layout.kubeconfig().display()
            ));
            Ok(layout)
        }
        Err(e) => {
            if opts.keep_on_failure {
                say(&format!(
                    "up failed; left as it is for inspection (logs in {})",
                    layout.logs().display()
                ));
            } else {
                say("up failed; tearing down what was started");
                teardown(&layout);
            }
            Err(e)
        }
    }
}

fn start(layout: &Layout, opts: &UpOptions) -> Result<(), Error> {
    let t = Instant::now();
    let step = |what: &str| say(&format!("[{:5.1}s] {what}", t.elapsed().as_secs_f64()));
    step("certificates, kubeconfigs and configuration");
    let pki = pki::generate(layout)?;
    let dir = layout.dir();
    let mut kubeconfigs = std::collections::HashMap::new();
    for stem in [
        "admin",
        "controller-manager",
        "scheduler",
        "kube-proxy",
        "kubelet",
    ] {
        let path = dir.join(format!("{stem}.kubeconfig"));
        configs::write(&path, &configs::kubeconfig(layout, stem))?;
        kubeconfigs.insert(stem, path.display().to_string());
    }
    let kubelet_config = dir.join("kubelet.yaml");
    configs::write(&kubelet_config, &configs::kubelet(layout))?;
    let proxy_config = dir.join("kube-proxy.yaml");
    configs::write(
        &proxy_config,
        &configs::kube_proxy(layout, Path::new(&kubeconfigs["kube-proxy"])),
    )?;
    let containerd_config = dir.join("containerd/config.toml");
    configs::write(&containerd_config, &configs::containerd(layout))?;
    configs::write(
        &configs::cni_dir(layout).join("10-inflight.conflist"),
        &configs::cni(layout),
    )?;

    step("network namespace and veth pair");
    network::create(layout)?;

    let p = |f: &str| pki.join(f).display().to_string();
    let k8s = |b: &str| bin("kubernetes", b);
    step("etcd, containerd, kube-apiserver");
    let etcd_dir = dir.join("etcd").display().to_string();
    spawn(
        layout,
        "etcd",
        bin("etcd", "etcd"),
        &[
            "--name=default",
            &format!("--data-dir={etcd_dir}"),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
            // A test cluster is thrown away, not recovered: skip fsync for speed.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )?;
    spawn(
        layout,
        "containerd",
        PathBuf::from("/usr/bin/containerd"),
        &[
            "--config",
            &containerd_config.display().to_string(),
            "--log-level",
            "warn",
        ],
    )?;
    let node_ip = layout.node_ip().to_string();
    spawn(
        layout,
        "kube-apiserver",
        k8s("kube-apiserver"),
        &[
            &format!("--advertise-address={node_ip}"),
            "--bind-address=0.0.0.0",
            "--secure-port=6443",
            "--etcd-servers=http://127.0.0.1:2379",
            &format!("--service-cluster-ip-range={}", layout.service_cidr()),
            &format!("--tls-cert-file={}", p("apiserver.crt")),
            &format!("--tls-private-key-file={}", p("apiserver.key")),
            &format!("--client-ca-file={}", p("ca.crt")),
            &format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            &format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP",
            &format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            &format!("--service-account-key-file={}", p("sa.pub")),
            &format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            // The aggregation layer (APIServices such as KEDA's external metrics and our SMI API).
            &format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            &format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
            &format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
            "--enable-aggregator-routing=true",
        ],
    )?;

    step("importing images into containerd");
    wait_for(
        &format!(
            "containerd's socket ({})",
            layout.containerd_socket().display()
        ),
        30,
        layout,
        "containerd",
        || Ok(layout.containerd_socket().exists()),
    )?;
    images::import(layout)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(Path::new("tokio"), e))?;
    rt.block_on(async {
        step("waiting for the API server");
        let client = client(layout).await?;
        wait_async(
            "kube-apiserver /readyz",
            90,
            layout,
            "kube-apiserver",
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    Ok(client
                        .request_text(req)
                        .await
                        .is_ok_and(|t| t.trim() == "ok"))
                }
            },
        )
        .await?;

        step("kube-controller-manager, kube-scheduler, kubelet, kube-proxy");
        let cm = &kubeconfigs["controller-manager"];
        spawn(
            layout,
            "kube-controller-manager",
            k8s("kube-controller-manager"),
            &[
                &format!("--kubeconfig={cm}"),
                &format!("--authentication-kubeconfig={cm}"),
                &format!("--authorization-kubeconfig={cm}"),
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                &format!("--root-ca-file={}", p("ca.crt")),
                &format!("--service-account-private-key-file={}", p("sa.key")),
                &format!("--cluster-signing-cert-file={}", p("ca.crt")),
                &format!("--cluster-signing-key-file={}", p("ca.key")),
                &format!("--service-cluster-ip-range={}", layout.service_cidr()),
                "--controllers=*,tokencleaner",
                "--configure-cloud-routes=false",
                "--allocate-node-cidrs=false",
            ],
        )?;
        let sched = &kubeconfigs["scheduler"];
        spawn(
            layout,
            "kube-scheduler",
            k8s("kube-scheduler"),
            &[
                &format!("--kubeconfig={sched}"),
                &format!("--authentication-kubeconfig={sched}"),
                &format!("--authorization-kubeconfig={sched}"),
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
            ],
        )?;
        create_cgroups(layout)?;
        let kubelet_dir = dir.join("kubelet");
        spawn(
            layout,
            "kubelet",
            k8s("kubelet"),
            &[
                &format!("--config={}", kubelet_config.display()),
                &format!("--kubeconfig={}", kubeconfigs["kubelet"]),
                &format!("--hostname-override={}", layout.node_name()),
                &format!("--node-ip={node_ip}"),
                &format!("--root-dir={}", kubelet_dir.display()),
                &format!("--cert-dir={}", kubelet_dir.join("pki").display()),
            ],
        )?;
        spawn(
            layout,
            "kube-proxy",
            k8s("kube-proxy"),
            &[&format!("--config={}", proxy_config.display())],
        )?;

        step("CoreDNS");
        let coredns = render(
            include_str!("../manifests/coredns.yaml"),
            &[
                ("CLUSTER_DOMAIN", CLUSTER_DOMAIN.to_owned()),
                ("COREDNS_IMAGE", images::coredns_image()),
                ("DNS_IP", layout.dns_ip().to_string()),
            ],
        );
        apply(layout, &coredns, "coredns.yaml")?;

        step("waiting for the node to be Ready");
        let nodes: Api<Node> = Api::all(client.clone());
        let node = layout.node_name();
        wait_async(&format!("node {node} Ready"), 90, layout, "kubelet", || {
            let nodes = nodes.clone();
            let node = node.clone();
            async move { Ok(node_ready(&nodes, &node).await) }
        })
        .await?;

        step("waiting for CoreDNS to answer");
        wait_deployment(&client, layout, "kube-system", "coredns", 120).await?;
        let server = std::net::SocketAddr::from((layout.dns_ip(), 53));
        let name = format!("kubernetes.default.svc.{CLUSTER_DOMAIN}");
        let want = layout.api_service_ip();
        wait_async(
            &format!("DNS answer for {name} from {server}"),
            60,
            layout,
            "kube-proxy",
            || {
                let name = name.clone();
                async move {
                    let answer = tokio::task::spawn_blocking(move || {
                        dns::query_a(server, &name, Duration::from_millis(500))
                    })
                    .await
                    .ok()
                    .and_then(Result::ok);
                    Ok(answer.is_some_and(|a| a.contains(&want)))
                }
            },
        )
        .await?;

        if opts.keda {
            step("KEDA");
            install_keda(layout, &client).await?;
        }
        step("ready");
        Ok(())
    })
}

async fn node_ready(nodes: &Api<Node>, name: &str) -> bool {
    let Ok(node) = nodes.get(name).await else {
        return false;
    };
    node.status
        .and_then(|s| s.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn install_keda(layout: &Layout, client: &Client) -> Result<(), Error> {
    // Certificates first, so neither KEDA pod starts without them.
    let services = [
        "keda-operator",
        "keda-metrics-apiserver",
        "keda-admission-webhooks",
    ];
    let mut names = Vec::new();
    for s in services {
        names.push(s.to_owned());
        names.push(format!("{s}.keda"));
        names.push(format!("{s}.keda.svc"));
        names.push(format!("{s}.keda.svc.{CLUSTER_DOMAIN}"));
    }
    let (cert, key) = pki::serving_cert(layout, &names)?;
    let ca =
        fs::read_to_string(layout.pki().join("ca.crt")).map_err(|e| Error::io(&layout.pki(), e))?;
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}},
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "kedaorg-certs", "namespace": "keda"},
             "stringData": {"ca.crt": ca, "tls.crt": cert, "tls.key": key}}
        ]
    });
    apply(layout, &secret.to_string(), "keda-certs.json")?;

    let overlay = layout.dir().join("keda");
    let kustomization = render(
        include_str!("../manifests/keda/kustomization.yaml"),
        &[
            ("KEDA_CONFIG", "keda-config".to_owned()),
            (
                "KEDA_IMAGE_NAME",
                images::keda_image()
                    .rsplit_once(':')
                    .map_or(String::new(), |(n, _)| n.to_owned()),
            ),
            (
                "KEDA_IMAGE_TAG",
                components::version("KEDA_VERSION").to_owned(),
            ),
            (
                "CA_BUNDLE",
                base64::engine::general_purpose::STANDARD.encode(ca.as_bytes()),
            ),
        ],
    );
    configs::write(&overlay.join("kustomization.yaml"), &kustomization)?;
    // kustomize loads bases only from below the overlay: a copy of KEDA's config goes there.
    let copy = overlay.join("keda-config").display().to_string();
    process::run(
        "cp",
        &[
            "-r",
            &components::keda_config().display().to_string(),
            &copy,
        ],
    )?;
    let rendered = kubectl_run(
        layout,
        &[
            "kustomize",
            "--load-restrictor=LoadRestrictionsNone",
            &overlay.display().to_string(),
        ],
    )?;
    // Server-side apply: KEDA's CRDs are larger than the last-applied annotation allows.
    apply(layout, &rendered, "keda.yaml")?;
    wait_deployment(client, layout, "keda", "keda-operator", 180).await?;
    wait_deployment(client, layout, "keda", "keda-metrics-apiserver", 180).await?;
    let req = || http::Request::get("/apis/external.metrics.k8s.io/v1beta1").body(Vec::new());
    wait_async(
        "KEDA's external metrics API (v1beta1.external.metrics.k8s.io)",
        120,
        layout,
        "kube-apiserver",
        || {
            let client = client.clone();
            async move {
                let req = req().map_err(|e| Error::Invalid(e.to_string()))?;
                Ok(client.request_text(req).await.is_ok())
            }
        },
    )
    .await
}

/// Waits until a Deployment has all its replicas available.
pub async fn wait_deployment(
    client: &Client,
    layout: &Layout,
    ns: &str,
    name: &str,
    secs: u64,
) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_async(
        &format!("deployment {ns}/{name} available"),
        secs,
        layout,
        "kubelet",
        || {
            let api = api.clone();
            async move {
                let Ok(d) = api.get(name).await else {
                    return Ok(false);
                };
                let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                let have = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
                Ok(have >= want)
            }
        },
    )
    .await
}

fn spawn(
    layout: &Layout,
    name: &'static str,
    program: PathBuf,
    args: &[&str],
) -> Result<Recorded, Error> {
    let daemon = Daemon {
        name,
        program,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
    };
    let r = process::spawn(layout, &daemon)?;
    // Most mistakes in flags make a daemon exit at once: catch that here with its own words.
    std::thread::sleep(Duration::from_millis(200));
    if !process::alive(r) {
        let log = layout.logs().join(format!("{name}.log"));
        return Err(Error::Died {
            what: name.to_owned(),
            tail: process::log_tail(&log, 30),
            log,
        });
    }
    Ok(r)
}

fn wait_for(
    what: &str,
    secs: u64,
    layout: &Layout,
    log: &str,
    mut ready: impl FnMut() -> Result<bool, Error>,
) -> Result<(), Error> {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(timeout(what, secs, layout, log))
}

/// Polls `ready` every 250 ms; on timeout the error carries the tail of the log of the component
/// most likely at fault and the state of every daemon.
pub async fn wait_async<F, Fut>(
    what: &str,
    secs: u64,
    layout: &Layout,
    log: &str,
    mut ready: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if ready().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(timeout(what, secs, layout, log))
}

fn timeout(what: &str, secs: u64, layout: &Layout, log: &str) -> Error {
    let mut details = String::from("\ndaemons:");
    for (name, r) in process::recorded(layout) {
        details.push_str(&format!(
            " {name}={}",
            if process::alive(r) {
                "running"
            } else {
                "EXITED"
            }
        ));
    }
    let path = layout.logs().join(format!("{log}.log"));
    details.push_str(&format!(
        "\nlast lines of {}:\n{}",
        path.display(),
        process::log_tail(&path, 25)
    ));
    Error::Timeout {
        what: what.to_owned(),
        seconds: secs,
        details,
    }
}

/// A kube client for the bed's admin identity.
pub async fn client(layout: &Layout) -> Result<Client, Error> {
    let kubeconfig = Kubeconfig::read_from(layout.kubeconfig())?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// `kubectl` against the bed, as the admin.
pub fn kubectl_run(layout: &Layout, args: &[&str]) -> Result<String, Error> {
    let kubeconfig = format!("--kubeconfig={}", layout.kubeconfig().display());
    let mut all = vec![kubeconfig.as_str()];
    all.extend_from_slice(args);
    process::run(&kubectl().display().to_string(), &all)
}

/// Applies a manifest (YAML or JSON) server-side; it is kept in the state directory for reference.
pub fn apply(layout: &Layout, manifest: &str, file: &str) -> Result<(), Error> {
    let path = layout.dir().join("manifests").join(file);
    configs::write(&path, manifest)?;
    kubectl_run(
        layout,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=inflight-testbed",
            "-f",
            &path.display().to_string(),
        ],
    )?;
    Ok(())
}

fn render(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(template.to_owned(), |acc, (k, v)| {
        acc.replace(&format!("${{{k}}}"), v)
    })
}

/// Brings the bed down. Returns what could not be removed (empty when nothing is left).
pub fn down(name: &str) -> Result<Vec<String>, Error> {
    layout::validate_name(name)?;
    let _lock = host_lock()?;
    let Some(layout) = existing(name) else {
        return Ok(Vec::new());
    };
    teardown(&layout);
    Ok(leftovers(&layout))
}

fn teardown(layout: &Layout) {
    let daemons = process::recorded(layout);
    let find = |n: &str| daemons.iter().find(|(name, _)| name == n).map(|(_, r)| *r);
    for name in &STOP_ORDER[..4] {
        if let Some(r) = find(name) {
            process::stop(r, Duration::from_secs(10));
        }
    }
    // Containers: kill every process in the pods' cgroups, then have containerd delete the tasks so
    // that each shim exits and removes its socket itself.
    for pid in cgroup_pids(layout) {
        process::kill_now(pid);
    }
    if find("containerd").is_some_and(process::alive) {
        let sock = layout.containerd_socket().display().to_string();
        if let Ok(tasks) = process::run("ctr", &["-a", &sock, "-n", "k8s.io", "tasks", "ls", "-q"])
        {
            for id in tasks.split_whitespace() {
                let _ = process::run(
                    "ctr",
                    &["-a", &sock, "-n", "k8s.io", "tasks", "rm", "-f", id],
                );
            }
        }
    }
    for name in &STOP_ORDER[4..] {
        if let Some(r) = find(name) {
            process::stop(r, Duration::from_secs(10));
        }
    }
    // Anything still naming the state directory (a shim that would not go) gets SIGKILL.
    for pid in process::pids_mentioning(&layout.dir().display().to_string()) {
        process::kill_now(pid);
    }
    unmount_under(&layout.dir());
    network::destroy(layout);
    remove_cgroups(layout);
    let _ = fs::remove_dir_all(layout.dir());
    // The root only holds beds; remove it with the last one.
    let _ = fs::remove_dir(STATE_ROOT);
}

/// What of a bed is still on the host: processes, mounts, cgroups, network, files.
pub fn leftovers(layout: &Layout) -> Vec<String> {
    let dir = layout.dir();
    let mut found: Vec<String> = process::pids_mentioning(&dir.display().to_string())
        .into_iter()
        .map(|pid| format!("process {pid}"))
        .collect();
    found.extend(
        process::recorded(layout)
            .into_iter()
            .filter(|(_, r)| process::alive(*r))
            .map(|(n, r)| format!("{n} (pid {})", r.pid)),
    );
    found.extend(
        mounts_under(&dir)
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    found.extend(
        cgroup_dirs(layout)
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    found.extend(network::leftovers(layout));
    if dir.exists() {
        found.push(format!("directory {}", dir.display()));
    }
    found
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn unmount_under(dir: &Path) {
    // Deepest first, lazily: a mount that is busy for a moment still disappears from the tree.
    for _ in 0..3 {
        let mut mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = process::run("umount", &["-l", &m.display().to_string()]);
        }
    }
}

/// The bed's cgroup directories in every hierarchy (cgroup v1 controllers and the v2 mount).
fn cgroup_dirs(layout: &Layout) -> Vec<PathBuf> {
    let root = layout.cgroup_root();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let top = h.path().join(&root);
        if top.is_dir() {
            collect_dirs(&top, &mut dirs);
        }
        // Hybrid hosts: a cgroup v2 tree mounted at /sys/fs/cgroup/unified.
        let direct = Path::new("/sys/fs/cgroup").join(&root);
        if direct.is_dir() && !dirs.contains(&direct) {
            collect_dirs(&direct, &mut dirs);
        }
    }
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// The kubelet's `cgroupRoot` must exist in every v1 hierarchy before it starts.
fn create_cgroups(layout: &Layout) -> Result<(), Error> {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return Ok(());
    };
    for h in hierarchies.flatten() {
        let base = h.path();
        if !base.join("cgroup.procs").exists() {
            continue;
        }
        let dir = base.join(layout.cgroup_root());
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // A new cpuset has no CPUs or memory nodes until given its parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(parent) = fs::read_to_string(base.join(file)) {
                let path = dir.join(file);
                fs::write(&path, parent.trim()).map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    Ok(())
}

fn cgroup_pids(layout: &Layout) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroup_dirs(layout)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn remove_cgroups(layout: &Layout) {
    for _ in 0..20 {
        let mut dirs = cgroup_dirs(layout);
        if dirs.is_empty() {
            return;
        }
        for pid in cgroup_pids(layout) {
            process::kill_now(pid);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident memory in KiB of the bed's own daemons, and of everything containerd runs for its pods
/// (shims and containers).
pub fn memory_kib(layout: &Layout) -> (u64, u64) {
    let rss = |pid: i32| -> u64 {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    let daemons: Vec<i32> = process::recorded(layout)
        .into_iter()
        .filter(|(_, r)| process::alive(*r))
        .map(|(_, r)| r.pid)
        .collect();
    let mut others = process::pids_mentioning(&layout.dir().display().to_string());
    others.extend(cgroup_pids(layout));
    others.sort_unstable();
    others.dedup();
    others.retain(|p| !daemons.contains(p));
    (
        daemons.iter().map(|p| rss(*p)).sum(),
        others.iter().map(|p| rss(*p)).sum(),
    )
}

/// What `status` reports: one line per daemon and the node's readiness.
pub fn status(name: &str) -> Result<String, Error> {
    let Some(layout) = existing(name) else {
        return Ok(format!("test bed {name:?}: not up\n"));
    };
    let mut out = format!(
        "test bed {name:?} (index {}, node {} at {}, namespace {})\nkubeconfig: {}\n",
        layout.index,
        layout.node_name(),
        layout.node_ip(),
        layout.netns(),
        layout.kubeconfig().display()
    );
    for (daemon, r) in process::recorded(&layout) {
        let state = if process::alive(r) {
            "running"
        } else {
            "EXITED"
        };
        out.push_str(&format!("  {daemon:<24} pid {:<8} {state}\n", r.pid));
    }
    let ready = if layout.dir().join("ready").exists() {
        "up finished"
    } else {
        "up did not finish"
    };
    out.push_str(&format!("  {ready}; healthy: {}\n", healthy(&layout)));
    let (daemons, pods) = memory_kib(&layout);
    out.push_str(&format!(
        "  memory (RSS): {:.0} MiB = cluster processes {:.0} MiB + containers and shims {:.0} MiB\n",
        (daemons + pods) as f64 / 1024.0,
        daemons as f64 / 1024.0,
        pods as f64 / 1024.0
    ));
    if let Ok(nodes) = kubectl_run(
        &layout,
        &["get", "nodes", "-o", "wide", "--request-timeout=5s"],
    ) {
        out.push_str(&nodes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount(r"/plain"), "/plain");
    }

    #[test]
    fn templates_are_filled() {
        assert_eq!(
            render("a ${X} ${Y} ${X}", &[("X", "1".into()), ("Y", "2".into())]),
            "a 1 2 1"
        );
    }
}

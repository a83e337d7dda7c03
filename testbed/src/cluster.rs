//! `up`, `down` and `status` of one named test bed.
//!
//! `up` starts, in the bed's network namespace: etcd, kube-apiserver (with the aggregation layer),
//! containerd, kube-controller-manager, kube-scheduler, the kubelet and kube-proxy as host
//! processes, like a kubeadm node without static pods; then CoreDNS and KEDA as pods of locally
//! built images; with `network_policy`, kube-router's firewall too. `down` ends them by recorded PID,
//! kills what containerd started, and removes mounts, cgroups, the namespace and the state directory.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use crate::api::{
    apply, client, kubectl_run, node_ready, render, timeout, wait_async, wait_deployment,
};
use crate::components;
use crate::layout::{self, Layout, CLUSTER_DOMAIN, STATE_ROOT};
use crate::process::{self, Daemon, Recorded};
use crate::{
    cgroups, configs, daemons, dns, images, keda, mounts, network, network_policy, pki, Error,
};

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Install KEDA (operator, metrics API server, CRDs, APIService).
    pub keda: bool,
    /// Enforce NetworkPolicies (kube-router's firewall; for tests, off by default: without policies
    /// everything is allowed either way).
    pub network_policy: bool,
    /// On failure, leave the bed as it is for inspection instead of tearing it down.
    pub keep_on_failure: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            keda: true,
            network_policy: false,
            keep_on_failure: false,
        }
    }
}

/// What `down` stops first: everything that makes, schedules or runs pods, so nothing restarts a
/// container while they are killed.
const POD_MAKERS: &[&str] = &[
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
];
/// Then, once the containers are gone: the runtime, the API server and last the store.
const RUNTIME_AND_STORE: &[&str] = &["containerd", "kube-apiserver", "etcd"];
/// Daemons only some beds run; stopped first.
const OPTIONAL: &[&str] = &[network_policy::DAEMON];

fn say(msg: &str) {
    eprintln!("[testbed] {msg}");
}

/// Takes an exclusive lock on `/run/lock/<file>` (created if need be); released when dropped.
pub(crate) fn lock(file: &str) -> Result<fs::File, Error> {
    let dir = Path::new("/run/lock");
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(file);
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    lock.lock().map_err(|e| Error::io(&path, e))?;
    Ok(lock)
}

/// Serialises `up` and `down` of every bed on this host (index allocation, and two test binaries
/// asking for the same bed at once).
pub fn host_lock() -> Result<fs::File, Error> {
    fs::create_dir_all(STATE_ROOT).map_err(|e| Error::io(Path::new(STATE_ROOT), e))?;
    lock("inflight-testbed.lock")
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

/// Whether the bed finished `up`, every daemon a bed needs was started, and every daemon it
/// started (an optional one too) still runs.
pub fn healthy(layout: &Layout) -> bool {
    let daemons = process::recorded(layout);
    let started = |name: &&str| daemons.iter().any(|(n, _)| n == name);
    layout.dir().join("ready").exists()
        && POD_MAKERS.iter().chain(RUNTIME_AND_STORE).all(started)
        && daemons.iter().all(|(_, r)| process::alive(*r))
}

/// Starts the bed `name`. Fails if it already runs; a bed left half-made by a crash is cleared first.
pub fn up(name: &str, opts: &UpOptions) -> Result<Layout, Error> {
    layout::validate_name(name)?;
    components::ensure_built(opts.network_policy)?;
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
    write_configuration(layout)?;

    step("network namespace and veth pair");
    network::create(layout)?;

    step("etcd, containerd, kube-apiserver");
    spawn(layout, &daemons::etcd(layout))?;
    spawn(layout, &daemons::containerd(layout))?;
    spawn(layout, &daemons::kube_apiserver(layout))?;

    // While the API server starts.
    step("importing images into containerd");
    let socket = layout.containerd_socket();
    wait_for(
        &format!("containerd's socket ({})", socket.display()),
        30,
        layout,
        "containerd",
        || Ok(socket.exists()),
    )?;
    images::import(layout)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(Path::new("tokio runtime"), e))?;
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
        spawn(layout, &daemons::kube_controller_manager(layout))?;
        spawn(layout, &daemons::kube_scheduler(layout))?;
        cgroups::create(layout)?;
        spawn(layout, &daemons::kubelet(layout))?;
        spawn(layout, &daemons::kube_proxy(layout))?;

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
        wait_for_dns(layout).await?;

        if opts.keda {
            step("KEDA");
            keda::install(layout, &client).await?;
        }
        if opts.network_policy {
            step("kube-router (NetworkPolicy firewall)");
            network_policy::start(layout)?;
        }
        step("ready");
        Ok(())
    })
}

fn write_configuration(layout: &Layout) -> Result<(), Error> {
    pki::generate(layout)?;
    for stem in [
        "admin",
        "controller-manager",
        "scheduler",
        "kube-proxy",
        "kubelet",
    ] {
        configs::write(
            &daemons::kubeconfig_path(layout, stem),
            &configs::kubeconfig(layout, stem),
        )?;
    }
    configs::write(
        &daemons::kubelet_config_path(layout),
        &configs::kubelet(layout),
    )?;
    let proxy_kubeconfig = daemons::kubeconfig_path(layout, "kube-proxy");
    configs::write(
        &daemons::kube_proxy_config_path(layout),
        &configs::kube_proxy(layout, &proxy_kubeconfig),
    )?;
    configs::write(
        &daemons::containerd_config_path(layout),
        &configs::containerd(layout),
    )?;
    configs::write(
        &configs::cni_dir(layout).join("10-inflight.conflist"),
        &configs::cni(layout),
    )
}

/// CoreDNS answers for the `kubernetes` Service through the kube-dns ClusterIP, asked from the
/// host: DNS, kube-proxy's rules and the pod network all work.
async fn wait_for_dns(layout: &Layout) -> Result<(), Error> {
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
    .await
}

pub(crate) fn spawn(layout: &Layout, daemon: &Daemon) -> Result<Recorded, Error> {
    let r = process::spawn(layout, daemon)?;
    // Most mistakes in flags make a daemon exit at once: catch that here with its own words.
    std::thread::sleep(Duration::from_millis(200));
    if !process::alive(r) {
        let log = layout.logs().join(format!("{}.log", daemon.name));
        return Err(Error::Died {
            what: daemon.name.to_owned(),
            tail: process::log_tail(&log, 30),
            log,
        });
    }
    Ok(r)
}

pub(crate) fn wait_for(
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

/// Brings the bed down. Returns what could not be removed (empty when nothing is left).
pub fn down(name: &str) -> Result<Vec<String>, Error> {
    layout::validate_name(name)?;
    let _lock = host_lock()?;
    let Some(layout) = existing(name) else {
        return Ok(Vec::new());
    };
    teardown(&layout);
    // The root only holds beds; remove it with the last one (here, not in `teardown`: `up` clears
    // a half-made bed and then allocates its index by reading the root).
    let _ = fs::remove_dir(STATE_ROOT);
    Ok(leftovers(&layout))
}

fn teardown(layout: &Layout) {
    let daemons = process::recorded(layout);
    let find = |n: &str| daemons.iter().find(|(name, _)| name == n).map(|(_, r)| *r);
    for name in OPTIONAL.iter().chain(POD_MAKERS) {
        if let Some(r) = find(name) {
            process::stop(r, Duration::from_secs(10));
        }
    }
    // Containers: kill every process in the pods' cgroups, then have containerd delete the tasks so
    // that each shim exits and removes its socket itself.
    for pid in cgroups::pids(layout) {
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
    for name in RUNTIME_AND_STORE {
        if let Some(r) = find(name) {
            process::stop(r, Duration::from_secs(10));
        }
    }
    // Anything still naming the state directory (a shim that would not go) gets SIGKILL.
    for pid in process::pids_mentioning(&layout.dir().display().to_string()) {
        process::kill_now(pid);
    }
    mounts::unmount_all(&layout.dir());
    network::destroy(layout);
    cgroups::remove(layout);
    let _ = fs::remove_dir_all(layout.dir());
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
        mounts::under(&dir)
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    found.extend(
        cgroups::dirs(layout)
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    found.extend(network::leftovers(layout));
    if dir.exists() {
        found.push(format!("directory {}", dir.display()));
    }
    found
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
    others.extend(cgroups::pids(layout));
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

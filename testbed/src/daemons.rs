//! The command line of each daemon of a bed, as a kubeadm node would run them (without static
//! pods), every path and address taken from the bed's layout.

use std::path::PathBuf;

use crate::components::bin;
use crate::layout::{Layout, CLUSTER_DOMAIN};
use crate::process::Daemon;

/// Paths of the files `up` writes before starting anything.
pub(crate) fn kubeconfig_path(layout: &Layout, stem: &str) -> PathBuf {
    layout.dir().join(format!("{stem}.kubeconfig"))
}
pub(crate) fn kubelet_config_path(layout: &Layout) -> PathBuf {
    layout.dir().join("kubelet.yaml")
}
pub(crate) fn kube_proxy_config_path(layout: &Layout) -> PathBuf {
    layout.dir().join("kube-proxy.yaml")
}
pub(crate) fn containerd_config_path(layout: &Layout) -> PathBuf {
    layout.dir().join("containerd/config.toml")
}

fn daemon(name: &'static str, program: PathBuf, args: Vec<String>) -> Daemon {
    Daemon {
        name,
        program,
        args,
    }
}

fn pki(layout: &Layout, file: &str) -> String {
    layout.pki().join(file).display().to_string()
}

fn kubeconfig(layout: &Layout, stem: &str) -> String {
    kubeconfig_path(layout, stem).display().to_string()
}

pub(crate) fn etcd(layout: &Layout) -> Daemon {
    let data = layout.dir().join("etcd");
    daemon(
        "etcd",
        bin("etcd", "etcd"),
        vec![
            "--name=default".into(),
            format!("--data-dir={}", data.display()),
            // Loopback of the bed's own network namespace: no other bed sees it.
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
            // A test cluster is thrown away, not recovered: skip fsync for speed.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )
}

pub(crate) fn containerd(layout: &Layout) -> Daemon {
    daemon(
        "containerd",
        PathBuf::from("/usr/bin/containerd"),
        vec![
            "--config".into(),
            containerd_config_path(layout).display().to_string(),
            "--log-level".into(),
            "warn".into(),
        ],
    )
}

pub(crate) fn kube_apiserver(layout: &Layout) -> Daemon {
    let p = |f: &str| pki(layout, f);
    daemon(
        "kube-apiserver",
        bin("kubernetes", "kube-apiserver"),
        vec![
            format!("--advertise-address={}", layout.node_ip()),
            "--bind-address=0.0.0.0".into(),
            "--secure-port=6443".into(),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--service-cluster-ip-range={}", layout.service_cidr()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            // The aggregation layer (APIServices such as KEDA's external metrics and our SMI API).
            format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
            // Extension API servers are reached at their endpoints, like kubeadm clusters without
            // kube-proxy on the control plane would; it also works before kube-proxy syncs.
            "--enable-aggregator-routing=true".into(),
        ],
    )
}

pub(crate) fn kube_controller_manager(layout: &Layout) -> Daemon {
    let p = |f: &str| pki(layout, f);
    let cm = kubeconfig(layout, "controller-manager");
    daemon(
        "kube-controller-manager",
        bin("kubernetes", "kube-controller-manager"),
        vec![
            format!("--kubeconfig={cm}"),
            format!("--authentication-kubeconfig={cm}"),
            format!("--authorization-kubeconfig={cm}"),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            format!("--service-cluster-ip-range={}", layout.service_cidr()),
            "--controllers=*,tokencleaner".into(),
            "--configure-cloud-routes=false".into(),
            "--allocate-node-cidrs=false".into(),
        ],
    )
}

pub(crate) fn kube_scheduler(layout: &Layout) -> Daemon {
    let s = kubeconfig(layout, "scheduler");
    daemon(
        "kube-scheduler",
        bin("kubernetes", "kube-scheduler"),
        vec![
            format!("--kubeconfig={s}"),
            format!("--authentication-kubeconfig={s}"),
            format!("--authorization-kubeconfig={s}"),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
        ],
    )
}

pub(crate) fn kubelet(layout: &Layout) -> Daemon {
    let root = layout.dir().join("kubelet");
    daemon(
        "kubelet",
        bin("kubernetes", "kubelet"),
        vec![
            format!("--config={}", kubelet_config_path(layout).display()),
            format!("--kubeconfig={}", kubeconfig(layout, "kubelet")),
            format!("--hostname-override={}", layout.node_name()),
            format!("--node-ip={}", layout.node_ip()),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", root.join("pki").display()),
        ],
    )
}

pub(crate) fn kube_proxy(layout: &Layout) -> Daemon {
    daemon(
        "kube-proxy",
        bin("kubernetes", "kube-proxy"),
        vec![format!(
            "--config={}",
            kube_proxy_config_path(layout).display()
        )],
    )
}

/// kube-router with only its NetworkPolicy firewall: the bridge CNI keeps routing and kube-proxy
/// keeps the Services. It acts as the admin (a test bed; its own RBAC would prove nothing here).
pub(crate) fn kube_router(layout: &Layout) -> Daemon {
    daemon(
        "kube-router",
        bin("kube-router", "kube-router"),
        vec![
            format!("--kubeconfig={}", layout.kubeconfig().display()),
            "--run-firewall=true".into(),
            "--run-router=false".into(),
            "--run-service-proxy=false".into(),
            format!("--hostname-override={}", layout.node_name()),
            format!("--service-cluster-ip-range={}", layout.service_cidr()),
            // In the bed's namespace, like every port of the bed.
            "--health-port=20244".into(),
            "--metrics-port=0".into(),
        ],
    )
}

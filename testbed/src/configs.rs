//! The files the cluster's components read: kubeconfigs, the kubelet's and kube-proxy's
//! configuration, containerd's configuration and the CNI network.

use std::path::{Path, PathBuf};

use crate::images::PAUSE_IMAGE;
use crate::layout::{Layout, CLUSTER_DOMAIN};
use crate::Error;

/// A kubeconfig for one client identity of the PKI (file stem as in `pki`).
pub fn kubeconfig(layout: &Layout, stem: &str) -> String {
    let pki = layout.pki();
    let cluster = layout.node_name();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {stem}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {stem}
current-context: {cluster}
",
        server = layout.api_url(),
        ca = pki.join("ca.crt").display(),
        crt = pki.join(format!("{stem}.crt")).display(),
        key = pki.join(format!("{stem}.key")).display(),
    )
}

pub fn kubelet(layout: &Layout) -> String {
    let pki = layout.pki();
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
clusterDNS: [{dns}]
clusterDomain: {domain}
resolvConf: /etc/resolv.conf
# The node shares the host's disk with build caches: evict only when it is truly full (a
# percentage of a large, busy disk evicted KEDA and CoreDNS on a host with gigabytes still free).
evictionHard: {{memory.available: 100Mi, nodefs.available: 256Mi, imagefs.available: 256Mi, nodefs.inodesFree: 1%}}
# Images are imported, not pulled: a garbage-collected image could never come back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 250
syncFrequency: 10s
nodeStatusReportFrequency: 10s
rotateCertificates: false
shutdownGracePeriod: 0s
",
        node_ip = layout.node_ip(),
        ca = pki.join("ca.crt").display(),
        sock = layout.containerd_socket().display(),
        cgroup_root = layout.cgroup_root(),
        dns = layout.dns_ip(),
        domain = CLUSTER_DOMAIN,
    )
}

pub fn kube_proxy(layout: &Layout, kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: {pods}
hostnameOverride: {node}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: {kubeconfig}
# conntrack limits are the host's business, not a namespace's: leave them alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 10s
  minSyncPeriod: 0s
",
        pods = layout.pod_cidr(),
        node = layout.node_name(),
        kubeconfig = kubeconfig.display(),
    )
}

pub fn containerd(layout: &Layout) -> String {
    let dir = layout.dir().join("containerd");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Pod network namespaces live under the bed's state, so `down` finds every one of them.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  # Never ask for an oom_score_adj below containerd's own: lowering it needs CAP_SYS_RESOURCE, which
  # a sandboxed host (CI runners, this one) may not grant, and runc then fails every pod sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = layout.containerd_socket().display(),
        opt = dir.join("opt").display(),
        pause = PAUSE_IMAGE,
        cni = cni_dir(layout).display(),
    )
}

pub fn cni_dir(layout: &Layout) -> PathBuf {
    layout.dir().join("cni/net.d")
}

pub fn cni(layout: &Layout) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "inflight",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": layout.pod_cidr(), "gateway": layout.pod_gateway().to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    // The default (/var/lib/cni) would be shared by every bed on the host.
                    "dataDir": layout.dir().join("cni/ipam").display().to_string()
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
    .to_string()
}

pub fn write(path: &Path, contents: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

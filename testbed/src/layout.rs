//! Where one test bed lives: its directories, its network numbers and the names of what it makes.
//! Everything a test bed creates on the host is named from here, so `down` and the teardown test
//! know exactly what to look for.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::Error;

/// Root of every test bed's state (certificates, etcd data, containerd root, logs). Not a cache:
/// `down` removes a test bed's directory and this one once it is empty.
pub const STATE_ROOT: &str = "/var/lib/inflight-testbed";
/// The name used by `TestBed::shared()` and the CLI when none is given.
pub const DEFAULT_NAME: &str = "default";
/// The cluster's DNS domain, as every Kubernetes user expects it.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Port of the API server on the node address.
pub const API_PORT: u16 = 6443;
/// How many test beds may run side by side (one /24 of each range per bed).
pub const MAX_BEDS: u8 = 64;

/// The cache of built components and images (`$INFLIGHT_CACHE` or `$HOME/.cache/inflight`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("INFLIGHT_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/inflight")
}

/// One test bed: a name chosen by the user and an index (allocated at `up`) that picks its addresses.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    pub index: u8,
}

impl Layout {
    pub fn new(name: &str, index: u8) -> Result<Self, Error> {
        validate_name(name)?;
        if index >= MAX_BEDS {
            return Err(Error::Invalid(format!(
                "test bed index {index} is not below {MAX_BEDS}"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            index,
        })
    }

    pub fn dir(&self) -> PathBuf {
        state_dir(&self.name)
    }
    pub fn pki(&self) -> PathBuf {
        self.dir().join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir().join("logs")
    }
    pub fn pids(&self) -> PathBuf {
        self.dir().join("pids")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("admin.kubeconfig")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir().join("containerd/containerd.sock")
    }

    /// The network namespace every cluster process runs in: iptables chains, the CNI bridge, pod
    /// interfaces and loopback ports are private to it, so two test beds never collide.
    pub fn netns(&self) -> String {
        format!("inflight-{}", self.name)
    }
    /// Host end of the veth pair into the namespace (interface names are at most 15 bytes).
    pub fn host_link(&self) -> String {
        format!("inflight{}", self.index)
    }
    /// cgroup parent of every pod of this bed (kubelet `cgroupRoot`).
    pub fn cgroup_root(&self) -> String {
        format!("inflight-{}", self.name)
    }
    pub fn node_name(&self) -> String {
        format!("inflight-{}", self.name)
    }

    /// Host side of the veth pair.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.index, 1)
    }
    /// The node's address: API server, kubelet and kube-proxy listen here.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.index, 2)
    }
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }
    pub fn pod_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }
    pub fn service_cidr(&self) -> String {
        format!("10.96.{}.0/24", self.index)
    }
    /// ClusterIP of the `kubernetes` Service (first address of the range).
    pub fn api_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, self.index, 1)
    }
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, self.index, 10)
    }
    pub fn api_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.node_ip())
    }
}

pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// Names end up in interface, namespace and cgroup names: keep them short and plain.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "test bed name {name:?}: use 1 to 20 of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let l = Layout::new("abcdefghij-klmnopqrs", MAX_BEDS - 1).unwrap();
        assert!(l.host_link().len() <= 15, "{}", l.host_link());
        assert_eq!(l.node_ip(), Ipv4Addr::new(10, 250, 63, 2));
        assert_eq!(l.dns_ip(), Ipv4Addr::new(10, 96, 63, 10));
        assert!(Layout::new("Bad_Name", 0).is_err());
        assert!(Layout::new("ok", MAX_BEDS).is_err());
        assert!(validate_name("-x").is_err());
    }
}

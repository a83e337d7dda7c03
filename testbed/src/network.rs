//! The bed's network: a namespace of its own joined to the host by one veth pair. Inside it the node
//! has a real, non-loopback address; on the host, routes to the pod and Service ranges through the
//! pair let tests reach pods and ClusterIPs directly. Deleting the namespace removes the pair, the
//! CNI bridge, the pods' links and every iptables chain of kube-proxy and CNI at once.

use crate::layout::Layout;
use crate::process::run;
use crate::Error;

pub fn create(layout: &Layout) -> Result<(), Error> {
    let ns = layout.netns();
    let host = layout.host_link();
    // Left over from a bed that was killed rather than brought down: start clean.
    destroy(layout);
    run("ip", &["netns", "add", &ns])?;
    run(
        "ip",
        &[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", layout.host_ip()),
            "dev",
            &host,
        ],
    )?;
    run("ip", &["link", "set", &host, "up"])?;
    for route in [layout.pod_cidr(), layout.service_cidr()] {
        run(
            "ip",
            &[
                "route",
                "replace",
                &route,
                "via",
                &layout.node_ip().to_string(),
                "dev",
                &host,
            ],
        )?;
    }
    let inside = |args: &[&str]| -> Result<String, Error> {
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        run("ip", &all)
    };
    inside(&["ip", "link", "set", "lo", "up"])?;
    inside(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", layout.node_ip()),
        "dev",
        "eth0",
    ])?;
    inside(&["ip", "link", "set", "eth0", "up"])?;
    inside(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &layout.host_ip().to_string(),
    ])?;
    // Per-namespace switches a node needs: routing between eth0 and the pod bridge, and bridged
    // pod-to-pod traffic through iptables so that a ClusterIP answered by a pod on the same bridge
    // is translated back.
    inside(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        inside(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
    } else {
        // Without br_netfilter, a pod calling a ClusterIP served by a pod on the same bridge gets
        // no answer; everything else works. This host cannot load modules for us.
        eprintln!("[testbed] warning: br_netfilter is not loaded (no /proc/sys/net/bridge): pod→Service→pod on the same node will fail");
    }
    Ok(())
}

/// Removes the namespace (and with it everything inside) and the host end of the pair. Idempotent.
pub fn destroy(layout: &Layout) {
    let _ = run("ip", &["netns", "del", &layout.netns()]);
    let _ = run("ip", &["link", "del", &layout.host_link()]);
}

/// Whether anything of the bed's network is still on the host.
pub fn leftovers(layout: &Layout) -> Vec<String> {
    let mut found = Vec::new();
    if std::path::Path::new("/run/netns")
        .join(layout.netns())
        .exists()
    {
        found.push(format!("network namespace {}", layout.netns()));
    }
    if std::path::Path::new("/sys/class/net")
        .join(layout.host_link())
        .exists()
    {
        found.push(format!("link {}", layout.host_link()));
    }
    if let Ok(routes) = run("ip", &["route", "show"]) {
        for line in routes.lines().filter(|l| l.contains(&layout.host_link())) {
            found.push(format!("route {line}"));
        }
    }
    found
}

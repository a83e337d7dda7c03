//! A second test bed, side by side with the shared one, comes up and goes down leaving nothing:
//! no process, network namespace, link, route, mount, cgroup, shim socket, host iptables rule,
//! host ipset or directory. It enforces NetworkPolicies, so kube-router's chains and sets are among
//! what must go. Each check is made by reading the host directly (not through the crate's own
//! `leftovers`), and each is first shown to see the bed while it runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use inflight_testbed::{cluster, layout, UpOptions};

const NAME: &str = "teardown";

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn entries(dir: &str) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything on the host that names the bed, by kind.
#[derive(Debug, Default)]
struct Traces {
    processes: Vec<String>,
    mounts: Vec<String>,
    netns: bool,
    link: bool,
    routes: Vec<String>,
    cgroups: Vec<String>,
    dir: bool,
}

fn traces(state_dir: &Path, link: &str) -> Traces {
    let needle = state_dir.display().to_string();
    let processes = entries("/proc")
        .into_iter()
        .filter(|p| p.parse::<u32>().is_ok_and(|p| p != std::process::id()))
        .filter_map(|p| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then(|| format!("{p}: {cmd}"))
        })
        .collect();
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle) || l.contains(&format!("inflight-{NAME}")))
        .map(str::to_owned)
        .collect();
    let cgroups = entries("/sys/fs/cgroup")
        .into_iter()
        .map(|h| format!("/sys/fs/cgroup/{h}/inflight-{NAME}"))
        .filter(|d| Path::new(d).exists())
        .collect();
    Traces {
        processes,
        mounts,
        netns: sh("ip", &["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&format!("inflight-{NAME}"))),
        link: sh("ip", &["-o", "link", "show"])
            .lines()
            .any(|l| l.contains(&format!(": {link}@")) || l.contains(&format!(": {link}:"))),
        routes: sh("ip", &["route", "show"])
            .lines()
            .filter(|l| l.contains(&format!("dev {link} ")))
            .map(str::to_owned)
            .collect(),
        cgroups,
        dir: state_dir.exists(),
    }
}

#[test]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
fn testbed_second_bed_side_by_side_and_down_leaves_nothing_behind() {
    let iptables_before = sh("iptables", &["-S"]);
    let nat_before = sh("iptables", &["-t", "nat", "-S"]);
    let ipsets_before = sh("ipset", &["list", "-n"]);
    let shims_before = entries("/run/containerd/s");
    let tmp_before: BTreeSet<String> = entries("/tmp")
        .into_iter()
        .filter(|e| e.contains("inflight"))
        .collect();

    // A bed of the same name left half-made (a crash before `ready`): `up` clears it first. When
    // no other bed runs this leftover is all the state root holds, which clearing once removed
    // with it (CI, 2026-12-02).
    let state_dir = layout::state_dir(NAME);
    fs::create_dir_all(&state_dir).unwrap();
    fs::write(
        state_dir.join("index"),
        format!("{}\n", layout::MAX_BEDS - 1),
    )
    .unwrap();
    fs::write(state_dir.join("half-made"), "").unwrap();

    let bed = cluster::up(
        NAME,
        &UpOptions {
            keda: false,
            network_policy: true,
            keep_on_failure: false,
        },
    )
    .unwrap();
    assert!(
        !state_dir.join("half-made").exists(),
        "the half-made bed was not cleared"
    );
    let link = bed.host_link();

    // While it runs, every check sees it: the checks below can fail.
    let up = traces(&state_dir, &link);
    assert!(
        up.processes.len() >= 7,
        "daemons and shims: {:?}",
        up.processes
    );
    assert!(
        up.processes.iter().any(|p| p.contains("containerd-shim")),
        "a pod's shim: {:?}",
        up.processes
    );
    assert!(
        up.mounts.iter().any(|m| m.contains("/netns/")),
        "a pod network namespace: {:?}",
        up.mounts
    );
    assert!(
        up.netns && up.link && !up.routes.is_empty() && up.dir,
        "{up:?}"
    );
    assert!(!up.cgroups.is_empty(), "{up:?}");
    assert!(
        up.processes.iter().any(|p| p.contains("kube-router")),
        "the NetworkPolicy engine: {:?}",
        up.processes
    );
    let netns = format!("--net=/run/netns/{}", bed.netns());
    assert!(
        sh("nsenter", &[&netns, "iptables", "-S", "FORWARD"]).contains("KUBE-ROUTER-FORWARD"),
        "kube-router's chains in the bed's namespace"
    );
    // Side by side: the shared bed, if up, has its own index, link and node address.
    if let Some(shared) = cluster::existing(layout::DEFAULT_NAME) {
        assert_ne!(shared.index, bed.index);
        assert_ne!(shared.node_ip(), bed.node_ip());
    }

    let left = cluster::down(NAME).unwrap();
    assert!(left.is_empty(), "down reported leftovers: {left:?}");

    let after = traces(&state_dir, &link);
    assert!(
        after.processes.is_empty(),
        "processes left: {:?}",
        after.processes
    );
    assert!(after.mounts.is_empty(), "mounts left: {:?}", after.mounts);
    assert!(
        after.cgroups.is_empty(),
        "cgroups left: {:?}",
        after.cgroups
    );
    assert!(
        !after.netns && !after.link && after.routes.is_empty() && !after.dir,
        "{after:?}"
    );
    assert_eq!(
        sh("iptables", &["-S"]),
        iptables_before,
        "host filter rules changed"
    );
    assert_eq!(
        sh("iptables", &["-t", "nat", "-S"]),
        nat_before,
        "host nat rules changed"
    );
    assert_eq!(
        sh("ipset", &["list", "-n"]),
        ipsets_before,
        "host ipsets changed"
    );
    let new_shims: Vec<_> = entries("/run/containerd/s")
        .difference(&shims_before)
        .cloned()
        .collect();
    assert!(
        new_shims.is_empty(),
        "shim sockets left in /run/containerd/s: {new_shims:?}"
    );
    let tmp_after: BTreeSet<String> = entries("/tmp")
        .into_iter()
        .filter(|e| e.contains("inflight"))
        .collect();
    assert_eq!(tmp_after, tmp_before, "temporary files left");
}

//! NetworkPolicies are enforced on the test bed when a test asks for it (kube-router's firewall): a
//! deny-all-ingress policy shuts a pod's port to the host and to pods of other namespaces, a policy
//! allowing one namespace lets that namespace's pod in and keeps the other out, and deleting the
//! policies opens the port again. Every step waits for the engine to act, never for a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{apply, demo_container, eventually};
use inflight_testbed::TestBed;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 8080;

/// A demo app pod `name` in the bed's namespace: the server, and in other namespaces the clients
/// (its image has no shell; `kubectl exec` runs its `get` command).
fn demo_pod(tb: &TestBed, name: &str) {
    apply(
        tb,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [demo_container()], "terminationGracePeriodSeconds": 1}
        }),
    );
}

async fn ready_ip(tb: &TestBed, name: &str) -> IpAddr {
    let pods: Api<Pod> = Api::namespaced(tb.client(), tb.namespace());
    eventually(&format!("pod {name} Ready"), 120, || async {
        let status = pods.get(name).await.ok()?.status?;
        let ready = status
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            status.pod_ip?.parse().ok()
        } else {
            None
        }
    })
    .await
}

/// Whether an HTTP request from the host (through the bed's veth pair) is answered.
async fn answers_host(ip: IpAddr) -> bool {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(SocketAddr::new(ip, PORT)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: server\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        // "HTTP/1.0 200 OK": the status of the first line.
        let status = String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .map(str::to_owned);
        std::io::Result::Ok(status.as_deref() == Some("200"))
    };
    tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .is_ok_and(|r| r.is_ok_and(|ok| ok))
}

/// Whether an HTTP request from the `client` pod of `from` is answered; `None` when the answer
/// is neither (exec itself failed: the question is asked again).
fn answers_pod(from: &TestBed, ip: IpAddr) -> Option<bool> {
    let url = format!("http://{ip}:{PORT}/healthz");
    let get = ["/inflight-demo-app", "get", &url, "--timeout", "2s"];
    let mut args = vec!["exec", "client", "--"];
    args.extend(get);
    match from.kubectl(&args) {
        Ok(_) => Some(true),
        // The demo app names the request it could not make: the network said no.
        Err(e) if e.to_string().contains(&format!("request 0 to {url}")) => Some(false),
        Err(_) => None,
    }
}

/// Waits until the server's port is (`open`) or is not answered from the host.
async fn host_sees(ip: IpAddr, open: bool) {
    let what = format!("the host {} {ip}:{PORT}", reach(open));
    eventually(&what, 60, || async {
        (answers_host(ip).await == open).then_some(())
    })
    .await;
}

/// Waits until the server's port is (`open`) or is not answered from `from`'s client pod.
async fn pod_sees(from: &TestBed, ip: IpAddr, open: bool) {
    let what = format!("{}/client {} {ip}:{PORT}", from.namespace(), reach(open));
    eventually(&what, 60, || async {
        (answers_pod(from, ip)? == open).then_some(())
    })
    .await;
}

/// Asks `from`'s client pod once (again only if exec failed): the answer, not a wait for one.
async fn pod_answered(from: &TestBed, ip: IpAddr) -> bool {
    eventually("an answer from kubectl exec", 30, || async {
        answers_pod(from, ip)
    })
    .await
}

fn reach(open: bool) -> &'static str {
    if open {
        "to reach"
    } else {
        "to be refused by"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_network_policies_deny_then_allow_one_namespace_then_open_again() {
    let server = TestBed::shared_with_network_policies().await.unwrap();
    let friend = TestBed::shared().await.unwrap();
    let stranger = TestBed::shared().await.unwrap();
    demo_pod(&server, "server");
    demo_pod(&friend, "client");
    demo_pod(&stranger, "client");
    let ip = ready_ip(&server, "server").await;
    ready_ip(&friend, "client").await;
    ready_ip(&stranger, "client").await;

    // The engine runs, and without a policy everything is allowed.
    host_sees(ip, true).await;
    pod_sees(&friend, ip, true).await;
    pod_sees(&stranger, ip, true).await;

    // Deny all ingress to every pod of the server's namespace.
    apply(
        &server,
        &serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }),
    );
    host_sees(ip, false).await;
    pod_sees(&friend, ip, false).await;
    pod_sees(&stranger, ip, false).await;

    // Allow the friend's namespace (policies add up: the deny-all stays).
    apply(
        &server,
        &serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-friend"},
            "spec": {
                "podSelector": {}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": friend.namespace()
                }}}]}]
            }
        }),
    );
    pod_sees(&friend, ip, true).await;
    assert!(
        !pod_answered(&stranger, ip).await,
        "{} got in with only {} allowed",
        stranger.namespace(),
        friend.namespace()
    );
    assert!(
        !answers_host(ip).await,
        "the host got in with only {} allowed",
        friend.namespace()
    );

    // No policy left: open to everyone again.
    server
        .kubectl(&["delete", "networkpolicy", "deny-all", "allow-friend"])
        .unwrap();
    host_sees(ip, true).await;
    pod_sees(&friend, ip, true).await;
    pod_sees(&stranger, ip, true).await;
}

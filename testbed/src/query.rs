//! What tests read back from the bed, through kubectl as the admin in the test's namespace: one
//! copy for every crate's bed tests. Each answers `None` or an empty value while the object is not
//! (yet) there, for tests to poll with [`crate::eventually`].

use serde_json::{json, Value};

use crate::TestBed;

/// `kubectl get <what> -o json`, parsed.
pub fn get(tb: &TestBed, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    tb.kubectl(&args)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// (spec.replicas, readyReplicas) of a Deployment.
pub fn replicas(tb: &TestBed, name: &str) -> (i64, i64) {
    let d = get(tb, &[&format!("deployment/{name}")]).unwrap_or_default();
    (
        d["spec"]["replicas"].as_i64().unwrap_or(0),
        d["status"]["readyReplicas"].as_i64().unwrap_or(0),
    )
}

/// A Service's ClusterIP (the bed routes the Service range to its node, so this host reaches it).
pub fn cluster_ip(tb: &TestBed, svc: &str) -> String {
    tb.kubectl(&["get", "service", svc, "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap_or_default()
}

/// The ready addresses (sorted, as [`ready_ips`]) and the port of an EndpointSlice.
pub fn slice_ready(tb: &TestBed, name: &str) -> Option<(Vec<String>, i64)> {
    let s = get(tb, &[&format!("endpointslice/{name}")])?;
    let port = s["ports"][0]["port"].as_i64().unwrap_or(0);
    let mut ips: Vec<String> = s["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|e| e["conditions"]["ready"] == json!(true))
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    Some((ips, port))
}

/// The pods labelled `app=<app>` that are not being deleted.
pub fn pods(tb: &TestBed, app: &str) -> Vec<Value> {
    let list = get(tb, &["pods", "-l", &format!("app={app}")]).unwrap_or_default();
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// (name, IP) of the ready pods of `app`, by IP.
pub fn ready_pods(tb: &TestBed, app: &str) -> Vec<(String, String)> {
    ready_pods_in(tb, tb.namespace(), app)
}

/// (name, IP) of the ready pods labelled `app=<app>` in namespace `ns` (that are not being
/// deleted), by IP.
pub fn ready_pods_in(tb: &TestBed, ns: &str, app: &str) -> Vec<(String, String)> {
    let list: Value = crate::api::kubectl_run(
        tb.layout(),
        &[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "json",
        ],
    )
    .ok()
    .and_then(|s| serde_json::from_str(&s).ok())
    .unwrap_or_default();
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p))
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_owned(),
                p["status"]["podIP"].as_str()?.to_owned(),
            ))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The IPs of `app`'s ready pods, sorted as [`slice_ready`] sorts a slice's, so the two compare.
pub fn ready_ips(tb: &TestBed, app: &str) -> Vec<String> {
    ready_pods(tb, app).into_iter().map(|(_, ip)| ip).collect()
}

//! Talking to a bed's API server: the admin client, kubectl, server-side apply of manifests, and
//! waiting for what the cluster does with an error that says what it was waiting for and why.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::components::kubectl;
use crate::layout::Layout;
use crate::{configs, process, Error};

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

pub(crate) fn render(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(template.to_owned(), |acc, (k, v)| {
        acc.replace(&format!("${{{k}}}"), v)
    })
}

pub(crate) async fn node_ready(nodes: &Api<Node>, name: &str) -> bool {
    let Ok(node) = nodes.get(name).await else {
        return false;
    };
    node.status
        .and_then(|s| s.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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

pub(crate) fn timeout(what: &str, secs: u64, layout: &Layout, log: &str) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        assert_eq!(
            render("a ${X} ${Y} ${X}", &[("X", "1".into()), ("Y", "2".into())]),
            "a 1 2 1"
        );
    }
}

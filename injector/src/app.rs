//! The app behind the proxy: the port it forwards to, and the app's own readiness check, which the
//! proxy's `/readyz` repeats so that a pod is Ready only when its app is.

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use inflight_proto::names::{PORT_ANNOTATION, PROXY_ADMIN_PORT, PROXY_PORT};

/// What the proxy needs to know of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The port the proxy forwards to, on 127.0.0.1.
    pub port: u16,
    /// The index of the container serving it (the first, when none declares it).
    pub container: usize,
    pub ready: ReadyCheck,
    /// Seconds the check may take: the probe's `timeoutSeconds` (the kubelet's default, 1).
    pub ready_timeout: i32,
    /// What the user should hear about, though the pod is injected.
    pub warnings: Vec<String>,
}

/// The app's readiness check, as the proxy's `/readyz` repeats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    /// An HTTP GET of `path` on `port`: 2xx or 3xx is ready.
    Http { path: String, port: u16 },
    /// A TCP connection to `port`.
    Tcp { port: u16 },
}

impl ReadyCheck {
    pub fn port(&self) -> u16 {
        match self {
            Self::Http { port, .. } | Self::Tcp { port } => *port,
        }
    }
}

/// Why a pod gets no proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoApp {
    /// No `inflight.dev/port` and no containerPort on the first container.
    NoPort,
    /// `inflight.dev/port` is neither a port number nor the name of a containerPort.
    BadPortAnnotation(String),
    /// A container of the pod already uses a port the proxy listens on.
    PortTaken(u16),
}

impl NoApp {
    /// The metric label of the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoPort => "no_port",
            Self::BadPortAnnotation(_) => "invalid_port_annotation",
            Self::PortTaken(_) => "port_conflict",
        }
    }

    /// The warning the API server shows the user (kubectl prints it).
    pub fn warning(&self) -> String {
        match self {
            Self::NoPort => format!("inflight: pod not injected: it declares no containerPort and has no {PORT_ANNOTATION} annotation naming the port the proxy should forward to"),
            Self::BadPortAnnotation(value) => format!("inflight: pod not injected: {PORT_ANNOTATION}={value:?} is neither a port number (1-65535) nor the name of a containerPort"),
            Self::PortTaken(port) => format!("inflight: pod not injected: a container already uses port {port}, which inflight-proxy listens on"),
        }
    }
}

/// The app of `pod`: the port from `inflight.dev/port` (a number or a containerPort's name), else
/// the first containerPort of the first container; the readiness check of the container that
/// declares that port (else the first container's).
pub fn of(pod: &Pod) -> Result<App, NoApp> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let declared = || {
        containers
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.ports.iter().flatten().map(move |p| (i, p)))
    };
    for (_, p) in declared() {
        if p.container_port == i32::from(PROXY_PORT)
            || p.container_port == i32::from(PROXY_ADMIN_PORT)
        {
            return Err(NoApp::PortTaken(p.container_port as u16));
        }
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PORT_ANNOTATION));
    let (port, owner) = match annotation {
        Some(value) => {
            let value = value.trim();
            match value.parse::<u16>() {
                Ok(port) if port > 0 => {
                    let owner = declared().find(|(_, p)| p.container_port == i32::from(port));
                    (port, owner.map_or(0, |(i, _)| i))
                }
                Ok(_) => return Err(NoApp::BadPortAnnotation(value.to_owned())),
                Err(_) => match declared().find(|(_, p)| p.name.as_deref() == Some(value)) {
                    Some((i, p)) => (
                        valid_port(p.container_port)
                            .ok_or_else(|| NoApp::BadPortAnnotation(value.to_owned()))?,
                        i,
                    ),
                    None => return Err(NoApp::BadPortAnnotation(value.to_owned())),
                },
            }
        }
        None => {
            let first = containers.first().and_then(|c| c.ports.as_ref()?.first());
            match first.and_then(|p| valid_port(p.container_port)) {
                Some(port) => (port, 0),
                None => return Err(NoApp::NoPort),
            }
        }
    };
    if port == PROXY_PORT || port == PROXY_ADMIN_PORT {
        return Err(NoApp::PortTaken(port));
    }
    let mut warnings = Vec::new();
    let probed = containers
        .get(owner)
        .and_then(|c| Some((c, c.readiness_probe.as_ref()?)));
    let ready = probed.map_or(ReadyCheck::Tcp { port }, |(c, probe)| {
        readiness(c, probe, port, &mut warnings)
    });
    let ready_timeout = probed
        .and_then(|(_, probe)| probe.timeout_seconds)
        .filter(|t| (1..=60).contains(t))
        .unwrap_or(1);
    Ok(App {
        port,
        container: owner,
        ready,
        ready_timeout,
        warnings,
    })
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0)
}

/// The proxy's version of the container's readiness probe. What it cannot repeat (an exec or
/// gRPC probe, HTTPS) becomes a TCP check of the app's port, with a warning: the kubelet still
/// runs the app's own probe, so the pod's Ready stays right either way.
fn readiness(
    container: &Container,
    probe: &Probe,
    app_port: u16,
    warnings: &mut Vec<String>,
) -> ReadyCheck {
    let named = |port: &IntOrString| -> Option<u16> {
        match port {
            IntOrString::Int(p) => valid_port(*p),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| valid_port(p.container_port)),
        }
    };
    if let Some(get) = &probe.http_get {
        let Some(port) = named(&get.port) else {
            warnings.push(format!("inflight: the readinessProbe's port {:?} names no containerPort of {:?}; the proxy checks that port {app_port} accepts connections", get.port, container.name));
            return ReadyCheck::Tcp { port: app_port };
        };
        if get
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            warnings.push(format!("inflight: the readinessProbe of {:?} is HTTPS; the proxy checks that port {port} accepts connections", container.name));
            return ReadyCheck::Tcp { port };
        }
        let path = get
            .path
            .as_deref()
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        return ReadyCheck::Http {
            path: path.to_owned(),
            port,
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        if let Some(port) = named(&tcp.port) {
            return ReadyCheck::Tcp { port };
        }
    }
    ReadyCheck::Tcp { port: app_port }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_first_port_of_the_first_container_by_default() {
        let p = pod(serde_json::json!({"metadata": {}, "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 8080}, {"containerPort": 9000}]},
            {"name": "other", "ports": [{"containerPort": 7000}]}]}}));
        let app = of(&p).unwrap();
        assert_eq!(app.port, 8080);
        assert_eq!(app.ready, ReadyCheck::Tcp { port: 8080 });
    }

    #[test]
    fn the_annotation_names_a_port_by_number_or_by_name() {
        let spec = serde_json::json!({"containers": [
            {"name": "app", "ports": [{"containerPort": 8080}]},
            {"name": "api", "ports": [{"containerPort": 9000, "name": "api"}],
             "readinessProbe": {"httpGet": {"path": "/ready", "port": "api"}}}]});
        for value in ["9000", "api"] {
            let p = pod(
                serde_json::json!({"metadata": {"annotations": {PORT_ANNOTATION: value}}, "spec": spec}),
            );
            let app = of(&p).unwrap();
            assert_eq!(app.port, 9000, "{value}");
            // The readiness check is that of the container serving the port.
            assert_eq!(
                app.ready,
                ReadyCheck::Http {
                    path: "/ready".into(),
                    port: 9000
                }
            );
        }
        let p = pod(
            serde_json::json!({"metadata": {"annotations": {PORT_ANNOTATION: "nope"}}, "spec": spec}),
        );
        assert_eq!(of(&p), Err(NoApp::BadPortAnnotation("nope".into())));
        let p = pod(
            serde_json::json!({"metadata": {"annotations": {PORT_ANNOTATION: "0"}}, "spec": spec}),
        );
        assert_eq!(of(&p), Err(NoApp::BadPortAnnotation("0".into())));
    }

    #[test]
    fn no_port_anywhere_is_no_app() {
        let p = pod(serde_json::json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(of(&p), Err(NoApp::NoPort));
    }

    #[test]
    fn a_pod_already_using_the_proxys_ports_is_not_injected() {
        let p = pod(serde_json::json!({"metadata": {}, "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 8080}, {"containerPort": 15090}]}]}}));
        assert_eq!(of(&p), Err(NoApp::PortTaken(15090)));
    }

    #[test]
    fn a_named_probe_port_is_resolved_and_an_unknown_one_falls_back_with_a_warning() {
        let p = pod(serde_json::json!({"metadata": {}, "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 8081, "name": "health"}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "timeoutSeconds": 3}}]}}));
        let app = of(&p).unwrap();
        assert_eq!(
            app.ready,
            ReadyCheck::Http {
                path: "/healthz".into(),
                port: 8081
            }
        );
        assert!(app.warnings.is_empty());
        assert_eq!(app.ready_timeout, 3);

        let p = pod(serde_json::json!({"metadata": {}, "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": "missing"}}}]}}));
        let app = of(&p).unwrap();
        assert_eq!(app.ready, ReadyCheck::Tcp { port: 8080 });
        assert_eq!(app.warnings.len(), 1);
    }

    #[test]
    fn probes_the_proxy_cannot_repeat_become_a_tcp_check() {
        for probe in [
            serde_json::json!({"exec": {"command": ["true"]}}),
            serde_json::json!({"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}}),
        ] {
            let p = pod(serde_json::json!({"metadata": {}, "spec": {"containers": [
                {"name": "app", "ports": [{"containerPort": 8443}], "readinessProbe": probe}]}}));
            assert_eq!(of(&p).unwrap().ready, ReadyCheck::Tcp { port: 8443 });
        }
    }
}

//! The `inflight-proxy` container the injector adds.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader,
    LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use inflight_proto::names::{
    PROXY_ADMIN_PORT, PROXY_ADMIN_PORT_NAME, PROXY_CONTAINER, PROXY_PORT, PROXY_PORT_NAME,
    TOKEN_AUDIENCE, TOKEN_DIR,
};

use crate::app::{App, ReadyCheck};
use crate::config::ProxyFlags;
use crate::workload::Workload;

/// How every injected proxy is made, from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub pull_policy: Option<String>,
    pub aggregator: Vec<String>,
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29), else a container.
    pub native: bool,
    pub resources: ResourceRequirements,
    pub uid: i64,
    pub drain_period: Duration,
    /// The value of `inflight.dev/injected`.
    pub version: String,
    pub tokens: Tokens,
}

/// Where each pod's drain token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tokens {
    /// 128 random bits from the system's generator: the real thing.
    Random,
    /// Always this one: for golden fixtures, which must not change from run to run.
    Fixed(String),
}

impl Tokens {
    pub fn next(&self) -> String {
        match self {
            Self::Fixed(token) => token.clone(),
            Self::Random => {
                use ring::rand::SecureRandom as _;
                let mut bytes = [0u8; 16];
                // The system's generator does not fail on Linux once booted; if it ever did,
                // a token the hook alone knows would still be needed, so fall back to the clock
                // and the address of a local (better than nothing, and logged).
                if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
                    tracing::error!("no random bytes from the system: drain token from the clock");
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    bytes = nanos.to_le_bytes();
                }
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            }
        }
    }
}

impl Settings {
    pub fn new(flags: &ProxyFlags, native: bool) -> Self {
        let quantities = |pairs: [(&str, Option<&String>); 2]| {
            let map: BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v?.clone()))))
                .collect();
            (!map.is_empty()).then_some(map)
        };
        Self {
            image: flags.proxy_image.clone(),
            pull_policy: flags.proxy_image_pull_policy.clone(),
            aggregator: flags.aggregator.clone(),
            native,
            resources: ResourceRequirements {
                requests: quantities([
                    ("cpu", Some(&flags.proxy_cpu_request)),
                    ("memory", Some(&flags.proxy_memory_request)),
                ]),
                limits: quantities([
                    ("cpu", flags.proxy_cpu_limit.as_ref()),
                    ("memory", flags.proxy_memory_limit.as_ref()),
                ]),
                ..ResourceRequirements::default()
            },
            uid: flags.proxy_uid,
            drain_period: flags.proxy_drain_period,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tokens: Tokens::Random,
        }
    }
}

/// The proxy's drain period and drain limit for a pod whose `terminationGracePeriodSeconds` is
/// `grace`: the limit leaves two seconds of the grace period for the proxy to exit before the
/// kubelet kills it, and the period (serving on while callers notice) is at most half the limit.
pub fn drain_times(grace_seconds: i64, period: Duration) -> (Duration, Duration) {
    let grace = Duration::from_secs(u64::try_from(grace_seconds).unwrap_or(0).min(3600));
    let limit = grace
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    (period.min(limit / 2), limit)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn admin_get(path: &str, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(PROXY_ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The proxy container for a pod with `app`, of `workload`, whose grace period is `grace`;
/// `drain_token`, when the app's preStop hook calls `/drain`.
pub fn container(
    settings: &Settings,
    app: &App,
    workload: Option<&Workload>,
    grace_seconds: i64,
    drain_token: Option<&str>,
) -> Container {
    let mut vars = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        env("INFLIGHT_UPSTREAM", format!("127.0.0.1:{}", app.port)),
    ];
    if let Some(w) = workload {
        vars.push(env("INFLIGHT_WORKLOAD", w.flag()));
    }
    if !settings.aggregator.is_empty() {
        vars.push(env("INFLIGHT_AGGREGATOR", settings.aggregator.join(",")));
    }
    match &app.ready {
        ReadyCheck::Http { path, port } => {
            vars.push(env("INFLIGHT_APP_READY_PATH", path.clone()));
            vars.push(env("INFLIGHT_APP_READY_PORT", port.to_string()));
        }
        ReadyCheck::Tcp { port } => vars.push(env("INFLIGHT_APP_READY_PORT", port.to_string())),
    }
    vars.push(env(
        "INFLIGHT_APP_READY_TIMEOUT",
        format!("{}s", app.ready_timeout),
    ));
    let (period, limit) = drain_times(grace_seconds, settings.drain_period);
    vars.push(env(
        "INFLIGHT_DRAIN_PERIOD",
        humantime::format_duration(period).to_string(),
    ));
    vars.push(env(
        "INFLIGHT_DRAIN_TIMEOUT",
        humantime::format_duration(limit).to_string(),
    ));
    if let Some(token) = drain_token {
        vars.push(env("INFLIGHT_DRAIN_TOKEN", token));
    }

    let port = |number: u16, name: &str| ContainerPort {
        container_port: i32::from(number),
        name: Some(name.to_owned()),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.pull_policy.clone(),
        env: Some(vars),
        ports: Some(vec![
            port(PROXY_PORT, PROXY_PORT_NAME),
            port(PROXY_ADMIN_PORT, PROXY_ADMIN_PORT_NAME),
        ]),
        // The proxy alone: the app starts only after this passes (native sidecar), so waiting
        // for the app here would deadlock the pod. A minute to start, checked every second.
        startup_probe: Some(admin_get("/healthz", 1, 1, 60)),
        // The app's readiness (repeated by the proxy) and not draining; counts toward the pod's
        // Ready. Its timeout leaves room for the app's check inside it.
        readiness_probe: Some(admin_get("/readyz", 1, app.ready_timeout + 1, 3)),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.uid),
            run_as_group: Some(settings.uid),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        restart_policy: settings.native.then(|| "Always".to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The volume of the pod's ServiceAccount token for the aggregator: an hour's token with the
/// aggregator's audience (good for nothing else), which kubelet rotates before it expires. Mounted
/// in the proxy alone; a projected token is made whether or not the pod automounts its API token.
pub const TOKEN_VOLUME: &str = "inflight-aggregator-token";
pub const TOKEN_SECONDS: i64 = 3600;

pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_owned()),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".to_owned(),
                }),
                ..VolumeProjection::default()
            }]),
            // Left to kubelet: 0644, or 0600 owned by the pod's user when every container runs
            // as one user. A mode without group or other read would leave the proxy's own user
            // (not root, not the app's) unable to read it; the volume is the proxy's alone.
            default_mode: None,
        }),
        ..Volume::default()
    }
}

/// The app container's preStop hook: the proxy drains (and answers once nothing is in flight)
/// before the kubelet sends the app its SIGTERM.
pub fn pre_stop(token: &str) -> LifecycleHandler {
    LifecycleHandler {
        http_get: Some(HTTPGetAction {
            path: Some("/drain".to_owned()),
            port: IntOrString::Int(i32::from(PROXY_ADMIN_PORT)),
            http_headers: Some(vec![HTTPHeader {
                name: "X-Inflight-Drain-Token".to_owned(),
                value: token.to_owned(),
            }]),
            ..HTTPGetAction::default()
        }),
        ..LifecycleHandler::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_differ_and_are_128_bits_of_hex() {
        let (a, b) = (Tokens::Random.next(), Tokens::Random.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_drain_fits_inside_the_grace_period() {
        let five = Duration::from_secs(5);
        assert_eq!(drain_times(30, five), (five, Duration::from_secs(28)));
        // A short grace period shortens both.
        assert_eq!(
            drain_times(6, five),
            (Duration::from_secs(2), Duration::from_secs(4))
        );
        // Zero or nonsense still gives the proxy a moment.
        assert_eq!(
            drain_times(0, five),
            (Duration::from_millis(500), Duration::from_secs(1))
        );
        assert_eq!(
            drain_times(-5, five),
            (Duration::from_millis(500), Duration::from_secs(1))
        );
        assert_eq!(drain_times(i64::MAX, five).1, Duration::from_secs(3598));
    }
}

//! Whether a report may come from a stream's caller: a pod reports for itself and its own
//! workload only; held requests come from an activator's ServiceAccount, as its own pod.

use inflight_proto::v1::report_request::Report;
use inflight_proto::v1::{PodIdentity, ReportRequest};

use super::{Caller, Refusal, ServiceAccount};

/// `Ok` when `caller` may send `request`; a request without a report is left to validation.
pub fn check(
    caller: &Caller,
    request: &ReportRequest,
    activators: &[ServiceAccount],
) -> Result<(), Refusal> {
    match &request.report {
        Some(Report::Pod(report)) => {
            let identity = report.pod.as_ref();
            same_pod(caller, identity)?;
            let reported = identity
                .and_then(|i| i.workload.as_ref())
                .map(|w| (w.kind.as_str(), w.name.as_str()));
            let labelled = caller
                .workload
                .as_ref()
                .map(|(kind, name)| (kind.as_str(), name.as_str()));
            if reported != labelled {
                let show = |w: Option<(&str, &str)>| {
                    w.map_or_else(|| "none".to_owned(), |(k, n)| format!("{k}/{n}"))
                };
                return Err(Refusal::OtherWorkload {
                    pod: format!("{}/{}", caller.namespace(), caller.pod),
                    labelled: show(labelled),
                    reported: show(reported),
                });
            }
            Ok(())
        }
        Some(Report::Held(report)) => {
            if !activators.contains(&caller.service_account) {
                return Err(Refusal::NotActivator {
                    service_account: caller.service_account.to_string(),
                    allowed: activators
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            same_pod(caller, report.activator.as_ref())
        }
        None => Ok(()),
    }
}

fn same_pod(caller: &Caller, identity: Option<&PodIdentity>) -> Result<(), Refusal> {
    let (namespace, pod) = identity.map_or(("", ""), |i| (i.namespace.as_str(), i.pod.as_str()));
    if namespace == caller.namespace() && pod == caller.pod {
        Ok(())
    } else {
        Err(Refusal::OtherPod {
            token_pod: format!("{}/{}", caller.namespace(), caller.pod),
            reported: format!("{namespace}/{pod}"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use inflight_proto::v1::{HeldReport, PodReport, WorkloadRef};

    fn caller(sa: &str, pod: &str, workload: Option<(&str, &str)>) -> Caller {
        Caller {
            service_account: sa.parse().unwrap(),
            pod: pod.into(),
            pod_uid: "uid".into(),
            workload: workload.map(|(k, n)| (k.into(), n.into())),
            expires_unix_ms: i64::MAX,
        }
    }

    fn identity(ns: &str, pod: &str, kind: &str, name: &str) -> PodIdentity {
        PodIdentity {
            namespace: ns.into(),
            pod: pod.into(),
            workload: Some(WorkloadRef {
                namespace: ns.into(),
                kind: kind.into(),
                name: name.into(),
            }),
            pod_ip: String::new(),
        }
    }

    fn pod_report(i: PodIdentity) -> ReportRequest {
        ReportRequest {
            report: Some(Report::Pod(PodReport {
                pod: Some(i),
                ..Default::default()
            })),
        }
    }

    fn held(i: PodIdentity) -> ReportRequest {
        ReportRequest {
            report: Some(Report::Held(HeldReport {
                activator: Some(i),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_pod_reports_for_itself_and_its_labelled_workload_only() {
        let web = caller("shop/default", "web-1", Some(("deployment", "web")));
        let none: &[ServiceAccount] = &[];
        check(
            &web,
            &pod_report(identity("shop", "web-1", "deployment", "web")),
            none,
        )
        .unwrap();
        let as_other_pod = check(
            &web,
            &pod_report(identity("shop", "web-2", "deployment", "web")),
            none,
        );
        assert_eq!(as_other_pod.unwrap_err().reason(), "other_pod");
        let other_namespace = check(
            &web,
            &pod_report(identity("bank", "web-1", "deployment", "web")),
            none,
        );
        assert_eq!(other_namespace.unwrap_err().reason(), "other_pod");
        let other_workload = check(
            &web,
            &pod_report(identity("shop", "web-1", "deployment", "api")),
            none,
        )
        .unwrap_err();
        assert_eq!(other_workload.reason(), "other_workload");
        assert!(other_workload.to_string().contains("deployment/web"));
        let unlabelled = caller("shop/default", "web-1", None);
        assert_eq!(
            check(
                &unlabelled,
                &pod_report(identity("shop", "web-1", "deployment", "web")),
                none
            )
            .unwrap_err()
            .reason(),
            "other_workload"
        );
    }

    #[test]
    fn only_an_activators_service_account_reports_held_requests_as_its_own_pod() {
        let activators = ["inflight-system/inflight-activator".parse().unwrap()];
        let activator = caller("inflight-system/inflight-activator", "act-1", None);
        let held_by = |pod| held(identity("inflight-system", pod, "pod", pod));
        check(&activator, &held_by("act-1"), &activators).unwrap();
        assert_eq!(
            check(&activator, &held_by("act-2"), &activators)
                .unwrap_err()
                .reason(),
            "other_pod"
        );
        let app = caller("inflight-system/default", "act-1", None);
        let refused = check(&app, &held_by("act-1"), &activators).unwrap_err();
        assert_eq!(refused.reason(), "not_activator");
        assert_eq!(refused.status().code(), tonic::Code::PermissionDenied);
    }
}

//! Authenticating the API server the way an extension API server does: its front-proxy client
//! certificate, checked against the requestheader client CA and allowed names published in the
//! `kube-system/extension-apiserver-authentication` ConfigMap; the caller from `X-Remote-User` and
//! `X-Remote-Group`; and a SubjectAccessReview for the resource, so `kubectl get --raw` obeys RBAC.

use std::collections::BTreeMap;

use http::HeaderMap;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::Client;

use super::routes::Attributes;

/// What the API server publishes about the proxy that calls us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeader {
    pub client_ca_pem: String,
    /// Common names the proxy certificate may have; empty means any certificate of the CA.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

/// Reads the requestheader settings from `kube-system/extension-apiserver-authentication`.
pub async fn load(client: &Client) -> Result<RequestHeader, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("extension-apiserver-authentication")
        .await
        .map_err(|e| format!("reading kube-system/extension-apiserver-authentication: {e}"))?;
    let data = cm.data.unwrap_or_default();
    let list = |key: &str| -> Result<Vec<String>, String> {
        data.get(key).map_or(Ok(Vec::new()), |v| {
            serde_json::from_str(v).map_err(|e| format!("{key}: {e}"))
        })
    };
    let client_ca_pem = data
        .get("requestheader-client-ca-file")
        .cloned()
        .filter(|pem| !pem.trim().is_empty())
        .ok_or("the API server publishes no requestheader-client-ca-file: is the aggregation layer configured?")?;
    Ok(RequestHeader {
        client_ca_pem,
        allowed_names: list("requestheader-allowed-names")?,
        username_headers: list("requestheader-username-headers")?,
        group_headers: list("requestheader-group-headers")?,
    })
}

/// The caller, when the request came through the API server's proxy. `peer_cn` is the common
/// name of the client certificate rustls verified against the requestheader CA (none: no
/// certificate). Err is the reason for a 401.
pub fn identity(
    rh: &RequestHeader,
    peer_cn: Option<&str>,
    headers: &HeaderMap,
) -> Result<(String, Vec<String>), String> {
    let cn = peer_cn.ok_or("no client certificate from the API server's front proxy")?;
    if !rh.allowed_names.is_empty() && !rh.allowed_names.iter().any(|n| n == cn) {
        return Err(format!(
            "client certificate {cn:?} is not among the requestheader allowed names"
        ));
    }
    let values = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .flat_map(|n| headers.get_all(n.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let user = values(&rh.username_headers)
        .into_iter()
        .find(|u| !u.is_empty())
        .ok_or("no user in the request headers")?;
    Ok((user, values(&rh.group_headers)))
}

/// Asks the API server whether `user` may `verb` the resource.
pub async fn authorized(
    client: &Client,
    user: &str,
    groups: &[String],
    a: Attributes<'_>,
) -> Result<bool, String> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(smi_types::GROUP.to_owned()),
                version: Some(smi_types::VERSION.to_owned()),
                resource: Some(a.resource.to_owned()),
                subresource: (!a.subresource.is_empty()).then(|| a.subresource.to_owned()),
                verb: Some(a.verb.to_owned()),
                namespace: a.namespace.map(str::to_owned),
                name: a.name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            extra: Some(BTreeMap::new()),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| format!("SubjectAccessReview: {e}"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rh() -> RequestHeader {
        RequestHeader {
            client_ca_pem: String::new(),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
        }
    }

    #[test]
    fn identity_from_the_front_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        let (user, groups) = identity(&rh(), Some("front-proxy-client"), &h).unwrap();
        assert_eq!(user, "alice");
        assert_eq!(groups, vec!["dev", "system:authenticated"]);
        assert!(identity(&rh(), None, &h).is_err(), "no certificate");
        assert!(
            identity(&rh(), Some("someone-else"), &h).is_err(),
            "not an allowed name"
        );
        assert!(
            identity(&rh(), Some("front-proxy-client"), &HeaderMap::new()).is_err(),
            "no user"
        );
    }
}

//! Authenticating the API server the way an extension API server does: its front-proxy client
//! certificate, checked against the requestheader client CA and allowed names (published in the
//! `kube-system/extension-apiserver-authentication` ConfigMap, or given on the command line); the
//! caller from the `X-Remote-User`, `X-Remote-Uid`, `X-Remote-Group` and `X-Remote-Extra-*`
//! headers it names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::Client;

/// What the API server publishes about the proxy that calls us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeader {
    pub client_ca_pem: String,
    /// Common names the proxy certificate may have; empty means any certificate of the CA.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_headers_prefix: Vec<String>,
}

/// Where the requestheader settings come from.
#[derive(Clone)]
pub enum Source {
    /// `kube-system/extension-apiserver-authentication`, as the API server publishes it.
    ConfigMap(Client),
    /// A CA file and allowed names of our own (`--requestheader-client-ca-file`), with the
    /// header names every Kubernetes API server's aggregation layer sends.
    File {
        ca: PathBuf,
        allowed_names: Vec<String>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConfigMap(_) => f.write_str("kube-system/extension-apiserver-authentication"),
            Self::File { ca, .. } => write!(f, "{}", ca.display()),
        }
    }
}

impl Source {
    pub async fn load(&self) -> Result<RequestHeader, String> {
        match self {
            Self::ConfigMap(client) => from_config_map(client).await,
            Self::File { ca, allowed_names } => {
                // A few kilobytes: read in place rather than on a blocking thread.
                let pem = std::fs::read_to_string(ca)
                    .map_err(|e| format!("--requestheader-client-ca-file {}: {e}", ca.display()))?;
                if pem.trim().is_empty() {
                    return Err(format!(
                        "--requestheader-client-ca-file {}: empty",
                        ca.display()
                    ));
                }
                let own = |s: &str| vec![s.to_owned()];
                Ok(RequestHeader {
                    client_ca_pem: pem,
                    allowed_names: allowed_names.clone(),
                    username_headers: own("X-Remote-User"),
                    uid_headers: own("X-Remote-Uid"),
                    group_headers: own("X-Remote-Group"),
                    extra_headers_prefix: own("X-Remote-Extra-"),
                })
            }
        }
    }
}

/// Reads the requestheader settings from `kube-system/extension-apiserver-authentication`.
async fn from_config_map(client: &Client) -> Result<RequestHeader, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("extension-apiserver-authentication")
        .await
        .map_err(|e| format!("reading kube-system/extension-apiserver-authentication: {e}"))?;
    from_data(&cm.data.unwrap_or_default())
}

fn from_data(data: &BTreeMap<String, String>) -> Result<RequestHeader, String> {
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
        // Published since Kubernetes 1.32; older API servers send no uid.
        uid_headers: list("requestheader-uid-headers")?,
        group_headers: list("requestheader-group-headers")?,
        extra_headers_prefix: list("requestheader-extra-headers-prefix")?,
    })
}

/// Who is calling, as the API server authenticated them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The caller, when the request came through the API server's proxy. `peer_cn` is the common
/// name of the client certificate verified against the requestheader CA (none: no certificate).
/// Err is the reason for a 401. Read as the API server's own requestheader authenticator reads
/// them, so the SubjectAccessReview names the same caller the API server authorized.
pub fn identity(
    rh: &RequestHeader,
    peer_cn: Option<&str>,
    headers: &HeaderMap,
) -> Result<Caller, String> {
    let cn = peer_cn.ok_or(
        "no client certificate of the requestheader CA: only the API server's front proxy may call",
    )?;
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
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let user = values(&rh.username_headers)
        .into_iter()
        .next()
        .ok_or("no user in the request headers")?;
    let uid = values(&rh.uid_headers).into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in &rh.extra_headers_prefix {
        let prefix = prefix.to_ascii_lowercase();
        // `HeaderName`s are lower case already.
        for (name, value) in headers {
            let Some(key) = name.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            let Ok(value) = value.to_str() else {
                continue;
            };
            extra
                .entry(unescape_extra_key(key))
                .or_default()
                .push(value.to_owned());
        }
    }
    Ok(Caller {
        user,
        uid,
        groups: values(&rh.group_headers),
        extra,
    })
}

/// An extra key as the API server escapes it into a header name (`%2F` for `/`); a malformed
/// escape is kept as sent, as the API server's own authenticator does.
fn unescape_extra_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return key.to_owned();
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| key.to_owned())
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
            uid_headers: vec!["X-Remote-Uid".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_headers_prefix: vec!["X-Remote-Extra-".into()],
        }
    }

    #[test]
    fn identity_from_the_front_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.insert("x-remote-uid", "7b1c".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        h.append(
            "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
            "JTI=1".parse().unwrap(),
        );
        h.append("x-remote-extra-scopes", "a".parse().unwrap());
        h.append("x-remote-extra-scopes", "b".parse().unwrap());
        let caller = identity(&rh(), Some("front-proxy-client"), &h).unwrap();
        assert_eq!(caller.user, "alice");
        assert_eq!(caller.uid.as_deref(), Some("7b1c"));
        assert_eq!(caller.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(
            caller.extra,
            BTreeMap::from([
                (
                    "authentication.kubernetes.io/credential-id".to_owned(),
                    vec!["JTI=1".to_owned()]
                ),
                ("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ])
        );
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

    #[test]
    fn malformed_extra_keys_are_kept_as_sent() {
        assert_eq!(unescape_extra_key("a%2fb"), "a/b");
        assert_eq!(unescape_extra_key("a%2"), "a%2");
        assert_eq!(unescape_extra_key("a%zzb"), "a%zzb");
        assert_eq!(unescape_extra_key("%ff"), "%ff", "not UTF-8");
    }

    #[test]
    fn the_published_settings_are_read_uid_headers_or_not() {
        let mut data = BTreeMap::from([
            ("requestheader-client-ca-file".to_owned(), "PEM".to_owned()),
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
            (
                "requestheader-username-headers".to_owned(),
                r#"["X-Remote-User"]"#.to_owned(),
            ),
            (
                "requestheader-group-headers".to_owned(),
                r#"["X-Remote-Group"]"#.to_owned(),
            ),
            (
                "requestheader-extra-headers-prefix".to_owned(),
                r#"["X-Remote-Extra-"]"#.to_owned(),
            ),
        ]);
        let without = from_data(&data).unwrap();
        assert!(without.uid_headers.is_empty());
        data.insert(
            "requestheader-uid-headers".to_owned(),
            r#"["X-Remote-Uid"]"#.to_owned(),
        );
        assert_eq!(
            from_data(&data).unwrap(),
            RequestHeader {
                client_ca_pem: "PEM".into(),
                ..rh()
            }
        );
        data.insert(
            "requestheader-group-headers".to_owned(),
            "X-Remote-Group".to_owned(),
        );
        let e = from_data(&data).unwrap_err();
        assert!(e.contains("requestheader-group-headers"), "{e}");
        data.remove("requestheader-client-ca-file");
        assert!(from_data(&data).is_err());
    }
}

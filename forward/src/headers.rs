//! Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are not
//! forwarded; everything else passes unchanged.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are always hop-by-hop (the same list as Go's
/// `httputil.ReverseProxy`, which users of the KEDA add-on and Knative know).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The protocol a request asks to upgrade to (`Connection: upgrade` with an
/// `Upgrade` header), read before the headers are stripped.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
/// `TE: trailers` is kept: it is end-to-end in meaning, and gRPC servers
/// require it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present is
    // cheaper than nine hashed removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("trailers")));
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Puts back the two headers an upgrade needs on the next hop.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Sets `X-Forwarded-For` and `X-Forwarded-Proto` for a request from
/// `client`. From a `trusted` peer (a proxy we were told to trust), its
/// address is appended to the `X-Forwarded-For` it sent and its
/// `X-Forwarded-Proto` is kept; from anyone else both are replaced, so no
/// pod can claim another client's address or `https` to the app.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: std::net::IpAddr,
    proto: &'static str,
    trusted: bool,
) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let client = client.to_string();
    let prior = if trusted {
        // Several X-Forwarded-For lines are one list (RFC 9110 §5.3).
        let lines: Vec<&str> = headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    } else {
        headers.remove(&XFP);
        None
    };
    let value = match prior {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(XFF, value);
    }
    if !headers.contains_key(&XFP) {
        headers.insert(XFP, HeaderValue::from_static(proto));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers_only() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("x-custom", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "te", "x-custom"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            upgrade_request(&ws).as_ref().map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(upgrade_request(&map(&[("upgrade", "websocket")])), None);
    }

    #[test]
    fn a_trusted_proxy_has_its_forwarded_for_appended_and_proto_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(
            &mut h,
            std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
            "http",
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.5, 10.0.0.2");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut fresh = HeaderMap::new();
        add_forwarded(
            &mut fresh,
            std::net::Ipv4Addr::LOCALHOST.into(),
            "http",
            true,
        );
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
        assert_eq!(fresh["x-forwarded-proto"], "http");
    }

    #[test]
    fn any_other_peer_has_both_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(
            &mut h,
            std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
            "http",
            false,
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}

//! A request target of the SMI API as the aggregation layer passes it on: any string, split at
//! its first `?` into the path and the query string, as `Uri::path` and `Uri::query` give them.
//!
//! - an accepted path names exactly the object it is read as: written back from the route, it is
//!   the path asked for (up to empty segments and a final `/`), and parses to the same route;
//! - what RBAC is asked about is that route's resource, verb, namespace and name, of a plural the
//!   API serves;
//! - `?t=` is refused or a window within the bounds its refusal states (1 s to the longest the
//!   pods keep); absent, it is the default;
//! - `?labelSelector=` is the value sent, decoded; its echo holds only equality terms of it.
#![no_main]

use std::time::Duration;

use inflight_aggregator::smi::routes::{self, Route, DEFAULT_WINDOW};
use inflight_aggregator::smi::{match_labels, selector};
use inflight_aggregator::traffic::MAX_WINDOW_MS;
use libfuzzer_sys::fuzz_target;
use smi_types::{GROUP, GROUP_VERSION, RESOURCES};

/// The path a route is served at, written out from the API's layout.
fn path_of(route: &Route) -> String {
    let base = format!("/apis/{GROUP_VERSION}");
    let object = |plural: &str, namespace: &Option<String>, name: Option<&str>| {
        let mut p = base.clone();
        if let Some(ns) = namespace {
            p += &format!("/namespaces/{ns}");
        }
        p += &format!("/{plural}");
        if let Some(name) = name {
            p += &format!("/{name}");
        }
        p
    };
    match route {
        Route::GroupList => "/apis".to_owned(),
        Route::Group => format!("/apis/{GROUP}"),
        Route::ResourceList => base,
        Route::List { plural, namespace } => object(plural, namespace, None),
        Route::Get {
            plural,
            namespace,
            name,
        } => object(plural, namespace, Some(name)),
        Route::Edges {
            plural,
            namespace,
            name,
        } => object(plural, namespace, Some(name)) + "/edges",
    }
}

/// `path` without empty segments or a final `/`.
fn canonical(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", segments.join("/"))
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    if let Some(route) = Route::parse(path) {
        let written = path_of(&route);
        assert_eq!(canonical(path), written, "{path:?} read as {route:?}");
        assert_eq!(Route::parse(&written).as_ref(), Some(&route), "{written:?}");
        match (&route, route.attributes()) {
            (Route::GroupList | Route::Group | Route::ResourceList, None) => {}
            (Route::List { plural, namespace }, Some(a)) => {
                assert_eq!((a.resource, a.subresource, a.verb), (&**plural, "", "list"));
                assert_eq!((a.namespace, a.name), (namespace.as_deref(), None));
            }
            (
                Route::Get {
                    plural,
                    namespace,
                    name,
                },
                Some(a),
            ) => {
                assert_eq!((a.resource, a.subresource, a.verb), (&**plural, "", "get"));
                assert_eq!((a.namespace, a.name), (namespace.as_deref(), Some(&**name)));
            }
            (
                Route::Edges {
                    plural,
                    namespace,
                    name,
                },
                Some(a),
            ) => {
                assert_eq!(
                    (a.resource, a.subresource, a.verb),
                    (&**plural, "edges", "get")
                );
                assert_eq!((a.namespace, a.name), (namespace.as_deref(), Some(&**name)));
            }
            (route, attributes) => panic!("{route:?} asks RBAC {attributes:?}"),
        }
        if let Some(a) = route.attributes() {
            assert!(RESOURCES.iter().any(|(p, _, _)| *p == a.resource), "{a:?}");
            assert!(!routes::kind_of(a.resource).is_empty());
            // Namespaces are cluster-scoped: never asked about inside one.
            assert!(a.resource != "namespaces" || a.namespace.is_none(), "{a:?}");
        }
    }

    let t = query_value(query, "t");
    match routes::window(query) {
        Ok(d) => {
            if t.is_none() {
                assert_eq!(d, DEFAULT_WINDOW);
            }
            let max = Duration::from_millis(MAX_WINDOW_MS.unsigned_abs());
            assert!(
                d >= Duration::from_secs(1) && d <= max,
                "t={t:?} taken as {d:?}"
            );
        }
        Err(why) => {
            assert!(t.is_some(), "no t= refused: {why}");
            assert!(why.starts_with("t="), "{why}");
        }
    }

    let sel = selector(query);
    if let Some(s) = &sel {
        assert!(!s.is_empty());
        assert_eq!(Some(s), query_value(query, "labelSelector").as_ref());
        let echoed = match_labels(s);
        for (k, v) in &echoed.match_labels {
            assert!(!k.ends_with('!'), "{s:?} echoed {k:?}");
            assert!(
                s.split(',')
                    .any(|term| term.contains(k.as_str()) && term.contains(v.as_str())),
                "{s:?} echoed {k:?}={v:?}"
            );
        }
    }
});

//! Aggregator addresses as given on the command line: `http://host:port`,
//! or `host:port`. A name is resolved to every address it has, so a headless
//! Service gives one stream per aggregator replica.

use std::net::{IpAddr, SocketAddr};

use inflight_proto::names::AGGREGATOR_GRPC_PORT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("aggregator address {0:?} is not a URL or host:port: {1}")]
    Invalid(String, String),
    #[error("aggregator address {0:?}: only plain-text gRPC (http://) is supported")]
    Scheme(String),
    #[error("cannot resolve aggregator host {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let trimmed = text.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("http://{trimmed}")
        };
        let uri: http::Uri = with_scheme.parse().map_err(|e: http::uri::InvalidUri| {
            TargetError::Invalid(text.to_owned(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(TargetError::Scheme(text.to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError::Invalid(text.to_owned(), "no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(TargetError::Invalid(text.to_owned(), "no host".into()));
        }
        Ok(Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(AGGREGATOR_GRPC_PORT),
        })
    }

    /// Parses a comma-separated list; empty entries are ignored.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Self>, TargetError> {
        items
            .iter()
            .flat_map(|s| s.as_ref().split(','))
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn is_literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, TargetError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| TargetError::Resolve {
                host: self.host.clone(),
                source,
            })?;
        let mut addrs: Vec<_> = addrs.collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_host_port_lists() {
        let t = Target::parse_list(&["http://agg.inflight-system:9091, 127.0.0.1:9000", "[::1]"]);
        let t = t.unwrap_or_default();
        assert_eq!(
            t,
            [
                Target {
                    host: "agg.inflight-system".into(),
                    port: 9091
                },
                Target {
                    host: "127.0.0.1".into(),
                    port: 9000
                },
                Target {
                    host: "::1".into(),
                    port: AGGREGATOR_GRPC_PORT
                },
            ]
        );
        assert!(t[1].is_literal() && t[2].is_literal() && !t[0].is_literal());
    }

    #[test]
    fn rejects_tls_and_garbage_with_the_reason() {
        let err = Target::parse("https://agg:9090")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("aggregator address \"https://agg:9090\": only plain-text gRPC (http://) is supported")
        );
        assert!(Target::parse("http://").is_err());
        assert!(Target::parse("a b:1").is_err());
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let t = Target::parse("localhost:9090").unwrap_or_else(|_| Target {
            host: String::new(),
            port: 0,
        });
        let addrs = t.resolve().await.unwrap_or_default();
        assert!(
            addrs
                .iter()
                .any(|a| a.ip().is_loopback() && a.port() == 9090),
            "{addrs:?}"
        );
    }
}

//! What the aggregator reads inside a token the API server has accepted: its expiry. The token's
//! signature is the API server's business (the TokenReview); this only decodes the claim.

use base64::Engine as _;

/// The longest token the aggregator looks at (a projected token is about a kilobyte).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// `exp` of a JWT, in Unix seconds; `None` when the token is not a JWT with one.
pub fn expiry(token: &str) -> Option<i64> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<i64>,
    }
    serde_json::from_slice::<Claims>(&bytes).ok()?.exp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(payload))
    }

    #[test]
    fn the_expiry_of_a_jwt_and_nothing_of_what_is_not_one() {
        assert_eq!(
            expiry(&jwt(
                r#"{"aud":["inflight.dev/aggregator"],"exp":1764763200}"#
            )),
            Some(1_764_763_200)
        );
        assert_eq!(expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry("a.b"), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert_eq!(expiry(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry(&"a.".repeat(10_000)), None);
    }
}

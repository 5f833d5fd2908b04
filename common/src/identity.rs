//! The caller's identity as the gateway asserts it to services.
//!
//! The gateway verifies the client's JWT at the edge, strips any identity headers the client
//! sent, and writes its own: user id, roles, a timestamp and an HMAC-SHA256 over them keyed by the
//! internal secret (`MALL_INTERNAL_SECRET`) that only mall processes know. A service checks the
//! signature with [`verify`], so a client that reaches a service directly, or sends its own
//! `x-mall-user-id` through the gateway, can never pose as another user.

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

/// The asserted user id.
pub const USER_ID: &str = "x-mall-user-id";
/// Comma-separated roles.
pub const ROLES: &str = "x-mall-roles";
/// Unix seconds at which the gateway signed.
pub const SIGNED_AT: &str = "x-mall-identity-ts";
/// Hex HMAC-SHA256 over version, user, roles and timestamp.
pub const SIGNATURE: &str = "x-mall-identity-sig";
/// Every identity header, for stripping.
pub const HEADERS: [&str; 4] = [USER_ID, ROLES, SIGNED_AT, SIGNATURE];

/// How far a signature's timestamp may be from the verifier's clock.
pub const MAX_SKEW_SECS: u64 = 300;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The JWT `sub`.
    pub user_id: String,
    /// The JWT `roles`.
    pub roles: Vec<String>,
}

impl Identity {
    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why asserted identity headers were rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Some identity headers are present but not all, or they are not valid text.
    #[error("incomplete identity headers")]
    Incomplete,
    /// The signature does not match: forged or altered.
    #[error("identity signature does not match")]
    Forged,
    /// The signature is too old or from the future.
    #[error("identity signature expired")]
    Expired,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], user_id: &str, roles: &str, signed_at: u64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("v1|{user_id}|{roles}|{signed_at}").as_bytes());
    mac
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Bytes of a hex string, or `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes the identity headers for `identity`, signed at `now` (unix seconds).
pub fn assert_identity(headers: &mut HeaderMap, secret: &[u8], identity: &Identity, now: u64) {
    let roles = identity.roles.join(",");
    let sig = to_hex(
        &mac(secret, &identity.user_id, &roles, now)
            .finalize()
            .into_bytes(),
    );
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put(USER_ID, identity.user_id.clone());
    put(ROLES, roles);
    put(SIGNED_AT, now.to_string());
    put(SIGNATURE, sig);
}

/// Removes every identity header (what a client sent must never reach a service).
pub fn strip(headers: &mut HeaderMap) {
    // Names parsed at compile time: the gateway strips on every request.
    const NAMES: [HeaderName; 4] = [
        HeaderName::from_static(USER_ID),
        HeaderName::from_static(ROLES),
        HeaderName::from_static(SIGNED_AT),
        HeaderName::from_static(SIGNATURE),
    ];
    for name in NAMES {
        headers.remove(name);
    }
}

/// The identity the gateway asserted, `Ok(None)` for an anonymous request, or an error for
/// headers that are incomplete, forged or stale.
pub fn verify(headers: &HeaderMap, secret: &[u8], now: u64) -> Result<Option<Identity>, IdentityError> {
    let get = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().map_err(|_| IdentityError::Incomplete))
    };
    let (user, roles, at, sig) = match (get(USER_ID), get(ROLES), get(SIGNED_AT), get(SIGNATURE)) {
        (None, None, None, None) => return Ok(None),
        (Some(u), Some(r), Some(t), Some(s)) => (u?, r?, t?, s?),
        _ => return Err(IdentityError::Incomplete),
    };
    let signed_at: u64 = at.parse().map_err(|_| IdentityError::Incomplete)?;
    let sig = from_hex(sig).ok_or(IdentityError::Forged)?;
    // Constant-time comparison.
    mac(secret, user, roles, signed_at)
        .verify_slice(&sig)
        .map_err(|_| IdentityError::Forged)?;
    if now.abs_diff(signed_at) > MAX_SKEW_SECS {
        return Err(IdentityError::Expired);
    }
    Ok(Some(Identity {
        user_id: user.to_owned(),
        roles: roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
    }))
}

/// The verification key, put in every request's extensions by the server.
#[derive(Clone)]
pub struct IdentityKey(std::sync::Arc<[u8]>);

impl IdentityKey {
    /// Wraps the internal secret.
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.into())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn caller(parts: &http::request::Parts) -> Result<Option<Identity>, crate::error::ApiError> {
    let key = parts
        .extensions
        .get::<IdentityKey>()
        .ok_or_else(|| crate::error::ApiError::internal("IdentityKey extension missing"))?;
    verify(&parts.headers, &key.0, now_secs()).map_err(|e| {
        crate::error::ApiError::new(http::StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    })
}

/// A handler argument for routes that need a signed-in user (401 `unauthorized` otherwise).
#[derive(Debug, Clone)]
pub struct RequireUser(pub Identity);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequireUser {
    type Rejection = crate::error::ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        caller(parts)?.map(Self).ok_or_else(|| {
            crate::error::ApiError::new(http::StatusCode::UNAUTHORIZED, "unauthorized", "sign in first")
        })
    }
}

/// A handler argument for admin routes (401 without identity, 403 `forbidden` without the role).
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub Identity);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequireAdmin {
    type Rejection = crate::error::ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let RequireUser(who) = RequireUser::from_request_parts(parts, state).await?;
        if who.has_role("admin") {
            Ok(Self(who))
        } else {
            Err(crate::error::ApiError::new(
                http::StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs the admin role",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            user_id: "42".into(),
            roles: vec!["admin".into()],
        }
    }

    #[test]
    fn a_signed_identity_verifies_and_a_tampered_one_does_not() {
        let mut headers = HeaderMap::new();
        assert_eq!(verify(&headers, b"k", 1000), Ok(None));
        assert_identity(&mut headers, b"k", &alice(), 1000);
        assert_eq!(verify(&headers, b"k", 1010), Ok(Some(alice())));
        assert_eq!(verify(&headers, b"other-key", 1010), Err(IdentityError::Forged));
        assert_eq!(
            verify(&headers, b"k", 1000 + MAX_SKEW_SECS + 1),
            Err(IdentityError::Expired)
        );

        headers.insert(USER_ID, HeaderValue::from_static("43"));
        assert_eq!(verify(&headers, b"k", 1010), Err(IdentityError::Forged));

        let mut forged = HeaderMap::new();
        forged.insert(USER_ID, HeaderValue::from_static("1"));
        assert_eq!(verify(&forged, b"k", 0), Err(IdentityError::Incomplete));
        strip(&mut headers);
        assert_eq!(verify(&headers, b"k", 1010), Ok(None));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(to_hex(&[0, 15, 255]), "000fff");
        assert_eq!(from_hex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
    }
}

//! The caller's identity as the gateway asserts it to services.
//!
//! The gateway verifies the client's JWT at the edge, strips any identity header the client
//! sent, and writes its own, ONE header (a service parses one name instead of four, and the
//! gateway builds one value):
//!
//! ```text
//! x-mall-identity: v1;<signature>;<signed at>;<roles>;<user id>
//! ```
//!
//! `<signature>` is the hex HMAC-SHA256, keyed by the internal secret (`MALL_INTERNAL_SECRET`)
//! that only mall processes know, over the value with the signature field taken out
//! (`v1;<signed at>;<roles>;<user id>`); `<signed at>` is unix seconds, `<roles>` is
//! comma-separated. The user id comes last, so it may hold any character a header value can;
//! roles may not hold `,` or `;` (see [`carriable`]), so the split is never ambiguous. A service
//! checks the signature with [`verify`], so a client that reaches a service directly, or sends its
//! own `x-mall-identity` through the gateway, can never pose as another user.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

/// The header that carries the asserted identity.
pub const HEADER: HeaderName = HeaderName::from_static("x-mall-identity");

/// The format's version prefix.
const VERSION: &str = "v1;";

/// Hex digits of an HMAC-SHA256.
const SIGNATURE_HEX_LEN: usize = 64;

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

/// Why an asserted identity header was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The header is not in the format (or not valid text).
    #[error("malformed identity header")]
    Incomplete,
    /// The signature does not match: forged or altered.
    #[error("identity signature does not match")]
    Forged,
    /// The signature is too old or from the future.
    #[error("identity signature expired")]
    Expired,
}

/// Why an identity cannot be asserted in the header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotCarriable {
    /// An empty user id, one with control characters, or one that ends in whitespace (which an
    /// HTTP parser trims off the end of a header value, and the signature with it).
    #[error("the user id is empty, holds control characters or ends in whitespace")]
    UserId,
    /// A role that is empty or holds `,`, `;` or control characters.
    #[error("a role is empty or holds ',', ';' or control characters")]
    Role,
}

/// Whether `identity` fits the header: a user id of printable characters (any UTF-8 but control
/// characters) that does not end in whitespace, and roles that are non-empty and hold neither
/// separator. The gateway refuses a token that does not fit (401) rather than pass on something
/// a service would parse otherwise.
pub fn carriable(identity: &Identity) -> Result<(), NotCarriable> {
    let printable = |s: &str| !s.chars().any(char::is_control);
    let user = &identity.user_id;
    if user.is_empty() || !printable(user) || user.ends_with([' ', '\t']) {
        return Err(NotCarriable::UserId);
    }
    let role_ok = |r: &String| !r.is_empty() && printable(r) && !r.contains([',', ';']);
    if !identity.roles.iter().all(role_ok) {
        return Err(NotCarriable::Role);
    }
    Ok(())
}

type HmacSha256 = Hmac<Sha256>;

/// The MAC over the signed part of the value (`v1;` and what follows the signature).
fn mac(key: &HmacSha256, signed: &[u8]) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(VERSION.as_bytes());
    mac.update(signed);
    mac
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends the lower-case hex of `bytes` to `s`, a chunk of digits per `push_str` rather than a
/// `push` (capacity check and `char` encoding) per digit.
pub(crate) fn push_hex(s: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        let hex = &mut buf[..chunk.len() * 2];
        for (pair, b) in hex.chunks_exact_mut(2).zip(chunk) {
            pair[0] = HEX_DIGITS[usize::from(b >> 4)];
            pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
        }
        s.push_str(std::str::from_utf8(hex).expect("hex digits are ASCII"));
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte two hex digits spell.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

/// Bytes of a hex string, or `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes().chunks_exact(2).map(hex_byte).collect()
}

/// The `N` bytes of exactly `2 * N` hex digits, without allocating (every verified request
/// decodes a signature).
pub fn hex_array<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(out)
}

/// The internal secret, ready to sign and verify: the HMAC with the key already absorbed, so a
/// signature does not hash the key's two blocks again. Put in every request's extensions by the
/// server; the gateway signs with its own.
#[derive(Clone)]
pub struct IdentityKey(std::sync::Arc<HmacSha256>);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(..)")
    }
}

impl IdentityKey {
    /// Prepares the internal secret.
    pub fn new(secret: &[u8]) -> Self {
        Self(std::sync::Arc::new(
            HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        ))
    }

    /// The identity header's value for `identity`, signed at `now` (unix seconds).
    pub fn header_value(&self, identity: &Identity, now: u64) -> Result<HeaderValue, NotCarriable> {
        header_value_with(&self.0, identity, now)
    }

    /// Writes the identity header for `identity`, signed at `now` (unix seconds).
    pub fn assert_identity(
        &self,
        headers: &mut HeaderMap,
        identity: &Identity,
        now: u64,
    ) -> Result<(), NotCarriable> {
        headers.insert(HEADER, self.header_value(identity, now)?);
        Ok(())
    }

    /// The identity the gateway asserted in `headers`; see [`verify`].
    pub fn verify(&self, headers: &HeaderMap, now: u64) -> Result<Option<Identity>, IdentityError> {
        verify_with(&self.0, headers, now)
    }
}

/// The identity header's value for `identity`, signed with `secret` at `now` (unix seconds).
pub fn header_value(secret: &[u8], identity: &Identity, now: u64) -> Result<HeaderValue, NotCarriable> {
    IdentityKey::new(secret).header_value(identity, now)
}

fn header_value_with(key: &HmacSha256, identity: &Identity, now: u64) -> Result<HeaderValue, NotCarriable> {
    carriable(identity)?;
    let roles_len: usize = identity.roles.iter().map(|r| r.len() + 1).sum();
    // The signed part, then the value around it.
    let mut signed = String::with_capacity(20 + roles_len + identity.user_id.len() + 2);
    let _ = write!(signed, "{now};");
    for (i, role) in identity.roles.iter().enumerate() {
        if i > 0 {
            signed.push(',');
        }
        signed.push_str(role);
    }
    signed.push(';');
    signed.push_str(&identity.user_id);
    let sig = mac(key, signed.as_bytes()).finalize().into_bytes();
    let mut value = String::with_capacity(VERSION.len() + SIGNATURE_HEX_LEN + 1 + signed.len());
    value.push_str(VERSION);
    push_hex(&mut value, &sig);
    value.push(';');
    value.push_str(&signed);
    // Printable UTF-8 (checked above) is a valid header value: bytes >= 0x80 are obs-text.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).map_err(|_| NotCarriable::UserId)
}

/// Writes the identity header for `identity`, signed with `secret` at `now` (unix seconds).
pub fn assert_identity(
    headers: &mut HeaderMap,
    secret: &[u8],
    identity: &Identity,
    now: u64,
) -> Result<(), NotCarriable> {
    IdentityKey::new(secret).assert_identity(headers, identity, now)
}

/// The parts of a header value: signature (hex), the signed part, and in it the timestamp,
/// roles and user id.
struct Parsed<'a> {
    signature: &'a [u8],
    signed: &'a [u8],
    signed_at: &'a str,
    roles: &'a str,
    user_id: &'a str,
}

fn parse(value: &HeaderValue) -> Result<Parsed<'_>, IdentityError> {
    let rest = value
        .as_bytes()
        .strip_prefix(VERSION.as_bytes())
        .ok_or(IdentityError::Incomplete)?;
    if rest.len() <= SIGNATURE_HEX_LEN || rest[SIGNATURE_HEX_LEN] != b';' {
        return Err(IdentityError::Incomplete);
    }
    let (signature, signed) = (&rest[..SIGNATURE_HEX_LEN], &rest[SIGNATURE_HEX_LEN + 1..]);
    let text = std::str::from_utf8(signed).map_err(|_| IdentityError::Incomplete)?;
    let mut fields = text.splitn(3, ';');
    match (fields.next(), fields.next(), fields.next()) {
        (Some(signed_at), Some(roles), Some(user_id)) if !user_id.is_empty() => Ok(Parsed {
            signature,
            signed,
            signed_at,
            roles,
            user_id,
        }),
        _ => Err(IdentityError::Incomplete),
    }
}

/// The user id the identity header CLAIMS, unverified: for decisions that are the same for
/// every caller and only use the claim to pick who goes down the verified path (the flash
/// sale's sold-out answer). Never use it as who the caller is; that is [`verify`].
pub fn claimed_user(headers: &HeaderMap) -> Option<&str> {
    parse(headers.get(HEADER)?).ok().map(|p| p.user_id)
}

/// The identity the gateway asserted, `Ok(None)` for an anonymous request, or an error for a
/// header that is malformed, forged or stale.
pub fn verify(headers: &HeaderMap, secret: &[u8], now: u64) -> Result<Option<Identity>, IdentityError> {
    IdentityKey::new(secret).verify(headers, now)
}

fn verify_with(key: &HmacSha256, headers: &HeaderMap, now: u64) -> Result<Option<Identity>, IdentityError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let parsed = parse(value)?;
    let sig = hex_array::<32>(parsed.signature).ok_or(IdentityError::Forged)?;
    // Constant-time comparison.
    mac(key, parsed.signed)
        .verify_slice(&sig)
        .map_err(|_| IdentityError::Forged)?;
    // Signed, so the gateway wrote these fields; a bad timestamp is still refused, not trusted.
    let signed_at: u64 = parsed.signed_at.parse().map_err(|_| IdentityError::Incomplete)?;
    if now.abs_diff(signed_at) > MAX_SKEW_SECS {
        return Err(IdentityError::Expired);
    }
    Ok(Some(Identity {
        user_id: parsed.user_id.to_owned(),
        roles: parsed
            .roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
    }))
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
    verified(key, &parts.headers)
}

fn verified(key: &IdentityKey, headers: &HeaderMap) -> Result<Option<Identity>, crate::error::ApiError> {
    key.verify(headers, now_secs()).map_err(|e| {
        crate::error::ApiError::new(http::StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    })
}

fn sign_in_first() -> crate::error::ApiError {
    crate::error::ApiError::new(http::StatusCode::UNAUTHORIZED, "unauthorized", "sign in first")
}

/// The signed-in user of a request whose handler reads the headers itself, as [`RequireUser`]
/// finds it: 401 `unauthorized` without a valid gateway-asserted identity.
pub fn require_user(key: &IdentityKey, headers: &HeaderMap) -> Result<Identity, crate::error::ApiError> {
    verified(key, headers)?.ok_or_else(sign_in_first)
}

/// A handler argument for routes that need a signed-in user (401 `unauthorized` otherwise).
#[derive(Debug, Clone)]
pub struct RequireUser(pub Identity);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequireUser {
    type Rejection = crate::error::ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        caller(parts)?.map(Self).ok_or_else(sign_in_first)
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

    fn header(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_str(value).expect("value"));
        headers
    }

    #[test]
    fn a_signed_identity_verifies_and_a_tampered_one_does_not() {
        let mut headers = HeaderMap::new();
        assert_eq!(verify(&headers, b"k", 1000), Ok(None));
        assert_eq!(claimed_user(&headers), None);
        assert_identity(&mut headers, b"k", &alice(), 1000).expect("carriable");
        assert_eq!(headers.len(), 1, "one header carries the identity");
        assert_eq!(verify(&headers, b"k", 1010), Ok(Some(alice())));
        assert_eq!(claimed_user(&headers), Some("42"));
        assert_eq!(verify(&headers, b"other-key", 1010), Err(IdentityError::Forged));
        assert_eq!(
            verify(&headers, b"k", 1000 + MAX_SKEW_SECS + 1),
            Err(IdentityError::Expired)
        );
        assert_eq!(
            verify(&headers, b"k", 1000 - MAX_SKEW_SECS - 1),
            Err(IdentityError::Expired)
        );

        // Every field is covered: another user, other roles, another time.
        let value = headers[HEADER].to_str().expect("ascii").to_owned();
        assert!(
            value.starts_with("v1;") && value.ends_with(";1000;admin;42"),
            "{value}"
        );
        for (from, to) in [(";42", ";43"), (";admin;", ";root;"), (";1000;", ";1001;")] {
            let altered = header(&value.replace(from, to));
            assert_eq!(
                verify(&altered, b"k", 1010),
                Err(IdentityError::Forged),
                "{from} -> {to}"
            );
        }
        // Roles cannot be added by moving a separator: the user id is the rest of the value.
        let moved = header(&value.replace(";admin;42", ";admin,42;42"));
        assert_eq!(verify(&moved, b"k", 1010), Err(IdentityError::Forged));

        headers.remove(HEADER);
        assert_eq!(verify(&headers, b"k", 1010), Ok(None));
    }

    #[test]
    fn malformed_headers_are_refused_and_claim_no_one() {
        let sig = "0".repeat(SIGNATURE_HEX_LEN);
        for bad in [
            "",
            "42",
            "v2;00;1;;42",
            "v1;00;1;;42",
            &format!("v1;{sig};1;admin"),
            &format!("v1;{sig};1;admin;"),
            &format!("v1;{sig}1;admin;42"),
        ] {
            let headers = header(bad);
            assert_eq!(
                verify(&headers, b"k", 1),
                Err(IdentityError::Incomplete),
                "{bad:?}"
            );
            assert_eq!(claimed_user(&headers), None, "{bad:?}");
        }
        // Well-formed but not hex, or hex but not the signature: forged.
        let not_hex = header(&format!("v1;{};1;admin;42", "g".repeat(SIGNATURE_HEX_LEN)));
        assert_eq!(verify(&not_hex, b"k", 1), Err(IdentityError::Forged));
        let zeros = header(&format!("v1;{sig};1;admin;42"));
        assert_eq!(verify(&zeros, b"k", 1), Err(IdentityError::Forged));
        assert_eq!(claimed_user(&zeros), Some("42"), "a claim is only a claim");
    }

    #[test]
    fn any_printable_user_id_round_trips_and_roles_must_not_hold_separators() {
        for user in ["a;b;c", "ünïcødé", "with space", "x,y"] {
            let who = Identity {
                user_id: user.into(),
                roles: vec!["buyer".into(), "admin".into()],
            };
            let mut headers = HeaderMap::new();
            assert_identity(&mut headers, b"k", &who, 5).expect("carriable");
            assert_eq!(verify(&headers, b"k", 5), Ok(Some(who)), "{user}");
        }
        let nobody = Identity {
            user_id: "1".into(),
            roles: vec![],
        };
        let mut headers = HeaderMap::new();
        assert_identity(&mut headers, b"k", &nobody, 5).expect("carriable");
        assert_eq!(verify(&headers, b"k", 5), Ok(Some(nobody)));

        let with_roles = |user: &str, roles: &[&str]| Identity {
            user_id: user.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        };
        assert_eq!(carriable(&with_roles("", &[])), Err(NotCarriable::UserId));
        assert_eq!(carriable(&with_roles("a\nb", &[])), Err(NotCarriable::UserId));
        // The end of a header value is trimmed in transit, which would break the signature.
        assert_eq!(carriable(&with_roles("bob ", &[])), Err(NotCarriable::UserId));
        assert_eq!(
            carriable(&with_roles(" bob", &[])),
            Ok(()),
            "the value starts with v1;"
        );
        for role in ["", "a,admin", "a;admin", "a\tb"] {
            let mut headers = HeaderMap::new();
            assert_eq!(
                assert_identity(&mut headers, b"k", &with_roles("1", &[role]), 5),
                Err(NotCarriable::Role),
                "{role:?}"
            );
            assert!(headers.is_empty());
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(to_hex(&[0, 15, 255]), "000fff");
        assert_eq!(from_hex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(hex_array::<3>(b"000fFF"), Some([0, 15, 255]));
        assert_eq!(hex_array::<3>(b"000ff"), None);
        assert_eq!(hex_array::<2>(b"000fff"), None);
        assert_eq!(hex_array::<1>(b"0g"), None);
    }
}

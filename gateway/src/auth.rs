//! JWT verification at the edge and minting for development and load tests.
//!
//! Tokens are HS256 with `MALL_JWT_SECRET`, or RS256 when `MALL_JWT_PUBLIC_KEY` names a PEM
//! public key. `exp` is enforced (5 s leeway), `sub` is the user id, `roles` a list. A request
//! that presents a token must present a valid one, whatever the route.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mall_common::identity::Identity;
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::error::GatewayError;
use crate::routes::Access;

/// The claims mall tokens carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Roles, e.g. `["admin"]`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.validation.algorithms)
            .finish()
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Verifier {
    /// A verifier for the configured algorithm.
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        let (key, alg) = match &settings.jwt_public_key_pem {
            Some(pem) => (
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("MALL_JWT_PUBLIC_KEY: {e}"))?,
                Algorithm::RS256,
            ),
            None => (
                DecodingKey::from_secret(settings.jwt_secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self { key, validation })
    }

    /// The identity of a bearer token, `Ok(None)` without one.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, GatewayError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| unauthorized("expected Authorization: Bearer <token>"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token.trim(), &self.key, &self.validation).map_err(|e| match e
                .kind()
            {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => unauthorized("the token has expired"),
                _ => unauthorized("the token is not valid"),
            })?;
        if data.claims.sub.is_empty() {
            return Err(unauthorized("the token has no subject"));
        }
        let identity = Identity {
            user_id: data.claims.sub,
            roles: data.claims.roles,
        };
        // Refused here, with the reason, rather than passed on as something a service would
        // read otherwise (a role "a,admin" must never become two roles).
        mall_common::identity::carriable(&identity)
            .map_err(|e| unauthorized(&format!("the token cannot be passed on: {e}")))?;
        Ok(Some(identity))
    }

    /// Applies a route's access rule.
    pub fn authorize(&self, access: Access, headers: &HeaderMap) -> Result<Option<Identity>, GatewayError> {
        let identity = self.identify(headers)?;
        match (access, &identity) {
            (Access::Public, _) => Ok(identity),
            (Access::User | Access::Admin, None) => Err(unauthorized("this route needs a bearer token")),
            (Access::User, Some(_)) => Ok(identity),
            (Access::Admin, Some(id)) if id.has_role("admin") => Ok(identity),
            (Access::Admin, Some(_)) => Err(GatewayError::Forbidden),
        }
    }
}

fn unauthorized(message: &str) -> GatewayError {
    GatewayError::Unauthorized(message.to_owned())
}

/// Mints a token: HS256 with `secret`, or RS256 with a PEM private key.
pub fn mint(key: MintKey<'_>, user: &str, roles: &[String], ttl_secs: u64) -> Result<String, String> {
    let claims = Claims {
        sub: user.to_owned(),
        roles: roles.to_vec(),
        exp: now_secs() + ttl_secs,
    };
    let (header, key) = match key {
        MintKey::Hs256(secret) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        MintKey::Rs256Pem(pem) => (
            Header::new(Algorithm::RS256),
            EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?,
        ),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}

/// The key a token is minted with.
#[derive(Debug, Clone, Copy)]
pub enum MintKey<'a> {
    /// A shared secret.
    Hs256(&'a str),
    /// A PEM RSA private key.
    Rs256Pem(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use mall_common::config::Secret;

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&AuthSettings {
            jwt_secret: Secret::new(secret),
            jwt_public_key_pem: None,
        })
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_and_role() {
        let v = verifier("s");
        let user = mint(MintKey::Hs256("s"), "42", &[], 60).unwrap();
        let admin = mint(MintKey::Hs256("s"), "1", &["admin".into()], 60).unwrap();
        let forged = mint(MintKey::Hs256("other"), "42", &["admin".into()], 60).unwrap();
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "42".into(),
                roles: vec![],
                exp: now_secs() - 60,
            },
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();

        assert_eq!(
            v.authorize(Access::User, &bearer(&user))
                .unwrap()
                .unwrap()
                .user_id,
            "42"
        );
        assert_eq!(
            v.authorize(Access::Admin, &bearer(&user)).unwrap_err().code(),
            "forbidden"
        );
        assert!(v.authorize(Access::Admin, &bearer(&admin)).unwrap().is_some());
        for bad in [&forged, &expired, &"garbage".to_owned()] {
            assert_eq!(
                v.authorize(Access::Public, &bearer(bad)).unwrap_err().code(),
                "unauthorized"
            );
        }
        assert_eq!(
            v.authorize(Access::User, &HeaderMap::new()).unwrap_err().code(),
            "unauthorized"
        );
        assert!(v.authorize(Access::Public, &HeaderMap::new()).unwrap().is_none());
    }
}

//! Tokens at the edge.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mall_gateway::auth::{Claims, MintKey, mint, now_secs};
use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;

use crate::helpers::{settings, spawn, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_and_forged_tokens_get_401_and_non_admins_get_403_on_admin_routes() {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let gw = spawn(&env, settings(&env, &[&product], &other, &[])).await;

    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: "42".into(),
            roles: vec![],
            exp: now_secs() - 120,
        },
        &EncodingKey::from_secret(mall_gateway::config::DEV_JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let forged = mint(MintKey::Hs256("not-the-secret"), "42", &["admin".into()], 600).unwrap();

    let call = |path: &'static str, token: Option<String>| {
        let mut req = gw.client().get(gw.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["code"].as_str().unwrap_or("").to_owned())
        }
    };
    assert_eq!(call("/api/orders", None).await, (401, "unauthorized".into()));
    assert_eq!(
        call("/api/orders", Some(expired.clone())).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        call("/api/orders", Some(forged.clone())).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        call("/api/orders", Some("not.a.jwt".into())).await,
        (401, "unauthorized".into())
    );
    // A bad token is refused even on a public route.
    assert_eq!(
        call("/api/products/1", Some(forged)).await,
        (401, "unauthorized".into())
    );
    assert_eq!(call("/admin/products", None).await, (401, "unauthorized".into()));
    assert_eq!(
        call("/admin/products", Some(token("42", &[]))).await,
        (403, "forbidden".into())
    );
    // A validly signed token whose roles the identity header cannot carry is refused, never
    // passed on as something a service would read otherwise ("buyer,admin" is not two roles).
    assert_eq!(
        call("/admin/products", Some(token("42", &["buyer,admin"]))).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        call("/api/orders", Some(token("42", &["x;admin"]))).await,
        (401, "unauthorized".into())
    );
    // A subject ending in whitespace would lose it in transit, and its signature with it.
    assert_eq!(
        call("/api/orders", Some(token("42 ", &[]))).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        product.hits() + other.hits(),
        0,
        "nothing refused reached a service"
    );

    assert_eq!(call("/api/orders", Some(token("42", &[]))).await.0, 200);
    assert_eq!(call("/admin/products", Some(token("1", &["admin"]))).await.0, 200);
    assert_eq!(call("/api/products/1", None).await.0, 200);
}

#[test]
fn the_cli_mints_tokens_the_gateway_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mall-gateway"))
        .args(["token", "--user", "42", "--roles", "admin", "--ttl", "1h"])
        .env_clear()
        .output()
        .expect("run mall-gateway token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = jsonwebtoken::decode::<Claims>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(mall_gateway::config::DEV_JWT_SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .expect("valid token")
    .claims;
    assert_eq!(claims.sub, "42");
    assert_eq!(claims.roles, ["admin"]);
    assert!(claims.exp > now_secs() + 3500 && claims.exp <= now_secs() + 3600);
}

//! A small mall for the sale: inventory (stocked), order, and two flashsale instances sharing
//! one test env (one database, Redis prefix and AMQP prefix).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use mall_common::redis::{Redis, client};
use mall_flashsale::store::admission::ItemKeys;
use mall_testkit::{ChaosProxy, TestEnv, TestServer, eventually};
use serde_json::{Value, json};

/// Long enough for the hand-off, the order consumer, the outbox and the timeouts.
pub(crate) const SETTLE: Duration = Duration::from_secs(60);

/// The services of a sale.
pub(crate) struct Sale {
    /// Kept running for order and flashsale to call.
    pub(crate) _inventory: TestServer,
    pub(crate) order: TestServer,
    pub(crate) fs: Vec<TestServer>,
    /// Between order and inventory, when asked for ([`Options::order_inventory_proxy`]).
    pub(crate) order_inventory: Option<ChaosProxy>,
}

/// A change to one instance's settings.
pub(crate) type Tweak<'a> = Box<dyn FnOnce(&mut mall_flashsale::Settings) + 'a>;

/// How to start the sale.
#[derive(Default)]
pub(crate) struct Options<'a> {
    /// Extra variables for both flashsale instances.
    pub(crate) flash: &'a [(&'a str, &'a str)],
    /// Extra variables for the order service.
    pub(crate) order: &'a [(&'a str, &'a str)],
    /// Changes the first flashsale instance's settings (e.g. a proxy in front of a dependency).
    pub(crate) tweak_first: Option<Tweak<'a>>,
    /// Start only one flashsale instance.
    pub(crate) single: bool,
    /// Order reaches inventory through a proxy the test can cut ([`Sale::order_inventory`]).
    pub(crate) order_inventory_proxy: bool,
}

/// Starts inventory with `skus` (each with `stock` units), order, and two flashsale instances.
pub(crate) async fn sale(env: &TestEnv, skus: &[i64], stock: i64, opts: Options<'_>) -> Sale {
    let catalog = mall_testkit::catalog::catalog_url();
    let inventory = env
        .spawn::<mall_inventory::Inventory>(&[("MALL_PRODUCT_URLS", &catalog)])
        .await;
    for sku in skus {
        mall_testkit::checks::receive_stock(&inventory, *sku, stock).await;
    }

    let inventory_urls = inventory.url("");
    let (order_inventory, order_inventory_url) = if opts.order_inventory_proxy {
        let (proxy, through) = ChaosProxy::for_url(&url::Url::parse(&inventory_urls).unwrap()).await;
        (Some(proxy), through.to_string())
    } else {
        (None, inventory_urls.clone())
    };
    let mut vars = vec![
        ("MALL_INVENTORY_URLS", order_inventory_url.as_str()),
        ("MALL_OUTBOX_INTERVAL", "50ms"),
    ];
    vars.extend_from_slice(opts.order);
    let order = env.spawn::<mall_order::Order>(&vars).await;

    let mut tweak = opts.tweak_first;
    let mut fs = Vec::new();
    let mut vars = vec![
        ("MALL_INVENTORY_URLS", inventory_urls.as_str()),
        ("MALL_FLASHSALE_JOB_INTERVAL", "100ms"),
    ];
    vars.extend_from_slice(opts.flash);
    for _ in 0..if opts.single { 1 } else { 2 } {
        let tweak = tweak.take();
        let instance = env
            .spawn_with::<mall_flashsale::Flashsale>(&vars, |s| {
                if let Some(t) = tweak {
                    t(s);
                }
            })
            .await;
        fs.push(instance);
    }
    Sale {
        _inventory: inventory,
        order,
        fs,
        order_inventory,
    }
}

pub(crate) use mall_testkit::checks::{as_admin as admin, as_user as user};

async fn answer(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `POST /admin/flashsale/sessions`; status and body.
pub(crate) async fn create(
    fs: &TestServer,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    items: Value,
) -> (u16, Value) {
    answer(
        admin(fs.client().post(fs.url("/admin/flashsale/sessions")))
            .json(&json!({ "starts_at": starts_at, "ends_at": ends_at, "items": items }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A session running from now for `minutes`, created and loaded; its id.
pub(crate) async fn running(sale: &Sale, minutes: i64, items: Value) -> i64 {
    let now = Utc::now();
    let (status, body) = create(
        &sale.fs[0],
        now - chrono::Duration::seconds(1),
        now + chrono::Duration::minutes(minutes),
        items,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["session_id"].as_i64().unwrap();
    wait_loaded(sale, id).await;
    id
}

/// Waits until every flashsale instance shows session `id` as running and it is in Redis.
pub(crate) async fn wait_loaded(sale: &Sale, id: i64) {
    for fs in &sale.fs {
        eventually(Duration::from_secs(10), "the session is on sale", || async {
            let (_, body) = answer(fs.get("/api/flashsale/sessions").await).await;
            let found = body["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["session_id"] == id && s["status"] == "running");
            let (_, shown) = answer(
                admin(
                    fs.client()
                        .get(fs.url(&format!("/admin/flashsale/sessions/{id}"))),
                )
                .send()
                .await
                .unwrap(),
            )
            .await;
            let warm = shown["items"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|i| !i["remaining"].is_null());
            if found && warm { Ok(()) } else { Err(body) }
        })
        .await;
    }
}

/// A purchase token of `buyer`; status and body.
pub(crate) async fn token(fs: &TestServer, buyer: &str, session: i64, sku: i64) -> (u16, Value) {
    answer(
        user(
            fs.client()
                .post(fs.url(&format!("/api/flashsale/sessions/{session}/items/{sku}/token"))),
            buyer,
        )
        .send()
        .await
        .unwrap(),
    )
    .await
}

/// The token of `buyer`, which must be granted.
pub(crate) async fn token_ok(fs: &TestServer, buyer: &str, session: i64, sku: i64) -> String {
    let (status, body) = token(fs, buyer, session, sku).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `POST /api/flashsale/purchase` as `buyer`; status and body.
pub(crate) async fn buy(fs: &TestServer, buyer: &str, body: Value) -> (u16, Value) {
    answer(
        user(fs.client().post(fs.url("/api/flashsale/purchase")), buyer)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// `POST /api/flashsale/purchase` as a patient buyer: a 503 (shed, or Redis busy) is retried
/// with the same request id after its `Retry-After` (one second), spread by a jitter so the
/// retries do not come back as one wave.
pub(crate) async fn buy_patiently(fs: &TestServer, buyer: &str, body: Value) -> (u16, Value) {
    let jitter = buyer
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 1000;
    for _ in 0..60 {
        let (status, answer) = buy(fs, buyer, body.clone()).await;
        if status != 503 {
            return (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(1000 + jitter)).await;
    }
    panic!("503 for a minute")
}

/// Buys as `buyer` until a purchase is admitted (202) within `within`, `body` making each
/// attempt's body; the admitted answer.
pub(crate) async fn buy_until_admitted(
    fs: &TestServer,
    buyer: &str,
    within: Duration,
    what: &str,
    body: impl Fn() -> Value,
) -> (u16, Value) {
    eventually(within, what, || async {
        let (status, answer) = buy(fs, buyer, body()).await;
        if status == 202 {
            Ok((status, answer))
        } else {
            Err((status, answer))
        }
    })
    .await
}

/// A purchase body.
pub(crate) fn purchase(session: i64, sku: i64, quantity: i64, token: &str, request_id: &str) -> Value {
    json!({ "session_id": session, "sku_id": sku, "quantity": quantity, "token": token, "request_id": request_id })
}

/// The env's Redis, as the services see it.
pub(crate) fn redis(env: &TestEnv) -> Redis {
    Redis::connect_lazy(&env.platform_settings(&mall_flashsale::config::DEFAULTS).redis).unwrap()
}

/// The flash-sale service's database.
pub(crate) fn flash_db(env: &TestEnv) -> Db {
    Db::connect_lazy(
        &env.platform_settings(&mall_flashsale::config::DEFAULTS).database,
        "t",
    )
    .unwrap()
}

/// (units left in Redis, admissions in the book) of an item.
pub(crate) async fn redis_numbers(env: &TestEnv, session: i64, sku: i64) -> (i64, i64) {
    let redis = redis(env);
    let keys = ItemKeys::new(&redis, session, sku);
    let mut conn = redis.conn().await.unwrap();
    let left: Option<i64> = client::cmd("GET")
        .arg(&keys.stock)
        .query_async(&mut *conn)
        .await
        .unwrap();
    let counts = mall_flashsale::store::book::counts(&flash_db(env), session, sku)
        .await
        .unwrap();
    (left.unwrap_or(-1), counts.booked)
}

/// Order ids in an item's book of admissions.
pub(crate) async fn admitted_orders(env: &TestEnv, session: i64, sku: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT order_id::text FROM admissions WHERE session_id = $1 AND sku_id = $2 ORDER BY admitted_at",
    )
    .bind(session)
    .bind(sku)
    .fetch_all(flash_db(env).pool())
    .await
    .unwrap()
}

/// The order service's database.
pub(crate) fn order_db(env: &TestEnv) -> Db {
    Db::connect_lazy(
        &env.platform_settings(&mall_order::config::DEFAULTS).database,
        "t",
    )
    .unwrap()
}

/// Ids of the flash orders of `session`, as text.
pub(crate) async fn flash_orders(env: &TestEnv, session: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT id::text FROM orders WHERE flash_session_id = $1 ORDER BY id")
        .bind(session)
        .fetch_all(order_db(env).pool())
        .await
        .unwrap()
}

/// (available, reserved, sold, received) of a SKU at inventory.
pub(crate) async fn stock(env: &TestEnv, sku: i64) -> (i64, i64, i64, i64) {
    let db = Db::connect_lazy(
        &env.platform_settings(&mall_inventory::config::DEFAULTS).database,
        "t",
    )
    .unwrap();
    sqlx::query_as("SELECT available, reserved, sold, received FROM stock WHERE sku_id = $1")
        .bind(sku)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Waits until the session's flash orders number `n`.
pub(crate) async fn wait_orders(env: &TestEnv, session: i64, n: usize) -> Vec<String> {
    eventually(SETTLE, "every admission became an order", || async {
        let ids = flash_orders(env, session).await;
        if ids.len() == n { Ok(ids) } else { Err(ids.len()) }
    })
    .await
}

//! Rate limits: token buckets per client and per route in this instance, and cluster-wide
//! buckets in Redis for routes whose limit must hold across every gateway instance.
//!
//! Rules come from `MALL_GW_RATE_LIMITS`, e.g.
//! `*:client:1000/s,/api/flashsale/purchase:cluster:5000/s`. A rule's route is a path prefix
//! (whole segments) or `*`; the scope is `client` (a bucket per user id, or per IP when
//! anonymous), `route` (one bucket per instance) or `cluster` (one bucket in Redis for all
//! instances). The burst equals the per-second rate. Refusals are 429 `rate_limited` with
//! `Retry-After`. If Redis cannot be asked, the cluster rule lets the request through (the
//! services shed load themselves) and counts it in `gateway_rate_limit_errors_total`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher as _;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use mall_common::redis::{LuaScript, Redis};

use crate::error::GatewayError;

/// `lua/gateway/rate_limit.lua`.
pub static CLUSTER_BUCKET: LazyLock<LuaScript> =
    LazyLock::new(|| mall_common::lua_script!("gateway/rate_limit"));

/// Which bucket a rule counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One bucket per client per route, in this instance.
    Client,
    /// One bucket per route, in this instance.
    Route,
    /// One bucket per route, in Redis, shared by all instances.
    Cluster,
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitRule {
    /// Path prefix, or `*` for every route.
    pub route: String,
    /// Where the bucket lives.
    pub scope: Scope,
    /// Tokens per second (and burst).
    pub per_sec: f64,
}

impl RateLimitRule {
    /// Parses `route:scope:N/s` items separated by commas.
    pub fn parse_list(raw: &str) -> Result<Vec<Self>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let mut parts = item.rsplitn(3, ':');
                let (rate, scope, route) = match (parts.next(), parts.next(), parts.next()) {
                    (Some(r), Some(s), Some(p)) => (r, s, p),
                    _ => return Err(format!("{item:?}: expected <route>:<client|route|cluster>:<N>/s")),
                };
                let scope = match scope {
                    "client" => Scope::Client,
                    "route" => Scope::Route,
                    "cluster" => Scope::Cluster,
                    other => return Err(format!("{item:?}: unknown scope {other:?}")),
                };
                let per_sec: f64 = rate
                    .strip_suffix("/s")
                    .and_then(|n| n.parse().ok())
                    .filter(|n: &f64| *n > 0.0)
                    .ok_or_else(|| format!("{item:?}: the rate must look like 100/s"))?;
                if route != "*" && !route.starts_with('/') {
                    return Err(format!("{item:?}: the route must be * or start with /"));
                }
                Ok(Self {
                    route: route.to_owned(),
                    scope,
                    per_sec,
                })
            })
            .collect()
    }

    fn matches(&self, path: &str) -> bool {
        self.route == "*"
            || path == self.route
            || (path.starts_with(&self.route) && path.as_bytes().get(self.route.len()) == Some(&b'/'))
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, per_sec: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(per_sec);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

const SHARDS: usize = 16;
/// Above this many buckets a shard forgets the idle, full ones.
const SHARD_SOFT_CAP: usize = 50_000;

/// The limiter of one gateway instance.
pub struct RateLimiter {
    rules: Vec<RateLimitRule>,
    /// Buckets by key (`<rule>|<route>[|<client>]`): a look-up borrows the key, and only a new
    /// bucket stores it. Hashed with foldhash, seeded at random per process like the standard
    /// library's SipHash (so a client cannot aim its keys at one bucket chain), at a fraction
    /// of its cost on every request.
    shards: Vec<Mutex<HashMap<String, Bucket, RandomState>>>,
    /// Picks a key's shard; seeded apart from the maps', whose low bits place keys in a shard.
    shard_of: RandomState,
    redis: Redis,
}

/// Why a request was refused.
fn refused(scope: Scope, retry_after: Duration) -> GatewayError {
    let label = match scope {
        Scope::Client => "client",
        Scope::Route => "route",
        Scope::Cluster => "cluster",
    };
    metrics::counter!("gateway_rate_limited_total", "scope" => label).increment(1);
    GatewayError::RateLimited {
        scope: label,
        retry_after,
    }
}

impl RateLimiter {
    /// A limiter for `rules`; cluster buckets live under the Redis prefix.
    pub fn new(rules: Vec<RateLimitRule>, redis: Redis) -> Self {
        Self {
            rules,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::default())))
                .collect(),
            shard_of: RandomState::default(),
            redis,
        }
    }

    fn local(&self, key: &str, per_sec: f64) -> Result<(), Duration> {
        let shard_index = (self.shard_of.hash_one(key) as usize) % SHARDS;
        let now = Instant::now();
        let mut shard = self.shards[shard_index].lock().expect("rate-limit shard");
        if let Some(bucket) = shard.get_mut(key) {
            return bucket.take(per_sec, now);
        }
        if shard.len() > SHARD_SOFT_CAP {
            shard.retain(|_, b| {
                let refill = now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
                b.tokens + refill < per_sec
            });
        }
        shard
            .entry(key.to_owned())
            .or_insert(Bucket {
                tokens: per_sec,
                at: now,
            })
            .take(per_sec, now)
    }

    /// [`check`](Self::check) without waiting, when every rule matching `path` is local; `None`
    /// (nothing taken) when one is the cluster's.
    pub fn check_now(&self, path: &str, client: Client<'_>) -> Option<Result<(), GatewayError>> {
        let matching = || {
            self.rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| rule.matches(path))
        };
        if matching().any(|(_, rule)| rule.scope == Scope::Cluster) {
            return None;
        }
        let mut key = String::with_capacity(64);
        Some(matching().try_for_each(|(i, rule)| self.take_local(&mut key, i, rule, path, client)))
    }

    /// Checks every rule matching `path` for `client`.
    pub async fn check(&self, path: &str, client: Client<'_>) -> Result<(), GatewayError> {
        // One buffer for every local rule's key, built in place (no format! per rule), with room
        // for a usual key from the start (growing it from empty reallocated twice a request).
        let mut key = String::with_capacity(64);
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(path) {
                continue;
            }
            match rule.scope {
                Scope::Client | Scope::Route => self.take_local(&mut key, i, rule, path, client)?,
                Scope::Cluster => self.cluster(rule, path).await?,
            }
        }
        Ok(())
    }

    /// A token from the local bucket of rule `i` (a client or route rule) for this request.
    fn take_local(
        &self,
        key: &mut String,
        i: usize,
        rule: &RateLimitRule,
        path: &str,
        client: Client<'_>,
    ) -> Result<(), GatewayError> {
        // A `*` rule keys per route prefix too, so one busy route cannot starve another.
        let who = (rule.scope == Scope::Client).then_some(client);
        bucket_key(key, i, route_key(rule, path), who);
        self.local(key, rule.per_sec)
            .map_err(|wait| refused(rule.scope, wait))
    }

    async fn cluster(&self, rule: &RateLimitRule, path: &str) -> Result<(), GatewayError> {
        // The hash tag keeps the bucket on one Redis Cluster slot.
        let key = self.redis.key(&format!("gw:rl:{{{}}}", route_key(rule, path)));
        let asked: Result<(i64, i64), mall_common::redis::RedisError> = async {
            let mut conn = self.redis.conn().await?;
            Ok(CLUSTER_BUCKET
                .prepare()
                .key(&key)
                .arg(rule.per_sec)
                .arg(rule.per_sec.max(1.0))
                .arg(1)
                .invoke_async(&mut *conn)
                .await?)
        }
        .await;
        match asked {
            Ok((1, _)) => Ok(()),
            Ok((_, retry_ms)) => Err(refused(
                Scope::Cluster,
                Duration::from_millis(u64::try_from(retry_ms).unwrap_or(1000)),
            )),
            Err(e) => {
                metrics::counter!("gateway_rate_limit_errors_total").increment(1);
                tracing::warn!(error = %e, "cluster rate limit unavailable; admitting");
                Ok(())
            }
        }
    }
}

/// Who a per-client bucket belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// A signed-in user: the token's subject.
    User(&'a str),
    /// An anonymous client: its IP address.
    Ip(&'a str),
}

/// `<rule>|<route>` or `<rule>|<route>|u:<user>` / `|ip:<address>` into `key`. The rule's index
/// keeps two rules on the same route apart; the user id comes last, so no two keys collide.
fn bucket_key(key: &mut String, rule: usize, route: &str, client: Option<Client<'_>>) {
    key.clear();
    let _ = write!(key, "{rule}");
    key.push('|');
    key.push_str(route);
    match client {
        Some(Client::User(user)) => {
            key.push_str("|u:");
            key.push_str(user);
        }
        Some(Client::Ip(ip)) => {
            key.push_str("|ip:");
            key.push_str(ip);
        }
        None => {}
    }
}

/// The bucket name of a rule for a request: the rule's route, or for `*` the first two path
/// segments (`/api/products`), which is what the route table keys on.
fn route_key<'a>(rule: &'a RateLimitRule, path: &'a str) -> &'a str {
    if rule.route != "*" {
        return &rule.route;
    }
    let mut seen = 0;
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' {
            seen += 1;
            if seen == 3 {
                return &path[..i];
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_reject_nonsense() {
        let rules =
            RateLimitRule::parse_list("*:client:10/s, /api/flashsale/purchase:cluster:2000/s").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].scope, Scope::Cluster);
        assert!(rules[1].matches("/api/flashsale/purchase"));
        assert!(!rules[1].matches("/api/flashsale/purchases"));
        for bad in [
            "x:client:1/s",
            "/a:everyone:1/s",
            "/a:client:0/s",
            "/a:client:5",
            "/a:5/s",
        ] {
            assert!(RateLimitRule::parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = Bucket {
            tokens: 2.0,
            at: start,
        };
        assert!(b.take(2.0, start).is_ok());
        assert!(b.take(2.0, start).is_ok());
        let wait = b.take(2.0, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(b.take(2.0, start + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn star_rules_key_on_the_route_prefix() {
        let rule = &RateLimitRule::parse_list("*:client:1/s").unwrap()[0];
        assert_eq!(route_key(rule, "/api/products/12/x"), "/api/products");
        assert_eq!(route_key(rule, "/api/products"), "/api/products");
    }

    #[test]
    fn bucket_keys_keep_rules_routes_and_clients_apart() {
        let mut key = String::new();
        let mut keys = std::collections::HashSet::new();
        for (rule, route, client) in [
            (0, "/api/orders", None),
            (1, "/api/orders", None),
            (0, "/api/cart", None),
            (0, "/api/orders", Some(Client::User("42"))),
            (0, "/api/orders", Some(Client::Ip("42"))),
            (0, "/api/orders", Some(Client::User("43"))),
            (1, "/api/orders", Some(Client::User("42"))),
        ] {
            bucket_key(&mut key, rule, route, client);
            assert!(keys.insert(key.clone()), "{key} twice");
        }
        bucket_key(&mut key, 3, "/api/orders", Some(Client::Ip("10.0.0.1")));
        assert_eq!(
            key, "3|/api/orders|ip:10.0.0.1",
            "the buffer is reused, not appended to"
        );
    }
    fn limiter(rules: &str) -> RateLimiter {
        let settings = mall_common::redis::RedisSettings {
            url: "redis://127.0.0.1:6379".parse().unwrap(),
            cluster_nodes: Vec::new(),
            // The cluster bucket lives in Redis: a prefix of this run's own.
            key_prefix: format!(
                "test:{}:{}:",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ),
            connections: 1,
            timeout: Duration::from_secs(2),
        };
        let redis = Redis::connect_lazy(&settings).expect("a lazy Redis handle");
        RateLimiter::new(RateLimitRule::parse_list(rules).unwrap(), redis)
    }

    #[tokio::test]
    async fn local_rules_are_checked_at_once_and_a_cluster_rule_leaves_it_to_the_whole_check() {
        let limiter = limiter("/api/a:client:1/s,/api/b:client:1/s,/api/b:cluster:100/s");
        let me = Client::Ip("10.0.0.1");
        assert!(matches!(limiter.check_now("/api/a/1", me), Some(Ok(()))));
        let Some(Err(refused)) = limiter.check_now("/api/a/1", me) else {
            panic!("the second request within the second is refused");
        };
        assert_eq!(refused.code(), "rate_limited");
        // A cluster rule matches: nothing is taken here, so the whole check still has the
        // client's one token.
        assert!(limiter.check_now("/api/b/1", me).is_none());
        limiter
            .check("/api/b/1", me)
            .await
            .expect("the client's token was left");
        assert!(limiter.check("/api/b/1", me).await.is_err());
    }
}

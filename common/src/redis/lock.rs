//! A distributed lock on one Redis key: `SET NX PX` with a random token, renewed and released
//! only by its owner through compare-and-act scripts.
//!
//! Used where exactly one instance in the cluster may do a job at a time (cache rebuilds,
//! warm-up, sweepers). A lease bounds how long a dead holder blocks the others; a live holder
//! renews before it runs out and must stop work if [`LockGuard::renew`] says it lost the lock.

use std::sync::LazyLock;
use std::time::Duration;

use super::{LuaScript, Redis, RedisError, client};

/// `lua/common/lock_release.lua`.
pub static RELEASE: LazyLock<LuaScript> = LazyLock::new(|| crate::lua_script!("common/lock_release"));
/// `lua/common/lock_renew.lua`.
pub static RENEW: LazyLock<LuaScript> = LazyLock::new(|| crate::lua_script!("common/lock_renew"));

/// The scripts this module needs loaded at start-up.
pub fn scripts() -> [&'static LuaScript; 2] {
    [&RELEASE, &RENEW]
}

/// A held lock. Dropping it does not release it (that needs Redis); the lease will.
#[derive(Debug)]
pub struct LockGuard {
    redis: Redis,
    key: String,
    token: String,
    lease: Duration,
}

/// Takes the lock `name` (under the Redis prefix) for `lease`, or `None` if someone holds it.
pub async fn try_acquire(
    redis: &Redis,
    name: &str,
    lease: Duration,
) -> Result<Option<LockGuard>, RedisError> {
    let key = redis.key(name);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut conn = redis.conn().await?;
    let set: Option<String> = client::cmd("SET")
        .arg(&key)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(lease_ms(lease))
        .query_async(&mut *conn)
        .await?;
    Ok(set.map(|_| LockGuard {
        redis: redis.clone(),
        key,
        token,
        lease,
    }))
}

fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl LockGuard {
    /// The full Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease this guard renews to.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Extends the lease; `false` means the lock was lost and the holder must stop.
    pub async fn renew(&self) -> Result<bool, RedisError> {
        let mut conn = self.redis.conn().await?;
        let renewed: i64 = RENEW
            .prepare()
            .key(&self.key)
            .arg(&self.token)
            .arg(lease_ms(self.lease))
            .invoke_async(&mut *conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Releases the lock; `false` means it was no longer ours (nothing was deleted).
    pub async fn release(self) -> Result<bool, RedisError> {
        let mut conn = self.redis.conn().await?;
        let released: i64 = RELEASE
            .prepare()
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut *conn)
            .await?;
        Ok(released == 1)
    }
}

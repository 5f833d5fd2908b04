//! Embedded Lua scripts and their loading.
//!
//! A [`LuaScript`] is declared once (`static`) next to its typed wrapper; nothing else invokes
//! it raw. `EVALSHA` is used on the hot path and falls back to loading the script if Redis lost
//! it (restart, `SCRIPT FLUSH`).

use super::{Redis, RedisError, client};

/// One Lua script from `lua/<service>/<verb_noun>.lua`.
pub struct LuaScript {
    name: &'static str,
    source: &'static str,
    script: client::Script,
}

impl std::fmt::Debug for LuaScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaScript").field("name", &self.name).finish()
    }
}

/// Why scripts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptLoadError {
    /// Redis could not be reached; loading is retried later.
    #[error("redis unreachable while loading scripts: {0}")]
    Unreachable(RedisError),
    /// Redis refused the script: a bug that must stop start-up.
    #[error("lua script {name} does not compile: {error}")]
    Broken {
        /// The script's name.
        name: &'static str,
        /// Redis's complaint.
        error: String,
    },
}

impl LuaScript {
    /// Wraps the source of a script; `name` is its path under `lua/` without the extension.
    pub fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            script: client::Script::new(source),
        }
    }

    /// The script's name (`common/lock_release`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The SHA1 Redis knows it by.
    pub fn hash(&self) -> &str {
        self.script.get_hash()
    }

    /// Starts an invocation; add keys and args, then `invoke_async`.
    pub fn prepare(&self) -> client::ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// `SCRIPT LOAD`s every script; a compile error is [`ScriptLoadError::Broken`].
    pub async fn load_all(redis: &Redis, scripts: &[&LuaScript]) -> Result<(), ScriptLoadError> {
        let mut conn = redis.conn().await.map_err(ScriptLoadError::Unreachable)?;
        for s in scripts {
            let loaded: Result<String, client::RedisError> = client::cmd("SCRIPT")
                .arg("LOAD")
                .arg(s.source)
                .query_async(&mut *conn)
                .await;
            match loaded {
                Ok(_) => {}
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    return Err(ScriptLoadError::Unreachable(e.into()));
                }
                Err(e) => {
                    return Err(ScriptLoadError::Broken {
                        name: s.name,
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Declares a `static` [`LuaScript`] from `lua/<name>.lua`, embedded at compile time.
#[macro_export]
macro_rules! lua_script {
    ($name:literal) => {
        $crate::redis::LuaScript::new(
            $name,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../lua/", $name, ".lua")),
        )
    };
}

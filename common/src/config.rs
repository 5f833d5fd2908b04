//! Typed configuration from environment variables.
//!
//! Every service reads `MALL_*` (and the standard `OTEL_*`) variables once, at start-up, through
//! [`Vars`]. A bad value stops start-up with a [`ConfigError`] that names the variable, the value
//! and what was expected. Tests build settings in code (or from [`Vars::from_pairs`]) and never
//! touch the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

/// A configuration value that could not be used; names the variable so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// The value it had (secrets are never put here).
    pub value: String,
    /// What was expected.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for `var` holding `value`.
    pub fn new(var: &str, value: &str, reason: impl fmt::Display) -> Self {
        Self {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A snapshot of the variables a service reads, so parsing is a pure function of it.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    map: HashMap<String, String>,
}

impl Vars {
    /// Takes the `MALL_*`, `OTEL_*` and `RUST_LOG` variables of the process environment.
    pub fn from_env() -> Self {
        let map = std::env::vars()
            .filter(|(k, _)| k.starts_with("MALL_") || k.starts_with("OTEL_") || k == "RUST_LOG")
            .collect();
        Self { map }
    }

    /// Builds a set from explicit pairs (tests, tools).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            map: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// The raw value of `name`; an empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The value of `name` or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// Parses `name` with [`FromStr`], or returns `default` when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| ConfigError::new(name, raw, e)),
        }
    }

    /// A listen address such as `127.0.0.1:8081` (port 0 picks a free port).
    pub fn socket_addr(&self, name: &str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| {
                ConfigError::new(
                    name,
                    raw,
                    "expected HOST:PORT with a numeric port, e.g. 127.0.0.1:8081",
                )
            }),
        }
    }

    /// A URL whose scheme must be one of `schemes`.
    pub fn url(&self, name: &str, default: &str, schemes: &[&str]) -> Result<Url, ConfigError> {
        let raw = self.get(name).unwrap_or(default);
        parse_url(name, raw, schemes)
    }

    /// A comma-separated list of URLs; an unset variable gives `default` (which may be empty).
    pub fn url_list(&self, name: &str, default: &str, schemes: &[&str]) -> Result<Vec<Url>, ConfigError> {
        self.get(name)
            .unwrap_or(default)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|raw| parse_url(name, raw, schemes))
            .collect()
    }

    /// A peer's or pool's instances: [`Vars::url_list`], at least one.
    pub fn instance_urls(
        &self,
        name: &str,
        default: &str,
        schemes: &[&str],
    ) -> Result<Vec<Url>, ConfigError> {
        let urls = self.url_list(name, default, schemes)?;
        if urls.is_empty() {
            return Err(ConfigError::new(name, "", "at least one instance URL is needed"));
        }
        Ok(urls)
    }

    /// A duration written as `250ms`, `10s`, `5m` or `1h`.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse_duration(raw).map_err(|e| ConfigError::new(name, raw, e)),
        }
    }

    /// A secret; its value is never printed by `Debug` or `Display`.
    pub fn secret(&self, name: &str, default: &str) -> Secret {
        Secret::new(self.get(name).unwrap_or(default))
    }
}

fn parse_url(name: &str, raw: &str, schemes: &[&str]) -> Result<Url, ConfigError> {
    // The message must never echo a password, so the raw value is redacted before reporting.
    let shown = redact_url_str(raw);
    let url = Url::parse(raw).map_err(|e| ConfigError::new(name, &shown, e))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::new(
            name,
            &shown,
            format!("expected a URL with scheme {}", schemes.join(" or ")),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(name, &shown, "the URL has no host"));
    }
    Ok(url)
}

/// The settings, or the end of the process: exit code 2 and a message naming the variable.
/// What every binary does with invalid configuration.
pub fn or_exit<T>(binary: &str, settings: Result<T, ConfigError>) -> T {
    settings.unwrap_or_else(|e| {
        eprintln!("{binary}: {e}");
        std::process::exit(2);
    })
}

/// Parses `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "expected a number with a unit: ms, s, m or h (e.g. 10s)".to_owned())?;
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a number with a unit: ms, s, m or h (e.g. 10s)".to_owned())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!("unknown unit {other:?}; use ms, s, m or h")),
    }
}

/// Replaces the password of a URL-looking string with `***`.
pub fn redact_url_str(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) => redact_url(&url),
        Err(_) => match raw.find('@') {
            Some(at) => format!("***{}", &raw[at..]),
            None => raw.to_owned(),
        },
    }
}

/// The URL as text with its password replaced by `***`.
pub fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// A secret string (signing keys, shared secrets); never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        let vars = Vars::from_pairs([("MALL_HTTP_ADDR", "127.0.0.1:eighty")]);
        let err = vars
            .socket_addr("MALL_HTTP_ADDR", "127.0.0.1:1".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.var, "MALL_HTTP_ADDR");
        assert!(err.to_string().contains("MALL_HTTP_ADDR"));
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let vars = Vars::from_pairs([("MALL_DATABASE_URL", "mysql://u:hunter2@db/x")]);
        let err = vars
            .url("MALL_DATABASE_URL", "", &["postgres", "postgresql"])
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("postgres"));
    }

    #[test]
    fn url_lists_split_on_commas() {
        let vars = Vars::from_pairs([("X", "http://a:1, http://b:2")]);
        let urls = vars.url_list("X", "", &["http"]).unwrap();
        assert_eq!(urls.len(), 2);
        let bad = Vars::from_pairs([("X", "http://a:1,nope")]);
        assert_eq!(bad.url_list("X", "", &["http"]).unwrap_err().var, "X");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "Secret(***)");
    }
}

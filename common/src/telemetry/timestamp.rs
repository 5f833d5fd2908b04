//! The log lines' timestamp: tracing-subscriber's RFC 3339 UTC format with microseconds, with
//! the date and time up to the second formatted by tracing-subscriber once per second per
//! thread and reused; only the microseconds are written per line (the calendar arithmetic was a
//! large share of every access line; see docs/performance.md).

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// `2026-12-05T11:51:22.872818Z`, as `tracing_subscriber::fmt::time::SystemTime` writes it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct CachedUtc;

/// The second a thread last formatted, and that second's `YYYY-MM-DDTHH:MM:SS`.
struct Cached {
    second: u64,
    text: String,
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, text: String::new() }) };
}

impl FormatTime for CachedUtc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let micros = CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            loop {
                let now = since_epoch();
                if now.as_secs() == cached.second {
                    w.write_str(&cached.text)?;
                    return Ok(now.subsec_micros());
                }
                *cached = this_second();
            }
        })?;
        write!(w, ".{micros:06}Z")
    }
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The current second as tracing-subscriber formats it, cut before the fraction. It formats
/// "now" itself, so the second is read before and after, and formatted again if one ticked.
fn this_second() -> Cached {
    loop {
        let before = since_epoch().as_secs();
        let mut text = String::with_capacity(32);
        let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut text));
        if since_epoch().as_secs() == before {
            text.truncate(text.find('.').unwrap_or(text.len()));
            return Cached { second: before, text };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_reads_as_tracing_subscribers_own() {
        let mut ours = String::new();
        CachedUtc.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
        // Same date and time to the second (or the next second, if one ticked in between).
        let parse = |s: &str| s[..19].to_owned();
        assert!(parse(&ours) <= parse(&theirs), "{ours} / {theirs}");
    }
}

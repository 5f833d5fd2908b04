//! Access lines: events whose target ends in `::access` (the gateway's one line per request) are
//! written by this layer, not by tracing's general formatter.
//!
//! Measured on the gateway, tracing's formatter spent about 5 µs per access line (a sixth of
//! the gateway's CPU per proxied request): styles, the span scope, a `fmt::Write` call per piece.
//! This layer writes the same line (compact text or one JSON object, as `MALL_LOG_FORMAT` says)
//! into a per-thread buffer in one pass and hands it to the log sink with one copy. It is
//! filtered by `MALL_LOG` like every other line, and the log layer skips these events.
//! Numbers are written without the formatter; a floating-point field (the latency, in
//! milliseconds) to three decimals, the microsecond.
//!
//! [`write`] writes the same line without a tracing event, for a caller on a hot path (the
//! gateway): dispatching an event through the subscriber's layers and their filters, and
//! visiting its fields one dynamic call at a time, cost about 4,000 instructions per line.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::Visit;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

use super::LogFormat;
use super::log_writer::BatchWriter;

/// Whether an event is an access line.
pub(crate) fn is_access(metadata: &Metadata<'_>) -> bool {
    metadata.is_event() && metadata.target().ends_with("::access")
}

/// The layer; `W` is the log sink.
pub(crate) struct AccessLayer<W> {
    writer: W,
    json: bool,
}

impl<W> AccessLayer<W> {
    pub(crate) fn new(writer: W, format: LogFormat) -> Self {
        Self {
            writer,
            json: format == LogFormat::Json,
        }
    }
}

thread_local! {
    /// The line being built, and scratch space for values written through `Display`.
    static BUFFERS: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

/// Where [`write`] sends its lines (the sink and format `init` installed), and whether as JSON.
static DIRECT: OnceLock<(BatchWriter, bool)> = OnceLock::new();

/// Sends [`write`]'s lines to `writer` in `format` (once per process, as `init` is).
pub(crate) fn install(writer: BatchWriter, format: LogFormat) {
    let _ = DIRECT.set((writer, format == LogFormat::Json));
}

/// One field of an access line written with [`write`].
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A string value.
    Str(&'static str, &'a str),
    /// A string value that needs no escaping in either format by how it was made (an HTTP
    /// method, a route template, an address): no quote, backslash or control character. It is
    /// written as it is, without looking for those (a debug build checks).
    Plain(&'static str, &'a str),
    /// An unsigned number.
    U64(&'static str, u64),
    /// A floating-point number, written to three decimals.
    F64(&'static str, f64),
    /// Bytes written as a string of lowercase hex digits (a trace id), without making a
    /// `String` of them first.
    Hex(&'static str, &'a [u8]),
}

/// Writes the line [`AccessLayer`] writes for an INFO event of `target` with the message
/// `access` and `fields`, without the event. The caller checks that such an event is enabled
/// (`tracing::enabled!(target: ..., Level::INFO)`, which obeys `MALL_LOG`); before telemetry is
/// installed nothing is written, as no subscriber would take the event.
pub fn write(target: &str, fields: &[Field<'_>]) {
    let Some((writer, json)) = DIRECT.get() else {
        return;
    };
    BUFFERS.with_borrow_mut(|(line, scratch)| {
        direct_line(line, scratch, *json, target, fields);
        let _ = writer.make_writer().write_all(line.as_bytes());
    });
}

/// The line of [`write`], into `line`.
fn direct_line(line: &mut String, scratch: &mut String, json: bool, target: &str, fields: &[Field<'_>]) {
    line.clear();
    if json {
        begin_json(line, "INFO");
        line.push_str(",\"message\":\"access\"");
        let mut out = JsonFields { line, scratch };
        for field in fields {
            match *field {
                Field::Str(name, value) => out.str(name, value),
                Field::Plain(name, value) => {
                    out.key(name);
                    push_quoted_plain(out.line, value);
                }
                Field::U64(name, value) => out.u64(name, value),
                Field::F64(name, value) => out.f64(name, value),
                Field::Hex(name, bytes) => {
                    out.key(name);
                    push_quoted_hex(out.line, bytes);
                }
            }
        }
        end_json(line, target);
    } else {
        begin_text(line, "INFO", target);
        line.push_str(" access");
        let mut out = TextFields { line };
        for field in fields {
            match *field {
                Field::Str(name, value) => out.str(name, value),
                Field::Plain(name, value) => {
                    out.key(name);
                    push_quoted_plain(out.line, value);
                }
                Field::U64(name, value) => out.u64(name, value),
                Field::F64(name, value) => out.f64(name, value),
                Field::Hex(name, bytes) => {
                    out.key(name);
                    push_quoted_hex(out.line, bytes);
                }
            }
        }
        line.push('\n');
    }
}

fn begin_json(line: &mut String, level: &str) {
    line.push_str("{\"timestamp\":\"");
    timestamp(line, SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(level);
    line.push('"');
}

fn end_json(line: &mut String, target: &str) {
    line.push_str(",\"target\":");
    json_str(line, target);
    line.push_str("}\n");
}

fn begin_text(line: &mut String, level: &str, target: &str) {
    timestamp(line, SystemTime::now());
    // `{:>5}`: the level right-aligned in five columns, as tracing's compact format has it.
    for _ in level.len()..5 {
        line.push(' ');
    }
    line.push(' ');
    line.push_str(level);
    line.push(' ');
    line.push_str(target);
    line.push(':');
}

impl<S, W> Layer<S> for AccessLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        BUFFERS.with_borrow_mut(|(line, scratch)| {
            line.clear();
            let meta = event.metadata();
            if self.json {
                begin_json(line, meta.level().as_str());
                event.record(&mut JsonFields { line, scratch });
                end_json(line, meta.target());
            } else {
                begin_text(line, meta.level().as_str(), meta.target());
                event.record(&mut TextFields { line });
                line.push('\n');
            }
            // The sink never fails (see `log_writer`); nothing here could report it anyway.
            let _ = self.writer.make_writer().write_all(line.as_bytes());
        });
    }
}

/// `key=value` pairs after the message, as tracing's compact format writes them: strings
/// quoted, `Display` values (`%x`) bare.
struct TextFields<'a> {
    line: &'a mut String,
}

impl TextFields<'_> {
    fn key(&mut self, name: &str) {
        self.line.push(' ');
        self.line.push_str(name);
        self.line.push('=');
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        let _ = super::write_debug_str(self.line, value);
    }

    // Numbers without the formatter: the status and the latency of every access line went
    // through `Debug`, about 1,200 instructions per line.
    fn u64(&mut self, name: &str, value: u64) {
        self.key(name);
        crate::text::push_decimal(self.line, value);
    }

    fn f64(&mut self, name: &str, value: f64) {
        self.key(name);
        crate::text::push_millis(self.line, value);
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.line.push(' ');
            self.line.push_str(value);
        } else {
            self.str(field.name(), value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.u64(field.name(), value);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field.name());
        crate::text::push_signed(self.line, value);
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.f64(field.name(), value);
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field.name());
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.line, " {value:?}");
        } else {
            let _ = write!(self.line, " {}={value:?}", field.name());
        }
    }
}

/// `,"key":value` members: numbers and booleans as JSON numbers and booleans, everything else as
/// an escaped string.
struct JsonFields<'a> {
    line: &'a mut String,
    scratch: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, name: &str) {
        self.line.push(',');
        json_str(self.line, name);
        self.line.push(':');
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        json_str(self.line, value);
    }

    fn u64(&mut self, name: &str, value: u64) {
        self.key(name);
        crate::text::push_decimal(self.line, value);
    }

    fn f64(&mut self, name: &str, value: f64) {
        self.key(name);
        if value.is_finite() {
            crate::text::push_millis(self.line, value);
        } else {
            self.line.push_str("null");
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.f64(field.name(), value);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field.name());
        crate::text::push_signed(self.line, value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.u64(field.name(), value);
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field.name());
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.str(field.name(), value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        self.key(field.name());
        json_str(self.line, self.scratch);
    }
}

/// `s` as a JSON string (RFC 8259 escapes).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// RFC 3339 in UTC with microseconds (`2026-11-21T11:49:02.623549Z`), as tracing's timer writes.
/// `"<hex digits>"`: the same as a `Str` field of them in either format (hex digits need no
/// escaping).
fn push_quoted_plain(out: &mut String, value: &str) {
    debug_assert!(
        !value
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || !(b' '..=b'~').contains(&b)),
        "{value:?} needs escaping"
    );
    out.push('"');
    out.push_str(value);
    out.push('"');
}

fn push_quoted_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    // Sixteen bytes at a time on the stack, pushed at once: a push per digit checked the
    // capacity 32 times for a trace id.
    for chunk in bytes.chunks(16) {
        let mut text = [0u8; 32];
        for (i, b) in chunk.iter().enumerate() {
            text[2 * i] = DIGITS[usize::from(b >> 4)];
            text[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out.push_str(std::str::from_utf8(&text[..2 * chunk.len()]).expect("hex digits"));
    }
    out.push('"');
}

thread_local! {
    /// The second of the last timestamp written on this thread and its text up to the fraction
    /// (`2026-12-02T14:33:02.`): lines come many to a second, and the date arithmetic and twenty
    /// digits are the same for all of them.
    static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
}

fn timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, prefix) = SECOND.get();
    if cached == secs {
        out.push_str(std::str::from_utf8(&prefix).expect("ASCII digits and separators"));
    } else {
        let start = out.len();
        second_prefix(out, secs);
        let mut prefix = [0u8; 20];
        prefix.copy_from_slice(&out.as_bytes()[start..]);
        SECOND.set((secs, prefix));
    }
    push_digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` of a second since the epoch.
fn second_prefix(out: &mut String, secs: u64) {
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    // Digit by digit: seven zero-padded integers through `write!` were a quarter of the line.
    push_digits(out, year.clamp(0, 9999) as u64, 4);
    out.push('-');
    push_digits(out, u64::from(month), 2);
    out.push('-');
    push_digits(out, u64::from(day), 2);
    out.push('T');
    push_digits(out, day_secs / 3600, 2);
    out.push(':');
    push_digits(out, day_secs / 60 % 60, 2);
    out.push(':');
    push_digits(out, day_secs % 60, 2);
    out.push('.');
}

/// The last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u64, width: u32) {
    let mut div = 10u64.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + (value / div % 10) as u8));
        div /= 10;
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A sink the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn log_one(format: LogFormat) -> String {
        let sink = Captured::default();
        let subscriber = tracing_subscriber::registry().with(AccessLayer::new(sink.clone(), format));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "mall_x::access",
                method = %"GET",
                route = "/api/\"q\"\n",
                status = 404_u64,
                latency_ms = 0.25,
                ok = true,
                "access"
            );
        });
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_parse_with_every_field_typed() {
        let text = log_one(LogFormat::Json);
        assert!(text.ends_with("}\n"), "{text:?}");
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "access");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["route"], "/api/\"q\"\n");
        assert_eq!(line["status"], 404);
        assert_eq!(line["latency_ms"], 0.25);
        assert_eq!(line["ok"], true);
        assert_eq!(line["target"], "mall_x::access");
        let ts = line["timestamp"].as_str().unwrap();
        assert!(rfc3339_shaped(ts), "{ts}");
    }

    #[test]
    fn text_lines_read_like_the_compact_format() {
        let text = log_one(LogFormat::Compact);
        let rest = text.split_once(' ').unwrap().1;
        assert_eq!(
            rest,
            " INFO mall_x::access: access method=GET route=\"/api/\\\"q\\\"\\n\" status=404 latency_ms=0.25 ok=true\n"
        );
    }

    #[test]
    fn hex_fields_of_any_length() {
        for (bytes, text) in [
            (&[][..], "\"\""),
            (&[0x00, 0xff][..], "\"00ff\""),
            (&[0xab; 17][..], &*format!("\"{}\"", "ab".repeat(17))),
        ] {
            let mut out = String::new();
            push_quoted_hex(&mut out, bytes);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn a_direct_line_is_the_events_line() {
        // What `write` builds for these fields, against what the layer writes for the event.
        for format in [LogFormat::Json, LogFormat::Compact] {
            let sink = Captured::default();
            let subscriber = tracing_subscriber::registry().with(AccessLayer::new(sink.clone(), format));
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(target: "mall_x::access", route = "/a\"b", method = "GET", status = 200_u64, latency_ms = 1.5, trace_id = "0af76519", "access");
            });
            let from_event = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            let fields = [
                Field::Str("route", "/a\"b"),
                Field::Plain("method", "GET"),
                Field::U64("status", 200),
                Field::F64("latency_ms", 1.5),
                Field::Hex("trace_id", &[0x0a, 0xf7, 0x65, 0x19]),
            ];
            let mut direct = String::new();
            direct_line(
                &mut direct,
                &mut String::new(),
                format == LogFormat::Json,
                "mall_x::access",
                &fields,
            );
            // Everything after the timestamp is the same.
            let marker = if format == LogFormat::Json {
                "\",\"level"
            } else {
                " "
            };
            let after_ts = |s: &str| s.split_once(marker).unwrap().1.to_owned();
            assert_eq!(after_ts(&direct), after_ts(&from_event), "{format:?}");
        }
    }

    fn rfc3339_shaped(ts: &str) -> bool {
        ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T'
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let mut out = String::new();
        let t = UNIX_EPOCH + Duration::from_micros(1_795_261_742_623_549);
        timestamp(&mut out, t);
        assert_eq!(out, "2026-11-21T11:49:02.623549Z");
        out.clear();
        timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400)); // a leap day
        assert_eq!(out, "2000-02-29T00:00:00.000000Z");
        out.clear();
        timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, "1970-01-01T00:00:00.000000Z");
        out.clear();
        timestamp(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(253_402_300_799_999_999),
        );
        assert_eq!(out, "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn timestamps_match_the_formatter() {
        // Every field at several values, against what `write!` with the same padding writes.
        for micros in [
            0u64,
            1,
            59_999_999,
            951_782_400_000_000,
            1_795_261_742_623_549,
            // The same second again (its text kept from the line before), then the one before
            // it and back: each line gets its own second.
            1_795_261_742_000_001,
            1_795_261_741_999_999,
            1_795_261_742_999_999,
            4_102_444_799_000_001,
        ] {
            let t = UNIX_EPOCH + Duration::from_micros(micros);
            let mut out = String::new();
            timestamp(&mut out, t);
            let since = t.duration_since(UNIX_EPOCH).unwrap();
            let secs = since.as_secs();
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let day_secs = secs % 86_400;
            let expected = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                day_secs / 3600,
                day_secs / 60 % 60,
                day_secs % 60,
                since.subsec_micros()
            );
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn only_access_targets_are_taken() {
        let sink = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            AccessLayer::new(sink.clone(), LogFormat::Json)
                .with_filter(tracing_subscriber::filter::filter_fn(is_access)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "mall_x::accessory", "not an access line");
            tracing::info!(target: "mall_x::access", "one");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}

//! How the log formats write span fields: like `tracing-subscriber`'s defaults, but without the
//! request span's trace attributes.
//!
//! The log layer formats a span's fields when the span opens (and again for each recorded
//! field), whether or not anything is ever logged inside it. Every request opens an
//! `http.server` span with six fields that exist for the trace viewer (its OpenTelemetry name
//! and kind, method, route, path, service); formatting them, escaped, was a
//! measurable share of the gateway's CPU per request (`docs/performance.md`). A log line inside
//! a request keeps what ties it to the request and its trace: `request_id` and
//! `trace_id`; the rest is in the trace. Event fields are written in full.
//!
//! [`LogFields`] is the compact format's; [`JsonSpanFields`] the JSON format's span object,
//! whose default parsed and re-serialised a span's whole object for every recorded field.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// Fields of the server span (`crate::http`) that only the trace needs.
const TRACE_ONLY: [&str; 6] = [
    "otel.name",
    "otel.kind",
    "service",
    "http.request.method",
    "http.route",
    "url.path",
];

/// The compact format's field formatter; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LogFields;

impl<'writer> FormatFields<'writer> for LogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut v = Visitor {
            writer: current.as_writer(),
            first,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

/// Whether a span or event field goes into a log line: not the trace-only fields, nor `log.*`
/// (from `tracing-log`).
fn logged(name: &str) -> bool {
    !TRACE_ONLY.contains(&name) && !name.starts_with("log.")
}

impl Visitor<'_> {
    /// Whether `field` is written; if so, its separator is already written. Skipped: what is
    /// not [`logged`], everything after a write error.
    fn start(&mut self, name: &str) -> bool {
        if self.result.is_err() || !logged(name) {
            return false;
        }
        if !self.first {
            self.result = self.writer.write_char(' ');
        }
        self.first = false;
        self.result.is_ok()
    }

    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if !self.start(name) {
            return;
        }
        // As the default formatter: the message bare, other fields `name=value`, values in
        // their Debug form (strings quoted and escaped, so a field cannot forge a line).
        self.result = if name == "message" {
            write!(self.writer, "{value:?}")
        } else {
            write!(self.writer, "{}={value:?}", bare(name))
        };
    }
}

/// A field name without the `r#` of a raw identifier (`r#type`). `strip_prefix`, not
/// `trim_start_matches`: the latter builds a substring searcher for every field of every line.
fn bare(name: &str) -> &str {
    name.strip_prefix("r#").unwrap_or(name)
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if name == "message" {
            self.write(field, &format_args!("{value}"));
        } else if self.start(name) {
            // The common case (request and trace ids) without the formatter.
            self.result = (|| {
                self.writer.write_str(bare(name))?;
                self.writer.write_char('=')?;
                super::write_debug_str(&mut self.writer, value)
            })();
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, value);
    }
}

/// The JSON format's span fields: one JSON object, `{"request_id":"...","trace_id":"..."}`,
/// which the JSON formatter puts under a line's `span` key. A field recorded later is added
/// before the closing brace instead of the object being parsed and written again; a key
/// recorded twice appears twice, and the last one wins when the formatter reads it back, as
/// with the default.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        writer.write_char('{')?;
        let mut v = JsonVisitor {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let Some(open) = current.fields.strip_suffix('}') else {
            // Nothing formatted yet (or not by this formatter): start the object afresh.
            current.fields.clear();
            return self.format_fields(current.as_writer(), fields);
        };
        let first = open == "{";
        current.fields.pop();
        let mut out = current.as_writer();
        let mut v = JsonVisitor {
            out: &mut out,
            first,
            result: Ok(()),
        };
        fields.record(&mut v);
        let written = v.result;
        // Closed even after a failed write, so the object stays readable.
        current.fields.push('}');
        written
    }
}

struct JsonVisitor<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl JsonVisitor<'_, '_> {
    /// Writes `"name":` (after a comma unless first), if the field is logged.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || !logged(name) {
            return false;
        }
        let sep = if self.first { "" } else { "," };
        self.first = false;
        self.result = (|| {
            self.out.write_str(sep)?;
            json_str(self.out, bare(name))?;
            self.out.write_char(':')
        })();
        self.result.is_ok()
    }

    fn string(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = json_str(self.out, value);
        }
    }

    fn literal(&mut self, field: &Field, value: impl fmt::Display) {
        if self.key(field) {
            self.result = write!(self.out, "{value}");
        }
    }
}

/// `s` as a JSON string: as it is between quotes when nothing in it needs escaping (request
/// and trace ids), else through serde_json.
fn json_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    if super::is_plain(s) {
        out.write_char('"')?;
        out.write_str(s)?;
        out.write_char('"')
    } else {
        out.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?)
    }
}

impl Visit for JsonVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.literal(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.literal(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.literal(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: serde_json writes them as null.
        match serde_json::to_string(&value) {
            Ok(text) => self.literal(field, text),
            Err(_) => self.result = Err(fmt::Error),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || out.clone())
            .compact()
            .with_ansi(false)
            .fmt_fields(LogFields);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// A request's server span as `crate::http` opens it, with fields to record later.
    fn server_span(request_id: &str) -> tracing::Span {
        tracing::info_span!(
            "http.server",
            otel.name = "GET /x",
            otel.kind = "server",
            service = "gateway",
            http.request.method = "GET",
            http.route = "/x",
            url.path = "/x",
            request_id,
            trace_id = tracing::field::Empty,
            n = tracing::field::Empty,
            ok = tracing::field::Empty,
            why = tracing::field::Empty,
        )
    }

    #[test]
    fn a_line_inside_a_request_names_its_request_and_trace_but_not_the_trace_attributes() {
        let line = logged(|| {
            let span = server_span("req-1");
            span.record("trace_id", "abc");
            let _in = span.enter();
            tracing::warn!(status = 500, cause = "a \"quoted\"\nvalue", "request failed");
        });
        assert!(line.contains(r#"request_id="req-1" trace_id="abc""#), "{line}");
        assert!(
            line.contains(r#"request failed status=500 cause="a \"quoted\"\nvalue""#),
            "event fields in full, escaped: {line}"
        );
        for name in TRACE_ONLY {
            assert!(!line.contains(&format!("{name}=")), "{name} in {line}");
        }
        assert_eq!(line.lines().count(), 1, "{line}");
    }

    fn logged_json(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || out.clone())
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .fmt_fields(JsonSpanFields);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    #[test]
    fn a_json_line_inside_a_request_carries_its_request_and_trace_but_not_the_trace_attributes() {
        let lines = logged_json(|| {
            let span = server_span("req-\"1\"\n");
            let _in = span.enter();
            tracing::warn!(status = 500, "before the trace id");
            span.record("trace_id", "abc");
            span.record("n", -3);
            span.record("ok", true);
            span.record("why", tracing::field::debug(&Some("é")));
            tracing::warn!(status = 500, cause = "a \"quoted\"\nvalue", "request failed");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({"request_id": "req-\"1\"\n", "name": "http.server"})
        );
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({
                "request_id": "req-\"1\"\n",
                "trace_id": "abc",
                "n": -3,
                "ok": true,
                "why": "Some(\"é\")",
                "name": "http.server",
            })
        );
        assert_eq!(lines[1]["cause"], "a \"quoted\"\nvalue", "event fields in full");
        assert_eq!(lines[1]["status"], 500);
    }

    #[test]
    fn a_json_span_with_nothing_logged_is_an_empty_object_until_a_field_is_recorded() {
        let lines = logged_json(|| {
            let span = tracing::info_span!("job", url.path = "/skipped", n = tracing::field::Empty);
            {
                let _in = span.enter();
                tracing::info!("first");
            }
            span.record("n", 1.5);
            let _in = span.enter();
            tracing::info!("second");
        });
        assert_eq!(lines[0]["span"], serde_json::json!({"name": "job"}));
        assert_eq!(lines[1]["span"], serde_json::json!({"n": 1.5, "name": "job"}));
    }

    #[test]
    fn fields_recorded_later_are_separated_and_skipped_ones_leave_no_gap() {
        let line = logged(|| {
            let span =
                tracing::info_span!("job", url.path = tracing::field::Empty, n = tracing::field::Empty);
            span.record("url.path", "/skipped");
            span.record("n", 3);
            let _in = span.enter();
            tracing::info!(r#type = "x", "done");
        });
        // Compact writes the span's fields after the event's, one space apart.
        assert!(line.contains(r#"done type="x" n=3"#), "{line}");
        assert!(!line.contains("/skipped"), "{line}");
    }
}

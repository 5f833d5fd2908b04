//! How the compact log format writes fields: like `tracing-subscriber`'s default, but without
//! the request span's trace attributes.
//!
//! The log layer formats a span's fields when the span opens (and again for each recorded
//! field), whether or not anything is ever logged inside it. Every request opens an
//! `http.server` span with six fields that exist for the trace viewer (its OpenTelemetry name
//! and kind, method, route, path, service); formatting them, escaped, was a
//! measurable share of the gateway's CPU per request (`docs/performance.md`). A log line inside
//! a request keeps what ties it to the request and its trace: `request_id` and
//! `trace_id`; the rest is in the trace. Event fields are written in full.

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

impl Visitor<'_> {
    /// Whether `field` is written; if so, its separator is already written. Skipped: the
    /// trace-only fields, `log.*` (from `tracing-log`), everything after a write error.
    fn start(&mut self, name: &str) -> bool {
        if self.result.is_err() || TRACE_ONLY.contains(&name) || name.starts_with("log.") {
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

    #[test]
    fn a_line_inside_a_request_names_its_request_and_trace_but_not_the_trace_attributes() {
        let line = logged(|| {
            let span = tracing::info_span!(
                "http.server",
                otel.name = "GET /x",
                otel.kind = "server",
                service = "gateway",
                http.request.method = "GET",
                http.route = "/x",
                url.path = "/x",
                request_id = "req-1",
                trace_id = tracing::field::Empty,
            );
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

//! Logs and traces, configured once per process.
//!
//! [`init`] installs a `tracing` subscriber with two layers: the log layer (tracing-subscriber's
//! compact or JSON format, filtered by `RUST_LOG`/`MALL_LOG`, written to stdout by
//! tracing-appender's non-blocking writer; lines in either format leave the request span's
//! trace-only fields to the trace, see `fields`) and the OpenTelemetry layer (always at INFO, so
//! a quiet log level never silences traces; see DEPENDENCIES.md gotcha 7). Each has its own
//! filter, except at the default level `info`, where one global filter serves both.
//! Spans are exported over OTLP/HTTP (Jaeger) and/or to Zipkin only when configured, so tests
//! and a plain local start never wait on a collector. Propagation reads W3C `traceparent` and
//! B3 and writes what `OTEL_PROPAGATORS` names, W3C and B3's single header by default
//! ([`propagation`]).

mod b3;
mod fields;
pub mod propagation;
mod settings;
mod timestamp;

pub use settings::{LogFormat, LogOutput, SamplerSetting, TelemetrySettings, TraceExporter};

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// A client span for one call to a data store (`db.system` = `postgresql` or `redis`), a child
/// of whatever span is current, so traces show each SQL and Redis call of a request.
pub fn store_span(system: &'static str, operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "store.call",
        otel.name = %format_args!("{system} {operation}"),
        otel.kind = "client",
        db.system = system,
        db.operation = operation,
    )
}

/// Keeps the tracer provider and the log writer alive; dropping it flushes both.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    _log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl TelemetryGuard {
    /// Exports every finished span now (blocking; call from `spawn_blocking` in async code).
    pub fn force_flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "telemetry flush failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// Errors while starting telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An exporter could not be built.
    #[error("building the {0} exporter: {1}")]
    Exporter(&'static str, String),
    /// A global subscriber was already installed in this process.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Writes `s` as `{:?}` would, quoted and escaped, without the formatter when nothing in it
/// needs escaping (printable ASCII, no quote or backslash: request ids, trace ids, routes), as
/// in most fields of every log and access line.
fn write_debug_str(out: &mut impl std::fmt::Write, s: &str) -> std::fmt::Result {
    if is_plain(s) {
        out.write_char('"')?;
        out.write_str(s)?;
        out.write_char('"')
    } else {
        write!(out, "{s:?}")
    }
}

/// Whether `s` is printable ASCII without a quote or backslash: written between quotes as it
/// is, in Rust's `Debug` form and in JSON alike.
fn is_plain(s: &str) -> bool {
    // Every byte looked at without a branch (the compiler vectorises it), where a short-circuit
    // `all` went byte by byte: about half the cost of an access line's strings.
    !s.bytes().fold(false, |bad, b| {
        bad | !(b' '..=b'~').contains(&b) | (b == b'"') | (b == b'\\')
    })
}

/// The log layer in the configured format, writing through `writer`, unfiltered.
fn fmt_layer<W>(settings: &TelemetrySettings, writer: W, ansi: bool) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match settings.log_format {
        LogFormat::Compact => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .fmt_fields(fields::LogFields)
            .compact()
            .with_timer(timestamp::CachedUtc)
            .with_ansi(ansi)
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .with_timer(timestamp::CachedUtc)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .fmt_fields(fields::JsonSpanFields)
            .boxed(),
    }
}

/// Installs logging, tracing, export and propagation for this process. Call once, early.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(propagation::Propagator::default());
    propagation::set_formats(settings.propagators);

    let provider = build_provider(settings)?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("mall");

    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (fmt_layer, log_writer) = match settings.log_output {
        LogOutput::Stdout => {
            // A line is handed to a writer thread, so a request never waits on a write syscall;
            // lossless: when its queue is full the logging thread waits. The thread writes
            // through a buffer it flushes whenever its queue runs empty: under load, many lines
            // per syscall.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .thread_name("mall-log-writer")
                .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
            (fmt_layer(settings, writer, ansi), Some(guard))
        }
        // `print!` per line: the harness keeps it with the test whose threads wrote it.
        LogOutput::TestCapture => (
            fmt_layer(settings, tracing_subscriber::fmt::TestWriter::new(), false),
            None,
        ),
    };
    // At `info` both layers want the same spans and events: one global filter, and no span
    // callback pays per-layer filtering's registry look-ups. Any other level filters each layer.
    let installed = if is_info(&settings.log_filter) {
        tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer(tracer))
            .with(LevelFilter::INFO)
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(fmt_layer.with_filter(log_filter(&settings.log_filter)))
            .with(otel_layer(tracer).with_filter(LevelFilter::INFO))
            .try_init()
    };
    installed.map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(TelemetryGuard {
        provider,
        _log_writer: log_writer,
    })
}

/// Only what a trace viewer shows: source locations, thread names, busy/idle timings and the
/// target were extra attributes and clock reads on every span of every request, and nothing here
/// reads the OpenTelemetry context from a thread-local (propagation asks the span).
fn otel_layer<S>(tracer: Tracer) -> tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_tracer(tracer)
}

/// Whether `MALL_LOG` asks for INFO and above from every target, the OpenTelemetry layer's own
/// level.
fn is_info(directives: &str) -> bool {
    directives.trim().eq_ignore_ascii_case("info")
}

/// `MALL_LOG` / `RUST_LOG` as a filter (`info` when it does not parse).
fn log_filter(directives: &str) -> EnvFilter {
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn build_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([KeyValue::new("service.namespace", "mall")])
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(settings.sdk_sampler());

    for exporter in settings.exporters.clone() {
        match exporter {
            TraceExporter::Otlp(url) => {
                use opentelemetry_otlp::WithExportConfig;
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(url.as_str())
                    .build()
                    .map_err(|e| TelemetryError::Exporter("otlp", e.to_string()))?;
                builder = builder.with_batch_exporter(exporter);
            }
            TraceExporter::Zipkin(url) => {
                // The Zipkin builder creates a blocking reqwest client on the spot, which panics on
                // a tokio worker (DEPENDENCIES.md gotcha 6), so it is built on a plain thread.
                #[allow(deprecated)]
                let exporter = std::thread::spawn(move || {
                    opentelemetry_zipkin::ZipkinExporter::builder()
                        .with_collector_endpoint(url.as_str())
                        .build()
                        .map_err(|e| e.to_string())
                })
                .join()
                .map_err(|_| TelemetryError::Exporter("zipkin", "builder panicked".into()))?
                .map_err(|e| TelemetryError::Exporter("zipkin", e))?;
                builder = builder.with_batch_exporter(exporter);
            }
        }
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    use crate::config::Vars;

    #[test]
    fn only_a_plain_info_level_shares_the_traces_filter() {
        for same in ["info", " INFO ", "Info"] {
            assert!(is_info(same), "{same}");
        }
        // Quieter levels would silence spans (DEPENDENCIES.md gotcha 7); louder ones or
        // per-target directives would export what the trace layer leaves out.
        for other in ["warn", "debug", "info,sqlx=warn", "mall_gateway=debug", "off", ""] {
            assert!(!is_info(other), "{other}");
        }
    }

    #[test]
    fn strings_are_written_as_debug_writes_them() {
        for s in [
            "",
            "req-1",
            "a b/c?d=e",
            "quote\"d",
            "back\\slash",
            "line\nbreak",
            "tab\t",
            "\u{7f}",
            "é",
            "\u{200b}",
        ] {
            let mut out = String::new();
            write_debug_str(&mut out, s).unwrap();
            assert_eq!(out, format!("{s:?}"), "{s:?}");
        }
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let s = TelemetrySettings::from_vars(&Vars::default(), "mall-x").unwrap();
        assert!(s.exporters.is_empty());
        assert_eq!(s.sampler, SamplerSetting::ParentBasedAlwaysOn);
        assert_eq!(s.service_name, "mall-x");
        assert_eq!(s.propagators, propagation::Formats::DEFAULT);
    }

    #[test]
    fn otel_propagators_picks_what_is_written_and_refuses_what_is_unknown() {
        let s = TelemetrySettings::from_vars(
            &Vars::from_pairs([("OTEL_PROPAGATORS", "tracecontext,b3multi")]),
            "x",
        )
        .unwrap();
        assert!(s.propagators.tracecontext && s.propagators.b3multi && !s.propagators.b3);
        let err =
            TelemetrySettings::from_vars(&Vars::from_pairs([("OTEL_PROPAGATORS", "xray")]), "x").unwrap_err();
        assert!(err.to_string().contains("OTEL_PROPAGATORS"), "{err}");
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_signal_endpoint_is_kept() {
        let s = TelemetrySettings::from_vars(
            &Vars::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/")]),
            "x",
        )
        .unwrap();
        assert_eq!(
            s.exporters,
            vec![TraceExporter::Otlp(
                Url::parse("http://jaeger:4318/v1/traces").unwrap()
            )]
        );
        let s = TelemetrySettings::from_vars(
            &Vars::from_pairs([
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:1/custom"),
            ]),
            "x",
        )
        .unwrap();
        assert_eq!(
            s.exporters,
            vec![TraceExporter::Otlp(Url::parse("http://c:1/custom").unwrap())]
        );
    }

    #[test]
    fn exporters_can_be_listed_or_switched_off() {
        let vars = Vars::from_pairs([
            ("OTEL_TRACES_EXPORTER", "zipkin,otlp"),
            ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://z:9411/api/v2/spans"),
        ]);
        let s = TelemetrySettings::from_vars(&vars, "x").unwrap();
        assert!(matches!(s.exporters[0], TraceExporter::Zipkin(_)));
        assert!(matches!(s.exporters[1], TraceExporter::Otlp(_)));
        let off = Vars::from_pairs([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
        ]);
        assert!(
            TelemetrySettings::from_vars(&off, "x")
                .unwrap()
                .exporters
                .is_empty()
        );
        let bad = Vars::from_pairs([("OTEL_TRACES_EXPORTER", "jaeger")]);
        assert_eq!(
            TelemetrySettings::from_vars(&bad, "x").unwrap_err().var,
            "OTEL_TRACES_EXPORTER"
        );
    }

    #[test]
    fn samplers_follow_the_otel_names() {
        let vars = Vars::from_pairs([
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(
            TelemetrySettings::from_vars(&vars, "x").unwrap().sampler,
            SamplerSetting::ParentBasedRatio(0.25)
        );
        let bad = Vars::from_pairs([
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(
            TelemetrySettings::from_vars(&bad, "x").unwrap_err().var,
            "OTEL_TRACES_SAMPLER_ARG"
        );
    }
}

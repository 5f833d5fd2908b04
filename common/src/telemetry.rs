//! Logs and traces, configured once per process.
//!
//! [`init`] installs a `tracing` subscriber with independently filtered layers: the log layer
//! (tracing-subscriber's compact or JSON format, filtered by `RUST_LOG`/`MALL_LOG`, written to
//! stdout by tracing-appender's non-blocking writer; compact lines leave the request span's
//! trace-only fields to the trace, see `fields`) and the OpenTelemetry layer (always at INFO, so
//! a quiet log level never silences traces; see DEPENDENCIES.md gotcha 7).
//! Spans are exported over OTLP/HTTP (Jaeger) and/or to Zipkin only when configured, so tests
//! and a plain local start never wait on a collector. Propagation reads W3C `traceparent` and
//! B3 and writes what `OTEL_PROPAGATORS` names, W3C and B3's single header by default
//! ([`propagation`]).

mod b3;
mod fields;
pub mod propagation;
mod timestamp;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};
use url::Url;

use crate::config::{ConfigError, Vars};

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

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Compact,
    /// One JSON object per event, with the current span's fields (request id, trace id).
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogOutput {
    /// Standard output, through a writer thread (services).
    #[default]
    Stdout,
    /// The test harness's captured output (tests): shown only for a test that fails.
    TestCapture,
}

/// Where finished spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExporter {
    /// OTLP over HTTP/protobuf; the URL is the full traces endpoint (`.../v1/traces`).
    Otlp(Url),
    /// Zipkin v2 JSON; the URL is the collector endpoint (`.../api/v2/spans`).
    Zipkin(Url),
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER` + `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio` with the ratio.
    Ratio(f64),
    /// `parentbased_always_on` (the default): follow the caller, sample new roots.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio for new roots.
    ParentBasedRatio(f64),
}

/// Telemetry configuration; the variables are in `docs/configuration.md`.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `OTEL_SERVICE_NAME`, default `mall-<service>`.
    pub service_name: String,
    /// `MALL_LOG_FORMAT`: `compact` (default) or `json`.
    pub log_format: LogFormat,
    /// `MALL_LOG` (or `RUST_LOG`): an `EnvFilter` directive, default `info`.
    pub log_filter: String,
    /// `OTEL_TRACES_EXPORTER` with the endpoints; empty means no export.
    pub exporters: Vec<TraceExporter>,
    /// The sampler.
    pub sampler: SamplerSetting,
    /// `OTEL_PROPAGATORS`: the trace-context formats written on outgoing requests and messages
    /// (default `tracecontext,b3`); every format is read whatever this says.
    pub propagators: propagation::Formats,
    /// Where log lines go (not a variable: tests choose it).
    pub log_output: LogOutput,
}

const OTLP_DEFAULT_BASE: &str = "http://localhost:4318";
const ZIPKIN_DEFAULT: &str = "http://localhost:9411/api/v2/spans";

impl TelemetrySettings {
    /// Settings for a process that logs compactly at `info` and exports nothing.
    pub fn local(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            log_format: LogFormat::Compact,
            log_filter: "info".into(),
            exporters: Vec::new(),
            sampler: SamplerSetting::ParentBasedAlwaysOn,
            propagators: propagation::Formats::DEFAULT,
            log_output: LogOutput::Stdout,
        }
    }

    /// Reads the standard `OTEL_*` variables plus `MALL_LOG`/`MALL_LOG_FORMAT`.
    pub fn from_vars(vars: &Vars, default_service_name: &str) -> Result<Self, ConfigError> {
        let log_format = match vars.get("MALL_LOG_FORMAT").unwrap_or("compact") {
            "compact" | "text" => LogFormat::Compact,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "MALL_LOG_FORMAT",
                    other,
                    "expected compact or json",
                ));
            }
        };
        let log_filter = vars
            .get("MALL_LOG")
            .or_else(|| vars.get("RUST_LOG"))
            .unwrap_or("info")
            .to_owned();
        if let Err(e) = EnvFilter::try_new(&log_filter) {
            return Err(ConfigError::new("MALL_LOG", &log_filter, e));
        }

        let otlp_endpoint = match (
            vars.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            // The signal-specific variable is used as given (OTel spec).
            (Some(_), _) => Some(vars.url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", &["http", "https"])?),
            // The base variable gets the signal path appended.
            (None, Some(base)) => {
                let base_url = vars.url("OTEL_EXPORTER_OTLP_ENDPOINT", "", &["http", "https"])?;
                let joined = format!("{}/v1/traces", base.trim_end_matches('/'));
                Some(
                    Url::parse(&joined)
                        .map_err(|e| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", base_url.as_str(), e))?,
                )
            }
            (None, None) => None,
        };
        let zipkin_endpoint = match vars.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT") {
            Some(_) => Some(vars.url("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "", &["http", "https"])?),
            None => None,
        };

        let exporters = match vars.get("OTEL_TRACES_EXPORTER") {
            // Unset: export wherever an endpoint was given, nowhere otherwise.
            None => {
                let mut list = Vec::new();
                if let Some(url) = otlp_endpoint {
                    list.push(TraceExporter::Otlp(url));
                }
                if let Some(url) = zipkin_endpoint {
                    list.push(TraceExporter::Zipkin(url));
                }
                list
            }
            Some(raw) => {
                let mut list = Vec::new();
                for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match name {
                        "none" => {}
                        "otlp" => {
                            list.push(TraceExporter::Otlp(otlp_endpoint.clone().unwrap_or_else(|| {
                                Url::parse(&format!("{OTLP_DEFAULT_BASE}/v1/traces")).expect("valid default")
                            })))
                        }
                        "zipkin" => list.push(TraceExporter::Zipkin(
                            zipkin_endpoint
                                .clone()
                                .unwrap_or_else(|| Url::parse(ZIPKIN_DEFAULT).expect("valid default")),
                        )),
                        other => {
                            return Err(ConfigError::new(
                                "OTEL_TRACES_EXPORTER",
                                raw,
                                format!("unknown exporter {other:?}; expected otlp, zipkin or none"),
                            ));
                        }
                    }
                }
                list
            }
        };

        let ratio = || -> Result<f64, ConfigError> {
            let ratio: f64 = vars.parse("OTEL_TRACES_SAMPLER_ARG", 1.0)?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    &ratio.to_string(),
                    "expected a ratio between 0 and 1",
                ));
            }
            Ok(ratio)
        };
        let sampler = match vars.get("OTEL_TRACES_SAMPLER").unwrap_or("parentbased_always_on") {
            "always_on" => SamplerSetting::AlwaysOn,
            "always_off" => SamplerSetting::AlwaysOff,
            "traceidratio" => SamplerSetting::Ratio(ratio()?),
            "parentbased_always_on" => SamplerSetting::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerSetting::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerSetting::ParentBasedRatio(ratio()?),
            other => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER",
                    other,
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        };

        let propagators = match vars.get("OTEL_PROPAGATORS") {
            None => propagation::Formats::DEFAULT,
            Some(list) => propagation::Formats::parse(list)
                .map_err(|e| ConfigError::new("OTEL_PROPAGATORS", list, e))?,
        };

        Ok(Self {
            service_name: vars.string("OTEL_SERVICE_NAME", default_service_name),
            log_format,
            log_filter,
            exporters,
            sampler,
            propagators,
            log_output: LogOutput::Stdout,
        })
    }

    fn sdk_sampler(&self) -> Sampler {
        match self.sampler {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSetting::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerSetting::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerSetting::ParentBasedRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
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
    // Every byte looked at without a branch (the compiler vectorises it), where a short-circuit
    // `all` went byte by byte: about half the cost of an access line's strings.
    let needs_escape = s.bytes().fold(false, |bad, b| {
        bad | !(b' '..=b'~').contains(&b) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.write_char('"')?;
        out.write_str(s)?;
        out.write_char('"')
    } else {
        write!(out, "{s:?}")
    }
}

/// The log layer in the configured format, writing through `writer`.
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
            .with_filter(log_filter(&settings.log_filter))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .with_timer(timestamp::CachedUtc)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .with_filter(log_filter(&settings.log_filter))
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
    // Only what a trace viewer shows: source locations, thread names, busy/idle timings and the
    // target were extra attributes and clock reads on every span of every request, and nothing
    // here reads the OpenTelemetry context from a thread-local (propagation asks the span).
    let otel_layer = tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);

    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(TelemetryGuard {
        provider,
        _log_writer: log_writer,
    })
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

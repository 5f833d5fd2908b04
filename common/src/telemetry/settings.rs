//! `TelemetrySettings` from the standard `OTEL_*` variables and `MALL_LOG*`.

use opentelemetry_sdk::trace::Sampler;
use tracing_subscriber::filter::EnvFilter;
use url::Url;

use super::propagation;
use crate::config::{ConfigError, Vars};

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

        let exporters = exporters(vars)?;
        let sampler = sampler(vars)?;

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

    pub(super) fn sdk_sampler(&self) -> Sampler {
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

/// The exporters `OTEL_TRACES_EXPORTER` names, at the endpoints the `OTEL_EXPORTER_*`
/// variables give; unset, wherever an endpoint was given.
fn exporters(vars: &Vars) -> Result<Vec<TraceExporter>, ConfigError> {
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
                    "otlp" => list.push(TraceExporter::Otlp(otlp_endpoint.clone().unwrap_or_else(|| {
                        Url::parse(&format!("{OTLP_DEFAULT_BASE}/v1/traces")).expect("valid default")
                    }))),
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
    Ok(exporters)
}

/// `OTEL_TRACES_SAMPLER` and its `OTEL_TRACES_SAMPLER_ARG`.
fn sampler(vars: &Vars) -> Result<SamplerSetting, ConfigError> {
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
    Ok(sampler)
}

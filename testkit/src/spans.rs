//! In-process trace receivers: an OTLP/HTTP endpoint (`/v1/traces`, protobuf, what Jaeger
//! accepts) and a Zipkin v2 endpoint (`/api/v2/spans`, JSON), plus the process-wide telemetry
//! that exports to both.
//!
//! Telemetry is global to a process, so the receivers are too: [`collector`] starts them on a
//! thread of their own, initialises `mall_common::telemetry` with both exporters pointed at
//! them, and keeps every span it receives. Tests find theirs by trace id (each test sends its
//! own), so tests in one binary never see each other's spans.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use http::StatusCode;
use mall_common::telemetry::{
    self, LogOutput, SamplerSetting, TelemetryGuard, TelemetrySettings, TraceExporter,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use url::Url;

use crate::wait::eventually;

/// Which receiver got a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// OTLP/HTTP protobuf.
    Otlp,
    /// Zipkin v2 JSON.
    Zipkin,
}

/// A received span, reduced to what tests assert on.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// The receiver.
    pub via: Via,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id, if any.
    pub parent_span_id: Option<String>,
    /// The span name.
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer`.
    pub kind: String,
    /// The exporting service's `service.name`.
    pub service: String,
    /// Attributes (OTLP) or tags (Zipkin), as strings.
    pub attributes: BTreeMap<String, String>,
    /// Whether the span's status is an error (OTLP's status code, Zipkin's `otel.status_code`).
    pub error: bool,
}

/// The receivers and the spans they got.
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    guard: TelemetryGuard,
}

/// The process-wide collector; the first call starts it and installs telemetry.
pub fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(otlp))
            .route("/api/v2/spans", post(zipkin))
            .with_state(spans.clone());
        let addr = crate::server::serve_for_the_process("span-collector", app);
        let url = |path: &str| Url::parse(&format!("http://{addr}{path}")).expect("collector url");
        let settings = TelemetrySettings {
            service_name: "mall-test".into(),
            log_filter: std::env::var("MALL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            exporters: vec![
                TraceExporter::Otlp(url("/v1/traces")),
                TraceExporter::Zipkin(url("/api/v2/spans")),
            ],
            sampler: SamplerSetting::AlwaysOn,
            // A test that injects faults logs them; a passing test's lines stay out of sight.
            log_output: LogOutput::TestCapture,
            ..TelemetrySettings::local("mall-test")
        };
        let guard = telemetry::init(&settings).expect("test telemetry installs once per process");
        Collector { addr, spans, guard }
    })
}

impl Collector {
    /// The collector's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Spans received so far for `trace_id` through `via`.
    pub fn spans(&self, via: Via, trace_id: &str) -> Vec<CollectedSpan> {
        self.spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s.via == via && s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The parent of `child` among the spans received for its trace through `via`; panics
    /// naming the child when it has none there (the trace is broken).
    pub fn parent_of(&self, via: Via, child: &CollectedSpan) -> CollectedSpan {
        let id = child
            .parent_span_id
            .clone()
            .unwrap_or_else(|| panic!("{} has no parent", child.name));
        self.spans(via, &child.trace_id)
            .into_iter()
            .find(|s| s.span_id == id)
            .unwrap_or_else(|| panic!("parent {id} of {} in the trace", child.name))
    }

    /// Exports every finished span now.
    pub async fn flush(&'static self) {
        tokio::task::spawn_blocking(move || self.guard.force_flush())
            .await
            .expect("flush task");
    }

    /// Flushes until a span of `trace_id` matching `pred` arrived through `via` (10 s at most).
    pub async fn wait_for(
        &'static self,
        via: Via,
        trace_id: &str,
        what: &str,
        pred: impl Fn(&CollectedSpan) -> bool,
    ) -> CollectedSpan {
        eventually(Duration::from_secs(10), what, || async {
            self.flush().await;
            let spans = self.spans(via, trace_id);
            spans
                .iter()
                .find(|s| pred(s))
                .cloned()
                .ok_or_else(|| format!("{} span(s) of this trace so far: {spans:?}", spans.len()))
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_to_string(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn otlp(State(spans): State<Arc<Mutex<Vec<CollectedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| any_to_string(kv.value.as_ref()))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            let kind = match span.kind {
                1 => "internal",
                2 => "server",
                3 => "client",
                4 => "producer",
                5 => "consumer",
                _ => "unspecified",
            };
            out.push(CollectedSpan {
                via: Via::Otlp,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                name: span.name,
                kind: kind.into(),
                service: service.clone(),
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), any_to_string(kv.value.as_ref())))
                    .collect(),
                error: span.status.is_some_and(|s| s.code == SpanStatus::Error as i32),
            });
        }
    }
    spans.lock().expect("spans").extend(out);
    StatusCode::OK
}

async fn zipkin(State(spans): State<Arc<Mutex<Vec<CollectedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(serde_json::Value::Array(list)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let out = list.iter().map(|s| {
        let attributes: BTreeMap<String, String> = s
            .get("tags")
            .and_then(|t| t.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                    .collect()
            })
            .unwrap_or_default();
        CollectedSpan {
            via: Via::Zipkin,
            error: attributes.get("otel.status_code").map(String::as_str) == Some("ERROR"),
            trace_id: text(s, "traceId").unwrap_or_default(),
            span_id: text(s, "id").unwrap_or_default(),
            parent_span_id: text(s, "parentId"),
            name: text(s, "name").unwrap_or_default(),
            kind: text(s, "kind").unwrap_or_default().to_lowercase(),
            service: s
                .get("localEndpoint")
                .and_then(|e| text(e, "serviceName"))
                .unwrap_or_default(),
            attributes,
        }
    });
    spans.lock().expect("spans").extend(out);
    StatusCode::ACCEPTED
}

//! Logs and traces, through `tracing`.
//!
//! Logs: readable lines by default, one JSON object a line with
//! `log.format = "json"`. Every line logged while a request is handled carries
//! that request's span, and so its `request_id`.
//!
//! Traces: with `telemetry.otlp_endpoint` set, spans are exported over
//! OTLP/HTTP by `tracing-opentelemetry`: each request (`request`), database
//! query group (`db.query`, `db.transaction`), cache call (`cache.get`), saga
//! step (`saga.step`), event publication (`bus.publish`) and handled event
//! (`bus.handle`). They are tied together by the W3C trace context of
//! [`agora_kernel::TraceContext`]: a request's span continues the caller's
//! `traceparent`, the events it writes carry the request span's own context
//! through the outbox into the bus messages, and the relay's and consumers'
//! spans continue from it — one checkout is one trace. Without an endpoint
//! only the request's span is made (for the logs), the others are not made
//! (a load and a branch), and the trace context still travels with the
//! events; with one, the finer spans are made only in sampled traces
//! ([`tracing_here`]).

use std::sync::atomic::{AtomicBool, Ordering};

use agora_kernel::TraceContext;
use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Whether spans are exported (an OpenTelemetry layer is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// What [`init`] installed; [`Telemetry::shutdown`] sends the spans still
/// buffered before the process exits.
#[derive(Debug, Default)]
#[must_use = "shut it down at exit, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered, waiting for it.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "flushing the trace exporter failed");
        }
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("shutting the trace exporter down failed: {e}");
        }
    }
}

/// Installs the global subscriber: the logs, and the OTLP trace exporter when
/// `telemetry.otlp_endpoint` is set. Calling it again (as tests do) keeps the
/// first subscriber.
pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    use opentelemetry_otlp::WithExportConfig as _;
    let Some(endpoint) = &telemetry.otlp_endpoint else {
        return install(log, None);
    };
    // The exporter's reqwest (shared with object storage) takes the process's
    // rustls crypto provider: ring, as the rest of the tree. Already
    // installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("`telemetry.otlp_endpoint`: {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            telemetry.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(telemetry.service_name.clone())
                .build(),
        )
        .build();
    install(log, Some(provider))
}

/// Installs the global subscriber with spans going to `exporter` as each one
/// ends (for tests: an in-memory exporter). Fails if a subscriber is already
/// installed.
pub fn init_with_exporter(
    log: &LogConfig,
    exporter: impl SpanExporter + 'static,
) -> anyhow::Result<Telemetry> {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let telemetry = install(log, Some(provider))?;
    anyhow::ensure!(
        exporting(),
        "a subscriber without the exporter was already installed"
    );
    Ok(telemetry)
}

fn install(log: &LogConfig, provider: Option<SdkTracerProvider>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&log.filter)
        .with_context(|| format!("`log.filter`: `{}` is not a valid filter", log.filter))?;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match log.format {
        LogFormat::Text => lines.with_target(true).boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // The spans are Agora's own (at `debug` and up, whatever the log filter
    // says): those of the libraries below would only repeat them. Of the log
    // events, only warnings and errors go on the spans (the request's
    // `debug` line would double each span's size). What a span records is
    // its name, fields, timing and parent: no source location, thread, target
    // or busy/idle times (each costs on every span, and says little the name
    // does not), and entering a span does not make its context current for
    // other OpenTelemetry instrumentation (there is none).
    let spans = provider.as_ref().map(|provider| {
        let ours = Targets::new()
            .with_default(LevelFilter::OFF)
            .with_target("agora", LevelFilter::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agora"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(ours)
            .with_filter(filter_fn(|meta| {
                meta.is_span() || *meta.level() <= tracing::Level::WARN
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init();
    // Already installed (several apps in one test process): keep the first.
    if installed.is_ok() && provider.is_some() {
        EXPORTING.store(true, Ordering::Release);
    }
    Ok(Telemetry {
        provider: provider.filter(|_| installed.is_ok()),
    })
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// Whether the finer spans (database, cache, saga step, publication) of the
/// work being done now are worth making: spans are exported and the current
/// request's or event's trace is sampled (work outside one, such as the
/// relay's own reads, starts a trace the sampler decides on). An unsampled
/// request's spans would only be made to be dropped.
pub fn tracing_here() -> bool {
    exporting() && agora_kernel::RequestContext::current_trace().is_none_or(|t| t.sampled())
}

/// Makes `span` (not yet entered) continue `parent`, a trace context from
/// another process (a caller's `traceparent`, an event's), and returns the
/// span's own context: what goes on as the parent of the work it causes. `None`
/// when no spans are exported (the caller makes its own context then).
pub fn continue_trace(span: &tracing::Span, parent: Option<TraceContext>) -> Option<TraceContext> {
    if !exporting() || span.is_disabled() {
        return None;
    }
    if let Some(parent) = parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id_bytes()),
            SpanId::from_bytes(parent.span_id_bytes()),
            if parent.sampled() {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        // Fails only for a span already started, which this is not.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let own = span.context();
    let own = own.span();
    let own = own.span_context();
    TraceContext::from_parts(
        own.trace_id().to_bytes(),
        own.span_id().to_bytes(),
        own.is_sampled(),
    )
}

//! Logging and tracing set-up. Spans carry request ids; nothing here ever records a token, key,
//! pairing code or responder note (those types do not implement `Debug` with their contents).
//!
//! Some libraries log the data passing through them at their debug and trace levels: tokio-postgres
//! the parameters of every statement (link-secret hashes, mail bodies with link secrets, override
//! tokens on their way to a lock), lettre every SMTP line including the message body, webauthn-rs its
//! ceremony state, reqwest raw connection bytes. [`SECRET_BEARING`] caps those targets below the
//! levels where they do that. The cap is a filter of its own, applied to every layer beside the
//! operator's `RUST_LOG` filter of the log output: an event is written only when both allow it, so
//! no `RUST_LOG` can lift it.
//!
//! Logs go to standard error (standard output is the commands' own output); colour only when
//! standard error is a terminal and `NO_COLOR` is not set.
//!
//! # Trace export (OTLP)
//!
//! With `otlp_endpoint` set, spans are exported to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), through a batch span processor on a thread of its own; without it nothing of this
//! runs. What is exported is closed by construction ([`exported`]):
//!
//! - **Spans only, never events.** Log events stay in the log; they are not attached to spans.
//! - **Only the project's own spans** (target `firstkey::…`) at INFO or above: a library's spans
//!   (hyper, h2, reqwest, tokio-postgres, lettre) are never exported, whatever they carry.
//! - **Their fields are a closed set**, checked by the test `tests/api/otlp.rs` against every span
//!   the whole demo story produces: `request_id` and the HTTP attributes of the request span
//!   ([`http_server_span`]: method, route *pattern* — never the raw path or query —, status
//!   code), the names of the handlers (`#[tracing::instrument(skip_all)]`: no argument is
//!   recorded), and the domain spans' closed-set fields (`token.issue`, `token.mint` with its
//!   `holder` kind, `inbox.push` with its `kind`, `channel.push` and `channel.ack` with a count
//!   of entries, `receipts.store` with the batch size and its `outcome`). No token, key, code,
//!   link secret, note, e-mail address or user id is a field of any span, so none can be
//!   exported. A new span field fails that test until it is added to its list (and to the table
//!   in docs/operations.md).
//!
//! An incoming W3C `traceparent` is followed only from a peer in `trusted_proxies` (the ingress
//! that started the trace); from anyone else the request starts a trace of its own, so a client
//! cannot pick trace ids or force sampling. Sampling: `otlp_sample_ratio` of new traces, parent
//! based. Shutdown ([`Telemetry::shutdown`]) flushes what is queued and waits at most
//! [`SHUTDOWN_TIMEOUT`]; one export attempt (with its retries) is bounded by [`EXPORT_TIMEOUT`],
//! so a collector that is down or silent never holds the server up. Failed exports are logged
//! (target `opentelemetry*`, at warn/error) and their spans dropped; serving is unaffected.
use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use secrecy::ExposeSecret;
use tracing::Span;
use tracing::level_filters::LevelFilter;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{LogFormat, OtlpSettings, SettingsError};

/// Longest time one export (its retries included) may take before its spans are dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time [`Telemetry::shutdown`] waits for the last export.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(6);

/// Most bytes of a collector's answer read (an OTLP answer is a few bytes).
const MAX_ANSWER: u64 = 64 * 1024;

/// Whether spans are being exported (set once by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Targets that log parameters, message bodies or raw bytes below some level, and the most verbose
/// level each may log at whatever `RUST_LOG` says.
pub const SECRET_BEARING: [(&str, LevelFilter); 6] = [
    // `debug!("executing statement … with parameters: …")`
    ("tokio_postgres", LevelFilter::INFO),
    // `debug!("Wrote: …")` / `debug!("<< …")`: every SMTP line, the DATA (mail body) included.
    ("lettre", LevelFilter::INFO),
    // Ceremony state and client data at debug and trace.
    ("webauthn_rs_core", LevelFilter::INFO),
    ("webauthn_rs", LevelFilter::INFO),
    // Raw bytes of verbose connections at trace.
    ("reqwest", LevelFilter::DEBUG),
    // Frames (headers with cookies) at trace.
    ("h2", LevelFilter::DEBUG),
];

/// The cap of [`SECRET_BEARING`], as a filter that lets everything else through.
pub fn secret_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(SECRET_BEARING)
}

/// The operator's filter: `RUST_LOG`, else `info` (migrations' chatter at warn).
fn operator_filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,refinery_core=warn,tokio_postgres=error"))
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and not under `NO_COLOR`.
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether spans are exported (`otlp_endpoint` is set and [`init`] ran).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What the exporter is given: the project's own spans (target `firstkey` or `firstkey::…`) at
/// INFO or above, and no event (see the module docs).
pub fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    meta.is_span()
        && *meta.level() <= tracing::Level::INFO
        && (target == "firstkey" || target.starts_with("firstkey::"))
}

/// The installed subscriber's exporter, to be shut down (flushed) before the process exits.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter, waiting at most [`SHUTDOWN_TIMEOUT`] (a
    /// collector that is down or does not answer costs that much at most). Call it outside an
    /// async runtime.
    pub fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "trace export did not finish; the last spans may be lost");
        }
    }
}

/// Installs the global subscriber: the log output in `format`, and the OTLP trace exporter when
/// `otlp` is given. Call it outside an async runtime. Calling it twice is harmless (the second
/// call installs nothing and exports nothing). An exporter that cannot be built (an unreadable
/// `otlp_ca_cert`) is an error naming the setting.
pub fn init(format: LogFormat, otlp: Option<&OtlpSettings>) -> Result<Telemetry, SettingsError> {
    let provider = otlp.map(tracer_provider).transpose()?;
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("firstkey"))
            .with_location(false)
            .with_threads(false)
            .with_filter(filter_fn(exported))
    });
    let registry = tracing_subscriber::registry().with(secret_cap()).with(otel);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_filter(operator_filter()),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(colour())
                    .with_writer(std::io::stderr)
                    .with_filter(operator_filter()),
            )
            .try_init(),
    };
    let provider = match (installed, provider) {
        (Ok(()), Some(provider)) => {
            EXPORTING.store(true, Ordering::Relaxed);
            if let Some(otlp) = otlp {
                // The URL carries no credentials (refused in `settings`); headers are not logged.
                tracing::info!(endpoint = %otlp.traces_url, sample_ratio = otlp.sample_ratio, "exporting traces (OTLP/HTTP)");
            }
            Some(provider)
        }
        (Err(_), Some(provider)) => {
            // Another subscriber was installed first: this exporter would never see a span.
            let _ = provider.shutdown_with_timeout(Duration::from_millis(100));
            None
        }
        (_, None) => None,
    };
    Ok(Telemetry { provider })
}

/// The tracer provider: OTLP/HTTP protobuf exporter behind a batch span processor, parent-based
/// ratio sampling, `service.name` and `service.version`.
fn tracer_provider(otlp: &OtlpSettings) -> Result<SdkTracerProvider, SettingsError> {
    let headers: HashMap<String, String> = otlp
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose_secret().to_owned()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(otlp.traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(BlockingClient::new(otlp)?)
        .with_headers(headers)
        .build()
        .map_err(|e| SettingsError::Invalid {
            setting: "otlp_endpoint".to_owned(),
            reason: e.to_string(),
        })?;
    // Queue, batch size and delay: the SDK's defaults (2048 spans, 512 a batch, every 5 s), which
    // OTEL_BSP_* variables may change; a full queue drops spans, never blocks a request.
    let processor = BatchSpanProcessor::builder(exporter).build();
    // `Resource::builder` also reads OTEL_RESOURCE_ATTRIBUTES (e.g. the pod's name); the service
    // name is ours.
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: reqwest's blocking client (the batch processor's thread has no
/// async runtime), rustls with ring for `https`, no redirects, no proxy from the environment.
#[derive(Debug)]
struct BlockingClient(reqwest::blocking::Client);

impl BlockingClient {
    fn new(otlp: &OtlpSettings) -> Result<Self, SettingsError> {
        let invalid = |setting: &str, reason: String| SettingsError::Invalid {
            setting: setting.to_owned(),
            reason,
        };
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("firstkey/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &otlp.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| invalid("otlp_ca_cert", format!("{}: {e}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid("otlp_ca_cert", format!("{}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(invalid(
                    "otlp_ca_cert",
                    format!("{}: no PEM certificate in it", path.display()),
                ));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| invalid("otlp_endpoint", format!("no HTTP client: {e}")))?;
        Ok(Self(client))
    }
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::blocking::Request::try_from(request)?;
        let response = self.0.execute(request)?;
        let status = response.status();
        let mut body = Vec::new();
        response.take(MAX_ANSWER).read_to_end(&mut body)?;
        Ok(Response::builder().status(status).body(Bytes::from(body))?)
    }
}

/// An actix request's headers, for the W3C trace-context propagator.
struct RequestHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Gives a request's span its OpenTelemetry face while spans are exported: the name
/// `{method} {route}` (the route *pattern*), kind server, `http.request.method` and `http.route`;
/// and, when `follow_parent` (the peer is a trusted proxy), the caller's W3C `traceparent` as its
/// parent. `span` must declare the empty fields `otel.name` and `otel.kind`. Nothing happens
/// when nothing is exported (the log lines stay as they were).
pub fn http_server_span(
    span: &Span,
    method: &'static str,
    route: &str,
    headers: &actix_web::http::header::HeaderMap,
    follow_parent: bool,
) {
    if !exporting() {
        return;
    }
    span.record("otel.name", format!("{method} {route}").as_str());
    span.record("otel.kind", "server");
    span.set_attribute("http.request.method", method);
    span.set_attribute("http.route", route.to_owned());
    if follow_parent {
        let parent = TraceContextPropagator::new().extract(&RequestHeaders(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}

/// Records the answer's status on a request's span (`http.response.status_code`; error status
/// for a 5xx), while spans are exported.
pub fn http_server_span_end(span: &Span, status: u16) {
    if !exporting() {
        return;
    }
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(Status::error("server error"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    /// Records the names of the spans and events a layer is given.
    struct Seen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0
                .lock()
                .unwrap()
                .push(attrs.metadata().name().to_owned());
        }

        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0
                .lock()
                .unwrap()
                .push(format!("event {}", event.metadata().target()));
        }
    }

    #[test]
    fn only_the_servers_own_spans_at_info_or_above_are_exported_never_an_event() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(Seen(seen.clone()).with_filter(filter_fn(exported)));
        tracing::subscriber::with_default(subscriber, || {
            let _own = tracing::info_span!("own").entered();
            let _warn = tracing::warn_span!("own_warn").entered();
            let _debug = tracing::debug_span!("own_debug").entered();
            let _library = tracing::info_span!(target: "hyper::proto::h1", "library").entered();
            let _agent = tracing::info_span!(target: "firstkey_agent::session", "agent").entered();
            tracing::info!("an event in the server's own span");
            tracing::error!(target: "firstkey::http", "an error event");
        });
        assert_eq!(*seen.lock().unwrap(), ["own", "own_warn"]);
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let otlp = |ca: Option<std::path::PathBuf>| OtlpSettings {
            traces_url: "https://127.0.0.1:4318/v1/traces".to_owned(),
            service_name: "firstkey".to_owned(),
            sample_ratio: 1.0,
            headers: Vec::new(),
            ca_cert: ca,
        };
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err = BlockingClient::new(&otlp(Some(garbage))).unwrap_err();
        assert!(err.to_string().contains("`otlp_ca_cert`"), "{err}");

        let ca = rcgen::generate_simple_self_signed(vec!["collector.local".to_owned()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert!(BlockingClient::new(&otlp(Some(good))).is_ok());
        assert!(BlockingClient::new(&otlp(None)).is_ok());
    }

    #[test]
    fn the_cap_keeps_secret_bearing_targets_quiet_and_lets_others_through() {
        let cap = secret_cap();
        let allows = |target: &str, level: Level| cap.would_enable(target, &level);
        assert!(!allows("tokio_postgres::query", Level::DEBUG));
        assert!(!allows(
            "lettre::transport::smtp::client::async_connection",
            Level::DEBUG
        ));
        assert!(!allows("webauthn_rs_core::core", Level::TRACE));
        assert!(allows("tokio_postgres::connection", Level::INFO));
        assert!(allows("lettre", Level::WARN));
        assert!(allows("firstkey::http", Level::TRACE));
    }
}

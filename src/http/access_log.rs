//! The access log: exactly one line per request, written when the response is ready, with the
//! method, the route *pattern* (never the raw path or query string, which may carry search terms),
//! the status, the duration, the client address ([`super::client_address`]) and the request id
//! (the same id the response carries as `x-request-id`). Never a header, a cookie or a body.
//!
//! Levels: INFO for every answer below 500 — a 4xx is an expected refusal (a wrong link, a missing
//! step-up), logged once, not as a warning — and ERROR for 5xx (whose cause `error::ApiError` logs
//! beside it). The lines have target `firstkey::access`, so an operator can filter them
//! (`RUST_LOG=info,firstkey::access=off`).
//!
//! [`AccessLog`] is the root-span builder of `tracing_actix_web::TracingLogger`: the request's span
//! carries only its request id, so every event of the request names it. While spans are exported
//! (`otlp_endpoint`), it also carries the span's OpenTelemetry name and HTTP attributes
//! (`crate::telemetry::http_server_span`): the method, the route pattern, the status, nothing else.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// When the request arrived (a request extension set by [`AccessLog::on_request_start`]).
#[derive(Debug, Clone, Copy)]
struct Arrived(Instant);

/// What the line says about the request, gathered when it arrives.
#[derive(Debug, Clone)]
struct Line {
    method: &'static str,
    route: String,
    client: String,
    request_id: String,
}

/// Root-span builder that writes the access log (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct AccessLog;

impl RootSpanBuilder for AccessLog {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default();
        let method = method_label(request.method());
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        crate::telemetry::http_server_span(
            &span,
            method,
            &route,
            request.headers(),
            super::from_trusted_proxy(request.request()),
        );
        let line = Line {
            method,
            route,
            client: super::client_address(request.request())
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".to_owned()),
            request_id: request_id.clone(),
        };
        request.extensions_mut().insert(Arrived(Instant::now()));
        request.extensions_mut().insert(line);
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        match outcome {
            Ok(response) => {
                crate::telemetry::http_server_span_end(&span, response.status().as_u16());
                let extensions = response.request().extensions();
                let duration_ms = extensions
                    .get::<Arrived>()
                    .map(|a| a.0.elapsed().as_secs_f64() * 1000.0);
                if let Some(line) = extensions.get::<Line>() {
                    write(line, response.status(), duration_ms);
                }
            }
            // Middleware answers with responses, not errors; should one slip through, it is still
            // one line (without the request's details, which went with the request).
            Err(error) => {
                let status = error.as_response_error().status_code();
                crate::telemetry::http_server_span_end(&span, status.as_u16());
                tracing::error!(target: "firstkey::access", parent: None, status = status.as_u16(), "request failed before a response");
            }
        }
    }
}

fn write(line: &Line, status: StatusCode, duration_ms: Option<f64>) {
    let duration_ms = duration_ms.map(|d| (d * 1000.0).round() / 1000.0);
    macro_rules! access {
        ($level:ident) => {
            tracing::$level!(
                target: "firstkey::access",
                parent: None,
                method = %line.method,
                route = %line.route,
                status = status.as_u16(),
                duration_ms,
                client = %line.client,
                request_id = %line.request_id,
                "request"
            )
        };
    }
    if status.is_server_error() {
        access!(error);
    } else {
        access!(info);
    }
}

/// The method as a label from a closed set (anything else is `other`).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

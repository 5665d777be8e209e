//! Prometheus metrics: request counts and latencies per route pattern (never per raw path, so an
//! attacker cannot grow the series), and the database pool's state, read at scrape time.
//!
//! Every label value comes from a closed set: `method` is one of the standard methods or `other`,
//! `route` a registered pattern or `unmatched`, `status` a status code the server itself sent.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use deadpool_postgres::Pool;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The server's metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_size: IntGauge,
    pool_available: IntGauge,
    pool_waiting: IntGauge,
    db: crate::metrics::DbGauges,
}

impl Metrics {
    /// Registers the metric families in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("firstkey".to_owned()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )?;
        let pool_size = IntGauge::new("db_pool_connections", "Open database connections")?;
        let pool_available = IntGauge::new("db_pool_available", "Idle database connections")?;
        let pool_waiting = IntGauge::new(
            "db_pool_waiting",
            "Requests waiting for a database connection",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(pool_size.clone()))?;
        registry.register(Box::new(pool_available.clone()))?;
        registry.register(Box::new(pool_waiting.clone()))?;
        let db = crate::metrics::DbGauges::register(&registry)?;
        Ok(Self {
            registry,
            requests,
            latency,
            pool_size,
            pool_available,
            pool_waiting,
            db,
        })
    }

    /// Renders all families in the Prometheus text format: refreshes the pool gauges and reads the
    /// database gauges (bounded by [`crate::metrics::DB_GAUGE_TIMEOUT`]), then adds the process's
    /// domain metrics ([`crate::metrics`]).
    pub async fn render(&self, pool: &Pool) -> Result<String, prometheus::Error> {
        let status = pool.status();
        self.pool_size
            .set(i64::try_from(status.size).unwrap_or(i64::MAX));
        self.pool_available
            .set(i64::try_from(status.available).unwrap_or(i64::MAX));
        self.pool_waiting
            .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
        self.db.refresh(pool).await;
        let mut families = self.registry.gather();
        if let Some(domain) = crate::metrics::domain() {
            families.extend(domain.gather());
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Middleware: records the request in [`Metrics`] and echoes the request id as `x-request-id`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string);
    let mut response = next.call(req).await?;
    if let Some(metrics) = metrics {
        let status = response.status().as_u16().to_string();
        metrics
            .requests
            .with_label_values(&[method, route.as_str(), status.as_str()])
            .inc();
        metrics
            .latency
            .with_label_values(&[method, route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    if let Some(id) = request_id.and_then(|id: String| HeaderValue::from_str(&id).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
    }
    Ok(response)
}

/// The `method` label: the standard methods by name, every other method as `other`. A method is
/// outside input; were it a label value as sent, each new one would add series without limit.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

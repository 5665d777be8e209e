//! The HTTP surface: [`Application`] binds its listener, wires middleware (tracing with request ids,
//! metrics, security headers) and routes. Handlers are a few lines: extract, call one core function,
//! map the result; [`error::ApiError`] is the only place core errors meet status codes.

pub mod auth;
pub mod dispatch;
pub mod error;
pub mod health;
pub mod log;
pub mod metrics;
pub mod openapi;
pub mod properties;
pub mod tokens;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use deadpool_postgres::Pool;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing_actix_web::TracingLogger;

use crate::clock::Clock;
use crate::settings::{Settings, TlsFiles};
use metrics::Metrics;

/// Shared state of every request handler.
pub struct AppState {
    /// Database pool.
    pub pool: Pool,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Loaded configuration.
    pub settings: Settings,
    /// Key-encryption key for personal data at rest.
    pub kek: crate::crypto::Kek,
    /// The policy set deciding every authorization question.
    pub policy: Arc<crate::policy::PolicyEngine>,
}

/// A bound, not yet running, HTTP server.
pub struct Application {
    server: Server,
    /// Seals pending audit entries while the server runs (every replica runs one; they take turns
    /// per municipality under the sealing lock).
    sealer: tokio::task::JoinHandle<()>,
    /// The separate `/metrics` listener (`metrics_listen`), stopped with the main server.
    metrics_server: Option<Server>,
    metrics_addr: Option<SocketAddr>,
    local_addr: SocketAddr,
    scheme: &'static str,
}

impl Application {
    /// Binds `settings.listen` (port 0 picks a free port) and prepares the server over `pool`.
    pub fn build(settings: Settings, pool: Pool, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Self::build_on(listener, settings, pool, clock)
    }

    /// Prepares the server on a listener the caller bound (`settings.listen` is not used): for a
    /// caller that must know the port before the settings are made, e.g. to put it in
    /// `public_origin`, the WebAuthn origin a browser checks.
    pub fn build_on(
        listener: TcpListener,
        settings: Settings,
        pool: Pool,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let local_addr = listener.local_addr()?;
        let tls = settings.tls.as_ref().map(server_tls_config).transpose()?;
        let hsts = settings.public_origin.as_str().starts_with("https://");
        let metrics_listener = settings
            .metrics_listen
            .map(|addr| {
                TcpListener::bind(addr)
                    .with_context(|| format!("setting `metrics_listen`: cannot listen on {addr}"))
            })
            .transpose()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let metrics_on_main = metrics_listener.is_none();
        let metrics = web::Data::new(Metrics::new().context("metrics registry")?);
        let kek = match &settings.data_key {
            Some(key) => {
                crate::crypto::Kek::from_base64(secrecy::ExposeSecret::expose_secret(key))?
            }
            None => crate::crypto::Kek::load_or_create(&settings.key_dir)
                .with_context(|| format!("setting `key_dir`: {}", settings.key_dir.display()))?,
        };
        let policy = match &settings.policy_dir {
            Some(dir) => crate::policy::PolicyEngine::from_dir(dir)
                .with_context(|| format!("setting `policy_dir`: {}", dir.display()))?,
            None => crate::policy::PolicyEngine::shipped().context("the shipped policy set")?,
        };
        tracing::info!(policy_set = %hex::encode(policy.policy_set_hash()), "policy set loaded");
        let sealer = tokio::spawn(crate::audit::run_sealer(
            pool.clone(),
            std::time::Duration::from_millis(50),
            crate::audit::Checkpointing {
                key_dir: settings.key_dir.clone(),
                every: settings.audit_checkpoint_interval,
                clock: clock.clone(),
            },
        ));
        let state = web::Data::new(AppState {
            pool,
            clock,
            settings,
            kek,
            policy: Arc::new(policy),
        });
        let metrics_server = match metrics_listener {
            None => None,
            Some(listener) => {
                let (state, metrics) = (state.clone(), metrics.clone());
                Some(
                    HttpServer::new(move || {
                        App::new()
                            .app_data(state.clone())
                            .app_data(metrics.clone())
                            .service(health::metrics)
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen(listener)?
                    .run(),
                )
            }
        };
        let factory = move || {
            let mut headers = DefaultHeaders::new()
                .add(("X-Content-Type-Options", "nosniff"))
                .add(("X-Frame-Options", "DENY"))
                .add(("Referrer-Policy", "no-referrer"))
                .add((
                    "Content-Security-Policy",
                    "default-src 'none'; frame-ancestors 'none'",
                ))
                .add(("Cross-Origin-Opener-Policy", "same-origin"))
                .add(("Cross-Origin-Resource-Policy", "same-origin"))
                .add((
                    "Permissions-Policy",
                    "camera=(), microphone=(), geolocation=()",
                ))
                .add(("Cache-Control", "no-store"));
            if hsts {
                headers = headers.add((
                    "Strict-Transport-Security",
                    "max-age=63072000; includeSubDomains",
                ));
            }
            App::new()
                .app_data(state.clone())
                .app_data(metrics.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(64 * 1024)
                        .error_handler(|e, _| error::extractor_error(e)),
                )
                .app_data(
                    web::PathConfig::default().error_handler(|e, _| error::extractor_error(e)),
                )
                .app_data(
                    web::QueryConfig::default().error_handler(|e, _| error::extractor_error(e)),
                )
                .wrap(from_fn(check_origin))
                .wrap(from_fn(metrics::observe))
                .wrap(headers)
                .wrap(TracingLogger::default())
                .configure(|cfg| routes(cfg, metrics_on_main))
                .default_service(web::to(unrouted))
        };
        let server = HttpServer::new(factory).shutdown_timeout(10);
        let (server, scheme) = match tls {
            Some(config) => (server.listen_rustls_0_23(listener, config)?, "https"),
            None => (server.listen(listener)?, "http"),
        };
        Ok(Self {
            server: server.run(),
            sealer,
            metrics_server,
            metrics_addr,
            local_addr,
            scheme,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the separate `/metrics` listener, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Runs until the server is stopped (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics_server.map(|server| {
            let handle = server.handle();
            (handle, tokio::spawn(server))
        });
        let result = self.server.await;
        self.sealer.abort();
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            let _ = task.await;
        }
        result
    }
}

/// All routes. Keep in step with [`openapi::ApiDoc`]; a test fails when the document drifts.
/// `/metrics` is left out when it has a listener of its own (`metrics_listen`).
fn routes(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    cfg.service(health::healthz).service(health::readyz);
    if with_metrics {
        cfg.service(health::metrics);
    }
    cfg.configure(auth::routes)
        .configure(properties::routes)
        .configure(dispatch::routes)
        .configure(tokens::routes)
        .configure(log::routes)
        .configure(crate::web::routes)
        .service(
            web::resource("/api/openapi.json")
                .route(web::get().to(|| async { HttpResponse::Ok().json(openapi::document()) })),
        );
}

/// A request no route took: 405 with `Allow` when its path is a documented resource (another
/// method would have been routed), 404 otherwise.
/// A browser asking for a page gets the HTML 404 page instead.
async fn unrouted(req: actix_web::HttpRequest) -> HttpResponse {
    match openapi::allowed_methods(req.path()) {
        Some(allow) => {
            actix_web::ResponseError::error_response(&error::ApiError::MethodNotAllowed { allow })
        }
        None => crate::web::not_found(req).await,
    }
}

/// Paths whose callers are machines that authenticate every request with a signature (CAD systems,
/// log witnesses), not browsers with cookies; the Origin check does not apply to them.
const MACHINE_PATHS: &[&str] = &["/api/v1/cad/", "/log/"];

/// Middleware: a state-changing request from a browser must come from our own origin. Requests
/// without `Origin` must say `Sec-Fetch-Site: same-origin`; anything else is refused with 403 before
/// it reaches a handler (CSRF defence in depth beside SameSite=Strict cookies).
async fn check_origin(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::http::Method;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !MACHINE_PATHS.iter().any(|p| req.path().starts_with(p)) {
        let expected = req
            .app_data::<web::Data<AppState>>()
            .map(|s| s.settings.public_origin.as_str().to_owned())
            .unwrap_or_default();
        let headers = req.headers();
        let allowed = match headers.get("origin").and_then(|v| v.to_str().ok()) {
            Some(origin) => origin == expected,
            None => headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|site| site == "same-origin"),
        };
        if !allowed {
            tracing::warn!(
                path = req.path(),
                "cross-origin state-changing request refused"
            );
            return Err(error::ApiError::Forbidden.into());
        }
    }
    next.call(req).await
}

/// Loads the PEM chain and key into a rustls server config using the ring provider.
fn server_tls_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("setting `tls_cert`: cannot read {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "setting `tls_cert`: {} is not a PEM certificate chain",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "setting `tls_cert`: {} holds no certificate",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "setting `tls_key`: {} holds no usable private key",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("setting `tls_key`: the key does not match the certificate")?;
    Ok(config)
}

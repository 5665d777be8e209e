//! The HTTP surface: [`Application`] binds its listener, wires middleware (request ids and the
//! access log, security headers, metrics, the Origin check) and routes. Handlers are a few lines:
//! extract, call one core function, map the result; [`error::ApiError`] is the only place core
//! errors meet status codes. [`client_address`] is the one answer to "who is asking" for logs and
//! rate limits.
//!
//! Every response, including the Origin check's 403, passes through the same middleware: it carries
//! `x-request-id` and the security headers, is counted in `/metrics` and written to the access log.

pub mod access_log;
pub mod admin;
pub mod alarms;
pub mod auth;
pub mod codes;
pub mod consent;
pub mod dispatch;
pub mod error;
mod extract;
pub mod health;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod openapi;
pub mod privacy;
pub mod properties;
pub mod tokens;
pub mod trusted;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::EitherBody;
use actix_web::dev::{Server, ServerHandle, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use anyhow::Context;
use deadpool_postgres::Pool;
use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing_actix_web::TracingLogger;

use crate::clock::Clock;
use crate::settings::{Settings, SettingsError, TlsFiles};
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
    /// This replica's fan-out of grant-state changes to the dispatcher consoles.
    pub grant_events: Arc<crate::emergency::live::GrantEvents>,
    /// This replica's memory of verified audit chain heads (the auditor's page).
    pub chain_checks: Arc<crate::audit::ChainCache>,
}

/// A bound, not yet running, HTTP server.
pub struct Application {
    server: Server,
    /// Seals pending audit entries while the server runs (every replica runs one; they take turns
    /// per municipality under the sealing lock).
    sealer: tokio::task::JoinHandle<()>,
    /// Mails homeowners of locks not seen for their period and issues trusted parties' standing
    /// keypad codes as their periods start (both replica-safe: `SKIP LOCKED`).
    offline_sweeper: tokio::task::JoinHandle<()>,
    /// Applies the plan's fallback to requests for live consent left unanswered (replica-safe:
    /// `SKIP LOCKED`).
    consent_sweeper: tokio::task::JoinHandle<()>,
    /// The separate `/metrics` listener (`metrics_listen`), stopped with the main server.
    metrics_server: Option<Server>,
    metrics_addr: Option<SocketAddr>,
    local_addr: SocketAddr,
    scheme: &'static str,
    grant_events: Arc<crate::emergency::live::GrantEvents>,
    grant_events_config: Option<tokio_postgres::Config>,
}

/// A start-up failure caused by the value of `setting` (exit code 2, like a bad value), in one line.
fn unusable(setting: &str, reason: impl std::fmt::Display) -> SettingsError {
    SettingsError::Invalid {
        setting: setting.to_owned(),
        reason: one_line(&reason.to_string()),
    }
}

/// Joins a multi-line message into one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Application {
    /// Binds `settings.listen` (port 0 picks a free port) and prepares the server over `pool`.
    pub fn build(settings: Settings, pool: Pool, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen).map_err(|e| {
            unusable(
                "listen",
                format!("cannot listen on {}: {e}", settings.listen),
            )
        })?;
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
        let kek = match &settings.data_key {
            Some(key) => crate::crypto::Kek::from_base64(secrecy::ExposeSecret::expose_secret(key))
                .map_err(|e| unusable("data_key", e))?,
            None => crate::crypto::Kek::load_or_create(&settings.key_dir)
                .map_err(|e| unusable("key_dir", format!("{}: {e}", settings.key_dir.display())))?,
        };
        let policy = match &settings.policy_dir {
            Some(dir) => crate::policy::PolicyEngine::from_dir(dir)
                .map_err(|e| unusable("policy_dir", format!("{}: {e:#}", dir.display())))?,
            None => crate::policy::PolicyEngine::shipped().context("the shipped policy set")?,
        };
        let local_addr = listener.local_addr()?;
        let tls = settings.tls.as_ref().map(server_tls_config).transpose()?;
        let hsts = settings.public_origin.as_str().starts_with("https://");
        let metrics_listener = settings
            .metrics_listen
            .map(|addr| {
                TcpListener::bind(addr).map_err(|e| {
                    unusable("metrics_listen", format!("cannot listen on {addr}: {e}"))
                })
            })
            .transpose()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let metrics_on_main = metrics_listener.is_none();
        let metrics = web::Data::new(Metrics::new().context("metrics registry")?);
        tracing::info!(policy_set = %hex::encode(policy.policy_set_hash()), "policy set loaded");
        let offline_sweeper = tokio::spawn(crate::health::run_offline_sweeper(
            pool.clone(),
            clock.clone(),
            crate::codes::SecretRoot::derive(&kek),
            std::time::Duration::from_secs(60),
        ));
        let consent_sweeper = tokio::spawn(crate::emergency::consent::run_timeout_sweeper(
            pool.clone(),
            clock.clone(),
            std::time::Duration::from_secs(1),
        ));
        let sealer = tokio::spawn(crate::audit::run_sealer(
            pool.clone(),
            std::time::Duration::from_millis(50),
            crate::audit::Checkpointing {
                key_dir: settings.key_dir.clone(),
                every: settings.audit_checkpoint_interval,
                clock: clock.clone(),
            },
        ));
        // The consoles' `LISTEN` connection goes where `database_url` points; a caller with another
        // database (the embedded one) names it with `listen_grant_events_on`.
        let grant_events_config = settings
            .database_url
            .as_ref()
            .and_then(|url| secrecy::ExposeSecret::expose_secret(url).parse().ok());
        let grant_events = crate::emergency::live::GrantEvents::new();
        let state = web::Data::new(AppState {
            pool,
            clock,
            settings,
            kek,
            policy: Arc::new(policy),
            grant_events: grant_events.clone(),
            chain_checks: Arc::default(),
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
                .wrap(from_fn(crate::web::zone::scope))
                .wrap(from_fn(check_origin))
                .wrap(from_fn(metrics::observe))
                .wrap(headers)
                .wrap(TracingLogger::<access_log::AccessLog>::new())
                .configure(|cfg| routes(cfg, metrics_on_main))
                .default_service(web::to(move |req| unrouted(req, metrics_on_main)))
        };
        let server = HttpServer::new(factory).shutdown_timeout(10);
        let (server, scheme) = match tls {
            Some(config) => (server.listen_rustls_0_23(listener, config)?, "https"),
            None => (server.listen(listener)?, "http"),
        };
        Ok(Self {
            server: server.run(),
            sealer,
            offline_sweeper,
            consent_sweeper,
            metrics_server,
            metrics_addr,
            local_addr,
            scheme,
            grant_events,
            grant_events_config,
        })
    }

    /// Where the grant-state `LISTEN` connection goes, instead of `database_url` (e.g. the embedded
    /// database). It starts when the server runs.
    pub fn listen_grant_events_on(&mut self, config: tokio_postgres::Config) {
        self.grant_events_config = Some(config);
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

    /// Stops this replica's background tasks (the audit sealer, the offline sweeper), so that only
    /// requests use the pool: for `firstkey bench`'s statement count. Another replica (or a later
    /// start) seals what this one records.
    pub fn without_background_tasks(self) -> Self {
        self.sealer.abort();
        self.offline_sweeper.abort();
        self
    }

    /// A handle that stops the server (`stop(true)` lets open requests finish).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Runs until the server is stopped (SIGINT/SIGTERM, or [`Self::handle`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        if let Some(config) = self.grant_events_config.clone() {
            self.grant_events.listen(config).await;
        }
        let metrics = self.metrics_server.map(|server| {
            let handle = server.handle();
            (handle, tokio::spawn(server))
        });
        let result = self.server.await;
        self.sealer.abort();
        self.offline_sweeper.abort();
        self.consent_sweeper.abort();
        self.grant_events.stop();
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
        .configure(alarms::routes)
        .configure(log::routes)
        .configure(keys::routes)
        .configure(privacy::routes)
        .configure(admin::routes)
        .configure(trusted::routes)
        .configure(consent::routes)
        .configure(codes::routes)
        .configure(crate::web::routes)
        .service(
            web::resource("/api/openapi.json")
                .route(web::get().to(|| async { HttpResponse::Ok().json(openapi::document()) })),
        );
}

/// A request no route took: 405 with `Allow` when its path is a documented resource (another
/// method would have been routed), 404 otherwise.
/// A browser asking for a page gets the HTML 404 page instead.
async fn unrouted(req: actix_web::HttpRequest, metrics_on_main: bool) -> HttpResponse {
    // `/metrics` is documented but not a resource here when `metrics_listen` serves it.
    let documented = openapi::allowed_methods(req.path())
        .filter(|_| metrics_on_main || req.path() != "/metrics");
    match documented {
        // The method is one the resource answers, but no route took the request: a path parameter
        // that cannot name anything (e.g. a key id that is not a UUID), so nothing is there.
        Some(allow) if allow.split(", ").any(|m| m == req.method().as_str()) => {
            crate::web::not_found(req).await
        }
        Some(allow) => {
            actix_web::ResponseError::error_response(&error::ApiError::MethodNotAllowed { allow })
        }
        None => crate::web::not_found(req).await,
    }
}

/// Paths whose callers are machines that authenticate every request with a signature (CAD systems,
/// log witnesses), not browsers with cookies; the Origin check does not apply to them.
const MACHINE_PATHS: &[&str] = &["/api/v1/cad/", "/log/", "/api/v1/monitoring/"];

/// Middleware: a state-changing request from a browser must come from our own origin. Requests
/// without `Origin` must say `Sec-Fetch-Site: same-origin`; anything else is refused with 403 before
/// it reaches a handler (CSRF defence in depth beside SameSite=Strict cookies). The refusal is a
/// response, not an error, so the outer middleware treat it like any other (request id, security
/// headers, metrics, access log).
async fn check_origin(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, actix_web::Error> {
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
            // The access log has the 403; this says why, for whoever looks closer.
            tracing::debug!("cross-origin state-changing request refused");
            let response = error::ApiError::Forbidden.error_response();
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// The client's address, for logs and rate limits: the TCP peer's address, unless the peer is one of
/// the `trusted_proxies`; then the address those proxies recorded ([`forwarded_client`]). A header
/// from any other peer is ignored: anyone can write `X-Forwarded-For`.
pub fn client_address(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let trusted = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.settings.trusted_proxies.as_slice())
        .unwrap_or(&[]);
    Some(forwarded_client(peer, req.headers(), trusted))
}

/// Whether the request's peer is one of `trusted_proxies` (whose forwarding headers, and trace
/// context, are believed).
pub fn from_trusted_proxy(req: &HttpRequest) -> bool {
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else {
        return false;
    };
    req.app_data::<web::Data<AppState>>().is_some_and(|s| {
        s.settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    })
}

/// The client behind `peer`: when `peer` is trusted, the forwarding chain (`Forwarded` `for=`, RFC
/// 7239, or else `X-Forwarded-For`) is read from the right, skipping trusted proxies; the first
/// address that is not a trusted proxy is the client. A hop that is not an address (`unknown`, an
/// obfuscated name, garbage) ends the walk at the last address known. An untrusted peer is the
/// client, whatever it wrote.
pub fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarding_chain(headers).into_iter().rev() {
        let Some(ip) = hop else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The hops of the forwarding headers, the original client first. `Forwarded` wins over
/// `X-Forwarded-For` when both are present.
fn forwarding_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, node)| parse_node(node))
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `"192.0.2.1:4711"`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    // IPv4 with a port.
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Loads the PEM chain and key into a rustls server config using the ring provider.
fn server_tls_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| {
            unusable(
                "tls_cert",
                format!("cannot read {}: {e}", files.cert.display()),
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            unusable(
                "tls_cert",
                format!(
                    "{} is not a PEM certificate chain: {e}",
                    files.cert.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(unusable(
            "tls_cert",
            format!("{} holds no certificate", files.cert.display()),
        )
        .into());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        unusable(
            "tls_key",
            format!("{} holds no usable private key: {e}", files.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            unusable(
                "tls_key",
                format!("the key does not match the certificate: {e}"),
            )
        })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "203.0.113.9")]);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &xff, &proxies),
            ip("198.51.100.1")
        );
        assert_eq!(forwarded_client(ip("10.1.2.3"), &xff, &[]), ip("10.1.2.3"));
        // A trusted proxy's header names the client.
        assert_eq!(
            forwarded_client(ip("10.1.2.3"), &xff, &proxies),
            ip("203.0.113.9")
        );
        // No header from a trusted proxy: the proxy is all we know.
        assert_eq!(
            forwarded_client(ip("10.1.2.3"), &HeaderMap::new(), &proxies),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_chain_is_read_from_the_right_and_spoofed_hops_are_skipped() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client wrote a fake first hop; our proxies appended the real one.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &h, &proxies),
            ip("203.0.113.9")
        );
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &h, &proxies),
            ip("203.0.113.9")
        );
        // A hop that is no address stops the walk at the last known address.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.0.0.5")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &h, &proxies),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn rfc_7239_forwarded_wins_and_its_forms_parse() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=https, for=\"[2001:db8:cafe::17]:4711\"",
            ),
            ("x-forwarded-for", "198.51.100.77"),
        ]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &h, &proxies),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "For=\"192.0.2.43:47011\"")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &h, &proxies),
            ip("192.0.2.43")
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), &h, &proxies),
            ip("10.0.0.1")
        );
    }
}

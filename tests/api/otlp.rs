//! OpenTelemetry trace export (`otlp_endpoint`): a small OTLP/HTTP receiver on 127.0.0.1 (actix,
//! `POST /v1/traces`, protobuf decoded with `opentelemetry-proto`) takes what the real `firstkey`
//! binary exports. The whole demo story arrives as spans with closed-set attributes and no secret;
//! a `traceparent` is followed from a trusted proxy only; a collector that is down or silent
//! changes nothing for the server, which still serves and still stops promptly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::helpers::fresh_database;
use crate::startup::{Served, firstkey_on};
use crate::story::{demo_secrets, run_demo_with};

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
    events: usize,
    status_code: i32,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One `POST` the receiver took.
#[derive(Debug, Clone)]
struct Post {
    content_type: String,
    authorization: Option<String>,
    resource: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Received {
    posts: Vec<Post>,
    spans: Vec<Span>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
struct Receiver {
    address: SocketAddr,
    received: Arc<Mutex<Received>>,
    handle: actix_web::dev::ServerHandle,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

async fn accept(
    request: HttpRequest,
    body: web::Bytes,
    received: web::Data<Arc<Mutex<Received>>>,
) -> HttpResponse {
    let Ok(export) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().finish();
    };
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut received = received.lock().unwrap();
    for resource_spans in &export.resource_spans {
        received.posts.push(Post {
            content_type: header("content-type").unwrap_or_default(),
            authorization: header("authorization"),
            resource: resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default(),
        });
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                received.spans.push(Span {
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    events: span.events.len(),
                    status_code: span.status.as_ref().map_or(0, |s| s.code),
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

impl Receiver {
    /// Plain HTTP.
    fn start() -> Self {
        Self::start_with(None)
    }

    /// HTTPS with this server configuration.
    fn start_with(tls: Option<rustls::ServerConfig>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let data = web::Data::new(received.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(32 << 20))
                .route("/v1/traces", web::post().to(accept))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1);
        let server = match tls {
            None => server.listen(listener),
            Some(config) => server.listen_rustls_0_23(listener, config),
        }
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            address,
            received,
            handle,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    fn posts(&self) -> Vec<Post> {
        self.received.lock().unwrap().posts.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

/// Every attribute key an exported span may carry, and for the closed ones, every value. A new
/// span field fails this test until it is looked at and added here.
fn allowed(key: &str, value: &str) -> bool {
    match key {
        // The request span (`http::access_log`, `telemetry::http_server_span`).
        "request_id" => {
            value.len() <= 64 && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }
        "http.request.method" => [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
        ]
        .contains(&value),
        "http.route" => is_route_pattern(value),
        "http.response.status_code" => value.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)),
        // Domain spans.
        "holder" => ["grant", "trusted", "remote"].contains(&value),
        "kind" => [
            "token",
            "revocation",
            "trust_bundle",
            "remote_open",
            "keypad_secret",
        ]
        .contains(&value),
        "outcome" => [
            "stored",
            "malformed",
            "bad_signature",
            "wrong_lock",
            "fork",
            "broken_chain",
        ]
        .contains(&value),
        "receipts" | "entries" => value.parse::<u64>().is_ok(),
        // What tracing-opentelemetry adds to every span: time busy and idle, the tracing target.
        "busy_ns" | "idle_ns" => value.parse::<u64>().is_ok(),
        "target" => value.starts_with("firstkey::"),
        _ => false,
    }
}

/// A route *pattern* (`/api/v1/locks/{id}`), never a concrete path: no query, no id in it.
fn is_route_pattern(route: &str) -> bool {
    route == "unmatched"
        || (route.starts_with('/')
            && !route.contains(['?', '#', '%'])
            && route.split('/').all(|segment| {
                uuid::Uuid::parse_str(segment).is_err()
                    && !(segment.len() >= 16 && segment.chars().all(|c| c.is_ascii_hexdigit()))
            }))
}

#[tokio::test]
async fn the_demo_story_arrives_as_spans_with_closed_set_attributes_and_no_secret() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    // The log filter is `warn`: what is exported does not depend on RUST_LOG.
    let output = run_demo_with(
        &db,
        dir.path(),
        "warn",
        Some("keys"),
        &[
            ("FIRSTKEY_OTLP_ENDPOINT", &endpoint),
            ("FIRSTKEY_OTLP_SERVICE_NAME", "firstkey-test"),
            (
                "FIRSTKEY_OTLP_HEADERS",
                "authorization=Bearer otlp-credential-7f3a",
            ),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("the story is complete"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("otlp-credential-7f3a"),
        "the collector's credential is never logged"
    );

    // The process has exited: whatever it exported, the shutdown flushed.
    let posts = receiver.posts();
    let spans = receiver.spans();
    assert!(!posts.is_empty(), "nothing exported:\n{stderr}");
    for post in &posts {
        assert_eq!(post.content_type, "application/x-protobuf");
        assert_eq!(
            post.authorization.as_deref(),
            Some("Bearer otlp-credential-7f3a"),
            "otlp_headers go with every export"
        );
        assert_eq!(
            post.resource.get("service.name").map(String::as_str),
            Some("firstkey-test")
        );
        assert_eq!(
            post.resource.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    eprintln!(
        "{} spans in {} exports, named: {names:?}",
        spans.len(),
        posts.len()
    );

    // HTTP request spans: `{method} {route}`, kind server, the route pattern and the status.
    let requests: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert!(requests.len() >= 20, "request spans: {requests:#?}");
    for span in &requests {
        let (method, route) = (
            span.attr("http.request.method").unwrap(),
            span.attr("http.route").unwrap(),
        );
        assert_eq!(span.name, format!("{method} {route}"));
        assert!(span.attr("http.response.status_code").is_some(), "{span:?}");
        assert!(span.attr("request_id").is_some(), "{span:?}");
    }
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let token_requests = named("POST /api/v1/tokens");
    assert!(!token_requests.is_empty(), "no token request span");
    assert!(
        token_requests
            .iter()
            .any(|s| s.attr("http.response.status_code") == Some("201")),
        "a token was issued: {token_requests:#?}"
    );

    // The domain operations, in their place in the trace.
    let issues = named("token.issue");
    assert!(!issues.is_empty(), "no token.issue span");
    for issue in &issues {
        assert!(
            token_requests
                .iter()
                .any(|r| r.span_id == issue.parent_span_id && r.trace_id == issue.trace_id),
            "token.issue is a child of its request span: {issue:?}"
        );
    }
    let mints = named("token.mint");
    let holders: BTreeSet<&str> = mints.iter().filter_map(|s| s.attr("holder")).collect();
    assert_eq!(
        holders,
        BTreeSet::from(["grant", "remote", "trusted"]),
        "every kind of token of the story"
    );
    let pushes = named("inbox.push");
    let kinds: BTreeSet<&str> = pushes.iter().filter_map(|s| s.attr("kind")).collect();
    for kind in ["token", "remote_open"] {
        assert!(kinds.contains(kind), "no inbox.push of a {kind}: {kinds:?}");
    }
    assert!(
        issues
            .iter()
            .any(|issue| pushes.iter().any(|p| p.trace_id == issue.trace_id)),
        "a responder's token is pushed inside the request that issued it"
    );
    let stored = named("receipts.store");
    assert!(
        stored
            .iter()
            .any(|s| s.attr("outcome") == Some("stored")
                && s.attr("receipts").is_some_and(|n| n != "0")),
        "receipt ingest: {stored:#?}"
    );
    assert!(!named("channel.push").is_empty(), "no channel.push span");
    assert!(!named("channel.ack").is_empty(), "no channel.ack span");

    // Closed sets only, no events, and no secret anywhere in what left the process.
    for span in &spans {
        assert_eq!(span.events, 0, "log events are not exported: {span:?}");
        assert!(
            span.status_code != 2
                || span
                    .attr("http.response.status_code")
                    .is_some_and(|s| s.starts_with('5')),
            "only a 5xx is an error: {span:?}"
        );
        for (key, value) in &span.attributes {
            assert!(
                allowed(key, value),
                "span {:?} carries {key}={value:?}, outside the closed set",
                span.name
            );
        }
    }
    let secrets = demo_secrets(&db, &dir.path().join(".firstkey/demo")).await;
    let exported = format!("{spans:?}{posts:?}");
    for (kind, secret) in &secrets {
        assert!(
            !exported.contains(secret.as_str()),
            "{kind} {secret:?} was exported"
        );
    }
}

/// Sends SIGTERM and waits for the exit; returns how long that took and whether it was a success.
fn terminate(served: &mut Served) -> (Duration, bool) {
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            return (started.elapsed(), status.success());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve did not stop after SIGTERM:\n{}",
            served.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_traceparent_is_followed_from_a_trusted_proxy_only_and_sampling_follows_it() {
    let receiver = Receiver::start();
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = firstkey_on(&db, dir.path());
    command
        .env("FIRSTKEY_OTLP_ENDPOINT", receiver.endpoint())
        // New traces are never sampled: what arrives was sampled by its caller.
        .env("FIRSTKEY_OTLP_SAMPLE_RATIO", "0")
        .env("FIRSTKEY_TRUSTED_PROXIES", "127.0.0.2/32")
        .env(
            "FIRSTKEY_OTLP_HEADERS",
            "authorization=Bearer otlp-credential-9c1e",
        )
        // Every library at its most verbose: the collector's credential still is never logged.
        .env("RUST_LOG", "trace");
    let mut served = Served::start(command, dir.path());
    let client = |local: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(local))
            .build()
            .unwrap()
    };
    let (proxy, stranger) = (client([127, 0, 0, 2]), client([127, 0, 0, 1]));
    let proxied_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let stranger_trace = "0af7651916cd43dd8448eb211c80319c";
    let url = format!("{}/healthz", served.base);
    for (http, trace, parent) in [
        (&proxy, proxied_trace, "00f067aa0ba902b7"),
        (&stranger, stranger_trace, "b7ad6b7169203331"),
    ] {
        let response = http
            .get(&url)
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // From the proxy without a traceparent: a new trace, not sampled at ratio 0.
    assert_eq!(proxy.get(&url).send().await.unwrap().status(), 200);
    drop((proxy, stranger));
    let (_, success) = terminate(&mut served);
    let log = served.log();
    assert!(success, "{log}");
    assert!(log.lines().count() > 100, "logged at trace level:\n{log}");
    assert!(
        !log.contains("otlp-credential-9c1e"),
        "the collector's credential is in the log"
    );
    assert!(
        receiver
            .posts()
            .iter()
            .all(|p| p.authorization.as_deref() == Some("Bearer otlp-credential-9c1e")),
        "it went to the collector"
    );

    let spans = receiver.spans();
    let proxied: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == proxied_trace)
        .collect();
    assert_eq!(proxied.len(), 1, "the proxied request's span: {spans:#?}");
    assert_eq!(proxied[0].name, "GET /healthz");
    assert_eq!(proxied[0].parent_span_id, "00f067aa0ba902b7");
    assert_eq!(
        spans.len(),
        1,
        "a stranger's traceparent is not followed (its request starts an unsampled trace), and \
         no new trace is sampled at ratio 0: {spans:#?}"
    );
}

// Two workers: `Served` and `terminate` block one while the silent collector accepts on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_silent_changes_nothing_and_shutdown_stays_bounded() {
    // Down: nothing listens on the port. Silent: connections are accepted and never answered.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            holder.lock().unwrap().push(stream);
        }
    });
    let db = fresh_database().await;
    for (case, address) in [("down", down), ("silent", silent_address)] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = firstkey_on(&db, dir.path());
        command.env("FIRSTKEY_OTLP_ENDPOINT", format!("http://{address}"));
        let mut served = Served::start(command, dir.path());
        let http = reqwest::Client::new();
        for _ in 0..20 {
            let response = http
                .get(format!("{}/healthz", served.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{case}: the server serves");
        }
        assert_eq!(
            http.get(format!("{}/readyz", served.base))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{case}"
        );
        drop(http);
        let (took, success) = terminate(&mut served);
        let log = served.log();
        eprintln!("collector {case}: SIGTERM to exit in {took:?}");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        eprintln!("{warnings:#?}");
        assert!(success, "{case}: a clean exit:\n{log}");
        // The flush waits for one export at most (`telemetry::SHUTDOWN_TIMEOUT`, 6 s); a hang would
        // run into the 60 s of `terminate`. The bound here leaves a slow, shared machine room.
        assert!(
            took < Duration::from_secs(30),
            "{case}: stopping took {took:?}:\n{log}"
        );
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the silent collector was reached (and never answered)"
    );
}

#[tokio::test]
async fn an_https_collector_is_reached_only_when_its_certificate_verifies() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
    )
    .unwrap();
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("collector-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    // Without the collector's CA, its certificate does not verify and nothing is sent; with it,
    // the spans arrive.
    for trusted in [false, true] {
        let receiver = Receiver::start_with(Some(config.clone()));
        let mut command = firstkey_on(&db, dir.path());
        command.env(
            "FIRSTKEY_OTLP_ENDPOINT",
            format!("https://localhost:{}", receiver.address.port()),
        );
        if trusted {
            command.env("FIRSTKEY_OTLP_CA_CERT", &ca);
        }
        let mut served = Served::start(command, dir.path());
        let response = reqwest::get(format!("{}/healthz", served.base))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let (_, success) = terminate(&mut served);
        assert!(success, "{}", served.log());
        let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
        if trusted {
            assert!(
                names.iter().any(|n| n == "GET /healthz"),
                "{names:?}\n{}",
                served.log()
            );
        } else {
            assert!(
                names.is_empty(),
                "sent to an unverified collector: {names:?}"
            );
            assert!(
                served.log().contains("BatchSpanProcessor.ExportError"),
                "the failed export is logged:\n{}",
                served.log()
            );
        }
    }
}

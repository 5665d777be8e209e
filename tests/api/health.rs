//! Liveness, readiness, metrics, error bodies and security headers, over real HTTP.

use std::time::Duration;

use crate::helpers::{spawn_app, spawn_app_behind_proxy};

#[tokio::test]
async fn healthz_answers_with_security_headers_and_request_id() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "request id is a UUID: {id}");
    let other = app.get("/healthz").await;
    assert_ne!(
        other.headers()["x-request-id"].to_str().unwrap(),
        id,
        "each request gets its own id"
    );
}

#[tokio::test]
async fn readyz_is_200_on_a_migrated_database() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["schema_version"], body["expected_schema_version"]);
}

#[tokio::test]
async fn readyz_is_503_while_the_schema_is_behind() {
    let app = spawn_app().await;
    app.pool
        .get()
        .await
        .unwrap()
        .batch_execute("DELETE FROM refinery_schema_history")
        .await
        .unwrap();
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["database"], true);
    assert_eq!(body["schema_version"], serde_json::Value::Null);
}

#[tokio::test]
async fn readyz_follows_the_database_away_and_back_without_restart() {
    let app = spawn_app_behind_proxy().await;
    let proxy = app.proxy.as_ref().unwrap();
    assert_eq!(app.get("/readyz").await.status(), 200);

    proxy.take_down().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["database"], false);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "liveness does not depend on the database"
    );

    proxy.bring_up();
    let mut status = 0;
    for _ in 0..50 {
        status = app.get("/readyz").await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "ready again once the database is back");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_show_the_pool() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/no/such/path/12345").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            r#"firstkey_http_requests_total{method="GET",route="/healthz",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains("firstkey_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("firstkey_db_pool_connections"), "{text}");
    assert!(
        !text.contains("12345"),
        "raw paths never become label values"
    );
}

#[tokio::test]
async fn unknown_paths_get_problem_details() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert!(body["type"].as_str().unwrap().ends_with("/not-found"));
    assert!(body["title"].is_string());
}

#[tokio::test]
async fn https_is_served_with_rustls_when_cert_and_key_are_configured() {
    use std::sync::Arc;

    use rustls_pki_types::CertificateDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let db = crate::helpers::fresh_database().await;
    let mut config = crate::helpers::admin_config();
    config.dbname(&db);
    let mut settings = crate::helpers::test_settings(config.clone());
    settings.tls = Some(firstkey::settings::TlsFiles {
        cert: cert_path,
        key: key_path,
    });
    let pool = firstkey::store::pool(config, 2).unwrap();
    let app =
        firstkey::http::Application::build(settings, pool, Arc::new(firstkey::clock::SystemClock))
            .unwrap();
    assert_eq!(app.scheme(), "https");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped());

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the server");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
}

/// Issue 8 item 17: every distinct unknown HTTP method used to become a new label value, so anyone
/// could grow `/metrics` without limit. Methods outside the standard set share one value.
#[tokio::test]
async fn odd_http_methods_do_not_grow_the_metric_series() {
    let app = spawn_app().await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count()
    };
    // One odd method first, so the shared series exist before the baseline.
    let odd = |i: usize| reqwest::Method::from_bytes(format!("ODD{i}").as_bytes()).unwrap();
    app.http
        .request(odd(0), format!("{}/healthz", app.address))
        .header("origin", "http://localhost:8080")
        .send()
        .await
        .unwrap();
    let before = series(&app.get("/metrics").await.text().await.unwrap());
    for i in 1..=300 {
        app.http
            .request(odd(i), format!("{}/healthz", app.address))
            // From our own origin, so the request passes the Origin check and reaches routing.
            .header("origin", "http://localhost:8080")
            .send()
            .await
            .unwrap();
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    let after = series(&text);
    assert!(
        !text.contains("ODD17"),
        "a method outside the standard set never becomes a label value"
    );
    assert!(
        after <= before + 20,
        "300 odd methods grew the exposition from {before} to {after} series"
    );
}

#[tokio::test]
async fn metrics_show_the_domain_families_and_read_the_outbox_from_the_database() {
    let app = spawn_app().await;
    // A mail waiting for an hour, its last attempt failed: the outbox gauges come from the database.
    app.pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO municipalities (id, slug, name, created_at)
               VALUES ('00000000-0000-4000-8000-000000000001', 'metrics-town', 'Metrics Town', now());
             INSERT INTO notification_outbox (id, municipality_id, dedupe_key, kind, recipient, subject,
                 body_text, body_html, created_at, attempts, next_attempt_at, last_error)
               VALUES ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001',
                 'metrics-test', 'test', 'someone@example.org', 's', 't', 'h',
                 now() - interval '1 hour', 1, now() + interval '1 hour', 'relay refused')",
        )
        .await
        .unwrap();
    let text = app.get("/metrics").await.text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    };
    assert_eq!(value("firstkey_db_gauges_up"), 1.0);
    assert_eq!(value("firstkey_outbox_depth"), 1.0);
    assert_eq!(value("firstkey_outbox_failing"), 1.0);
    assert!(
        value("firstkey_outbox_oldest_age_seconds") >= 3600.0,
        "{text}"
    );
    assert_eq!(value("firstkey_inbox_backlog"), 0.0);
    assert_eq!(value("firstkey_inbox_oldest_unacked_age_seconds"), 0.0);
    assert!(value("firstkey_audit_pending_entries") >= 0.0);
    assert!(value("firstkey_audit_sealing_lag_seconds") >= 0.0);
    assert!(value("firstkey_agents_connected") >= 0.0);
    assert!(value("firstkey_tokens_issued_total") >= 0.0);
    assert!(value("firstkey_pairing_failures_total") >= 0.0);
    assert!(value("firstkey_mail_send_failures_total") >= 0.0);
    let build = format!(
        "firstkey_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
    for family in [
        "firstkey_receipts_stored_total",
        "firstkey_receipt_batches_rejected_total",
        "firstkey_policy_decisions_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter")),
            "{family}:\n{text}"
        );
    }
}

#[tokio::test]
async fn metrics_listen_serves_metrics_on_its_own_listener_only() {
    let db = crate::helpers::fresh_database().await;
    let mut config = crate::helpers::admin_config();
    config.dbname(&db);
    let mut settings = crate::helpers::test_settings(config.clone());
    settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let pool = firstkey::store::pool(config, 2).unwrap();
    let app = firstkey::http::Application::build(
        settings,
        pool,
        std::sync::Arc::new(firstkey::clock::SystemClock),
    )
    .unwrap();
    let main = format!("http://{}", app.local_addr());
    let metrics = format!("http://{}", app.metrics_addr().unwrap());
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let on_main = http.get(format!("{main}/metrics")).send().await.unwrap();
    assert_eq!(
        on_main.status(),
        404,
        "the main listener no longer serves /metrics"
    );
    assert_eq!(
        http.get(format!("{main}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let separate = http.get(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(separate.status(), 200);
    let text = separate.text().await.unwrap();
    assert!(text.contains("firstkey_db_gauges_up 1"), "{text}");
    assert_eq!(
        http.get(format!("{metrics}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the metrics listener serves /metrics only"
    );
}

/// `firstkey health` (the image's HEALTHCHECK) run as a process against a live server.
fn health_probe(listen: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_firstkey"))
        .args(["health", "--timeout", "20"])
        .current_dir(std::env::temp_dir())
        .env("FIRSTKEY_LISTEN", listen)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_health_command_follows_readyz() {
    let app = spawn_app().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    // The server listens on 127.0.0.1; a probe configured with 0.0.0.0 goes to loopback.
    let listen = format!("0.0.0.0:{port}");
    let ok = tokio::task::spawn_blocking({
        let listen = listen.clone();
        move || health_probe(&listen)
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("answered 200"));

    app.pool
        .get()
        .await
        .unwrap()
        .batch_execute("DELETE FROM refinery_schema_history")
        .await
        .unwrap();
    let behind = tokio::task::spawn_blocking(move || health_probe(&listen))
        .await
        .unwrap();
    assert_eq!(behind.status.code(), Some(1), "{behind:?}");
    assert!(
        String::from_utf8_lossy(&behind.stderr).contains("503"),
        "{behind:?}"
    );

    // Nothing listening: a free port, found by binding and releasing it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let none = tokio::task::spawn_blocking(move || health_probe(&free.to_string()))
        .await
        .unwrap();
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("nothing answers"),
        "{none:?}"
    );
}

/// The alert rules and the dashboard in deploy/monitoring/ only use metric names the server
/// exposes (a renamed family would silently never alert).
#[tokio::test]
async fn monitoring_rules_and_dashboard_name_only_exposed_metrics() {
    let app = spawn_app().await;
    // The HTTP families exist once a request was served.
    app.get("/healthz").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let mut checked = 0;
    for file in ["alerts.yaml", "grafana-dashboard.json"] {
        let body = std::fs::read_to_string(root.join(file)).unwrap();
        let mut rest = body.as_str();
        while let Some(at) = rest.find("firstkey_") {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..len];
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{file} names {name}, which /metrics does not expose"
            );
            checked += 1;
            rest = &tail[len..];
        }
    }
    assert!(checked > 20, "only {checked} metric names found");
}

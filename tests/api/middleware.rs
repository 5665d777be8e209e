//! Middleware that every request passes: the client address (only trusted proxies may name it), and
//! the Origin check's refusal, which is a response like any other (request id, security headers,
//! metrics).

use firstkey::auth::ratelimit::SIGN_UP_PER_ADDRESS;
use serde_json::json;

use crate::helpers::{ORIGIN, TestApp, spawn_app, spawn_app_with};

/// A sign-up "from" `forwarded_for` (unknown municipality: answered 202 after the per-address limit).
async fn sign_up_from(app: &TestApp, forwarded_for: &str) -> u16 {
    app.http
        .post(format!("{}/api/v1/accounts/sign-up", app.address))
        .header("origin", ORIGIN)
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "municipality": "nowhere-town", "email": "a@example.org", "display_name": "A" }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn rate_limits_use_the_forwarded_address_only_from_a_trusted_proxy() {
    // The test client (127.0.0.1) is the trusted proxy: each forwarded client has its own bucket.
    let app = spawn_app_with(&[("FIRSTKEY_TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    for _ in 0..SIGN_UP_PER_ADDRESS {
        assert_eq!(sign_up_from(&app, "203.0.113.1").await, 202);
    }
    assert_eq!(
        sign_up_from(&app, "203.0.113.1").await,
        429,
        "that client's limit"
    );
    assert_eq!(
        sign_up_from(&app, "203.0.113.2").await,
        202,
        "another client"
    );
    // A client cannot escape its bucket by prepending a made-up hop.
    assert_eq!(sign_up_from(&app, "198.51.100.9, 203.0.113.1").await, 429);

    // By default no proxy is trusted: the header is ignored and everyone is the peer address.
    let app = spawn_app().await;
    for n in 0..SIGN_UP_PER_ADDRESS {
        assert_eq!(sign_up_from(&app, &format!("203.0.113.{n}")).await, 202);
    }
    assert_eq!(
        sign_up_from(&app, "203.0.113.200").await,
        429,
        "one bucket: the peer's"
    );
}

#[tokio::test]
async fn the_origin_checks_refusal_carries_request_id_and_security_headers_and_is_counted() {
    let app = spawn_app().await;
    let refused = app
        .http
        .post(format!("{}/api/v1/accounts/sign-up", app.address))
        .header("origin", "https://evil.example")
        .json(&json!({ "municipality": "x", "email": "a@example.org", "display_name": "A" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let headers = refused.headers();
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers.contains_key("content-security-policy"));
    assert_eq!(headers["content-type"], "application/problem+json");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("firstkey_http_requests_total")
                && l.contains("status=\"403\"")
                && l.contains("/api/v1/accounts/sign-up")),
        "{metrics}"
    );
}

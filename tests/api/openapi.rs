//! The OpenAPI document: generated from the code, served, and checked in without drift.

use crate::helpers::spawn_app;

#[test]
fn checked_in_document_matches_the_code() {
    let generated = firstkey::http::openapi::document_json().unwrap();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json is checked in");
    assert!(
        generated == checked_in,
        "docs/openapi.json is stale; refresh it with `cargo run -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn document_is_served_and_is_openapi_3_1() {
    let app = spawn_app().await;
    let response = app.get("/api/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

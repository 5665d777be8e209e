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

/// The generated document as JSON.
fn document() -> serde_json::Value {
    serde_json::to_value(firstkey::http::openapi::document()).unwrap()
}

/// Follows a local `$ref` (`#/components/...`) once.
fn resolve<'a>(doc: &'a serde_json::Value, value: &'a serde_json::Value) -> &'a serde_json::Value {
    match value.get("$ref").and_then(|r| r.as_str()) {
        Some(location) => {
            let pointer = location.strip_prefix('#').expect("local reference");
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("{location} resolves"))
        }
        None => value,
    }
}

/// Every operation: (method, path, operation).
fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    out
}

/// Every schema node of the document, depth first.
fn walk<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            out.push(value);
            map.values().for_each(|v| walk(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        _ => {}
    }
}

/// `allOf` of an object that forbids additional properties can never be satisfied when the other
/// members add properties (what `GET …/plan` answered: `PlanView` = closed `PlanInput` + `version`).
#[test]
fn no_schema_is_all_of_a_closed_object() {
    let doc = document();
    let mut nodes = Vec::new();
    walk(&doc, &mut nodes);
    for node in nodes {
        let Some(members) = node.get("allOf").and_then(|a| a.as_array()) else {
            continue;
        };
        if members.len() < 2 {
            continue;
        }
        for member in members {
            let member = resolve(&doc, member);
            assert!(
                member.get("additionalProperties") != Some(&serde_json::Value::Bool(false)),
                "allOf over a closed object: {node}"
            );
        }
    }
}

/// Every error answer is documented as what `ApiError` sends: `application/problem+json`, the one
/// `Problem` schema (readiness reports its own body).
#[test]
fn every_error_answer_is_a_problem_document() {
    let doc = document();
    for (method, path, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.as_str() < "400" || (path == "/readyz" && status == "503") {
                continue;
            }
            let response = resolve(&doc, response);
            let content = response["content"].as_object();
            let types: Vec<&String> = content.map(|c| c.keys().collect()).unwrap_or_default();
            assert_eq!(
                types,
                ["application/problem+json"],
                "{method} {path} {status}: {response}"
            );
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{method} {path} {status}"
            );
        }
    }
}

/// The document says how to authenticate and where the API is, and every operation lists the
/// refusals the shared machinery gives: 400 for any input, 401 and 403 where a session is needed,
/// 403 for every state-changing browser request (the Origin check), 404 for any path parameter,
/// 503 for anything under `/api/` (the database), 429 with `Retry-After`.
#[test]
fn operations_document_security_and_standard_refusals() {
    let doc = document();
    assert_eq!(doc["servers"][0]["url"], "/", "servers");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["session"]["type"], "apiKey");
    assert_eq!(schemes["session"]["in"], "cookie");
    assert_eq!(schemes["session"]["name"], "__Host-firstkey-session");
    for (scheme, header) in [
        ("cad_key_id", "x-firstkey-key-id"),
        ("cad_timestamp", "x-firstkey-timestamp"),
        ("cad_signature", "x-firstkey-signature"),
    ] {
        assert_eq!(schemes[scheme]["in"], "header", "{scheme}");
        assert_eq!(schemes[scheme]["name"], header, "{scheme}");
    }
    let mut sessions = 0;
    for (method, path, operation) in operations(&doc) {
        let responses = operation["responses"].as_object().unwrap();
        let has = |s: &str| responses.contains_key(s);
        let security = operation["security"].as_array();
        let session = security.is_some_and(|s| s.iter().any(|r| r.get("session").is_some()));
        let cad = security.is_some_and(|s| s.iter().any(|r| r.get("cad_signature").is_some()));
        assert_eq!(
            cad,
            path.starts_with("/api/v1/cad/") || path.starts_with("/api/v1/monitoring/"),
            "{method} {path} CAD security"
        );
        if path.starts_with("/api/")
            && !path.starts_with("/api/v1/cad/")
            && !path.starts_with("/api/v1/monitoring/")
        {
            let public = [
                "/api/v1/auth/sign-in/",
                "/api/v1/accounts/sign-up",
                "/api/v1/accounts/verify/",
                "/api/v1/invitations/accept/",
                // The transparency log: checkpoints, keys and proofs are hashes, public by design.
                "/api/v1/log/",
            ]
            .iter()
            .any(|p| path.starts_with(p));
            assert_eq!(session, !public, "{method} {path} session security");
        }
        sessions += usize::from(session);
        let params = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if operation.get("requestBody").is_some() || !params.is_empty() {
            assert!(has("400"), "{method} {path} documents 400");
        }
        if session || cad {
            assert!(has("401"), "{method} {path} documents 401");
        }
        if session || (method != "get" && !cad) {
            assert!(has("403"), "{method} {path} documents 403");
        }
        if params.iter().any(|p| p["in"] == "path") {
            assert!(has("404"), "{method} {path} documents 404");
        }
        if path.starts_with("/api/") {
            assert!(has("503"), "{method} {path} documents 503");
        }
        if let Some(limited) = responses.get("429") {
            assert!(
                resolve(&doc, limited)["headers"]["Retry-After"].is_object(),
                "{method} {path} 429 names Retry-After"
            );
        }
        for (status, response) in responses {
            assert!(
                !resolve(&doc, response)["description"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{method} {path} {status} has a description"
            );
        }
    }
    assert!(sessions > 20, "most operations need a session");
}

/// An unauthenticated call is refused with 401 exactly where the document declares security (the
/// session cookie or the CAD signature), so the declared security is what the server enforces.
#[tokio::test]
async fn unauthenticated_calls_are_refused_where_security_is_declared() {
    let app = spawn_app().await;
    let doc: serde_json::Value = app.get("/api/openapi.json").await.json().await.unwrap();
    for (method, path, operation) in operations(&doc) {
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut request = app
            .http
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{concrete}", app.address),
            )
            .header("origin", crate::helpers::ORIGIN);
        if operation.get("requestBody").is_some() {
            request = request.json(&serde_json::json!({}));
        }
        let status = request.send().await.unwrap().status().as_u16();
        if operation["security"].is_array() {
            assert_eq!(status, 401, "{method} {path} declares security");
        } else {
            assert_ne!(status, 401, "{method} {path} declares no security");
        }
    }
}

/// A method a documented resource does not answer is 405 with `Allow` listing the documented
/// methods (RFC 9110), not 404; a path no route knows stays 404.
#[tokio::test]
async fn an_unanswered_method_on_a_resource_is_405_with_allow() {
    let app = spawn_app().await;
    let plan = format!("/api/v1/properties/{}/plan", uuid::Uuid::new_v4());
    for (method, path, allow) in [
        ("TRACE", "/healthz", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("PATCH", plan.as_str(), "GET, PUT"),
        ("PUT", "/api/v1/auth/attestation-cas", "GET, POST"),
    ] {
        let response = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.address))
            .header("origin", crate::helpers::ORIGIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    let response = app.get("/api/v1/nowhere").await;
    assert_eq!(response.status(), 404);
}

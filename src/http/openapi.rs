//! The OpenAPI 3.1 document, generated from the handlers' annotations. The checked-in copy at
//! `docs/openapi.json` is compared with this in the test suite; refresh it with
//! `firstkey openapi > docs/openapi.json`.

use utoipa::OpenApi;

use super::error::Problem;
use super::health::{self, ReadinessReport};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "firstkey",
        description = "Emergency access for first responders: access plans, grants, override tokens and a verifiable audit log.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(health::healthz, health::readyz, health::metrics),
    components(schemas(Problem, ReadinessReport)),
    tags((name = "operations", description = "Health, readiness and metrics"))
)]
pub struct ApiDoc;

/// The document, with the crate version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::auth::AuthApi::openapi());
    doc.merge(super::properties::PropertiesApi::openapi());
    doc.merge(super::dispatch::DispatchApi::openapi());
    doc.merge(super::tokens::TokensApi::openapi());
    doc.merge(super::log::LogApi::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The document as pretty JSON with a trailing newline, exactly as checked in.
pub fn document_json() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&document()).map(|mut s| {
        s.push('\n');
        s
    })
}

//! HTTP endpoints of accounts, WebAuthn ceremonies and sessions.

use actix_web::web;
use utoipa::OpenApi;

/// OpenAPI description of these endpoints (merged into the server's document).
#[derive(OpenApi)]
#[openapi(paths())]
pub struct AuthApi;

/// Registers the routes.
pub fn routes(_cfg: &mut web::ServiceConfig) {}

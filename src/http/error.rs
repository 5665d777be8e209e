//! The one place core errors become HTTP: [`ApiError`] (the core's [`crate::error::CoreError`])
//! renders RFC 9457 problem details with its status code. The client gets a fixed, external
//! message; the internal cause goes to the log with the request's span.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The core's classification of a failure; this module maps it to HTTP (the pages' mapping is
/// `web::error`).
pub use crate::error::CoreError as ApiError;

/// RFC 9457 problem details body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference identifying the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence, safe for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ApiError {
    fn parts(&self) -> (&'static str, &'static str, Option<String>) {
        match self {
            Self::BadRequest(d) => ("bad-request", "The request is not valid", Some(d.clone())),
            Self::Unauthenticated => ("unauthenticated", "Authentication is required", None),
            Self::StepUpRequired => (
                "step-up-required",
                "Confirm with your security key first",
                Some("this action needs a WebAuthn assertion from the last few minutes".to_owned()),
            ),
            Self::Forbidden => ("forbidden", "Not allowed", None),
            Self::TooManyRequests { .. } => (
                "too-many-requests",
                "Too many attempts; try again later",
                None,
            ),
            Self::NotFound => ("not-found", "No such resource", None),
            Self::MethodNotAllowed { allow } => (
                "method-not-allowed",
                "This resource does not answer this method",
                Some(format!("allowed: {allow}")),
            ),
            Self::Conflict(d) => (
                "conflict",
                "The request conflicts with the current state",
                Some(d.clone()),
            ),
            Self::Unavailable(_) => (
                "unavailable",
                "The service is temporarily unavailable",
                None,
            ),
            Self::Internal(_) => ("internal", "Internal error", None),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::StepUpRequired => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unavailable(cause) | Self::Internal(cause) = self {
            tracing::error!(error = ?cause, "request failed");
        }
        let status = self.status_code();
        let (kind, title, detail) = self.parts();
        let problem = Problem {
            kind: format!("https://firstkey.invalid/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
        };
        let mut response = HttpResponse::build(status);
        response.content_type(PROBLEM_JSON);
        if let Self::TooManyRequests { retry_after } = self {
            response.insert_header(("Retry-After", retry_after.to_string()));
        }
        if let Self::MethodNotAllowed { allow } = self {
            response.insert_header(("Allow", allow.as_str()));
        }
        response.json(problem)
    }
}

/// The `application/problem+json` media type.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Turns actix's JSON/path/query extractor failures into problem details.
pub fn extractor_error(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).into()
}

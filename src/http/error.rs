//! The one place core errors become HTTP: [`ApiError`] renders RFC 9457 problem details. The client
//! gets a fixed, external message; the internal cause goes to the log with the request's span.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::ParseError;
use crate::store::StoreError;

/// An error on its way to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was malformed; the detail is safe to show (it names the bad input).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Missing or unusable credentials.
    #[error("unauthenticated")]
    Unauthenticated,
    /// Authenticated, but this action needs a fresh WebAuthn assertion first.
    #[error("step-up required")]
    StepUpRequired,
    /// Authenticated, but not allowed to do this (used where the resource's existence is no secret).
    #[error("forbidden")]
    Forbidden,
    /// Too many attempts; try again after the given number of seconds.
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The resource does not exist, or the caller may not know that it exists.
    #[error("not found")]
    NotFound,
    /// The resource exists but does not answer this method; `allow` lists those it does
    /// (`Allow` header, e.g. `GET, PUT`).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the resource answers.
        allow: String,
    },
    /// The request conflicts with the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A dependency (the database) is unavailable; retrying later may succeed.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A fault of ours.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            // The constraint's name is the schema's business: it goes to the log, never to the
            // client (a unique violation says only that such a record exists).
            StoreError::Conflict(c) => {
                tracing::info!(constraint = %c, "refused by a database constraint");
                Self::Conflict("conflicts with an existing record".to_owned())
            }
            StoreError::Unavailable(_) => Self::Unavailable(e.into()),
            StoreError::Query(_) | StoreError::Migration(_) => Self::Internal(e.into()),
        }
    }
}

impl From<crate::store::registrations::RegisterError> for ApiError {
    fn from(e: crate::store::registrations::RegisterError) -> Self {
        use crate::store::registrations::{Refusal, RegisterError};
        match e {
            RegisterError::Refused(Refusal::AccountFull { retry_after }) => {
                Self::TooManyRequests { retry_after }
            }
            RegisterError::Refused(r) => Self::Conflict(r.message().to_owned()),
            RegisterError::Store(e) => e.into(),
        }
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

/// Turns actix's JSON/path/query extractor failures into problem details.
pub fn extractor_error(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).into()
}

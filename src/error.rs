//! The core's error classification, shared by the JSON API and the pages: core modules
//! (`access`, `emergency`, `municipal`, `codes`, `trusted`, `auth`) answer with [`CoreError`];
//! the edges map it — `http::error` to status codes and RFC 9457 problem details, `web::error`
//! to HTML pages — so the layers point one way (the HTTP layer imports the core, never the
//! reverse).

use crate::domain::ParseError;
use crate::store::StoreError;

/// Why a core operation did not happen, classified for whoever answers the caller: the JSON API
/// maps it to a status code and problem details (`http::error`), the pages to an HTML page
/// (`web::error`). Core modules return it; none of them knows about HTTP.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
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

impl From<StoreError> for CoreError {
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

impl From<crate::store::registrations::RegisterError> for CoreError {
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

impl From<ParseError> for CoreError {
    fn from(e: ParseError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

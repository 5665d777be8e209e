//! The one place core errors become pages. Core functions answer with the errors the JSON face maps
//! too ([`ApiError`], and the store and identity errors it converts); [`WebError`] renders the same
//! classification as an HTML page with the same status code, or sends a signed-out visitor to the
//! sign-in page. Internal causes go to the log only, as for the JSON API.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use super::page::{self, Chrome};
use crate::auth::error::AuthError;
use crate::domain::ParseError;
use crate::http::error::ApiError;
use crate::store::StoreError;

/// An error on its way to a person in a browser.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A core error, classified as for the JSON API.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The page needs a signed-in user; `next` is where to come back to.
    #[error("sign-in required")]
    SignIn {
        /// A local path.
        next: String,
    },
    /// A template failed to render (a fault of ours).
    #[error("template: {0}")]
    Render(#[from] askama::Error),
}

impl WebError {
    /// The page (or thing) does not exist, or the viewer may not know that it does.
    pub fn not_found() -> Self {
        Self::Api(ApiError::NotFound)
    }
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl From<AuthError> for WebError {
    fn from(e: AuthError) -> Self {
        Self::Api(e.into())
    }
}

impl From<ParseError> for WebError {
    fn from(e: ParseError) -> Self {
        Self::Api(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    title: &'static str,
    detail: Option<String>,
}

/// Title and safe detail of a core error, in the words of a page.
fn words(e: &ApiError) -> (&'static str, Option<String>) {
    match e {
        ApiError::BadRequest(d) => ("That did not work", Some(d.clone())),
        ApiError::Unauthenticated => ("Please sign in", None),
        ApiError::StepUpRequired => (
            "Confirm with your security key",
            Some("This action needs a fresh confirmation with your security key or passkey. Go back, confirm, and try again.".to_owned()),
        ),
        ApiError::Forbidden => ("Not allowed", None),
        ApiError::TooManyRequests { .. } => ("Too many attempts", Some("Wait a little and try again.".to_owned())),
        ApiError::NotFound => ("Page not found", Some("There is nothing here, or it is not yours to see.".to_owned())),
        ApiError::MethodNotAllowed { .. } => ("That is not something this page does", None),
        ApiError::Conflict(d) => ("That conflicts with what is already there", Some(d.clone())),
        ApiError::Unavailable(_) => ("firstkey is briefly unavailable", Some("Try again in a minute.".to_owned())),
        ApiError::Internal(_) => ("Something went wrong on our side", None),
    }
}

impl ResponseError for WebError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Api(e) => e.status_code(),
            Self::SignIn { .. } => StatusCode::SEE_OTHER,
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let api = match self {
            Self::SignIn { next } => return page::see_other(&page::sign_in_path(next)),
            Self::Api(ApiError::Unauthenticated) => return page::see_other("/sign-in"),
            Self::Api(e) => e,
            Self::Render(cause) => {
                tracing::error!(error = %cause, "page failed to render");
                &ApiError::Internal(anyhow::anyhow!("template"))
            }
        };
        if let ApiError::Unavailable(cause) | ApiError::Internal(cause) = api {
            tracing::error!(error = ?cause, "page request failed");
        }
        let status = self.status_code();
        let (title, detail) = words(api);
        let body = ErrorPage {
            chrome: Chrome::anonymous(),
            status: status.as_u16(),
            title,
            detail,
        }
        .render()
        .unwrap_or_else(|_| title.to_owned());
        let mut response = page::html_response(status);
        if let ApiError::TooManyRequests { retry_after } = api {
            response.insert_header(("Retry-After", retry_after.to_string()));
        }
        response.body(body)
    }
}

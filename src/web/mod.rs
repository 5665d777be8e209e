//! The HTML face of firstkey, beside the JSON API of [`crate::http`]: server-rendered pages for
//! people in a browser. Templates are askama's, checked at compile time (`src/web/templates`);
//! forms work without JavaScript (POST, then a 303 redirect), and the one script
//! (`static/webauthn.js`) runs only what the browser cannot do without it: the WebAuthn ceremonies,
//! which it drives through the same JSON endpoints every other client uses.
//!
//! What this module owns:
//! - [`assets`]: the vendored CSS, JS and icon, served from the binary under content-hashed URLs.
//! - [`error`]: the one place a core error becomes an HTML error page (or a redirect to sign-in).
//! - [`page`]: the response helpers every page uses (content type, the pages' CSP) and the
//!   signed-in-viewer extractors.
//! - [`everyone`]: landing, sign-in, sign-up, sign-out (here and everywhere), the mailed-link
//!   enrolment pages, the signed-in start page.
//! - [`responder`]: the responder's live grants, the audited plan reveal, door passes (tokens) and
//!   their state.
//! - [`homeowner`]: properties, their locks, the access-plan editor and its versions, the
//!   printable plan.
//! - [`history`]: a home's history in words, from the audit log; erasing its personal details.
//! - [`keys`]: "my security keys", for every signed-in user.
//! - [`account`]: a homeowner deletes their account.
//! - [`report`]: the audit report of a period in words, and as CSV.
//! - [`verifier`]: the in-browser verifier of audit exports (`static/verify.js`).
//! - [`auditor`]: the audit log with filters, an entry, CSV/JSON export, the chain's status.
//! - [`admin`]: municipal administration: agencies, units, staff, invitations, CAD credentials, trust.
//! - [`trusted`]: a home's trusted parties and remote unlock, for its owner; a trusted party's
//!   accesses and door passes.
//! - [`dispatch`]: the dispatcher console (incidents, property search, notes reveal, grants,
//!   approvals, revoke) and its live grant-state stream (server-sent events).
//!
//! Pages call the core functions the JSON handlers call (`store`, `access`, `audit`, `auth`);
//! state-changing form posts pass the same Origin check (`http::check_origin`) as JSON writes.

mod account;
mod admin;
pub mod assets;
mod auditor;
mod consent;
pub(crate) mod dispatch;
mod error;
mod everyone;
mod history;
mod homeowner;
mod keys;
mod page;
mod report;
mod responder;
mod trusted;
mod verifier;
pub mod zone;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

pub use error::WebError;

use crate::http::error::ApiError;

/// Registers the pages and the static assets.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(assets::routes)
        .configure(everyone::routes)
        .configure(homeowner::routes)
        .configure(responder::routes)
        .configure(keys::routes)
        .configure(history::routes)
        .configure(account::routes)
        .configure(admin::routes)
        .configure(auditor::routes)
        .configure(report::routes)
        .configure(trusted::routes)
        .configure(consent::routes)
        .configure(verifier::routes)
        .configure(dispatch::routes);
}

/// The answer for a path nobody serves: the HTML "not found" page for a browser asking for a page,
/// problem details for everyone else (API clients).
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let wants_html = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        WebError::not_found().error_response()
    } else {
        ApiError::NotFound.error_response()
    }
}

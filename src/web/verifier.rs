//! `/verify`: the in-browser verifier of audit exports, for anyone (a homeowner with the download of
//! their home's history, an auditor with a bundle). The page only carries the form; the vendored
//! `static/verify.js` checks the checkpoint's Ed25519 signature and every inclusion proof (or a
//! complete export's root) with WebCrypto, in the browser, with nothing sent back. A signed-in
//! viewer finds their municipality's current log key filled in, with the advice to compare it
//! with the one the municipality published (a key served by the server being checked proves
//! less than one obtained elsewhere).

use actix_web::{HttpResponse, web};
use askama::Template;

use super::WebError;
use super::assets;
use super::page::{self, Chrome, Viewer};
use crate::audit::log;
use crate::http::AppState;
use crate::store::StoreError;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/verify", web::get().to(show));
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyPage {
    chrome: Chrome,
    verify_js: &'static str,
    key: String,
}

async fn show(state: web::Data<AppState>, viewer: Viewer) -> Result<HttpResponse, WebError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let key = match viewer.0.as_ref() {
        Some(actor) => log::verifier_keys(&client, actor.tenant, state.clock.now())
            .await
            .map_err(|e| crate::http::error::ApiError::Internal(e.into()))?
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        None => String::new(),
    };
    page::ok(&VerifyPage {
        chrome: Chrome::of_viewer(&client, viewer.0.as_ref()).await?,
        verify_js: &assets::VERIFY_JS.path,
        key,
    })
}

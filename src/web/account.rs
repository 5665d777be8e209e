//! Deleting my account (homeowners): what goes and what stays, in words; a fresh step-up asked
//! inline; a confirmation box; then `DELETE /api/v1/me`'s steps (`http::privacy::delete_account`),
//! the session cookie dropped and a page saying it is done (a mail confirms it too).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::auth::{Actor, session};
use crate::domain::Role;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::StoreError;
use crate::store::properties;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/account/delete", web::get().to(show))
        .route("/account/delete", web::post().to(delete))
        .route("/account/deleted", web::get().to(deleted));
}

#[derive(Template)]
#[template(path = "account_delete.html")]
struct DeletePage {
    chrome: Chrome,
    homes: Vec<String>,
    step_up: bool,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "account_deleted.html")]
struct DeletedPage {
    chrome: Chrome,
}

#[derive(Deserialize)]
struct DeleteForm {
    /// The "I understand" box.
    confirm: Option<String>,
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

fn homeowner(actor: &Actor) -> Result<(), WebError> {
    if actor.has(Role::Homeowner) {
        Ok(())
    } else {
        Err(WebError::not_found())
    }
}

async fn page_for(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
    step_up: bool,
    error: Option<String>,
) -> Result<DeletePage, WebError> {
    let homes = properties::properties_of(client, actor.tenant, actor.user_id).await?;
    Ok(DeletePage {
        chrome: Chrome::of(client, actor).await?,
        homes: homes.into_iter().map(|h| h.address).collect(),
        step_up: step_up || !actor.stepped_up(state.clock.now()),
        error,
    })
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let client = connection(&state).await?;
    page::ok(&page_for(&state, &client, &actor, false, None).await?)
}

async fn delete(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    form: web::Form<DeleteForm>,
) -> Result<HttpResponse, WebError> {
    homeowner(&actor)?;
    let mut client = connection(&state).await?;
    if form.confirm.as_deref() != Some("yes") {
        let words = "Tick the box to confirm that you want your account deleted.".to_owned();
        let page = page_for(&state, &client, &actor, false, Some(words)).await?;
        return page::render(StatusCode::BAD_REQUEST, &page);
    }
    let now = state.clock.now();
    match crate::http::privacy::delete_account(&state, &mut client, &actor, now).await {
        Ok(_) => {
            let mut response = page::see_other("/account/deleted");
            response
                .add_cookie(&session::removal_cookie())
                .map_err(|e| ApiError::Internal(e.into()))?;
            Ok(response)
        }
        Err(ApiError::StepUpRequired) => {
            let page = page_for(&state, &client, &actor, true, None).await?;
            page::render(StatusCode::UNAUTHORIZED, &page)
        }
        Err(ApiError::Conflict(words)) => {
            let page = page_for(&state, &client, &actor, false, Some(words)).await?;
            page::render(StatusCode::CONFLICT, &page)
        }
        Err(e) => Err(e.into()),
    }
}

async fn deleted() -> Result<HttpResponse, WebError> {
    page::ok(&DeletedPage {
        chrome: Chrome::anonymous(),
    })
}

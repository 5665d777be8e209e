//! "My security keys", for every signed-in user: the list, naming a key, removing one (a fresh
//! step-up asked inline; never the last), and adding one (the `add-key` ceremony of
//! `static/webauthn.js`, through `/api/v1/me/keys/start|finish`). The core is `auth::keys`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::auth::Actor;
use crate::auth::error::AuthError;
use crate::auth::keys;
use crate::auth::webauthn::CredentialKind;
use crate::http::AppState;
use crate::store::StoreError;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/keys", web::get().to(show))
        .route("/keys", web::post().to(back))
        .route("/keys/{id}/name", web::post().to(rename))
        .route("/keys/{id}/remove", web::post().to(remove));
}

struct KeyRow {
    id: Uuid,
    name: Option<String>,
    status: String,
    current: bool,
    added: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct Keys {
    chrome: Chrome,
    security_keys: bool,
    keys: Vec<KeyRow>,
    error: Option<String>,
    done: Option<String>,
    step_up: bool,
    resubmit: Option<String>,
}

#[derive(Deserialize)]
struct Done {
    done: Option<String>,
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "not yet recorded".to_owned(), super::zone::when)
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

async fn page_for(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
    error: Option<String>,
    done: Option<String>,
    resubmit: Option<String>,
) -> Result<Keys, WebError> {
    let list = keys::list(client, actor).await?;
    Ok(Keys {
        chrome: Chrome::of(client, actor).await?,
        security_keys: CredentialKind::for_roles(&actor.roles) == CredentialKind::SecurityKey,
        keys: list
            .into_iter()
            .map(|k| KeyRow {
                id: k.id,
                name: k.name,
                status: k.status,
                current: k.current,
                added: when(Some(k.created_at)),
                last_used: when(k.last_used_at),
            })
            .collect(),
        error,
        done,
        step_up: resubmit.is_some() || !actor.stepped_up(state.clock.now()),
        resubmit,
    })
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    query: web::Query<Done>,
) -> Result<HttpResponse, WebError> {
    let client = connection(&state).await?;
    let done = match query.done.as_deref() {
        Some("removed") => Some("The key was removed.".to_owned()),
        Some("named") => Some("The name was saved.".to_owned()),
        Some("added") => Some("The new key was added.".to_owned()),
        _ => None,
    };
    page::ok(&page_for(&state, &client, &actor, None, done, None).await?)
}

/// Without JavaScript the step-up form posts here; it needs the script, so just show the page.
async fn back(SignedIn(_): SignedIn) -> HttpResponse {
    page::see_other("/keys")
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn rename(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<NameForm>,
) -> Result<HttpResponse, WebError> {
    let mut client = connection(&state).await?;
    let name = match keys::parse_name(&form.name) {
        Ok(name) => name,
        Err(AuthError::Invalid(e)) => {
            let page = page_for(&state, &client, &actor, Some(e), None, None).await?;
            return page::render(StatusCode::BAD_REQUEST, &page);
        }
        Err(e) => return Err(e.into()),
    };
    let tx = client.transaction().await.map_err(StoreError::from)?;
    keys::rename(&tx, &actor, *id, &name, state.clock.now()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(page::see_other("/keys?done=named"))
}

async fn remove(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let mut client = connection(&state).await?;
    match keys::remove(&mut client, &actor, *id, state.clock.now()).await {
        Ok(_) => Ok(page::see_other("/keys?done=removed")),
        Err(AuthError::StepUpRequired) => {
            let page = page_for(
                &state,
                &client,
                &actor,
                None,
                None,
                Some(format!("remove-{id}")),
            )
            .await?;
            page::render(StatusCode::UNAUTHORIZED, &page)
        }
        Err(AuthError::Conflict(why)) => {
            let page = page_for(&state, &client, &actor, Some(why.to_owned()), None, None).await?;
            page::render(StatusCode::CONFLICT, &page)
        }
        Err(e) => Err(e.into()),
    }
}

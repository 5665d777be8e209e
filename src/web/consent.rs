//! The homeowner's page for a request of live consent (issue 11 §3): `/consents/{grant}`, the page
//! the mailed link opens. It shows what dispatch asks (agency, incident, reason, how long, the
//! deadline and the plan's fallback) and, while the request waits, two buttons: approve or refuse.
//! Either first runs a passkey assertion (`webauthn.js`, `data-ceremony="consent"`: a step-up of
//! this session, made after the request was asked) and then posts the answer with the link's
//! secret, which the script takes from the address's fragment (so it reaches no server log) and
//! drops from the address bar. Answering calls the core function the JSON endpoint calls
//! (`consent::decide`): the same policy, single use, deadline and audit. Signed out, the sign-in
//! page brings the owner back here with the fragment kept.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::auth::Actor;
use crate::emergency::EmergencyError;
use crate::emergency::consent::{self, Answer, Consent, ConsentAnswer, ConsentState};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::StoreError;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/consents/{grant}", web::get().to(show))
        .route("/consents/{grant}", web::post().to(answer));
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage {
    chrome: Chrome,
    c: Consent,
    pending: bool,
    deadline: String,
    fallback: &'static str,
    state_words: &'static str,
    answer: Option<(&'static str, String)>,
}

fn state_words(c: &Consent) -> &'static str {
    match c.state {
        ConsentState::Pending => "waiting for your answer",
        ConsentState::Approved => "you approved: the entry went ahead",
        ConsentState::Refused => "you refused: nobody was let in",
        ConsentState::TimedOut => "not answered in time: your plan's fallback applied",
        ConsentState::Cancelled => "dispatch withdrew the request",
    }
}

fn api(e: EmergencyError) -> WebError {
    WebError::Api(e.into())
}

async fn render(
    client: &deadpool_postgres::Object,
    actor: &Actor,
    c: Consent,
    now: chrono::DateTime<chrono::Utc>,
    status: StatusCode,
    answer: Option<(&'static str, String)>,
) -> Result<HttpResponse, WebError> {
    let pending = c.state == ConsentState::Pending && now < c.expires_at;
    page::render(
        status,
        &ConsentPage {
            chrome: Chrome::of(client, actor).await?,
            pending,
            deadline: c.expires_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            fallback: c.fallback.words(),
            state_words: state_words(&c),
            answer,
            c,
        },
    )
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    grant: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let c = consent::view(&mut client, &state.policy, &actor, *grant, now)
        .await
        .map_err(api)?;
    render(&client, &actor, c, now, StatusCode::OK, None).await
}

#[derive(Deserialize)]
struct AnswerForm {
    #[serde(default)]
    secret: String,
    #[serde(default)]
    answer: String,
}

async fn answer(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    grant: web::Path<Uuid>,
    form: web::Form<AnswerForm>,
) -> Result<HttpResponse, WebError> {
    let answer = match form.answer.as_str() {
        "approve" => Answer::Approve,
        "refuse" => Answer::Refuse,
        _ => {
            return Err(WebError::Api(ApiError::BadRequest(
                "answer: approve or refuse".to_owned(),
            )));
        }
    };
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let now = state.clock.now();
    let body = ConsentAnswer {
        secret: form.secret.clone(),
        answer,
    };
    let outcome = consent::decide(&mut client, &state.policy, &actor, *grant, &body, now).await;
    let (status, notice) = match outcome {
        Ok(c) => {
            let words = match c.state {
                ConsentState::Refused => {
                    "Refused. Dispatch sees your answer now; nobody is let in under this request."
                }
                _ => "Approved. Dispatch sees your answer now; the entry goes ahead.",
            };
            return render(
                &client,
                &actor,
                c,
                now,
                StatusCode::OK,
                Some(("ok", words.to_owned())),
            )
            .await;
        }
        Err(EmergencyError::Conflict(words)) => (StatusCode::CONFLICT, ("error", words)),
        Err(EmergencyError::StepUpRequired) => (
            StatusCode::UNAUTHORIZED,
            (
                "warn",
                "Confirm with your passkey first (the buttons ask for it), then answer again."
                    .to_owned(),
            ),
        ),
        Err(e) => return Err(api(e)),
    };
    let c = consent::view(&mut client, &state.policy, &actor, *grant, now)
        .await
        .map_err(api)?;
    render(&client, &actor, c, now, status, Some(notice)).await
}

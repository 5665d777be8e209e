//! Responder pages, phone-first: the live grants that name the signed-in responder, one grant with
//! its locks and (on request, policy-checked and audited) the home's plan and notes, a token for one
//! lock, and the token's state.
//!
//! Each action runs the core function its JSON endpoint runs: the grant list is
//! `grants::live_for_responder` (`GET /api/v1/responder/grants`), the reveal is
//! `http::properties::reveal_plan` (`POST /api/v1/properties/{id}/plan/reveal`), the token is
//! `tokens::issue` (`POST /api/v1/tokens`: the request's own assertion, the policy, the record,
//! the audit entry and the lock's inbox entry in one transaction). A door-pass form is a
//! `data-ceremony="token"` form: `webauthn.js` fetches the challenge for its grant and lock
//! (`GET /api/v1/tokens/challenge`, nothing stored), has the security key sign it, and submits the
//! form with the assertion: one request mints the pass. A form that arrives without one (no script)
//! needs a fresh step-up, which the grant page then asks for inline. A grant that does not name the
//! viewer, or is not live, is "not found".
//!
//! The issued token is shown once, in the answer to the request, as a *door pass*: the token and the
//! id of the security key it is bound to, `base64url(token) "." base64url(credential id)`, which the
//! lock's door panel (`firmware-agent/src/door_panel.rs`; NFC/BLE in the field) takes. The server
//! keeps only the token's hash, so a later visit shows the state, never the pass.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::auth::Actor;
use crate::domain::Role;
use crate::emergency::EmergencyError;
use crate::emergency::grants::{self, ResponderGrant};
use crate::emergency::tokens::{self, Minting, TokenRequest};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::plans::{AgencyRule, ResponderNotes};
use crate::store::StoreError;
use crate::store::properties::StoredPlan;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/responder", web::get().to(list))
        .route("/responder/grants/{id}", web::get().to(show))
        .route("/responder/grants/{id}/plan", web::post().to(reveal))
        .route(
            "/responder/grants/{id}/tokens",
            web::post().to(request_token),
        )
        .route(
            "/responder/grants/{id}/tokens",
            web::get().to(back_to_grant),
        )
        .route("/responder/tokens/{cti}", web::get().to(token_state));
}

/// A time as the pages show it (the municipality's zone, named).
fn when(at: DateTime<Utc>) -> String {
    super::zone::when(at)
}

fn responder(actor: &Actor) -> Result<(), WebError> {
    if actor.has(Role::Responder) {
        Ok(())
    } else {
        Err(WebError::not_found())
    }
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

fn emergency(e: EmergencyError) -> WebError {
    WebError::Api(ApiError::from(e))
}

/// A grant as a card: where, for what, until when.
struct GrantRow {
    id: Uuid,
    address: String,
    incident: String,
    kind: String,
    ends: String,
    locks: Vec<(Uuid, String)>,
}

impl From<ResponderGrant> for GrantRow {
    fn from(g: ResponderGrant) -> Self {
        Self {
            id: g.grant_id,
            address: g.address,
            incident: g.cad_number,
            kind: g.incident_kind,
            ends: when(g.ends_at),
            locks: g.locks.into_iter().map(|l| (l.id, l.name)).collect(),
        }
    }
}

/// The live grant `id` naming `actor`, with its property; anything else is "not found".
async fn live_grant(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
) -> Result<(GrantRow, Uuid), WebError> {
    let now = state.clock.now();
    let grant = grants::live_for_responder(client, actor, now)
        .await
        .map_err(emergency)?
        .into_iter()
        .find(|g| g.grant_id == id)
        .ok_or_else(WebError::not_found)?;
    let property = grant.property_id;
    Ok((grant.into(), property))
}

// ---------------------------------------------------------------------------------------------
// My live grants.

#[derive(Template)]
#[template(path = "responder_grants.html")]
struct Grants {
    chrome: Chrome,
    grants: Vec<GrantRow>,
}

async fn list(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    responder(&actor)?;
    let client = connection(&state).await?;
    let now = state.clock.now();
    let grants = grants::live_for_responder(&client, &actor, now)
        .await
        .map_err(emergency)?;
    page::ok(&Grants {
        chrome: Chrome::of(&client, &actor).await?,
        grants: grants.into_iter().map(GrantRow::from).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// One grant: its locks, the plan on request, the tokens asked for under it.

/// The plan in words, as a responder sees it after the reveal.
struct PlanFacts {
    version: i32,
    agencies: Vec<&'static str>,
    max_grant_minutes: i32,
    notes: Vec<(&'static str, String)>,
}

fn allowed(rule: &AgencyRule) -> bool {
    rule.allowed
}

fn plan_facts(plan: &StoredPlan, notes: ResponderNotes) -> PlanFacts {
    let a = &plan.agencies;
    let agencies = [
        ("Fire department", allowed(&a.fire)),
        ("Ambulance (EMS)", allowed(&a.ems)),
        ("Police", allowed(&a.police)),
    ]
    .into_iter()
    .filter_map(|(name, ok)| ok.then_some(name))
    .collect();
    let notes = [
        ("Pets", notes.pets),
        ("Hazards", notes.hazards),
        ("Medical equipment", notes.medical_equipment),
        ("Shut-offs", notes.utilities),
        ("Other notes", notes.free_text),
    ]
    .into_iter()
    .filter_map(|(label, text)| text.filter(|t| !t.trim().is_empty()).map(|t| (label, t)))
    .collect();
    PlanFacts {
        version: plan.version,
        agencies,
        max_grant_minutes: plan.max_grant_minutes,
        notes,
    }
}

/// A token asked for under the grant, as a row.
struct TokenRow {
    id: String,
    lock: String,
    state: &'static str,
    expires: String,
}

#[derive(Template)]
#[template(path = "responder_grant.html")]
struct GrantPage {
    chrome: Chrome,
    grant: GrantRow,
    plan: Option<PlanFacts>,
    tokens: Vec<TokenRow>,
    /// The lock whose token request waits for a fresh step-up.
    step_up_for: Option<Uuid>,
}

async fn grant_page(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
    plan: Option<PlanFacts>,
    step_up_for: Option<Uuid>,
) -> Result<GrantPage, WebError> {
    let (grant, _) = live_grant(state, client, actor, id).await?;
    let now = state.clock.now();
    let tokens = client
        .query(
            "SELECT t.cti, l.name, t.status, t.expires_at FROM issued_tokens t
             JOIN locks l ON l.id = t.lock_id
             WHERE t.municipality_id = $1 AND t.grant_id = $2 AND t.responder_id = $3
             ORDER BY t.issued_at DESC LIMIT 50",
            &[&actor.tenant.id(), &id, &actor.user_id],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|r| {
            let expires_at: DateTime<Utc> = r.get(3);
            TokenRow {
                id: hex::encode(r.get::<_, Vec<u8>>(0)),
                lock: r.get(1),
                state: state_word(r.get::<_, &str>(2), expires_at, now),
                expires: when(expires_at),
            }
        })
        .collect();
    Ok(GrantPage {
        chrome: Chrome::of(client, actor).await?,
        grant,
        plan,
        tokens,
        step_up_for,
    })
}

async fn show(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    responder(&actor)?;
    let client = connection(&state).await?;
    page::ok(&grant_page(&state, &client, &actor, *id, None, None).await?)
}

/// The audited reveal of the home's plan and notes (`POST /api/v1/properties/{id}/plan/reveal`).
async fn reveal(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    responder(&actor)?;
    let client = connection(&state).await?;
    let (_, property) = live_grant(&state, &client, &actor, *id).await?;
    let (plan, notes) = crate::http::properties::reveal_plan(&state, &actor, property).await?;
    let facts = plan_facts(&plan, notes);
    page::ok(&grant_page(&state, &client, &actor, *id, Some(facts), None).await?)
}

// ---------------------------------------------------------------------------------------------
// A token for one lock, and its state.

#[derive(Deserialize)]
struct TokenForm {
    lock: Uuid,
    /// The assertion `webauthn.js` put in (JSON of the `PublicKeyCredential`), over the challenge
    /// of `GET /api/v1/tokens/challenge` for this grant and lock.
    #[serde(default)]
    assertion: Option<String>,
}

/// The assertion a door-pass form carries, if any (an empty field is none).
pub(super) fn form_assertion(
    field: Option<&str>,
) -> Result<Option<webauthn_rs::prelude::PublicKeyCredential>, WebError> {
    match field.map(str::trim).filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(json) => serde_json::from_str(json).map(Some).map_err(|_| {
            WebError::Api(ApiError::BadRequest(
                "assertion: not a WebAuthn credential".to_owned(),
            ))
        }),
    }
}

/// The state of a token in words.
fn state_word(status: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> &'static str {
    match status {
        "used" => "used at the door",
        "revoked" => "revoked",
        _ if expires_at <= now => "expired",
        "delivered" => "pushed to the lock and acknowledged",
        _ => "issued; waiting for the lock",
    }
}

/// One step of a token's life, as the state page lists it.
struct Step {
    name: &'static str,
    done: bool,
    words: String,
}

#[derive(Template)]
#[template(path = "responder_token.html")]
struct TokenPage {
    chrome: Chrome,
    /// The door pass, only in the answer to the request that minted the token.
    door_pass: Option<String>,
    token_id: String,
    grant_id: Uuid,
    address: String,
    lock: String,
    lock_id: Uuid,
    state: &'static str,
    steps: Vec<Step>,
    expires: String,
    live: bool,
}

async fn token_page(
    state: &AppState,
    client: &deadpool_postgres::Object,
    actor: &Actor,
    cti: &[u8],
    door_pass: Option<String>,
) -> Result<TokenPage, WebError> {
    let row = client
        .query_opt(
            "SELECT t.grant_id, p.address, l.name, l.id, t.status, t.issued_at, t.expires_at,
                    t.revoked_at, t.token_hash
             FROM issued_tokens t
             JOIN locks l ON l.id = t.lock_id
             JOIN properties p ON p.id = l.property_id
             WHERE t.municipality_id = $1 AND t.responder_id = $2 AND t.cti = $3",
            &[&actor.tenant.id(), &actor.user_id, &cti],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or_else(WebError::not_found)?;
    let now = state.clock.now();
    let status: String = row.get(4);
    let issued_at: DateTime<Utc> = row.get(5);
    let expires_at: DateTime<Utc> = row.get(6);
    let revoked_at: Option<DateTime<Utc>> = row.get(7);
    let token_hash: Vec<u8> = row.get(8);
    let lock_id: Uuid = row.get(3);
    // The lock's own word on it: its receipts for this token, as uploaded.
    let decisions = client
        .query(
            "SELECT decision, decided_at FROM receipts WHERE lock_id = $1 AND token_hash = $2
             ORDER BY seq",
            &[&lock_id, &token_hash],
        )
        .await
        .map_err(StoreError::from)?;
    let opened = decisions
        .iter()
        .find(|r| r.get::<_, &str>(0) == "allow")
        .map(|r| r.get::<_, DateTime<Utc>>(1));
    let acknowledged = matches!(status.as_str(), "delivered" | "used") || opened.is_some();
    let mut steps = vec![
        Step {
            name: "Issued",
            done: true,
            words: when(issued_at),
        },
        Step {
            name: "Pushed to the lock",
            done: acknowledged,
            words: if acknowledged {
                "the lock acknowledged it".to_owned()
            } else {
                "queued; the lock gets it when it is online (the door decides without it)"
                    .to_owned()
            },
        },
        Step {
            name: "Used at the door",
            done: opened.is_some(),
            words: opened.map_or_else(|| "not yet".to_owned(), |t| format!("opened {}", when(t))),
        },
    ];
    let refused = decisions
        .iter()
        .filter(|r| r.get::<_, &str>(0) == "deny")
        .count();
    if refused > 0 {
        steps.push(Step {
            name: "Refused at the door",
            done: true,
            words: format!("{refused} time(s)"),
        });
    }
    if let Some(at) = revoked_at {
        steps.push(Step {
            name: "Revoked",
            done: true,
            words: when(at),
        });
    }
    let state_now = if opened.is_some() {
        "used at the door"
    } else {
        state_word(&status, expires_at, now)
    };
    Ok(TokenPage {
        chrome: Chrome::of(client, actor).await?,
        door_pass,
        token_id: hex::encode(cti),
        grant_id: row.get(0),
        address: row.get(1),
        lock: row.get(2),
        lock_id,
        live: opened.is_none() && revoked_at.is_none() && expires_at > now,
        state: state_now,
        steps,
        expires: when(expires_at),
    })
}

/// `POST /api/v1/tokens`'s steps; without a fresh step-up, the grant page asks for one inline.
async fn request_token(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, WebError> {
    responder(&actor)?;
    let mut client = connection(&state).await?;
    let now = state.clock.now();
    let minting = Minting {
        key_dir: &state.settings.key_dir,
        lifetime: state.settings.token_lifetime,
    };
    let request = TokenRequest {
        grant: *id,
        lock: form.lock,
        assertion: form_assertion(form.assertion.as_deref())?,
    };
    let (rp, keys) = crate::http::tokens::proving_parts(&state)?;
    let proving = crate::auth::proof::Proving {
        rp: &rp,
        keys: &keys,
    };
    let issued = match tokens::issue(
        &mut client,
        &state.policy,
        minting,
        proving,
        &actor,
        &request,
        now,
    )
    .await
    {
        Ok(issued) => issued,
        Err(EmergencyError::StepUpRequired) => {
            let page = grant_page(&state, &client, &actor, *id, None, Some(form.lock)).await?;
            return page::render(StatusCode::UNAUTHORIZED, &page);
        }
        Err(e) => return Err(emergency(e)),
    };
    let credential: Vec<u8> = client
        .query_one(
            "SELECT c.credential_id FROM issued_tokens t
             JOIN webauthn_credentials c ON c.id = t.credential_id
             WHERE t.municipality_id = $1 AND t.cti = $2",
            &[
                &actor.tenant.id(),
                &hex::decode(&issued.token_id).unwrap_or_default(),
            ],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    let door_pass = format!(
        "{}.{}",
        issued.token,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(credential)
    );
    let cti = hex::decode(&issued.token_id).map_err(|e| ApiError::Internal(e.into()))?;
    let page = token_page(&state, &client, &actor, &cti, Some(door_pass)).await?;
    // The pass is a secret for the door: not for a cache or the back button.
    Ok(page::html_response(StatusCode::CREATED)
        .insert_header(("Cache-Control", "no-store"))
        .body(page.render()?))
}

/// Reloading the answer to a token request (or coming back to it) asks for no second token.
async fn back_to_grant(id: web::Path<Uuid>) -> HttpResponse {
    page::see_other(&format!("/responder/grants/{id}"))
}

async fn token_state(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    cti: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    responder(&actor)?;
    let cti = hex::decode(cti.as_str())
        .ok()
        .filter(|b| b.len() == 16)
        .ok_or_else(WebError::not_found)?;
    let client = connection(&state).await?;
    page::ok(&token_page(&state, &client, &actor, &cti, None).await?)
}

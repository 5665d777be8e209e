//! Pages for everyone: the landing page, sign-in (a passkey or security key; the script runs the
//! ceremony against `/api/v1/auth/sign-in/*`), homeowner sign-up, sign-out here and everywhere, the
//! pages behind the mailed one-time links (`/accounts/verify#…`, `/invitations/accept#…`) that run
//! the enrolment, and the signed-in start page.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::WebError;
use super::page::{self, Chrome, SignedIn, Viewer};
use crate::auth::ratelimit::{self, Decision};
use crate::auth::{accounts, session, signin};
use crate::domain::{Email, Role, Slug};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::{StoreError, tenancy};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::FormConfig::default()
            .limit(32 * 1024)
            .error_handler(|e, _| WebError::Api(ApiError::BadRequest(e.to_string())).into()),
    )
    .route("/", web::get().to(landing))
    .route("/sign-in", web::get().to(sign_in))
    .route("/sign-in", web::post().to(needs_script))
    .route("/sign-up", web::get().to(sign_up_form))
    .route("/sign-up", web::post().to(sign_up))
    .route("/sign-out", web::post().to(sign_out))
    .route("/sign-out-everywhere", web::post().to(sign_out_everywhere))
    .route("/accounts/verify", web::get().to(verify))
    .route("/accounts/verify", web::post().to(needs_script))
    .route("/invitations/accept", web::get().to(accept))
    .route("/invitations/accept", web::post().to(needs_script))
    .route("/trusted/accept", web::get().to(accept_trusted))
    .route("/trusted/accept", web::post().to(needs_script))
    .route("/home", web::get().to(home));
}

#[derive(Template)]
#[template(path = "landing.html")]
struct Landing {
    chrome: Chrome,
}

async fn landing(state: web::Data<AppState>, viewer: Viewer) -> Result<HttpResponse, WebError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    page::ok(&Landing {
        chrome: Chrome::of_viewer(&client, viewer.0.as_ref()).await?,
    })
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignIn {
    chrome: Chrome,
    next: String,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn sign_in(query: web::Query<NextQuery>) -> Result<HttpResponse, WebError> {
    let next = query
        .next
        .as_deref()
        .and_then(page::local_path)
        .unwrap_or("/home")
        .to_owned();
    page::ok(&SignIn {
        chrome: Chrome::anonymous(),
        next,
    })
}

/// The sign-up form's fields.
#[derive(Debug, Default, Deserialize)]
struct SignUpForm {
    municipality: String,
    email: String,
    display_name: String,
}

#[derive(Template)]
#[template(path = "sign_up.html")]
struct SignUpPage {
    chrome: Chrome,
    form: SignUpForm,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "sign_up_sent.html")]
struct SignUpSent {
    chrome: Chrome,
    email: String,
}

async fn sign_up_form() -> Result<HttpResponse, WebError> {
    page::ok(&SignUpPage {
        chrome: Chrome::anonymous(),
        form: SignUpForm::default(),
        error: None,
    })
}

/// The same steps, limits and answer as `POST /api/v1/accounts/sign-up` (`http::auth::sign_up`):
/// the page answers "check your mail" whether or not the address or municipality is known.
async fn sign_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SignUpForm>,
) -> Result<HttpResponse, WebError> {
    let form = form.into_inner();
    let display_name = form.display_name.trim().to_owned();
    let parsed = Slug::parse(form.municipality.trim()).and_then(|m| {
        let email = Email::parse(&form.email)?;
        Ok((m, email))
    });
    let (municipality, email) = match parsed {
        Ok(p) if !display_name.is_empty() && display_name.len() <= 200 => p,
        Ok(_) => return sign_up_again(form, "Your name: 1 to 200 characters.".to_owned()),
        Err(e) => return sign_up_again(form, e.to_string()),
    };
    let now = state.clock.now();
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    if let Some(ip) = req.peer_addr().map(|a| a.ip()) {
        let bucket = format!("sign_up:addr:{ip}");
        if let Decision::Limited { retry_after } = ratelimit::hit(
            &client,
            &bucket,
            chrono::Duration::hours(1),
            ratelimit::SIGN_UP_PER_ADDRESS,
            now,
        )
        .await?
        {
            return Err(ApiError::TooManyRequests { retry_after }.into());
        }
    }
    let sent = SignUpSent {
        chrome: Chrome::anonymous(),
        email: email.as_str().to_owned(),
    };
    let tenant = match tenancy::municipality_by_slug(&client, &municipality).await {
        Ok((tenant, _)) => tenant,
        Err(StoreError::NotFound) => return page::ok(&sent),
        Err(e) => return Err(e.into()),
    };
    let mail_bucket = format!(
        "sign_up:mail:{}",
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}:{}", tenant.id(), email.as_str().to_lowercase()).as_bytes()
        ))
    );
    let send_mail = ratelimit::hit(
        &client,
        &mail_bucket,
        chrono::Duration::hours(1),
        ratelimit::SIGN_UP_MAILS_PER_ADDRESS,
        now,
    )
    .await?
        == Decision::Allow;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    accounts::sign_up(
        &tx,
        tenant,
        &email,
        &display_name,
        &state.settings.public_origin,
        send_mail,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    page::ok(&sent)
}

fn sign_up_again(form: SignUpForm, error: String) -> Result<HttpResponse, WebError> {
    page::render(
        StatusCode::BAD_REQUEST,
        &SignUpPage {
            chrome: Chrome::anonymous(),
            form,
            error: Some(error),
        },
    )
}

async fn sign_out(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    signin::sign_out(&client, &actor, state.clock.now()).await?;
    let mut response = page::see_other("/?signed-out");
    response
        .add_cookie(&session::removal_cookie())
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(response)
}

async fn sign_out_everywhere(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    signin::sign_out_everywhere(&client, &actor, state.clock.now()).await?;
    let mut response = page::see_other("/?signed-out-everywhere");
    response
        .add_cookie(&session::removal_cookie())
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(response)
}

/// Where the ceremony forms post when no script ran: WebAuthn needs one, so say so.
async fn needs_script() -> Result<HttpResponse, WebError> {
    Err(ApiError::BadRequest(
        "Security keys and passkeys work only with JavaScript turned on for this site.".to_owned(),
    )
    .into())
}

#[derive(Template)]
#[template(path = "enrol.html")]
struct Enrol {
    chrome: Chrome,
    heading: &'static str,
    explain: &'static str,
    button: &'static str,
    api: &'static str,
    /// Demo municipalities where staff keys need no trusted attestation (name, slug).
    demo: Vec<(String, String)>,
}

async fn verify() -> Result<HttpResponse, WebError> {
    page::ok(&Enrol {
        chrome: Chrome::anonymous(),
        heading: "Confirm your address and create your passkey",
        explain: "Your passkey replaces a password: your phone or computer keeps it, and you sign in \
                  with your fingerprint, face or screen lock. Nobody else can use it.",
        button: "Create my passkey",
        api: "/api/v1/accounts/verify",
        demo: Vec::new(),
    })
}

async fn accept(state: web::Data<AppState>) -> Result<HttpResponse, WebError> {
    // The link's secret is in the fragment, so the page cannot know the municipality: it names
    // every demo municipality whose staff keys need no trusted attestation (none in production).
    let demo = {
        let client = state.pool.get().await.map_err(StoreError::from)?;
        crate::auth::pins::demo_mode_municipalities(&client)
            .await?
            .into_iter()
            .map(|(slug, name)| (name, slug))
            .collect()
    };
    page::ok(&Enrol {
        chrome: Chrome::anonymous(),
        heading: "Accept your invitation",
        explain: "Enrol the hardware security key your agency gave you. You will use it to sign in and \
                  to confirm every emergency action.",
        button: "Enrol my security key",
        api: "/api/v1/invitations/accept",
        demo,
    })
}

/// A trusted party's invitation link: the same enrolment as staff invitations, creating a passkey.
async fn accept_trusted() -> Result<HttpResponse, WebError> {
    page::ok(&Enrol {
        chrome: Chrome::anonymous(),
        heading: "Accept your invitation as a trusted party",
        explain: "Create a passkey: your phone or computer keeps it and unlocks it with your \
                  fingerprint, face or screen lock (a security key of your own works too). You will \
                  use it to sign in and to confirm each door pass. Nobody else can use it.",
        button: "Create my passkey",
        api: "/api/v1/invitations/accept",
        demo: Vec::new(),
    })
}

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    chrome: Chrome,
    roles: Vec<&'static str>,
    homeowner: bool,
    staff: bool,
    responder: bool,
    trusted: bool,
}

fn role_words(role: Role) -> &'static str {
    match role {
        Role::MunicipalAdmin => "municipal administrator",
        Role::Dispatcher => "dispatcher",
        Role::Responder => "responder",
        Role::Auditor => "auditor",
        Role::Homeowner => "homeowner",
        Role::TrustedParty => "trusted neighbour",
    }
}

async fn home(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
) -> Result<HttpResponse, WebError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    page::ok(&Home {
        chrome: Chrome::of(&client, &actor).await?,
        roles: actor.roles.iter().copied().map(role_words).collect(),
        homeowner: actor.has(Role::Homeowner),
        staff: actor
            .roles
            .iter()
            .any(|r| !matches!(r, Role::Homeowner | Role::TrustedParty)),
        responder: actor.has(Role::Responder),
        trusted: actor.has(Role::TrustedParty),
    })
}

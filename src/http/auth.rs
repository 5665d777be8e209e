//! HTTP endpoints of accounts, WebAuthn ceremonies and sessions. Each handler extracts, calls one
//! function of `auth::{accounts, signin}`, and maps the result; [`From<AuthError>`] below is where
//! identity errors become problem details.
//!
//! Ceremonies are two calls: `…/start` returns `{ceremony, options}` (pass `options` to
//! `navigator.credentials.create()`/`get()`), `…/finish` takes `{ceremony, credential}`. A finish that
//! signs in answers with the session cookie. A sign-in start also sets the ceremony cookie
//! (`__Host-firstkey-ceremony`, see `auth::client`); the finish must carry it, as a browser does.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::AppState;
use super::error::{ApiError, Problem};
use crate::auth::accounts::{self, Invitation, LinkKind, NewInvitation, SignedIn};
use crate::auth::client::{self, AuthKeys, Binding, CeremonyClient};
use crate::auth::error::AuthError;
use crate::auth::ratelimit::{self, Decision, SignInClient};
use crate::auth::session::{self, Actor};
use crate::auth::signin;
use crate::auth::webauthn::{
    self, Challenge, TrustedCa, assertion_schema, base64url, credential_schema, relying_party,
};
use crate::domain::{Email, Role, Slug};
use crate::municipal::Intent;
use crate::store::{StoreError, Tenant, tenancy};

/// OpenAPI description of these endpoints (merged into the server's document).
#[derive(OpenApi)]
#[openapi(
    paths(
        sign_in_start,
        sign_in_finish,
        step_up_start,
        step_up_finish,
        sign_out,
        sign_out_everywhere,
        me,
        create_invitation,
        invitation_accept_start,
        invitation_accept_finish,
        sign_up,
        verify_start,
        verify_finish,
        disable_account,
        list_attestation_cas,
        add_attestation_ca,
        remove_attestation_ca
    ),
    components(schemas(
        Challenge,
        SignInStart,
        LinkStart,
        FinishAssertion,
        FinishRegistration,
        Me,
        NewInvitation,
        Invitation,
        SignUp,
        SessionsEnded,
        Role,
        TrustedCa,
        NewCa
    )),
    tags((name = "identity", description = "Accounts, WebAuthn ceremonies and sessions"))
)]
pub struct AuthApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(sign_in_start)
        .service(sign_in_finish)
        .service(step_up_start)
        .service(step_up_finish)
        .service(sign_out)
        .service(sign_out_everywhere)
        .service(me)
        .service(create_invitation)
        .service(invitation_accept_start)
        .service(invitation_accept_finish)
        .service(sign_up)
        .service(verify_start)
        .service(verify_finish)
        .service(disable_account)
        .service(list_attestation_cas)
        .service(add_attestation_ca)
        .service(remove_attestation_ca);
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(s) => s.into(),
            AuthError::CeremonyInvalid => Self::BadRequest(
                "ceremony: unknown, expired or already used; start again".to_owned(),
            ),
            AuthError::TicketInvalid => Self::NotFound,
            AuthError::EnrolmentRefused(reason) => Self::BadRequest(reason.to_owned()),
            AuthError::AuthenticationFailed => Self::Unauthenticated,
            AuthError::Limited { retry_after } => Self::TooManyRequests { retry_after },
            AuthError::Forbidden => Self::Forbidden,
            AuthError::NotFound => Self::NotFound,
            AuthError::Conflict(d) => Self::Conflict(d.to_owned()),
            AuthError::Invalid(d) => Self::BadRequest(d),
            AuthError::Configuration(_) | AuthError::Serialisation(_) => Self::Internal(e.into()),
            AuthError::StepUpRequired => Self::StepUpRequired,
        }
    }
}

/// Start of a sign-in.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignInStart {
    /// The municipality's slug.
    #[schema(value_type = Slug)]
    pub municipality: String,
    /// The account's e-mail address.
    #[schema(value_type = Email)]
    pub email: String,
}

/// Start of an enrolment through a one-time link.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LinkStart {
    /// The secret from the link (the part after `#`).
    pub secret: String,
}

/// The end of an authentication ceremony.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FinishAssertion {
    /// From the start call.
    pub ceremony: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as JSON.
    #[schema(schema_with = assertion_schema)]
    pub credential: PublicKeyCredential,
}

/// The end of a registration ceremony.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FinishRegistration {
    /// From the start call.
    pub ceremony: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.
    #[schema(schema_with = attestation_schema)]
    pub credential: RegisterPublicKeyCredential,
}

/// The schema of [`FinishRegistration::credential`].
fn attestation_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let response = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "attestationObject",
            base64url("The attestation object (CBOR)"),
        )
        .property("clientDataJSON", base64url("The signed client data"))
        .property(
            "transports",
            ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)),
        )
        .required("attestationObject")
        .required("clientDataJSON")
        .build();
    credential_schema(
        "The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.",
        response,
    )
}

/// The signed-in user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// User id.
    pub user_id: Uuid,
    /// Municipality id.
    pub municipality_id: Uuid,
    /// Display name.
    pub display_name: String,
    /// Roles held.
    pub roles: Vec<Role>,
    /// Agency, for dispatchers and responders.
    pub agency_id: Option<Uuid>,
    /// Until when high-risk actions are allowed without another step-up, if stepped up.
    pub stepped_up_until: Option<DateTime<Utc>>,
}

/// A homeowner's sign-up.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignUp {
    /// The municipality's slug.
    #[schema(value_type = Slug)]
    pub municipality: String,
    /// Where the verification link is mailed.
    #[schema(value_type = Email)]
    pub email: String,
    /// The name to show, 1 to 200 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub display_name: String,
}

/// How many sessions ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionsEnded {
    /// Count.
    pub ended: u64,
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Client, ApiError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

fn rp(state: &AppState) -> Result<webauthn_rs::Webauthn, ApiError> {
    Ok(relying_party(&state.settings.public_origin)?)
}

async fn me_of(
    client: &impl deadpool_postgres::GenericClient,
    tenant: Tenant,
    user: Uuid,
    stepped_up: Option<DateTime<Utc>>,
) -> Result<Me, ApiError> {
    let found = crate::store::people::user(client, tenant, user).await?;
    Ok(Me {
        user_id: found.id,
        municipality_id: tenant.id(),
        display_name: found.display_name,
        roles: found.roles,
        agency_id: found.agency_id,
        stepped_up_until: stepped_up.map(|at| at + session::STEP_UP_WINDOW),
    })
}

async fn signed_in_response(
    state: &AppState,
    signed_in: SignedIn,
) -> Result<HttpResponse, ApiError> {
    let client = connection(state).await?;
    let current = me_of(
        &client,
        signed_in.tenant,
        signed_in.user,
        Some(state.clock.now()),
    )
    .await?;
    Ok(HttpResponse::Ok()
        .cookie(signed_in.session.cookie())
        .json(current))
}

/// Starts signing in with a security key or passkey.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sign-in/start",
    tag = "identity",
    request_body = SignInStart,
    responses(
        (status = 200, description = "WebAuthn request options, for every address alike (an address without a usable account gets a decoy no assertion finishes); `Set-Cookie` carries the ceremony cookie the finish needs", body = Challenge),
        (status = 400, description = "Malformed request", body = Problem),
        (status = 429, description = "Too many attempts; see Retry-After", body = Problem)
    )
)]
#[post("/api/v1/auth/sign-in/start")]
#[tracing::instrument(skip_all)]
async fn sign_in_start(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SignInStart>,
) -> Result<HttpResponse, ApiError> {
    let municipality = Slug::parse(&body.municipality)?;
    let email = Email::parse(&body.email)?;
    let now = state.clock.now();
    let keys = AuthKeys::derive(&state.kek);
    let cookie = req.cookie(client::COOKIE);
    let ceremony_client =
        CeremonyClient::of_request(&keys, cookie.as_ref().map(|c| c.value()), now)?;
    let who = SignInClient {
        address: crate::http::client_address(&req),
        binding: ceremony_client.binding(),
        returning: ceremony_client.returning(),
    };
    let client = connection(&state).await?;
    let challenge = signin::start_sign_in(
        &client,
        &rp(&state)?,
        state.settings.public_origin.host(),
        &keys,
        &municipality,
        &email,
        &who,
        now,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .cookie(ceremony_client.cookie(now))
        .json(challenge))
}

/// Finishes signing in; sets the session cookie.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sign-in/finish",
    tag = "identity",
    request_body = FinishAssertion,
    responses(
        (status = 200, description = "Signed in; `Set-Cookie` carries the session", body = Me),
        (status = 400, description = "Unknown, expired or used ceremony, or not this client's (the ceremony cookie of the start is missing or another)", body = Problem),
        (status = 401, description = "The assertion was refused", body = Problem)
    )
)]
#[post("/api/v1/auth/sign-in/finish")]
#[tracing::instrument(skip_all)]
async fn sign_in_finish(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<FinishAssertion>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let Some(cookie) = req.cookie(client::COOKIE) else {
        return Err(AuthError::CeremonyInvalid.into());
    };
    let keys = AuthKeys::derive(&state.kek);
    let who = SignInClient {
        address: crate::http::client_address(&req),
        binding: Binding::client_cookie(cookie.value()),
        returning: CeremonyClient::of_request(&keys, Some(cookie.value()), now)?.returning(),
    };
    let mut client = connection(&state).await?;
    let signed_in = signin::finish_sign_in(
        &mut client,
        &rp(&state)?,
        &who,
        body.ceremony,
        &body.credential,
        now,
    )
    .await?;
    drop(client);
    signed_in_response(&state, signed_in).await
}

/// Starts a step-up: a fresh assertion from the signed-in user's own credential.
#[utoipa::path(
    post,
    path = "/api/v1/auth/step-up/start",
    tag = "identity",
    responses(
        (status = 200, description = "WebAuthn request options", body = Challenge),
        (status = 401, description = "Not signed in", body = Problem)
    )
)]
#[post("/api/v1/auth/step-up/start")]
#[tracing::instrument(skip_all)]
async fn step_up_start(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = connection(&state).await?;
    let challenge = signin::start_step_up(&client, &rp(&state)?, &actor, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(challenge))
}

/// Finishes a step-up; high-risk actions are allowed for the next few minutes.
#[utoipa::path(
    post,
    path = "/api/v1/auth/step-up/finish",
    tag = "identity",
    request_body = FinishAssertion,
    responses(
        (status = 200, description = "Stepped up", body = Me),
        (status = 400, description = "Unknown, expired or used ceremony", body = Problem),
        (status = 401, description = "Not signed in, or the assertion was refused", body = Problem)
    )
)]
#[post("/api/v1/auth/step-up/finish")]
#[tracing::instrument(skip_all)]
async fn step_up_finish(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<FinishAssertion>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = connection(&state).await?;
    signin::finish_step_up(
        &mut client,
        &rp(&state)?,
        &actor,
        body.ceremony,
        &body.credential,
        now,
    )
    .await?;
    let current = me_of(&client, actor.tenant, actor.user_id, Some(now)).await?;
    Ok(HttpResponse::Ok().json(current))
}

/// Ends this session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sign-out",
    tag = "identity",
    responses(
        (status = 204, description = "Signed out; the cookie is removed"),
        (status = 401, description = "Not signed in", body = Problem)
    )
)]
#[post("/api/v1/auth/sign-out")]
#[tracing::instrument(skip_all)]
async fn sign_out(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = connection(&state).await?;
    signin::sign_out(&client, &actor, state.clock.now()).await?;
    Ok(HttpResponse::NoContent()
        .cookie(session::removal_cookie())
        .finish())
}

/// Ends every session of the signed-in user, on every device.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sign-out-everywhere",
    tag = "identity",
    responses(
        (status = 200, description = "Signed out everywhere", body = SessionsEnded),
        (status = 401, description = "Not signed in", body = Problem)
    )
)]
#[post("/api/v1/auth/sign-out-everywhere")]
#[tracing::instrument(skip_all)]
async fn sign_out_everywhere(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = connection(&state).await?;
    let ended = signin::sign_out_everywhere(&client, &actor, state.clock.now()).await?;
    Ok(HttpResponse::Ok()
        .cookie(session::removal_cookie())
        .json(SessionsEnded { ended }))
}

/// The signed-in user.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "identity",
    responses(
        (status = 200, description = "The signed-in user", body = Me),
        (status = 401, description = "Not signed in", body = Problem)
    )
)]
#[get("/api/v1/me")]
#[tracing::instrument(skip_all)]
async fn me(state: web::Data<AppState>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let client = connection(&state).await?;
    let now = state.clock.now();
    let stepped_up = actor.stepped_up_at.filter(|_| actor.stepped_up(now));
    Ok(HttpResponse::Ok().json(me_of(&client, actor.tenant, actor.user_id, stepped_up).await?))
}

/// A municipal admin invites a dispatcher, responder, auditor or admin; the one-time link is mailed.
/// Needs a fresh step-up.
#[utoipa::path(
    post,
    path = "/api/v1/invitations",
    tag = "identity",
    request_body = NewInvitation,
    responses(
        (status = 201, description = "Invitation created and mailed", body = Invitation),
        (status = 400, description = "Invalid invitation", body = Problem),
        (status = 401, description = "Not signed in, or step-up required", body = Problem),
        (status = 404, description = "Not available to this user", body = Problem)
    )
)]
#[post("/api/v1/invitations")]
#[tracing::instrument(skip_all)]
async fn create_invitation(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewInvitation>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = crate::http::admin::allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let (invitation, _secret) = accounts::invite(
        &tx,
        actor.tenant,
        actor.user_id,
        &body,
        &state.settings.public_origin,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(invitation))
}

/// Starts accepting an invitation: enrol a hardware security key.
#[utoipa::path(
    post,
    path = "/api/v1/invitations/accept/start",
    tag = "identity",
    request_body = LinkStart,
    responses(
        (status = 200, description = "WebAuthn creation options", body = Challenge),
        (status = 404, description = "Unknown, expired or used link", body = Problem)
    )
)]
#[post("/api/v1/invitations/accept/start")]
#[tracing::instrument(skip_all)]
async fn invitation_accept_start(
    state: web::Data<AppState>,
    body: web::Json<LinkStart>,
) -> Result<HttpResponse, ApiError> {
    start_registration(&state, LinkKind::Invitation, &body.secret).await
}

/// Finishes accepting an invitation; activates the account and signs in.
#[utoipa::path(
    post,
    path = "/api/v1/invitations/accept/finish",
    tag = "identity",
    request_body = FinishRegistration,
    responses(
        (status = 200, description = "Enrolled and signed in; `Set-Cookie` carries the session", body = Me),
        (status = 400, description = "Refused authenticator, or unknown/expired/used ceremony", body = Problem),
        (status = 404, description = "The link was used or expired meanwhile", body = Problem)
    )
)]
#[post("/api/v1/invitations/accept/finish")]
#[tracing::instrument(skip_all)]
async fn invitation_accept_finish(
    state: web::Data<AppState>,
    body: web::Json<FinishRegistration>,
) -> Result<HttpResponse, ApiError> {
    finish_registration(&state, &body).await
}

/// Starts the enrolment a mailed link (invitation or e-mail verification) allows.
async fn start_registration(
    state: &AppState,
    kind: LinkKind,
    secret: &str,
) -> Result<HttpResponse, ApiError> {
    let client = connection(state).await?;
    let challenge =
        accounts::start_enrolment(&client, &rp(state)?, kind, secret, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(challenge))
}

async fn finish_registration(
    state: &AppState,
    body: &FinishRegistration,
) -> Result<HttpResponse, ApiError> {
    let mut client = connection(state).await?;
    let signed_in = accounts::finish_enrolment(
        &mut client,
        &rp(state)?,
        body.ceremony,
        &body.credential,
        state.clock.now(),
    )
    .await?;
    drop(client);
    signed_in_response(state, signed_in).await
}

/// A homeowner signs up; a verification link is mailed. The answer is the same whether or not the
/// address already has an account.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/sign-up",
    tag = "identity",
    request_body = SignUp,
    responses(
        (status = 202, description = "If the address can sign up, a verification mail is on its way"),
        (status = 400, description = "Invalid input", body = Problem),
        (status = 429, description = "Too many sign-ups from this address; see Retry-After", body = Problem)
    )
)]
#[post("/api/v1/accounts/sign-up")]
#[tracing::instrument(skip_all)]
async fn sign_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SignUp>,
) -> Result<HttpResponse, ApiError> {
    let municipality = Slug::parse(&body.municipality)?;
    let email = Email::parse(&body.email)?;
    // Checked before anything is counted or written (the account code checks it again).
    crate::domain::Text::parse("display_name", &body.display_name, 200)?;
    let now = state.clock.now();
    let mut client = connection(&state).await?;
    if let Some(ip) = crate::http::client_address(&req) {
        let bucket = format!("sign_up:addr:{ip}");
        let hour = chrono::Duration::hours(1);
        if let Decision::Limited { retry_after } =
            ratelimit::hit(&client, &bucket, hour, ratelimit::SIGN_UP_PER_ADDRESS, now).await?
        {
            return Err(ApiError::TooManyRequests { retry_after });
        }
    }
    let tenant = match tenancy::municipality_by_slug(&client, &municipality).await {
        Ok((tenant, _)) => tenant,
        // Same answer as for a known municipality: nothing to learn from sign-up.
        Err(StoreError::NotFound) => return Ok(HttpResponse::Accepted().finish()),
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
        &body.display_name,
        &state.settings.public_origin,
        send_mail,
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Accepted().finish())
}

/// Starts the e-mail verification: enrol a passkey.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/verify/start",
    tag = "identity",
    request_body = LinkStart,
    responses(
        (status = 200, description = "WebAuthn creation options", body = Challenge),
        (status = 404, description = "Unknown, expired or used link", body = Problem)
    )
)]
#[post("/api/v1/accounts/verify/start")]
#[tracing::instrument(skip_all)]
async fn verify_start(
    state: web::Data<AppState>,
    body: web::Json<LinkStart>,
) -> Result<HttpResponse, ApiError> {
    start_registration(&state, LinkKind::EmailVerification, &body.secret).await
}

/// Finishes the e-mail verification; activates the account and signs in.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/verify/finish",
    tag = "identity",
    request_body = FinishRegistration,
    responses(
        (status = 200, description = "Verified, enrolled and signed in; `Set-Cookie` carries the session", body = Me),
        (status = 400, description = "Refused authenticator, or unknown/expired/used ceremony", body = Problem),
        (status = 404, description = "The link was used or expired meanwhile", body = Problem)
    )
)]
#[post("/api/v1/accounts/verify/finish")]
#[tracing::instrument(skip_all)]
async fn verify_finish(
    state: web::Data<AppState>,
    body: web::Json<FinishRegistration>,
) -> Result<HttpResponse, ApiError> {
    finish_registration(&state, &body).await
}

/// A municipal admin disables an account: its sessions end at once, the open invitations it sent
/// are revoked, the grants naming it as their only active responder end and its override tokens
/// are revoked at the locks. Needs a fresh step-up.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/{id}/disable",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The account")),
    responses(
        (status = 200, description = "Disabled", body = SessionsEnded),
        (status = 401, description = "Not signed in, or step-up required", body = Problem),
        (status = 404, description = "No such account for this user", body = Problem),
        (status = 409, description = "Cannot disable oneself", body = Problem)
    )
)]
#[post("/api/v1/accounts/{id}/disable")]
#[tracing::instrument(skip_all)]
async fn disable_account(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = crate::http::admin::allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let disabled = accounts::disable(&tx, &actor, path.into_inner(), now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Ok().json(SessionsEnded {
        ended: disabled.sessions_ended,
    }))
}

/// An attestation CA to admit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewCa {
    /// The CA certificate, PEM.
    pub pem: String,
}

/// The attestation CAs this municipality added to webauthn-rs's strict list (municipal admins only).
#[utoipa::path(
    get,
    path = "/api/v1/auth/attestation-cas",
    tag = "identity",
    responses(
        (status = 200, description = "The added CAs", body = Vec<TrustedCa>),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 404, description = "Not available to this user", body = Problem)
    )
)]
#[get("/api/v1/auth/attestation-cas")]
#[tracing::instrument(skip_all)]
async fn list_attestation_cas(
    state: web::Data<AppState>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let client = crate::http::admin::allowed(&state, &actor, Intent::View).await?;
    let cas = webauthn::added_attestation_cas(&client, actor.tenant).await?;
    Ok(HttpResponse::Ok().json(cas))
}

/// Admits the security keys a manufacturer's CA attests, for new enrolments. Needs a fresh step-up.
#[utoipa::path(
    post,
    path = "/api/v1/auth/attestation-cas",
    tag = "identity",
    request_body = NewCa,
    responses(
        (status = 201, description = "Added (or already listed)", body = TrustedCa),
        (status = 400, description = "Not a PEM certificate", body = Problem),
        (status = 401, description = "Not signed in, or step-up required", body = Problem),
        (status = 404, description = "Not available to this user", body = Problem)
    )
)]
#[post("/api/v1/auth/attestation-cas")]
#[tracing::instrument(skip_all)]
async fn add_attestation_ca(
    state: web::Data<AppState>,
    actor: Actor,
    body: web::Json<NewCa>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = crate::http::admin::allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let added =
        webauthn::add_attestation_ca(&tx, actor.tenant, &body.pem, Some(actor.user_id), now)
            .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::Created().json(added))
}

/// Stops admitting a CA for new enrolments (enrolled keys stay). Needs a fresh step-up.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/attestation-cas/{fingerprint}",
    tag = "identity",
    params(("fingerprint" = String, Path, description = "Hex SHA-256 of the CA certificate")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not signed in, or step-up required", body = Problem),
        (status = 404, description = "No such CA, or not available to this user", body = Problem)
    )
)]
#[delete("/api/v1/auth/attestation-cas/{fingerprint}")]
#[tracing::instrument(skip_all)]
async fn remove_attestation_ca(
    state: web::Data<AppState>,
    actor: Actor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut client = crate::http::admin::allowed(&state, &actor, Intent::Change).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    webauthn::remove_attestation_ca(&tx, actor.tenant, &path, actor.user_id, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HttpResponse::NoContent().finish())
}

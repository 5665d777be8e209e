//! Signed-in test users made with real WebAuthn ceremonies against the running server, for any test
//! that needs an actor: `sign_in_as(&app, tenant, Role::Dispatcher).await` gives a [`TestUser`] whose
//! session cookie, software authenticator and ids are ready to use.
//!
//! Staff (admin, dispatcher, responder, auditor) get a fresh `SoftToken` (an attesting "hardware" key)
//! whose CA is added to the municipality's `attestation_cas`, an invitation, and an enrolment through
//! `/api/v1/invitations/accept/*`. Homeowners sign up (library call, so the helper never trips the
//! sign-up rate limit), take the verification link from the outbox, and enrol a `SoftPasskey` through
//! `/api/v1/accounts/verify/*`. Either way the session is the one the enrolment ceremony created
//! (stepped up at that moment); [`TestUser::sign_in`] and [`TestUser::step_up`] run the other
//! ceremonies.

#![allow(dead_code)]

use chrono::Utc;
use firstkey::auth::accounts::{self, NewInvitation};
use firstkey::domain::{AgencyKind, Email, Role};
use firstkey::settings::PublicOrigin;
use firstkey::store::{Tenant, tenancy};
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::{self, SoftToken};
use webauthn_rs::prelude::{
    AttestationCaListBuilder, CreationChallengeResponse, RequestChallengeResponse, Url,
};

use crate::helpers::TestApp;

/// The public origin the test server runs with (the settings default).
pub const ORIGIN: &str = "http://localhost:8080";

/// The origin as a URL, for the software authenticators.
pub fn origin() -> Url {
    Url::parse(ORIGIN).unwrap()
}

/// A software authenticator.
pub enum TestKey {
    /// An attesting security key (staff).
    Token(Box<SoftToken>),
    /// A passkey (homeowners).
    Passkey(SoftPasskey),
}

impl TestKey {
    /// Answers a registration challenge (`options` as the server sent them).
    pub fn register(&mut self, options: &Value) -> Value {
        let ccr: CreationChallengeResponse = serde_json::from_value(options.clone()).unwrap();
        let reg = match self {
            Self::Token(t) => t.do_registration(origin(), ccr),
            Self::Passkey(p) => p.do_registration(origin(), ccr),
        }
        .expect("the software authenticator registers");
        serde_json::to_value(reg).unwrap()
    }

    /// Answers an authentication challenge, if it offers this authenticator's credential.
    pub fn try_assert(&mut self, options: &Value) -> Option<Value> {
        let rcr: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
        let cred = match self {
            Self::Token(t) => t.do_authentication(origin(), rcr),
            Self::Passkey(p) => p.do_authentication(origin(), rcr),
        }
        .ok()?;
        Some(serde_json::to_value(cred).unwrap())
    }

    /// Answers an authentication challenge.
    pub fn assert(&mut self, options: &Value) -> Value {
        let rcr: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
        let cred = match self {
            Self::Token(t) => t.do_authentication(origin(), rcr),
            Self::Passkey(p) => p.do_authentication(origin(), rcr),
        }
        .expect("the software authenticator signs");
        serde_json::to_value(cred).unwrap()
    }
}

/// A signed-in user of the test server.
pub struct TestUser {
    /// The user's id.
    pub user_id: Uuid,
    /// The municipality.
    pub tenant: Tenant,
    /// The municipality's slug (for sign-in).
    pub slug: String,
    /// The e-mail address.
    pub email: String,
    /// The role it was made with.
    pub role: Role,
    /// The agency, for dispatchers and responders.
    pub agency_id: Option<Uuid>,
    /// `Cookie` header value: `__Host-firstkey-session=…`.
    pub cookie: String,
    /// The authenticator holding the user's credential.
    pub key: TestKey,
    /// `Cookie` header value of the ceremony cookie this user's "browser" holds, once a sign-in
    /// start has set one: `__Host-firstkey-ceremony=…`.
    pub ceremony: Option<String>,
}

impl TestUser {
    /// GET with the session cookie.
    pub async fn get(&self, app: &TestApp, path: &str) -> reqwest::Response {
        app.http
            .get(format!("{}{path}", app.address))
            .header("Cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }

    /// POST JSON with the session cookie and our Origin.
    pub async fn post(&self, app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
        post(app, path, body, Some(&self.cookie)).await
    }

    /// A fresh step-up ceremony on the current session (what high-risk actions need).
    pub async fn step_up(&mut self, app: &TestApp) {
        let start = self
            .post(app, "/api/v1/auth/step-up/start", &json!({}))
            .await;
        assert_eq!(start.status(), 200, "step-up start");
        let challenge: Value = start.json().await.unwrap();
        let credential = self.key.assert(&challenge["options"]);
        let finish = self
            .post(
                app,
                "/api/v1/auth/step-up/finish",
                &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
            )
            .await;
        assert_eq!(finish.status(), 200, "step-up finish");
    }

    /// A full sign-in ceremony from this user's browser (keeping its ceremony cookie); replaces the
    /// cookie with the new session's.
    pub async fn sign_in(&mut self, app: &TestApp) {
        let (response, ceremony) = sign_in_from(
            app,
            &self.slug,
            &self.email,
            &mut self.key,
            self.ceremony.as_deref(),
        )
        .await;
        assert_eq!(response.status(), 200, "sign-in finish");
        self.ceremony = ceremony.or(self.ceremony.take());
        self.cookie = session_cookie(&response).expect("sign-in sets the session cookie");
    }
}

/// POST JSON with `Origin: ORIGIN` and, if given, a cookie.
pub async fn post(
    app: &TestApp,
    path: &str,
    body: &Value,
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}{path}", app.address))
        .header("Origin", ORIGIN)
        .json(body);
    if let Some(cookie) = cookie {
        request = request.header("Cookie", cookie);
    }
    request.send().await.unwrap()
}

/// `name=value` of the session cookie a response sets.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| {
            v.starts_with("__Host-firstkey-session=") && !v.starts_with("__Host-firstkey-session=;")
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// `name=value` of the ceremony cookie a response sets.
pub fn ceremony_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| {
            v.starts_with("__Host-firstkey-ceremony=")
                && !v.starts_with("__Host-firstkey-ceremony=;")
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// Runs sign-in start and finish with `key` from a new browser; returns the finish response (start
/// must succeed).
pub async fn sign_in(
    app: &TestApp,
    slug: &str,
    email: &str,
    key: &mut TestKey,
) -> reqwest::Response {
    sign_in_from(app, slug, email, key, None).await.0
}

/// Starts a sign-in from a browser holding `ceremony` (a ceremony cookie) or none; returns the start
/// response's challenge (start must succeed) and the ceremony cookie to finish with.
pub async fn start_sign_in(
    app: &TestApp,
    slug: &str,
    email: &str,
    ceremony: Option<&str>,
) -> (Value, Option<String>) {
    let start = post(
        app,
        "/api/v1/auth/sign-in/start",
        &json!({ "municipality": slug, "email": email }),
        ceremony,
    )
    .await;
    assert_eq!(start.status(), 200, "sign-in start");
    let cookie = ceremony_cookie(&start).or(ceremony.map(str::to_owned));
    (start.json().await.unwrap(), cookie)
}

/// Runs sign-in start and finish with `key` from a browser holding `ceremony` (or none); returns the
/// finish response and the ceremony cookie the browser holds afterwards.
pub async fn sign_in_from(
    app: &TestApp,
    slug: &str,
    email: &str,
    key: &mut TestKey,
    ceremony: Option<&str>,
) -> (reqwest::Response, Option<String>) {
    let (challenge, cookie) = start_sign_in(app, slug, email, ceremony).await;
    let credential = key.assert(&challenge["options"]);
    let finish = post(
        app,
        "/api/v1/auth/sign-in/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
        cookie.as_deref(),
    )
    .await;
    (finish, cookie)
}

/// The municipality's slug.
pub async fn slug_of(app: &TestApp, tenant: Tenant) -> String {
    let client = app.pool.get().await.unwrap();
    client
        .query_one(
            "SELECT slug FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await
        .unwrap()
        .get(0)
}

/// A software security key and the PEM of its attestation CA (not yet trusted by anyone). The PEM
/// is taken from webauthn-rs's serialisable CA list, which carries the certificate's DER.
pub fn soft_token(claims_uv: bool) -> (SoftToken, String) {
    use base64::Engine;
    let (token, ca) = SoftToken::new(claims_uv).unwrap();
    let mut builder = AttestationCaListBuilder::new();
    builder
        .insert_device_x509(
            ca,
            softtoken::AAGUID,
            "soft token".to_owned(),
            Default::default(),
        )
        .unwrap();
    let list = serde_json::to_value(builder.build()).unwrap();
    let entry = list["cas"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(entry["ca"].as_str().unwrap())
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    (token, pem)
}

/// Adds a CA (PEM) to the municipality's attestation list.
pub async fn trust_ca(app: &TestApp, tenant: Tenant, pem: &str) {
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE municipalities SET attestation_cas = attestation_cas || jsonb_build_array($2::text) WHERE id = $1",
            &[&tenant.id(), &pem],
        )
        .await
        .unwrap();
}

/// A pending admin made with `accounts::bootstrap_admin`, as an inviter for other roles; returns its
/// id and the invitation secret.
pub async fn bootstrap_admin(app: &TestApp, tenant: Tenant, email: &str) -> (Uuid, String) {
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let (user, secret) = accounts::bootstrap_admin(
        &tx,
        tenant,
        &Email::parse(email).unwrap(),
        "Admin",
        Utc::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (user.id, secret.expose().to_owned())
}

/// An invitation made through the library (as an admin would through the API); returns the secret.
pub async fn invitation(
    app: &TestApp,
    tenant: Tenant,
    inviter: Uuid,
    role: Role,
    agency_id: Option<Uuid>,
    email: &str,
) -> String {
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let new = NewInvitation {
        role,
        agency_id,
        email: email.to_owned(),
        display_name: format!("Test {}", role.as_str()),
    };
    let (_, secret) = accounts::invite(
        &tx,
        tenant,
        inviter,
        &new,
        &PublicOrigin::parse(ORIGIN).unwrap(),
        Utc::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    secret.expose().to_owned()
}

/// The secret of the newest link mailed to `recipient` (from the outbox), by mail kind.
pub async fn mailed_secret(app: &TestApp, recipient: &str, kind: &str) -> Option<String> {
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_opt(
            "SELECT body_text FROM notification_outbox WHERE recipient = $1 AND kind = $2
             ORDER BY created_at DESC LIMIT 1",
            &[&recipient, &kind],
        )
        .await
        .unwrap()?;
    let text: String = row.get(0);
    let after = text.split_once('#')?.1;
    Some(after.split_whitespace().next()?.to_owned())
}

/// Runs an enrolment ceremony (`/api/v1/{base}/start|finish`) with `key`; returns the finish response.
pub async fn enrol(
    app: &TestApp,
    base: &str,
    secret: &str,
    key: &mut TestKey,
) -> reqwest::Response {
    let start = post(
        app,
        &format!("{base}/start"),
        &json!({ "secret": secret }),
        None,
    )
    .await;
    assert_eq!(start.status(), 200, "enrolment start");
    let challenge: Value = start.json().await.unwrap();
    let credential = key.register(&challenge["options"]);
    post(
        app,
        &format!("{base}/finish"),
        &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
        None,
    )
    .await
}

/// A signed-in user of `role` in `tenant`; dispatchers and responders join a fire agency created on
/// demand.
pub async fn sign_in_as(app: &TestApp, tenant: Tenant, role: Role) -> TestUser {
    let agency = if matches!(role, Role::Dispatcher | Role::Responder) {
        let client = app.pool.get().await.unwrap();
        let agency =
            tenancy::ensure_agency(&client, tenant, AgencyKind::Fire, "Test Fire", Utc::now())
                .await
                .unwrap();
        Some(agency.id)
    } else {
        None
    };
    sign_in_as_in(app, tenant, role, agency).await
}

/// A signed-in user of `role` in `tenant` and `agency`.
pub async fn sign_in_as_in(
    app: &TestApp,
    tenant: Tenant,
    role: Role,
    agency_id: Option<Uuid>,
) -> TestUser {
    let slug = slug_of(app, tenant).await;
    let email = format!("{}-{}@{slug}.test", role.as_str(), Uuid::new_v4().simple());
    let (response, key) = match role {
        Role::Homeowner => {
            {
                let mut client = app.pool.get().await.unwrap();
                let tx = client.transaction().await.unwrap();
                accounts::sign_up(
                    &tx,
                    tenant,
                    &Email::parse(&email).unwrap(),
                    "Test homeowner",
                    &PublicOrigin::parse(ORIGIN).unwrap(),
                    true,
                    Utc::now(),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
            let secret = mailed_secret(app, &email, "account.verify_email")
                .await
                .unwrap();
            let mut key = TestKey::Passkey(SoftPasskey::new(true));
            (
                enrol(app, "/api/v1/accounts/verify", &secret, &mut key).await,
                key,
            )
        }
        Role::MunicipalAdmin => {
            let (token, pem) = soft_token(true);
            trust_ca(app, tenant, &pem).await;
            let (_, secret) = bootstrap_admin(app, tenant, &email).await;
            let mut key = TestKey::Token(Box::new(token));
            (
                enrol(app, "/api/v1/invitations/accept", &secret, &mut key).await,
                key,
            )
        }
        staff => {
            let (token, pem) = soft_token(true);
            trust_ca(app, tenant, &pem).await;
            let (inviter, _) = bootstrap_admin(
                app,
                tenant,
                &format!("inviter-{}@{slug}.test", Uuid::new_v4().simple()),
            )
            .await;
            let secret = invitation(app, tenant, inviter, staff, agency_id, &email).await;
            let mut key = TestKey::Token(Box::new(token));
            (
                enrol(app, "/api/v1/invitations/accept", &secret, &mut key).await,
                key,
            )
        }
    };
    assert_eq!(
        response.status(),
        200,
        "enrolment of a {} finishes",
        role.as_str()
    );
    let cookie = session_cookie(&response).expect("enrolment sets the session cookie");
    let me: Value = response.json().await.unwrap();
    TestUser {
        user_id: me["user_id"].as_str().unwrap().parse().unwrap(),
        tenant,
        slug,
        email,
        role,
        agency_id,
        cookie,
        key,
        ceremony: None,
    }
}

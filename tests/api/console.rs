//! The dispatcher console's edges: who may follow an incident's live state, and the demo mode that
//! no real municipality can be put in.

use chrono::Utc;
use firstkey::domain::{Role, Slug};
use firstkey::store::tenancy;
use serde_json::{Value, json};

use crate::auth_helpers::sign_in_as;
use crate::helpers::{TestApp, spawn_app};

async fn tenant(app: &TestApp, slug: &str) -> firstkey::store::Tenant {
    let client = app.pool.get().await.unwrap();
    tenancy::ensure_municipality(&client, &Slug::parse(slug).unwrap(), "Town", Utc::now())
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn only_a_demo_municipality_admits_staff_keys_without_attestation() {
    let app = spawn_app().await;
    let real = tenant(&app, "springfield").await;
    let demo = tenant(&app, "demo-city-7").await;
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let refused = firstkey::auth::pins::set_demo_mode(&tx, real, true, Utc::now()).await;
    assert!(refused.is_err(), "a real municipality is refused");
    firstkey::auth::pins::set_demo_mode(&tx, demo, true, Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Nor can the database be talked into it.
    let direct = client
        .execute(
            "UPDATE municipalities SET staff_attestation_optional = true WHERE id = $1",
            &[&real.id()],
        )
        .await;
    assert!(direct.is_err(), "the constraint refuses it");
    let listed = firstkey::auth::pins::demo_mode_municipalities(&client)
        .await
        .unwrap();
    assert_eq!(listed, [("demo-city-7".to_owned(), "Town".to_owned())]);
    // The mode change is audited, once.
    let audited: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'auth.attestation_demo_mode'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    // A pin is audited once and must be 64 hex digits.
    let tx = client.transaction().await.unwrap();
    let pin = [7u8; 32];
    assert!(
        firstkey::auth::pins::pin_key(
            &tx,
            real,
            &pin,
            "batch key",
            firstkey::auth::pins::PinUse::Production,
            None,
            Utc::now()
        )
        .await
        .unwrap()
    );
    assert!(
        !firstkey::auth::pins::pin_key(
            &tx,
            real,
            &pin,
            "batch key",
            firstkey::auth::pins::PinUse::Production,
            None,
            Utc::now()
        )
        .await
        .unwrap()
    );
    assert!(
        firstkey::auth::pins::pin_key(
            &tx,
            real,
            &pin,
            "\0",
            firstkey::auth::pins::PinUse::Production,
            None,
            Utc::now()
        )
        .await
        .is_err()
    );
    tx.commit().await.unwrap();
    let trust = firstkey::auth::pins::trust(&client, real).await.unwrap();
    assert_eq!(trust.pins, [pin]);
    assert!(!trust.optional);
    assert!(
        trust.admits_more() && !trust.relaxes_cred_protect(),
        "a production pin keeps credProtect enforced"
    );
    let other = firstkey::auth::pins::trust(&client, demo).await.unwrap();
    assert!(
        other.pins.is_empty() && other.optional,
        "pins are per municipality"
    );
}

#[tokio::test]
async fn the_live_state_stream_is_for_the_incidents_dispatchers() {
    let app = spawn_app().await;
    let town = tenant(&app, "springfield").await;
    let dispatcher = sign_in_as(&app, town, Role::Dispatcher).await;
    let created: Value = dispatcher
        .post(
            &app,
            "/api/v1/incidents",
            &json!({ "cad_number": "26-1", "kind": "fire", "address": "1 Main St",
                     "agency": dispatcher.agency_id.unwrap() }),
        )
        .await
        .json()
        .await
        .unwrap();
    let events = format!(
        "/dispatch/incidents/{}/events",
        created["id"].as_str().unwrap()
    );

    // Nobody signed in, a homeowner, another municipality's dispatcher: no stream.
    assert_eq!(app.get(&events).await.status(), 401);
    let homeowner = sign_in_as(&app, town, Role::Homeowner).await;
    assert_eq!(homeowner.get(&app, &events).await.status(), 404);
    let elsewhere = tenant(&app, "shelbyville").await;
    let stranger = sign_in_as(&app, elsewhere, Role::Dispatcher).await;
    assert_eq!(stranger.get(&app, &events).await.status(), 404);
    let missing = format!("/dispatch/incidents/{}/events", uuid::Uuid::new_v4());
    assert_eq!(dispatcher.get(&app, &missing).await.status(), 404);

    // The dispatcher gets the current states at once.
    let mut response = dispatcher.get(&app, &events).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"event: grants\ndata: []\n\n");
}

/// `firstkey demo`'s links: one per staff role of the demo municipality, each opening the working
/// enrolment page, which says that this municipality's staff keys need no trusted attestation.
#[tokio::test]
async fn the_demo_prints_a_working_enrolment_link_per_role() {
    let app = spawn_app().await;
    let world = firstkey::demo::seed(&app.pool, firstkey::demo::DEMO_SLUG, Utc::now())
        .await
        .unwrap();
    let origin = firstkey::settings::PublicOrigin::parse(&app.address).unwrap();
    let links = firstkey::demo::enrolment_links(&app.pool, &world, &origin, Utc::now())
        .await
        .unwrap();
    let roles: Vec<&str> = links.iter().map(|(role, _)| *role).collect();
    assert_eq!(roles, ["admin", "dispatcher", "responder", "auditor"]);
    for (role, link) in &links {
        let (page, secret) = link.split_once('#').expect("the secret is in the fragment");
        assert!(secret.len() >= 32, "{role}: {link}");
        let path = page.strip_prefix(&app.address).expect("the link is ours");
        let response = app
            .http
            .get(format!("{}{path}", app.address))
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{role}: {link}");
        let html = response.text().await.unwrap();
        assert!(html.contains("data-ceremony=\"enrol\""), "{role}");
        assert!(
            html.contains("Demo City (demo-city) is a demo municipality"),
            "{role}"
        );
    }
    // Each is a live invitation into the role it names.
    let client = app.pool.get().await.unwrap();
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM invitations WHERE municipality_id = $1 AND used_at IS NULL
               AND role IN ('municipal_admin', 'dispatcher', 'responder', 'auditor')
               AND email LIKE 'you.%'",
            &[&world.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 4);
}

/// The invitation enrolment's options: whether the client is told it may skip credProtect.
async fn cred_protect_enforcement(app: &TestApp, tenant: firstkey::store::Tenant) -> Value {
    let (_, secret) =
        crate::auth_helpers::bootstrap_admin(app, tenant, "first.admin@town.example").await;
    let start = crate::auth_helpers::post(
        app,
        "/api/v1/invitations/accept/start",
        &json!({ "secret": secret }),
        None,
    )
    .await;
    assert_eq!(start.status(), 200);
    let challenge: Value = start.json().await.unwrap();
    challenge["options"]["publicKey"]["extensions"]["enforceCredentialProtectionPolicy"].clone()
}

#[tokio::test]
async fn only_demo_mode_and_test_only_pins_relax_credential_protection() {
    use firstkey::auth::pins::{PinUse, pin_key};
    let app = spawn_app().await;
    let production = tenant(&app, "springfield").await;
    let testing = tenant(&app, "shelbyville").await;
    let demo = tenant(&app, "demo-city").await;
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let now = Utc::now();
    pin_key(
        &tx,
        production,
        &[1; 32],
        "batch key",
        PinUse::Production,
        None,
        now,
    )
    .await
    .unwrap();
    pin_key(
        &tx,
        testing,
        &[2; 32],
        "Chromium (tests)",
        PinUse::TestOnly,
        None,
        now,
    )
    .await
    .unwrap();
    firstkey::auth::pins::set_demo_mode(&tx, demo, true, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_ne!(
        cred_protect_enforcement(&app, production).await,
        json!(false),
        "a production pin keeps credProtect enforced"
    );
    assert_eq!(cred_protect_enforcement(&app, testing).await, json!(false));
    assert_eq!(cred_protect_enforcement(&app, demo).await, json!(false));
    let detail: Value = client
        .query_one(
            "SELECT public_details FROM audit_entries WHERE action = 'auth.attestation_key_pinned'
             AND municipality_id = $1",
            &[&testing.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(detail["test_only"], json!(true), "the pin's use is audited");
}

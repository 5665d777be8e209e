//! Properties, locks, access plans, the notes reveal and the audit log over HTTP, and the
//! access-control matrix: for every endpoint that takes an id, every other role, another homeowner
//! and another municipality get the same 404 and learn nothing.
//!
//! Sessions here are created directly in the database (with a credential row standing in for an
//! enrolled key where a step-up is needed): these tests are about authorization. The WebAuthn
//! ceremonies that create real sessions are tested in `auth`.

use chrono::Utc;
use firstkey::audit::{self, ChainCheck};
use firstkey::domain::{AgencyKind, Role, Slug};
use firstkey::store::{Tenant, tenancy};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{As, TestApp, call, home_of, spawn_app, user};

fn plan() -> Value {
    json!({
        "agencies": {
            "fire": { "allowed": true, "incident_types": ["fire", "medical"] },
            "ems": { "allowed": true, "incident_types": ["medical"] },
            "police": { "allowed": false }
        },
        "max_grant_minutes": 60,
        "notes": { "pets": "Two dogs in the back yard", "hazards": "Oxygen in use" },
        "contacts": [{ "name": "Sam Neighbour", "email": "sam@example.org" }],
        "notifications": { "homeowner": true, "contacts": true },
        "retention_days": 365
    })
}

struct World {
    app: TestApp,
    a: Tenant,
    owner: As,
    owner_plain: As,
    other_owner: As,
    dispatcher: As,
    responder: As,
    auditor: As,
    auditor_plain: As,
    admin: As,
    b_owner: As,
    b_dispatcher: As,
    b_auditor: As,
    property: Uuid,
    address: String,
}

async fn world() -> World {
    let app = spawn_app().await;
    let now = Utc::now();
    let client = app.pool.get().await.unwrap();
    let (a, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("town-a").unwrap(), "Town A", now)
            .await
            .unwrap();
    let (b, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("town-b").unwrap(), "Town B", now)
            .await
            .unwrap();
    let ems = tenancy::ensure_agency(&client, a, AgencyKind::Ems, "A EMS", now)
        .await
        .unwrap();
    let fire = tenancy::ensure_agency(&client, a, AgencyKind::Fire, "A Fire", now)
        .await
        .unwrap();
    let b_ems = tenancy::ensure_agency(&client, b, AgencyKind::Ems, "B EMS", now)
        .await
        .unwrap();
    drop(client);
    let owner = user(&app, a, "owner@a.example", None, Role::Homeowner, true).await;
    let owner_plain = As {
        id: owner.id,
        ..user(&app, a, "owner@a.example", None, Role::Homeowner, false).await
    };
    let address = "12 Elm Street".to_owned();
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/properties",
        Some(&owner),
        Some(json!({ "address": address })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let property: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    World {
        a,
        owner,
        owner_plain,
        other_owner: user(&app, a, "other@a.example", None, Role::Homeowner, true).await,
        dispatcher: user(
            &app,
            a,
            "dispatch@a.example",
            Some(ems.id),
            Role::Dispatcher,
            true,
        )
        .await,
        responder: user(
            &app,
            a,
            "engine7@a.example",
            Some(fire.id),
            Role::Responder,
            true,
        )
        .await,
        auditor: user(&app, a, "privacy@a.example", None, Role::Auditor, true).await,
        auditor_plain: user(&app, a, "privacy2@a.example", None, Role::Auditor, false).await,
        admin: user(&app, a, "admin@a.example", None, Role::MunicipalAdmin, true).await,
        b_owner: user(&app, b, "owner@b.example", None, Role::Homeowner, true).await,
        b_dispatcher: user(
            &app,
            b,
            "dispatch@b.example",
            Some(b_ems.id),
            Role::Dispatcher,
            true,
        )
        .await,
        b_auditor: user(&app, b, "privacy@b.example", None, Role::Auditor, true).await,
        property,
        address,
        app,
    }
}

#[tokio::test]
async fn plans_are_versioned_need_step_up_and_keep_notes_encrypted() {
    let w = world().await;
    let path = format!("/api/v1/properties/{}/plan", w.property);
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &path,
        Some(&w.owner_plain),
        Some(plan()),
    )
    .await;
    assert_eq!(
        (status, body["type"].as_str().unwrap_or_default()),
        (401, "https://firstkey.invalid/problems/step-up-required")
    );

    let (status, body) = call(&w.app, Method::PUT, &path, Some(&w.owner), Some(plan())).await;
    assert_eq!((status, body["version"].clone()), (201, json!(1)), "{body}");
    let mut second = plan();
    second["max_grant_minutes"] = json!(45);
    let (status, body) = call(&w.app, Method::PUT, &path, Some(&w.owner), Some(second)).await;
    assert_eq!((status, body["version"].clone()), (201, json!(2)));

    // Bad input: a clear error naming the field, and nothing changes.
    let mut bad = plan();
    bad["max_grant_minutes"] = json!(100_000);
    let (status, body) = call(&w.app, Method::PUT, &path, Some(&w.owner), Some(bad)).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max_grant_minutes"),
        "{body}"
    );
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &path,
        Some(&w.owner),
        Some(json!({"agencies": {}, "surprise": 1})),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Reading one's own plan needs no step-up.
    let (status, body) = call(&w.app, Method::GET, &path, Some(&w.owner_plain), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["max_grant_minutes"], 45);
    assert_eq!(body["notes"]["pets"], "Two dogs in the back yard");

    // Versions are immutable rows; the notes are not stored in clear.
    let client = w.app.pool.get().await.unwrap();
    let rows = client
        .query("SELECT version, notes_ciphertext FROM access_plans WHERE property_id = $1 ORDER BY version", &[&w.property])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let sealed: Vec<u8> = row.get(1);
        assert!(
            !sealed.windows(4).any(|win| win == b"dogs"),
            "notes are encrypted at rest"
        );
    }
    let err = client
        .execute(
            "UPDATE access_plans SET max_grant_minutes = 1 WHERE property_id = $1",
            &[&w.property],
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("append-only"));
}

#[tokio::test]
async fn every_other_caller_gets_the_same_404_as_for_a_missing_id() {
    let w = world().await;
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &format!("/api/v1/properties/{}/plan", w.property),
        Some(&w.owner),
        Some(plan()),
    )
    .await;
    assert_eq!(status, 201);
    let p = w.property;
    let missing = Uuid::new_v4();
    let lock_body =
        json!({ "lock_id": Uuid::new_v4(), "name": "Front door", "pairing_code": "ABCDE-12345" });
    // (method, path template, body, who may)
    let endpoints: Vec<(Method, String, Option<Value>, Vec<&As>)> = vec![
        (
            Method::GET,
            "/api/v1/properties/{}".into(),
            None,
            vec![&w.owner, &w.dispatcher],
        ),
        (
            Method::GET,
            "/api/v1/properties/{}/plan/summary".into(),
            None,
            vec![&w.owner, &w.dispatcher],
        ),
        (
            Method::GET,
            "/api/v1/properties/{}/plan".into(),
            None,
            vec![&w.owner],
        ),
        (
            Method::GET,
            "/api/v1/properties/{}/locks".into(),
            None,
            vec![&w.owner],
        ),
        (
            Method::GET,
            "/api/v1/properties/{}/lock-registrations".into(),
            None,
            vec![&w.owner],
        ),
        (
            Method::POST,
            "/api/v1/properties/{}/plan/reveal".into(),
            None,
            vec![&w.owner],
        ),
        (
            Method::PUT,
            "/api/v1/properties/{}/plan".into(),
            Some(plan()),
            vec![&w.owner],
        ),
        (
            Method::POST,
            "/api/v1/properties/{}/locks".into(),
            Some(lock_body),
            vec![&w.owner],
        ),
        (
            Method::GET,
            "/api/v1/audit?property={}".into(),
            None,
            vec![&w.owner, &w.auditor],
        ),
    ];
    let everyone = [
        &w.owner,
        &w.other_owner,
        &w.dispatcher,
        &w.responder,
        &w.auditor,
        &w.admin,
        &w.b_owner,
        &w.b_dispatcher,
        &w.b_auditor,
    ];
    for (method, template, body, allowed) in &endpoints {
        let real = template.replace("{}", &p.to_string());
        let fake = template.replace("{}", &missing.to_string());
        for who in everyone {
            let (status, answer) =
                call(&w.app, method.clone(), &real, Some(who), body.clone()).await;
            if allowed.iter().any(|a| a.id == who.id) {
                assert!(
                    (200..300).contains(&status),
                    "{method} {real} by allowed user: {status} {answer}"
                );
                continue;
            }
            let (missing_status, missing_answer) =
                call(&w.app, method.clone(), &fake, Some(who), body.clone()).await;
            assert_eq!(status, 404, "{method} {real}: {answer}");
            assert_eq!(
                (status, &answer),
                (missing_status, &missing_answer),
                "{method} {real}: indistinguishable from a missing id"
            );
        }
        // Without a session: 401, for real and missing ids alike.
        let (anon, _) = call(&w.app, method.clone(), &real, None, body.clone()).await;
        assert_eq!(anon, 401, "{method} {real} anonymous");
    }
}

#[tokio::test]
async fn reveals_follow_incidents_and_grants_and_are_audited() {
    let w = world().await;
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    assert_eq!(
        call(
            &w.app,
            Method::PUT,
            &plan_path,
            Some(&w.owner),
            Some(plan())
        )
        .await
        .0,
        201
    );
    let reveal = format!("/api/v1/properties/{}/plan/reveal", w.property);

    // No incident, no grant: nobody but the owner.
    for who in [&w.dispatcher, &w.responder] {
        assert_eq!(
            call(&w.app, Method::POST, &reveal, Some(who), None).await.0,
            404
        );
    }
    let summary = call(
        &w.app,
        Method::GET,
        &format!("{plan_path}/summary"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(summary.0, 200);
    assert_eq!(summary.1["has_notes"], true);
    assert!(
        summary.1.get("notes").is_none(),
        "the summary never carries notes"
    );

    // An open incident of the dispatcher's agency at the address is no tie to the home.
    let client = w.app.pool.get().await.unwrap();
    let agency: Uuid = client
        .query_one(
            "SELECT id FROM agencies WHERE municipality_id = $1 AND kind = 'ems'",
            &[&w.a.id()],
        )
        .await
        .unwrap()
        .get(0);
    let incident = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_at)
             VALUES ($1, $2, $3, '26-00001', 'medical', $4, now())",
            &[&incident, &w.a.id(), &agency, &w.address.to_uppercase()],
        )
        .await
        .unwrap();
    let (status, notes) = call(&w.app, Method::POST, &reveal, Some(&w.dispatcher), None).await;
    assert_eq!(status, 404, "{notes}");
    assert_eq!(
        call(&w.app, Method::POST, &reveal, Some(&w.responder), None)
            .await
            .0,
        404,
        "an incident alone does not admit a responder"
    );

    // A live grant of the incident for the home, naming the responder, lets the responder reveal,
    // and ties the incident to the home for its agency's dispatcher.
    let plan_id: Uuid = client
        .query_one(
            "SELECT id FROM access_plans WHERE property_id = $1 ORDER BY version DESC LIMIT 1",
            &[&w.property],
        )
        .await
        .unwrap()
        .get(0);
    let grant = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO grants (id, municipality_id, incident_id, property_id, plan_id, granted_by, justification, status,
                 policy_set_hash, created_at, starts_at, ends_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'patient unresponsive', 'live', $7, now(), now() - interval '1 minute',
                 now() + interval '30 minutes')",
            &[&grant, &w.a.id(), &incident, &w.property, &plan_id, &w.dispatcher.id, &vec![0u8; 32]],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO grant_responders (municipality_id, grant_id, responder_id) VALUES ($1, $2, $3)",
            &[&w.a.id(), &grant, &w.responder.id],
        )
        .await
        .unwrap();
    assert_eq!(
        call(&w.app, Method::POST, &reveal, Some(&w.responder), None)
            .await
            .0,
        200
    );
    let (status, notes) = call(&w.app, Method::POST, &reveal, Some(&w.dispatcher), None).await;
    assert_eq!(status, 200, "{notes}");
    assert_eq!(notes["hazards"], "Oxygen in use");

    // Every reveal and every denial is in the log, and the chain verifies.
    let reveals: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'plan.reveal_notes' AND property_id = $1 AND policy_set_hash IS NOT NULL",
            &[&w.property],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reveals, 2);
    let denials: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'policy.deny' AND outcome = 'deny'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(denials >= 3, "{denials}");
    assert!(matches!(
        audit::verify_chain(&client, w.a).await.unwrap(),
        ChainCheck::Intact { .. }
    ));
}

#[tokio::test]
async fn audit_log_is_readable_by_its_auditors_and_owners_with_step_up_and_detects_tampering() {
    let w = world().await;
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    assert_eq!(
        call(
            &w.app,
            Method::PUT,
            &plan_path,
            Some(&w.owner),
            Some(plan())
        )
        .await
        .0,
        201
    );

    let (status, entries) =
        call(&w.app, Method::GET, "/api/v1/audit", Some(&w.auditor), None).await;
    assert_eq!(status, 200, "{entries}");
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"property.create") && actions.contains(&"plan.update"),
        "{actions:?}"
    );
    assert!(
        !entries.to_string().contains("Oxygen"),
        "no responder notes in the audit log"
    );

    let (status, body) = call(
        &w.app,
        Method::GET,
        "/api/v1/audit",
        Some(&w.auditor_plain),
        None,
    )
    .await;
    assert_eq!(
        (status, body["type"].as_str().unwrap()),
        (401, "https://firstkey.invalid/problems/step-up-required")
    );
    for who in [&w.dispatcher, &w.responder, &w.owner, &w.admin] {
        assert_eq!(
            call(&w.app, Method::GET, "/api/v1/audit", Some(who), None)
                .await
                .0,
            404,
            "whole log"
        );
    }
    let (status, entries) = call(
        &w.app,
        Method::GET,
        "/api/v1/audit",
        Some(&w.b_auditor),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["property"] != json!(w.property)),
        "another municipality's auditor sees none of A's entries"
    );

    // Tampering (as a superuser who bypasses the append-only trigger) is detected.
    let client = w.app.pool.get().await.unwrap();
    assert!(matches!(
        audit::verify_chain(&client, w.a).await.unwrap(),
        ChainCheck::Intact { .. }
    ));
    client
        .batch_execute(
            "ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_immutable;
             UPDATE audit_entries SET public_details = '{\"version\": 99}' WHERE action = 'plan.update';
             ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_immutable;",
        )
        .await
        .unwrap();
    assert!(matches!(
        audit::verify_chain(&client, w.a).await.unwrap(),
        ChainCheck::Broken { .. }
    ));
}

#[tokio::test]
async fn a_get_never_changes_state_and_cross_origin_writes_are_refused() {
    let w = world().await;
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    assert_eq!(
        call(
            &w.app,
            Method::PUT,
            &plan_path,
            Some(&w.owner),
            Some(plan())
        )
        .await
        .0,
        201
    );
    let client = w.app.pool.get().await.unwrap();
    // Domain state: every table but the audit log (denials are audited by design; reads seal
    // pending entries into the Merkle tree and may sign a checkpoint) and sessions (last-seen
    // times slide).
    let snapshot = || async {
        let tables: Vec<String> = client
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'
                 AND table_name NOT IN ('audit_entries', 'audit_tree_nodes', 'audit_checkpoints', 'sessions')
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::new();
        for t in tables {
            let digest: Option<String> = client
                .query_one(
                    &format!(
                        "SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM \"{t}\" x"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            out.push((t, digest));
        }
        out
    };
    let before = snapshot().await;
    for who in [
        &w.owner,
        &w.dispatcher,
        &w.responder,
        &w.auditor,
        &w.b_owner,
    ] {
        for path in [
            format!("/api/v1/properties/{}", w.property),
            format!("/api/v1/properties/{}/plan", w.property),
            format!("/api/v1/properties/{}/plan/summary", w.property),
            format!("/api/v1/properties/{}/locks", w.property),
            "/api/v1/properties".to_owned(),
            "/api/v1/audit".to_owned(),
            format!("/api/v1/audit?property={}", w.property),
        ] {
            call(&w.app, Method::GET, &path, Some(who), None).await;
        }
    }
    assert_eq!(before, snapshot().await);

    // A cross-origin POST is refused before any handler runs, and creates nothing.
    let response = w
        .app
        .http
        .post(format!("{}/api/v1/properties", w.app.address))
        .header("cookie", &w.owner.cookie)
        .header("origin", "https://evil.example")
        .json(&json!({ "address": "1 Attacker Road" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let no_origin = w
        .app
        .http
        .post(format!("{}/api/v1/properties", w.app.address))
        .header("cookie", &w.owner.cookie)
        .json(&json!({ "address": "1 Attacker Road" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        no_origin.status(),
        403,
        "no Origin and no Sec-Fetch-Site: refused"
    );
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM properties WHERE address = '1 Attacker Road'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn locks_register_with_the_agents_pairing_code_and_pair_when_the_key_matches() {
    use firstkey::store::registrations::{self, PairOutcome};
    let w = world().await;
    // A device key and the lock id derived from it (the only id the channel pairs a key under).
    let device_key = [9u8; 32];
    let id_text = firstkey_agent::pairing::derived_lock_id(&device_key);
    let lock_id = Uuid::parse_str(&id_text).unwrap();
    let code = firstkey_agent::pairing::PairingCode::derive(&device_key, &id_text);
    let path = format!("/api/v1/properties/{}/locks", w.property);

    let (status, body) = call(
        &w.app,
        Method::POST,
        &path,
        Some(&w.owner),
        Some(json!({ "lock_id": lock_id, "name": "Front door", "pairing_code": "not-a-code" })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Typed in lower case: still the same code.
    let typed = code.display().to_lowercase();
    let (status, body) = call(
        &w.app,
        Method::POST,
        &path,
        Some(&w.owner),
        Some(json!({ "lock_id": lock_id, "name": "Front door", "pairing_code": typed })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(body["lock_id"], lock_id.to_string());
    assert!(body.get("code_hash").is_none(), "{body}");
    let (status, again) = call(
        &w.app,
        Method::POST,
        &path,
        Some(&w.owner),
        Some(json!({ "lock_id": lock_id, "name": "Back door", "pairing_code": code.display() })),
    )
    .await;
    assert_eq!(status, 409, "a home waits for a lock once: {again}");
    // Waiting, it is a registration, not yet a lock.
    let (status, locks) = call(&w.app, Method::GET, &path, Some(&w.owner), None).await;
    assert_eq!(status, 200);
    assert_eq!(locks, json!([]));
    let registrations_path = format!("/api/v1/properties/{}/lock-registrations", w.property);
    let (status, list) = call(
        &w.app,
        Method::GET,
        &registrations_path,
        Some(&w.owner),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["state"], "pending");

    let client = w.app.pool.get().await.unwrap();
    let hash =
        firstkey::pairing::code_hash(&firstkey::pairing::normalise(&code.display()).unwrap());
    let outcome = registrations::pair(&client, lock_id, &device_key, &hash, Utc::now())
        .await
        .unwrap();
    assert!(
        matches!(outcome, PairOutcome::Paired { ref closed, .. } if closed.is_empty()),
        "{outcome:?}"
    );
    let (status, locks) = call(&w.app, Method::GET, &path, Some(&w.owner), None).await;
    assert_eq!(status, 200);
    assert_eq!(locks[0]["pairing_state"], "paired");
    assert_eq!(locks[0]["name"], "Front door");
    let (_, list) = call(
        &w.app,
        Method::GET,
        &registrations_path,
        Some(&w.owner),
        None,
    )
    .await;
    assert_eq!(list[0]["state"], "paired");
    // Paired, the lock is its owner's: registering it again, anywhere, is refused in words.
    let b_property = home_of(&w.app, &w.b_owner, "1 B Road").await;
    let (status, problem) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/properties/{b_property}/locks"),
        Some(&w.b_owner),
        Some(json!({ "lock_id": lock_id, "name": "Door", "pairing_code": code.display() })),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["detail"], "this lock is already paired with a home");
}

#[tokio::test]
async fn concurrent_appends_keep_one_intact_chain() {
    let app = spawn_app().await;
    let client = app.pool.get().await.unwrap();
    let (tenant, _) = tenancy::ensure_municipality(
        &client,
        &Slug::parse("busy-town").unwrap(),
        "Busy",
        Utc::now(),
    )
    .await
    .unwrap();
    drop(client);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let pool = app.pool.clone();
        tasks.spawn(async move {
            let mut client = pool.get().await.unwrap();
            let event = audit::Event::new("test.concurrent", audit::Outcome::Info)
                .details(json!({ "i": i, "b": "x" }));
            if i % 2 == 0 {
                let tx = client.transaction().await.unwrap();
                audit::record(&tx, tenant, &event, Utc::now())
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            } else {
                audit::record(&client, tenant, &event, Utc::now())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let client = app.pool.get().await.unwrap();
    match audit::verify_chain(&client, tenant).await.unwrap() {
        ChainCheck::Intact { entries, .. } => assert_eq!(entries, 24),
        broken => panic!("{broken:?}"),
    }
}

/// Inserts an open incident of `agency_kind` at `address` and a live grant of it for `property`
/// naming `responder`; returns (incident, grant).
async fn live_grant_row(
    w: &World,
    cad: &str,
    agency_kind: &str,
    address: &str,
    responder: Uuid,
) -> (Uuid, Uuid) {
    let client = w.app.pool.get().await.unwrap();
    let agency: Uuid = client
        .query_one(
            "SELECT id FROM agencies WHERE municipality_id = $1 AND kind = $2",
            &[&w.a.id(), &agency_kind],
        )
        .await
        .unwrap()
        .get(0);
    let incident = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_at)
             VALUES ($1, $2, $3, $4, 'medical', $5, now())",
            &[&incident, &w.a.id(), &agency, &cad, &address],
        )
        .await
        .unwrap();
    let plan_id: Uuid = client
        .query_one(
            "SELECT id FROM access_plans WHERE property_id = $1 ORDER BY version DESC LIMIT 1",
            &[&w.property],
        )
        .await
        .unwrap()
        .get(0);
    let grant = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO grants (id, municipality_id, incident_id, property_id, plan_id, granted_by, justification, status,
                 policy_set_hash, created_at, starts_at, ends_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'patient unresponsive', 'live', $7, now(), now() - interval '1 minute',
                 now() + interval '30 minutes')",
            &[&grant, &w.a.id(), &incident, &w.property, &plan_id, &w.dispatcher.id, &vec![0u8; 32]],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO grant_responders (municipality_id, grant_id, responder_id) VALUES ($1, $2, $3)",
            &[&w.a.id(), &grant, &responder],
        )
        .await
        .unwrap();
    (incident, grant)
}

#[tokio::test]
async fn reveal_works_with_two_incidents_at_one_address_and_two_live_grants() {
    let w = world().await;
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &plan_path,
        Some(&w.owner),
        Some(plan()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Two open incidents of the dispatcher's agency at the address, each with a live grant for the
    // property naming the same responder: two rows for every "is there one?" question.
    live_grant_row(&w, "26-00011", "ems", &w.address, w.responder.id).await;
    live_grant_row(&w, "26-00012", "ems", &w.address, w.responder.id).await;
    let reveal = format!("{plan_path}/reveal");
    for (who, name) in [
        (&w.owner, "owner"),
        (&w.dispatcher, "dispatcher"),
        (&w.responder, "responder"),
    ] {
        let (status, notes) = call(&w.app, Method::POST, &reveal, Some(who), None).await;
        assert_eq!(status, 200, "{name}: {notes}");
        assert_eq!(notes["hazards"], "Oxygen in use", "{name}");
    }
}

#[tokio::test]
async fn a_dispatcher_reads_notes_only_under_an_own_agency_incident_tied_to_the_home_with_step_up()
{
    let w = world().await;
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &plan_path,
        Some(&w.owner),
        Some(plan()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let reveal = format!("{plan_path}/reveal");
    let client = w.app.pool.get().await.unwrap();
    let police = tenancy::ensure_agency(&client, w.a, AgencyKind::Police, "A Police", Utc::now())
        .await
        .unwrap();
    let ems: Uuid = client
        .query_one(
            "SELECT id FROM agencies WHERE municipality_id = $1 AND kind = 'ems'",
            &[&w.a.id()],
        )
        .await
        .unwrap()
        .get(0);
    let officer = user(
        &w.app,
        w.a,
        "desk@a.example",
        Some(police.id),
        Role::Dispatcher,
        false,
    )
    .await;
    let officer_up = As {
        id: officer.id,
        ..user(
            &w.app,
            w.a,
            "desk@a.example",
            Some(police.id),
            Role::Dispatcher,
            true,
        )
        .await
    };
    let incidents = || async {
        client
            .query_one("SELECT count(*) FROM incidents", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    // The exploit: a police dispatcher without step-up finds the address and opens an "other"
    // incident there naming another agency. Refused, and nothing is written.
    let (status, found) = call(
        &w.app,
        Method::GET,
        "/api/v1/dispatch/properties?q=Elm",
        Some(&officer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(found[0]["id"], json!(w.property));
    let (status, body) = call(
        &w.app,
        Method::POST,
        "/api/v1/incidents",
        Some(&officer),
        Some(json!({ "cad_number": "26-00100", "kind": "other", "address": w.address, "agency": ems })),
    )
    .await;
    assert_eq!(status, 403, "an incident for another agency: {body}");
    assert_eq!(incidents().await, 0);

    // An incident of the dispatcher's own agency at the address is not tied to the home: no reveal,
    // with or without step-up.
    let (status, incident) = call(
        &w.app,
        Method::POST,
        "/api/v1/incidents",
        Some(&officer),
        Some(json!({ "cad_number": "26-00101", "kind": "other", "address": w.address, "agency": police.id })),
    )
    .await;
    assert_eq!(status, 201, "{incident}");
    let incident_id = incident["id"].as_str().unwrap().to_owned();
    for who in [&officer, &officer_up] {
        let (status, body) = call(&w.app, Method::POST, &reveal, Some(who), None).await;
        assert_eq!(status, 404, "an address match is no tie: {body}");
    }

    // Tying the incident to the home: the incident's own agency, with step-up, audited.
    let link = format!("/api/v1/incidents/{incident_id}/properties");
    let body = json!({ "property": w.property });
    assert_eq!(
        call(
            &w.app,
            Method::POST,
            &link,
            Some(&officer),
            Some(body.clone())
        )
        .await
        .0,
        401,
        "a link needs step-up"
    );
    assert_eq!(
        call(
            &w.app,
            Method::POST,
            &link,
            Some(&w.dispatcher),
            Some(body.clone())
        )
        .await
        .0,
        403,
        "only the incident's own agency links it"
    );
    let (status, linked) = call(
        &w.app,
        Method::POST,
        &link,
        Some(&officer_up),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{linked}");
    let links: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'incident.link_property' AND property_id = $1
               AND actor_id = $2",
            &[&w.property, &officer.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(links, 1);

    // Tied: a fresh step-up reveals; without one the dispatcher is asked to step up.
    assert_eq!(
        call(&w.app, Method::POST, &reveal, Some(&officer), None)
            .await
            .0,
        401
    );
    let (status, notes) = call(&w.app, Method::POST, &reveal, Some(&officer_up), None).await;
    assert_eq!(status, 200, "{notes}");
    assert_eq!(notes["hazards"], "Oxygen in use");
    // Another agency's dispatcher gains nothing from the police incident.
    assert_eq!(
        call(&w.app, Method::POST, &reveal, Some(&w.dispatcher), None)
            .await
            .0,
        404
    );

    // A grant for the home ties an incident too, wherever the incident's address is.
    live_grant_row(&w, "26-00102", "ems", "Motorway junction 4", w.responder.id).await;
    let (status, notes) = call(&w.app, Method::POST, &reveal, Some(&w.dispatcher), None).await;
    assert_eq!(status, 200, "{notes}");

    // Once the police incident closes, its tie ends.
    let (status, body) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/incidents/{incident_id}/close"),
        Some(&officer),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        call(&w.app, Method::POST, &reveal, Some(&officer_up), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn a_waiting_registration_is_renewed_and_cancelled_by_its_owner_only() {
    let w = world().await;
    let lock_id = Uuid::new_v4();
    let locks = format!("/api/v1/properties/{}/locks", w.property);
    let (status, body) = call(
        &w.app,
        Method::POST,
        &locks,
        Some(&w.owner),
        Some(json!({ "lock_id": lock_id, "name": "Front door", "pairing_code": "ABCDE-12345" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let registration = body["id"].as_str().unwrap().to_owned();
    let first_expiry = body["expires_at"].as_str().unwrap().to_owned();

    // Renewing: step-up needed, own homes only, audited.
    let reset = format!("{locks}/{lock_id}/pairing/reset");
    assert_eq!(
        call(&w.app, Method::POST, &reset, Some(&w.owner_plain), None)
            .await
            .0,
        401
    );
    for stranger in [&w.other_owner, &w.b_owner] {
        assert_eq!(
            call(&w.app, Method::POST, &reset, Some(stranger), None)
                .await
                .0,
            404
        );
    }
    let (status, body) = call(&w.app, Method::POST, &reset, Some(&w.owner), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "pending");
    assert!(body["expires_at"].as_str().unwrap() >= first_expiry.as_str());
    let client = w.app.pool.get().await.unwrap();
    let audited = |action: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM audit_entries WHERE action = $1 AND subject_id = $2 AND actor_id = $3",
                    &[&action, &lock_id, &w.owner.id],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(audited("lock.pairing_reset").await, 1);

    // Cancelling: own homes only; then nothing is left to renew or cancel.
    let cancel = format!(
        "/api/v1/properties/{}/lock-registrations/{registration}",
        w.property
    );
    for stranger in [&w.other_owner, &w.b_owner] {
        assert_eq!(
            call(&w.app, Method::DELETE, &cancel, Some(stranger), None)
                .await
                .0,
            404
        );
    }
    // This home's registration id under another home's path is not found either.
    let b_property = home_of(&w.app, &w.b_owner, "1 B Road").await;
    let elsewhere = format!("/api/v1/properties/{b_property}/lock-registrations/{registration}");
    assert_eq!(
        call(&w.app, Method::DELETE, &elsewhere, Some(&w.b_owner), None)
            .await
            .0,
        404
    );
    let (status, body) = call(&w.app, Method::DELETE, &cancel, Some(&w.owner), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(audited("lock.registration_cancel").await, 1);
    assert_eq!(
        call(&w.app, Method::DELETE, &cancel, Some(&w.owner), None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&w.app, Method::POST, &reset, Some(&w.owner), None)
            .await
            .0,
        404
    );
    // Cancelled, the home may register the lock again.
    let (status, body) = call(
        &w.app,
        Method::POST,
        &locks,
        Some(&w.owner),
        Some(json!({ "lock_id": lock_id, "name": "Front door", "pairing_code": "ABCDE-12345" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_refused_write_never_names_a_constraint() {
    let w = world().await;
    let lock_id = Uuid::new_v4();
    let locks = format!("/api/v1/properties/{}/locks", w.property);
    let register = |id: Uuid, name: &str| json!({ "lock_id": id, "name": name, "pairing_code": "ABCDE-12345" });
    let (status, body) = call(
        &w.app,
        Method::POST,
        &locks,
        Some(&w.owner),
        Some(register(lock_id, "Front door")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for (body, what) in [
        (register(lock_id, "Back door"), "the same lock id"),
        (register(Uuid::new_v4(), "Front door"), "the same lock name"),
    ] {
        let (status, problem) =
            call(&w.app, Method::POST, &locks, Some(&w.owner), Some(body)).await;
        assert_eq!(status, 409, "{what}: {problem}");
        let text = problem.to_string();
        for leak in ["pkey", "locks_", "violates", "constraint", "_key"] {
            assert!(!text.contains(leak), "{what}: {text}");
        }
    }
}

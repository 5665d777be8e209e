//! "My security keys", the home's history page, reports, the data-subject export and erasure by
//! crypto-shredding: black-box over HTTP, with real WebAuthn ceremonies (software authenticators),
//! and the log checked with the offline verifier after erasure.

use chrono::{Duration, Utc};
use firstkey::audit::{self, Event, Outcome, verify};
use firstkey::domain::{Role, Slug};
use firstkey::store::{Tenant, tenancy};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::auth_helpers::{TestKey, TestUser, sign_in_as, soft_token, trust_ca};
use crate::helpers::{ORIGIN, TestApp, call, spawn_app, user};

async fn town(app: &TestApp, slug: &str) -> Tenant {
    let client = app.pool.get().await.unwrap();
    tenancy::ensure_municipality(&client, &Slug::parse(slug).unwrap(), slug, Utc::now())
        .await
        .unwrap()
        .0
}

/// One request with the user's session cookie (and our Origin on writes).
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    who: &TestUser,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method.clone(), format!("{}{path}", app.address))
        .header("cookie", &who.cookie);
    if method != Method::GET {
        request = request.header("origin", ORIGIN);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Makes the user's session's step-up stale (as ten minutes passing would).
async fn stale_step_up(app: &TestApp, user: Uuid) {
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = now() - interval '10 minutes' WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
}

async fn audited(app: &TestApp, tenant: Tenant, action: &str, outcome: &str) -> i64 {
    let client = app.pool.get().await.unwrap();
    client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE municipality_id = $1 AND action = $2 AND outcome = $3",
            &[&tenant.id(), &action, &outcome],
        )
        .await
        .unwrap()
        .get(0)
}

/// Adds a key through the API with `key`; returns the finish status and body.
async fn add_key(
    app: &TestApp,
    who: &TestUser,
    key: &mut TestKey,
    name: Option<&str>,
) -> (u16, Value) {
    let (status, start) = send(
        app,
        Method::POST,
        "/api/v1/me/keys/start",
        who,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let credential = key.register(&start["options"]);
    let mut body = json!({ "ceremony": start["ceremony"], "credential": credential });
    if let Some(name) = name {
        body["name"] = json!(name);
    }
    send(app, Method::POST, "/api/v1/me/keys/finish", who, Some(body)).await
}

#[tokio::test]
async fn my_security_keys_are_listed_named_added_and_removed_but_never_the_last() {
    let app = spawn_app().await;
    let tenant = town(&app, "keys-town").await;
    let mut owner = sign_in_as(&app, tenant, Role::Homeowner).await;

    let (status, keys) = send(&app, Method::GET, "/api/v1/me/keys", &owner, None).await;
    assert_eq!(status, 200);
    let keys = keys.as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kind"], "passkey");
    assert_eq!(keys[0]["current"], true, "the enrolment stepped up with it");
    let first = keys[0]["id"].as_str().unwrap().to_owned();

    // The only key cannot go, and the refusal is audited.
    let (status, body) = send(
        &app,
        Method::DELETE,
        &format!("/api/v1/me/keys/{first}"),
        &owner,
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(audited(&app, tenant, "auth.key_remove", "deny").await, 1);

    // Naming: typed boundary, no NUL or control characters.
    let path = format!("/api/v1/me/keys/{first}");
    let (status, named) = send(
        &app,
        Method::PATCH,
        &path,
        &owner,
        Some(json!({ "name": "  Phone  " })),
    )
    .await;
    assert_eq!(status, 200, "{named}");
    assert_eq!(named["name"], "Phone");
    for bad in ["", "   ", "a\u{0}b", "tab\there", &"x".repeat(101)] {
        let (status, _) = send(
            &app,
            Method::PATCH,
            &path,
            &owner,
            Some(json!({ "name": bad })),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}");
    }

    // A second passkey, named at once.
    let mut second_key = TestKey::Passkey(SoftPasskey::new(true));
    let (status, start) = send(
        &app,
        Method::POST,
        "/api/v1/me/keys/start",
        &owner,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let finish = json!({
        "ceremony": start["ceremony"],
        "credential": second_key.register(&start["options"]),
        "name": "Laptop",
    });
    // The ceremony is this session's: another user's session cannot finish it.
    let other = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (status, _) = send(
        &app,
        Method::POST,
        "/api/v1/me/keys/finish",
        &other,
        Some(finish.clone()),
    )
    .await;
    assert_eq!(status, 400);
    let (status, added) = send(
        &app,
        Method::POST,
        "/api/v1/me/keys/finish",
        &owner,
        Some(finish.clone()),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["name"], "Laptop");
    let second = added["id"].as_str().unwrap().to_owned();
    assert_eq!(audited(&app, tenant, "auth.key_add", "allow").await, 1);
    // A ceremony is finished once.
    let (status, _) = send(
        &app,
        Method::POST,
        "/api/v1/me/keys/finish",
        &owner,
        Some(finish),
    )
    .await;
    assert_eq!(status, 400);

    // Someone else — same municipality or another — cannot see, name or remove them.
    let elsewhere_tenant = town(&app, "keys-elsewhere").await;
    let elsewhere = sign_in_as(&app, elsewhere_tenant, Role::Homeowner).await;
    for stranger in [&other, &elsewhere] {
        let (status, listed) = send(&app, Method::GET, "/api/v1/me/keys", stranger, None).await;
        assert_eq!(status, 200);
        assert!(!listed.to_string().contains(&second));
        let p = format!("/api/v1/me/keys/{second}");
        let (status, _) = send(
            &app,
            Method::PATCH,
            &p,
            stranger,
            Some(json!({ "name": "mine" })),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = send(&app, Method::DELETE, &p, stranger, None).await;
        assert_eq!(status, 404);
    }
    // Not signed in at all.
    let anonymous = app.get("/api/v1/me/keys").await;
    assert_eq!(anonymous.status(), 401);

    // Removing and adding need a fresh step-up.
    stale_step_up(&app, owner.user_id).await;
    let p = format!("/api/v1/me/keys/{second}");
    let (status, body) = send(&app, Method::DELETE, &p, &owner, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap_or_default()
            .contains("step-up"),
        "{body}"
    );
    let (status, _) = send(
        &app,
        Method::POST,
        "/api/v1/me/keys/start",
        &owner,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 401);

    // After a step-up (with the first key), the second goes; the first is then the last again.
    owner.step_up(&app).await;
    let (status, _) = send(&app, Method::DELETE, &p, &owner, None).await;
    assert_eq!(status, 204);
    let (_, keys) = send(&app, Method::GET, "/api/v1/me/keys", &owner, None).await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let (status, _) = send(
        &app,
        Method::DELETE,
        &format!("/api/v1/me/keys/{first}"),
        &owner,
        None,
    )
    .await;
    assert_eq!(status, 409);
    // The removed key signs nobody in: its row stays, marked removed.
    let client = app.pool.get().await.unwrap();
    let status: String = client
        .query_one(
            "SELECT status FROM webauthn_credentials WHERE id = $1",
            &[&Uuid::parse_str(&second).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "removed");
    assert_eq!(audited(&app, tenant, "auth.key_remove", "allow").await, 1);
}

#[tokio::test]
async fn staff_add_attested_security_keys_and_removing_one_ends_its_sessions() {
    let app = spawn_app().await;
    let tenant = town(&app, "staff-keys").await;
    let mut responder = sign_in_as(&app, tenant, Role::Responder).await;
    let (_, keys) = send(&app, Method::GET, "/api/v1/me/keys", &responder, None).await;
    assert_eq!(keys[0]["kind"], "security_key");
    let first = keys[0]["id"].as_str().unwrap().to_owned();

    // A passkey is not a staff key: the registration is refused (no trusted attestation).
    let mut passkey = TestKey::Passkey(SoftPasskey::new(true));
    let (status, body) = add_key(&app, &responder, &mut passkey, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(audited(&app, tenant, "auth.key_add", "deny").await, 1);

    let (token, pem) = soft_token(true);
    trust_ca(&app, tenant, &pem).await;
    let mut spare = TestKey::Token(Box::new(token));
    let (status, added) = add_key(&app, &responder, &mut spare, Some("Spare key")).await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["kind"], "security_key");

    // Signing in with the spare, then removing the first key from that session, ends the sessions
    // the first key opened (the enrolment's) but not this one.
    let enrolment_cookie = responder.cookie.clone();
    responder.key = spare;
    responder.sign_in(&app).await;
    let (status, _) = send(
        &app,
        Method::DELETE,
        &format!("/api/v1/me/keys/{first}"),
        &responder,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let old = app
        .http
        .get(format!("{}/api/v1/me", app.address))
        .header("cookie", &enrolment_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "the removed key's session ended");
    let (status, _) = send(&app, Method::GET, "/api/v1/me", &responder, None).await;
    assert_eq!(status, 200);
}

/// Sets up a log key and a checkpoint over everything sealed now; returns the verifier key.
async fn checkpoint(
    app: &TestApp,
    tenant: Tenant,
    slug: &str,
    make_key: bool,
) -> Option<firstkey::audit::note::VerifierKey> {
    let mut client = app.pool.get().await.unwrap();
    let dir = crate::helpers::test_settings(crate::helpers::admin_config()).key_dir;
    let key = if make_key {
        let origin = audit::log::origin_for("http://localhost:8080", slug);
        Some(
            audit::log::generate_key(&mut client, tenant, &origin, &dir, Utc::now())
                .await
                .unwrap()
                .verifier,
        )
    } else {
        None
    };
    audit::seal(&client, tenant).await.unwrap();
    audit::log::sign_if_due(
        &mut client,
        tenant,
        &dir,
        std::time::Duration::ZERO,
        Utc::now(),
    )
    .await
    .unwrap();
    key
}

fn cli_verify(text: &str, key: &firstkey::audit::note::VerifierKey) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstkey"))
        .args(["audit", "verify"])
        .arg(&file)
        .args(["--log-key", &key.to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn property_export(app: &TestApp, who: &TestUser, home: &str) -> String {
    let response = app
        .http
        .get(format!(
            "{}/api/v1/audit/export?property={home}",
            app.address
        ))
        .header("cookie", &who.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn erasure_shreds_personal_details_and_the_log_still_verifies() {
    let app = spawn_app().await;
    let slug = "shred-town";
    let tenant = town(&app, slug).await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let address = "12 Elm Street, Shredville";
    let (status, home) = send(
        &app,
        Method::POST,
        "/api/v1/properties",
        &owner,
        Some(json!({ "address": address })),
    )
    .await;
    assert_eq!(status, 201, "{home}");
    let home = home["id"].as_str().unwrap().to_owned();
    let key = checkpoint(&app, tenant, slug, true).await.unwrap();

    // The entry holds a commitment, not the address; the address is nowhere in the log's rows.
    let (status, entries) = send(
        &app,
        Method::GET,
        &format!("/api/v1/audit?property={home}"),
        &owner,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let created = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "property.create")
        .unwrap()
        .clone();
    assert_eq!(created["personal"].as_str().unwrap().len(), 64);
    assert!(!entries.to_string().contains("Elm Street"));
    let client = app.pool.get().await.unwrap();
    let leaked: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%Elm%'
                OR position(convert_to('Elm', 'UTF8') IN coalesce(private_details, ''::bytea)) > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "the address is stored encrypted only");

    // Before erasure: readable in the subject export and the history page; the export verifies.
    let (status, mine) = send(&app, Method::GET, "/api/v1/me/export", &owner, None).await;
    assert_eq!(status, 200);
    assert_eq!(mine["format"], "firstkey-subject-export/v1");
    let details = &mine["properties"][0]["audit_personal_details"];
    assert_eq!(details[0]["details"]["address"], address, "{details}");
    let page = app
        .http
        .get(format!("{}/homes/{home}/history", app.address))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains(&format!("Home registered: {address}"))
    );
    let before = property_export(&app, &owner, &home).await;
    assert!(verify::verify_export(&before, &key, &[], 0).ok());

    // Wrong role, wrong tenant, another homeowner: not found, nothing erased.
    let responder = user(&app, tenant, "r@shred.example", None, Role::Responder, true).await;
    let neighbour = sign_in_as(&app, tenant, Role::Homeowner).await;
    let elsewhere_tenant = town(&app, "shred-elsewhere").await;
    let elsewhere = user(
        &app,
        elsewhere_tenant,
        "h@else.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    let erase = format!("/api/v1/properties/{home}/audit/erase");
    for cookie in [&responder.cookie, &neighbour.cookie, &elsewhere.cookie] {
        let who = crate::helpers::As {
            id: Uuid::nil(),
            cookie: cookie.clone(),
            key: None,
        };
        let (status, _) = call(&app, Method::POST, &erase, Some(&who), None).await;
        assert_eq!(status, 404);
        let (status, _) = call(
            &app,
            Method::GET,
            &format!("/homes/{home}/history"),
            Some(&who),
            None,
        )
        .await;
        assert!(status == 404 || status == 303, "{status}");
    }
    assert_eq!(audited(&app, tenant, "audit.erase", "info").await, 0);

    // The owner erases.
    let (status, erased) = send(&app, Method::POST, &erase, &owner, None).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["keys_erased"], 1);
    checkpoint(&app, tenant, slug, false).await;

    // The details are gone for everyone; the chain, the old export and a new one all verify.
    assert!(matches!(
        audit::verify_chain(&client, tenant).await.unwrap(),
        audit::ChainCheck::Intact { .. }
    ));
    assert!(
        verify::verify_export(&before, &key, &[], 0).ok(),
        "an export made before still verifies"
    );
    let after = property_export(&app, &owner, &home).await;
    let report = verify::verify_export(&after, &key, &[], 0);
    assert!(report.ok(), "{:?}", report.failures);
    let (ok, out) = cli_verify(&after, &key);
    assert!(ok, "{out}");
    let old: verify::Export = serde_json::from_str(&before).unwrap();
    let new: verify::Export = serde_json::from_str(&after).unwrap();
    assert_eq!(
        old.entries[0].data, new.entries[0].data,
        "the sealed entry is untouched"
    );
    let (_, mine) = send(&app, Method::GET, "/api/v1/me/export", &owner, None).await;
    let details = &mine["properties"][0]["audit_personal_details"];
    assert_eq!(details[0]["details"], "erased", "{details}");
    assert!(!mine["properties"][0]["audit"].to_string().contains("Elm"));
    let page = app
        .http
        .get(format!("{}/homes/{home}/history", app.address))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("the address in this record was erased"),
        "{page}"
    );
    assert!(page.contains("you asked for it"));

    // The key row may only be erased: no un-erasing, no deletion.
    for sql in [
        "UPDATE audit_data_keys SET wrapped_key = '\\x00'::bytea, erased_at = NULL",
        "UPDATE audit_data_keys SET erase_after = now()",
        "DELETE FROM audit_data_keys",
    ] {
        assert!(client.execute(sql, &[]).await.is_err(), "{sql}");
    }
    // Entries recorded later get a new key (an erasure is not a block on the home's future).
    let mut c2 = app.pool.get().await.unwrap();
    let tx = c2.transaction().await.unwrap();
    let kek =
        firstkey::crypto::Kek::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
    audit::record_personal(
        &tx,
        tenant,
        &Event::new("test.personal", Outcome::Info).property(Uuid::parse_str(&home).unwrap()),
        &json!({ "name": "Later" }),
        &kek,
        Utc::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    audit::seal(&client, tenant).await.unwrap();
    let seq: i64 = client
        .query_one(
            "SELECT seq FROM audit_entries WHERE action = 'test.personal'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        audit::personal::open(&client, tenant, seq, &kek)
            .await
            .unwrap(),
        audit::personal::Personal::Readable(json!({ "name": "Later" }))
    );
}

#[tokio::test]
async fn retention_erases_keys_whose_time_ran_out_and_audits_it() {
    let app = spawn_app().await;
    let tenant = town(&app, "retention").await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (_, home) = send(
        &app,
        Method::POST,
        "/api/v1/properties",
        &owner,
        Some(json!({ "address": "1 Old Road" })),
    )
    .await;
    let home = Uuid::parse_str(home["id"].as_str().unwrap()).unwrap();
    let now = Utc::now();
    // Not due yet: nothing happens.
    assert_eq!(audit::personal::erase_due(&app.pool, now).await.unwrap(), 0);
    // A year and a bit later (no plan: 365 days after the month's end), the key goes.
    let later = now + Duration::days(400);
    assert_eq!(
        audit::personal::erase_due(&app.pool, later).await.unwrap(),
        1
    );
    assert_eq!(
        audit::personal::erase_due(&app.pool, later).await.unwrap(),
        0,
        "once"
    );
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE municipality_id = $1 AND property_id = $2
               AND action = 'audit.erase' AND public_details->>'reason' = 'retention'",
            &[&tenant.id(), &home],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert!(matches!(
        audit::verify_chain(&client, tenant).await.unwrap(),
        audit::ChainCheck::Intact { .. }
    ));
}

#[tokio::test]
async fn a_report_flags_exactly_the_opening_without_an_incident() {
    let app = spawn_app().await;
    let slug = "report-town";
    let tenant = town(&app, slug).await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (_, home) = send(
        &app,
        Method::POST,
        "/api/v1/properties",
        &owner,
        Some(json!({ "address": "5 Report Lane" })),
    )
    .await;
    let home_id = Uuid::parse_str(home["id"].as_str().unwrap()).unwrap();
    let lock = Uuid::new_v4();
    let incident_less_opening;
    {
        let client = app.pool.get().await.unwrap();
        let now = Utc::now();
        let record = |event: Event| {
            let client = &client;
            async move { audit::record(client, tenant, &event, now).await.unwrap() }
        };
        // A token issued and never presented, and a door opening nobody granted.
        record(
            Event::new("token.issue", Outcome::Allow)
                .subject("token", Uuid::new_v4())
                .property(home_id)
                .details(json!({ "grant": Uuid::new_v4() })),
        )
        .await;
        record(
            Event::new("lock.receipt", Outcome::Allow)
                .subject("lock", lock)
                .property(home_id)
                .details(json!({ "reason": "ok", "seq": 1, "cti": null })),
        )
        .await;
        for i in 0..3 {
            record(
                Event::new("lock.receipt", Outcome::Deny)
                    .subject("lock", lock)
                    .property(home_id)
                    .details(json!({ "reason": "replayed", "seq": 2 + i, "cti": null })),
            )
            .await;
        }
        audit::seal(&client, tenant).await.unwrap();
        incident_less_opening = client
            .query_one(
                "SELECT seq FROM audit_entries WHERE action = 'lock.receipt' AND outcome = 'allow'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    checkpoint(&app, tenant, slug, true).await;
    let from = (Utc::now() - Duration::hours(1)).to_rfc3339();
    let to = (Utc::now() + Duration::hours(1)).to_rfc3339();
    let query = format!(
        "/api/v1/audit/report?property={home_id}&from={}&to={}",
        urlencoding(&from),
        urlencoding(&to)
    );
    let (status, report) = send(&app, Method::GET, &query, &owner, None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["openings"], 1);
    assert_eq!(
        report["openings_without_incident"],
        json!([incident_less_opening])
    );
    assert_eq!(
        report["tokens_without_receipt"].as_array().unwrap().len(),
        1
    );
    assert_eq!(report["door_denials"], 3);
    assert_eq!(report["repeated_door_denials"][0]["lock"], lock.to_string());
    assert!(report["tree_size"].as_u64().unwrap() >= 6);
    assert!(
        report["checkpoint"]
            .as_str()
            .unwrap()
            .contains("report-town")
    );

    // Another homeowner, a responder: not found. A backwards period: 400.
    let other = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (status, _) = send(&app, Method::GET, &query, &other, None).await;
    assert_eq!(status, 404);
    let responder = sign_in_as(&app, tenant, Role::Responder).await;
    let (status, _) = send(&app, Method::GET, &query, &responder, None).await;
    assert_eq!(status, 404);
    let backwards = format!(
        "/api/v1/audit/report?property={home_id}&from={}&to={}",
        urlencoding(&to),
        urlencoding(&from)
    );
    let (status, _) = send(&app, Method::GET, &backwards, &owner, None).await;
    assert_eq!(status, 400);
    // The whole municipality: the auditor's (with step-up), not the homeowner's.
    let whole = format!(
        "/api/v1/audit/report?from={}&to={}",
        urlencoding(&from),
        urlencoding(&to)
    );
    let (status, _) = send(&app, Method::GET, &whole, &owner, None).await;
    assert_eq!(status, 404);
    let auditor = sign_in_as(&app, tenant, Role::Auditor).await;
    let (status, all) = send(&app, Method::GET, &whole, &auditor, None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all["openings_without_incident"],
        json!([incident_less_opening])
    );
}

fn urlencoding(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn the_history_page_asks_for_a_fresh_step_up_and_pages() {
    let app = spawn_app().await;
    let tenant = town(&app, "history-town").await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (_, home) = send(
        &app,
        Method::POST,
        "/api/v1/properties",
        &owner,
        Some(json!({ "address": "9 Page Street" })),
    )
    .await;
    let home_id = Uuid::parse_str(home["id"].as_str().unwrap()).unwrap();
    {
        let client = app.pool.get().await.unwrap();
        for i in 0..30 {
            audit::record(
                &client,
                tenant,
                &Event::new("plan.update", Outcome::Allow)
                    .actor(owner.user_id)
                    .property(home_id)
                    .details(json!({ "version": i + 1 })),
                Utc::now(),
            )
            .await
            .unwrap();
        }
    }
    let get = |path: String| {
        app.http
            .get(format!("{}{path}", app.address))
            .header("cookie", &owner.cookie)
            .send()
    };
    let first = get(format!("/homes/{home_id}/history")).await.unwrap();
    assert_eq!(first.status(), 200);
    let html = first.text().await.unwrap();
    assert!(
        html.contains("Access plan version 30 saved by Test homeowner"),
        "{html}"
    );
    assert!(
        !html.contains("Access plan version 5 saved"),
        "25 a page, newest first"
    );
    assert!(html.contains("UTC"));
    let older = html
        .split("id=\"older\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a link to older entries")
        .replace("&#x3f;", "?")
        .replace("&#x3d;", "=");
    let second = get(older).await.unwrap().text().await.unwrap();
    assert!(second.contains("Access plan version 5 saved"));
    assert!(second.contains("Home registered: 9 Page Street"));

    stale_step_up(&app, owner.user_id).await;
    let stale = get(format!("/homes/{home_id}/history")).await.unwrap();
    assert_eq!(stale.status(), 401);
    let html = stale.text().await.unwrap();
    assert!(html.contains("data-ceremony=\"step-up\"") && !html.contains("Access plan version"));
}

#[tokio::test]
async fn another_homes_pages_are_not_found_and_every_role_has_a_keys_page() {
    let app = spawn_app().await;
    let tenant = town(&app, "pages-town").await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (_, home) = send(
        &app,
        Method::POST,
        "/api/v1/properties",
        &owner,
        Some(json!({ "address": "3 Quiet Lane" })),
    )
    .await;
    let home = home["id"].as_str().unwrap().to_owned();
    let plan = json!({
        "agencies": {
            "fire": { "allowed": true, "incident_types": [], "second_approval": false },
            "ems": { "allowed": false, "incident_types": [], "second_approval": false },
            "police": { "allowed": false, "incident_types": [], "second_approval": false }
        },
        "max_grant_minutes": 30,
        "notes": { "pets": "A parrot" },
        "contacts": [],
        "notifications": { "homeowner": true, "contacts": false },
        "retention_days": 30
    });
    let (status, body) = send(
        &app,
        Method::PUT,
        &format!("/api/v1/properties/{home}/plan"),
        &owner,
        Some(plan),
    )
    .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let print = format!("/homes/{home}/plan/print");
    let (status, sheet) = send(&app, Method::GET, &print, &owner, None).await;
    assert_eq!(status, 200);
    assert!(sheet.as_str().unwrap().contains("A parrot"));

    let neighbour = sign_in_as(&app, tenant, Role::Homeowner).await;
    let elsewhere_tenant = town(&app, "pages-elsewhere").await;
    let elsewhere = sign_in_as(&app, elsewhere_tenant, Role::Homeowner).await;
    let dispatcher = sign_in_as(&app, tenant, Role::Dispatcher).await;
    for who in [&neighbour, &elsewhere, &dispatcher] {
        for path in [print.clone(), format!("/homes/{home}/history")] {
            let (status, page) = send(&app, Method::GET, &path, who, None).await;
            assert_eq!(status, 404, "{path}");
            assert!(
                !page.to_string().contains("A parrot") && !page.to_string().contains("Quiet Lane")
            );
        }
        let (status, _) = send(
            &app,
            Method::POST,
            &format!("/homes/{home}/history/erase"),
            who,
            None,
        )
        .await;
        assert_eq!(status, 404);
    }

    let (status, page) = send(&app, Method::GET, "/keys", &dispatcher, None).await;
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("hardware security keys"));
    let (status, page) = send(&app, Method::GET, "/keys", &owner, None).await;
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("passkeys"));
}

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
pub(crate) async fn checkpoint(
    app: &TestApp,
    tenant: Tenant,
    slug: &str,
    make_key: bool,
) -> Option<firstkey::audit::note::VerifierKey> {
    let dir = crate::helpers::test_settings(crate::helpers::admin_config()).key_dir;
    checkpoint_in(app, tenant, slug, make_key, &dir).await
}

/// [`checkpoint`] with the log key in `dir` (the app's key directory).
async fn checkpoint_in(
    app: &TestApp,
    tenant: Tenant,
    slug: &str,
    make_key: bool,
    dir: &std::path::Path,
) -> Option<firstkey::audit::note::VerifierKey> {
    let mut client = app.pool.get().await.unwrap();
    let key = if make_key {
        let origin = audit::log::origin_for("http://localhost:8080", slug);
        Some(
            audit::log::generate_key(&mut client, tenant, &origin, dir, Utc::now())
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
        dir,
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

/// Counts of rows where `needle` is readable: audit details in clear, the plaintext bytes of
/// encrypted details, and the operational tables that held it.
async fn readable_anywhere(app: &TestApp, needle: &str) -> Vec<(&'static str, i64)> {
    let client = app.pool.get().await.unwrap();
    let mut out = Vec::new();
    for (table, sql) in [
        (
            "audit public details",
            "SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%' || $1 || '%'",
        ),
        (
            "audit private bytes",
            "SELECT count(*) FROM audit_entries
             WHERE position(convert_to($1, 'UTF8') IN coalesce(private_details, ''::bytea)) > 0",
        ),
        (
            "properties",
            "SELECT count(*) FROM properties WHERE address LIKE '%' || $1 || '%'",
        ),
        (
            "access_plans",
            "SELECT count(*) FROM access_plans WHERE contacts::text LIKE '%' || $1 || '%'",
        ),
        (
            "grants",
            "SELECT count(*) FROM grants WHERE justification LIKE '%' || $1 || '%'",
        ),
        (
            "trusted_parties",
            "SELECT count(*) FROM trusted_parties WHERE label LIKE '%' || $1 || '%'",
        ),
        (
            "users",
            "SELECT count(*) FROM users WHERE email LIKE '%' || $1 || '%' OR display_name LIKE '%' || $1 || '%'",
        ),
    ] {
        let n: i64 = client.query_one(sql, &[&needle]).await.unwrap().get(0);
        out.push((table, n));
    }
    out
}

fn only(counts: &[(&'static str, i64)], table: &str) -> i64 {
    counts
        .iter()
        .filter(|(t, _)| *t == table)
        .map(|(_, n)| *n)
        .sum()
}

/// The personal details of the newest entry with `action` about `property`.
async fn personal_of(
    app: &TestApp,
    tenant: Tenant,
    property: Uuid,
    action: &str,
) -> audit::personal::Personal {
    let client = app.pool.get().await.unwrap();
    audit::seal(&client, tenant).await.unwrap();
    let seq: i64 = client
        .query_one(
            "SELECT seq FROM audit_entries WHERE municipality_id = $1 AND property_id = $2 AND action = $3
             ORDER BY seq DESC LIMIT 1",
            &[&tenant.id(), &property, &action],
        )
        .await
        .unwrap()
        .get(0);
    // The test settings' fixed key-encryption key.
    let kek =
        firstkey::crypto::Kek::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
    audit::personal::open(&client, tenant, seq, &kek)
        .await
        .unwrap()
}

async fn export_as(app: &TestApp, cookie: &str, query: &str) -> String {
    let response = app
        .http
        .get(format!("{}/api/v1/audit/export{query}", app.address))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn free_text_about_people_is_in_the_log_only_encrypted_and_erasure_takes_it() {
    use audit::personal::Personal;
    let w = crate::emergency::world().await;
    let (app, tenant) = (&w.app, w.tenant);
    // A grant with a justification, a reveal with a reason (the dispatcher's page), a trusted
    // party by name and address, and the plan's contacts (saved by `world`).
    let (incident, grant) = crate::emergency::live_fire_grant(&w).await;
    let reveal = app
        .http
        .post(format!(
            "{}/dispatch/incidents/{incident}/reveal",
            app.address
        ))
        .header("cookie", &w.dispatcher.cookie)
        .header("origin", ORIGIN)
        .form(&[
            ("property", w.property.to_string()),
            (
                "reason",
                "Crew asks about the dogs before forcing entry".to_owned(),
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(reveal.status(), 200);
    let (status, party) = call(
        app,
        Method::POST,
        &format!("/api/v1/properties/{}/trusted-parties", w.property),
        Some(&w.owner),
        Some(json!({
            "email": "kim.carer@example.org",
            "label": "Kim the carer",
            "locks": [w.lock],
            "ends_at": (Utc::now() + Duration::days(30)).to_rfc3339(),
        })),
    )
    .await;
    assert_eq!(status, 201, "{party}");

    // Nowhere in clear in the log: not in the details, not in the encrypted bytes.
    for needle in [
        "Smoke alarm, occupant not answering",
        "about the dogs",
        "Kim the carer",
        "kim.carer@example.org",
        "Sam Neighbour",
    ] {
        let counts = readable_anywhere(app, needle).await;
        assert_eq!(only(&counts, "audit public details"), 0, "{needle}");
        assert_eq!(only(&counts, "audit private bytes"), 0, "{needle}");
    }
    // Readable through the data key while it lives.
    assert_eq!(
        personal_of(app, tenant, w.property, "grant.create").await,
        Personal::Readable(json!({ "justification": "Smoke alarm, occupant not answering" }))
    );
    assert_eq!(
        personal_of(app, tenant, w.property, "plan.reveal_notes").await,
        Personal::Readable(json!({ "reason": "Crew asks about the dogs before forcing entry" }))
    );
    assert_eq!(
        personal_of(app, tenant, w.property, "trusted.invite").await,
        Personal::Readable(json!({ "label": "Kim the carer", "email": "kim.carer@example.org" }))
    );
    let Personal::Readable(contacts) = personal_of(app, tenant, w.property, "plan.update").await
    else {
        panic!("plan contacts are personal details");
    };
    assert_eq!(contacts["contacts"][0]["name"], "Sam Neighbour");
    let key = checkpoint_in(app, tenant, "town-a", true, &w.key_dir)
        .await
        .unwrap();
    let before = export_as(app, &w.owner.cookie, &format!("?property={}", w.property)).await;
    assert!(verify::verify_export(&before, &key, &[], 0).ok());

    // The homeowner erases while the grant is live: the log's details go at once, the live grant
    // keeps its justification (the crew is at the door); once it ended, a second erasure takes it.
    let erase = format!("/api/v1/properties/{}/audit/erase", w.property);
    let (status, erased) = call(app, Method::POST, &erase, Some(&w.owner), None).await;
    assert_eq!(status, 200, "{erased}");
    for action in [
        "grant.create",
        "plan.reveal_notes",
        "trusted.invite",
        "plan.update",
    ] {
        assert_eq!(
            personal_of(app, tenant, w.property, action).await,
            Personal::Erased,
            "{action}"
        );
    }
    assert_eq!(
        only(
            &readable_anywhere(app, "Smoke alarm, occupant").await,
            "grants"
        ),
        1,
        "a live grant keeps its justification"
    );
    let (status, _) = call(
        app,
        Method::POST,
        &format!("/api/v1/grants/{grant}/revoke"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, erased) = call(app, Method::POST, &erase, Some(&w.owner), None).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        only(
            &readable_anywhere(app, "Smoke alarm, occupant").await,
            "grants"
        ),
        0
    );
    let client = app.pool.get().await.unwrap();
    let (text, erased_at): (String, Option<chrono::DateTime<Utc>>) = client
        .query_one(
            "SELECT justification, justification_erased_at FROM grants WHERE id = $1",
            &[&grant],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(text, "(erased)");
    assert!(erased_at.is_some());
    let justifications: Vec<i64> = client
        .query(
            "SELECT (public_details->>'justifications_erased')::bigint FROM audit_entries
             WHERE municipality_id = $1 AND action = 'audit.erase' ORDER BY id",
            &[&tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(justifications, vec![0, 1], "audited with what it took");

    // Every proof still verifies; the sealed entries are byte for byte the same.
    checkpoint_in(app, tenant, "town-a", false, &w.key_dir).await;
    assert!(matches!(
        audit::verify_chain(&client, tenant).await.unwrap(),
        audit::ChainCheck::Intact { .. }
    ));
    assert!(verify::verify_export(&before, &key, &[], 0).ok());
    let after = export_as(app, &w.owner.cookie, &format!("?property={}", w.property)).await;
    let report = verify::verify_export(&after, &key, &[], 0);
    assert!(report.ok(), "{:?}", report.failures);
    let old: verify::Export = serde_json::from_str(&before).unwrap();
    let new: verify::Export = serde_json::from_str(&after).unwrap();
    for entry in &old.entries {
        let same = new.entries.iter().find(|e| e.index == entry.index).unwrap();
        assert_eq!(same.data, entry.data);
    }
}

#[tokio::test]
async fn deleting_my_account_erases_my_personal_data_and_the_log_still_verifies() {
    use audit::personal::Personal;
    let w = crate::emergency::world().await;
    let (app, tenant) = (&w.app, w.tenant);
    let (_, grant) = crate::emergency::live_fire_grant(&w).await;
    let key = checkpoint_in(app, tenant, "town-a", true, &w.key_dir)
        .await
        .unwrap();
    let before = export_as(app, &w.owner.cookie, &format!("?property={}", w.property)).await;
    assert!(verify::verify_export(&before, &key, &[], 0).ok());
    let auditor = user(app, tenant, "aud@a.example", None, Role::Auditor, true).await;
    let whole_before = export_as(app, &auditor.cookie, "").await;
    let users_before = {
        let client = app.pool.get().await.unwrap();
        client
            .query_one(
                "SELECT email, status FROM users WHERE id = $1",
                &[&w.owner.id],
            )
            .await
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .unwrap()
    };

    // Other roles cannot; a stale step-up is asked for; a live grant refuses; nothing changes.
    let (status, _) = call(app, Method::DELETE, "/api/v1/me", Some(&w.responder), None).await;
    assert_eq!(status, 404);
    let (status, body) = call(app, Method::DELETE, "/api/v1/me", Some(&w.owner), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("granted"), "{body}");
    stale_step_up(app, w.owner.id).await;
    let (status, _) = call(app, Method::DELETE, "/api/v1/me", Some(&w.owner), None).await;
    assert_eq!(status, 401);
    {
        let client = app.pool.get().await.unwrap();
        let now = client
            .query_one(
                "SELECT email, status FROM users WHERE id = $1",
                &[&w.owner.id],
            )
            .await
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .unwrap();
        assert_eq!(now, users_before);
        assert_eq!(
            audited(app, tenant, "account.delete", "info").await,
            0,
            "nothing deleted"
        );
        client
            .execute(
                "UPDATE sessions SET stepped_up_at = now() WHERE user_id = $1",
                &[&w.owner.id],
            )
            .await
            .unwrap();
    }
    let (status, _) = call(
        app,
        Method::POST,
        &format!("/api/v1/grants/{grant}/revoke"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // Deleted.
    let response = app
        .http
        .delete(format!("{}/api/v1/me", app.address))
        .header("cookie", &w.owner.cookie)
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["homes"], 2, "{deleted}");
    assert_eq!(deleted["plan_versions_erased"], 2, "{deleted}");
    assert_eq!(deleted["locks_retired"], 2, "{deleted}");
    assert_eq!(deleted["justifications_erased"], 1, "{deleted}");
    assert!(
        deleted["audit_keys_erased"].as_u64().unwrap() >= 2,
        "{deleted}"
    );
    assert!(
        deleted["sessions_ended"].as_u64().unwrap() >= 1,
        "{deleted}"
    );

    // Signed out everywhere, for good; the account cannot act again.
    let (status, _) = call(app, Method::GET, "/api/v1/me", Some(&w.owner), None).await;
    assert_eq!(status, 401);
    let (status, _) = call(app, Method::DELETE, "/api/v1/me", Some(&w.owner), None).await;
    assert_eq!(status, 401);

    // The personal data is gone from every table that held it, and from the log.
    for needle in [
        "owner@a.example",
        "Elm Street",
        "Sam Neighbour",
        "Smoke alarm, occupant",
    ] {
        let counts = readable_anywhere(app, needle).await;
        for (table, n) in counts {
            assert_eq!(n, 0, "{needle} still readable in {table}");
        }
    }
    assert_eq!(
        personal_of(app, tenant, w.property, "grant.create").await,
        Personal::Erased
    );
    assert_eq!(
        personal_of(app, tenant, w.property, "property.create").await,
        Personal::Erased
    );
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT status, deleted_at IS NOT NULL, display_name,
                (SELECT count(*) FROM webauthn_credentials WHERE user_id = u.id AND status <> 'removed'),
                (SELECT count(*) FROM sessions WHERE user_id = u.id),
                (SELECT count(*) FROM access_plans p JOIN properties h ON h.id = p.property_id
                   WHERE h.owner_id = u.id AND (p.notes_ciphertext IS NOT NULL OR p.erased_at IS NULL)),
                (SELECT count(*) FROM locks l JOIN properties h ON h.id = l.property_id
                   WHERE h.owner_id = u.id AND l.pairing_state <> 'retired')
             FROM users u WHERE id = $1",
            &[&w.owner.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "disabled");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), "Deleted account");
    assert_eq!(row.get::<_, i64>(3), 0, "keys removed");
    assert_eq!(row.get::<_, i64>(4), 0, "sessions removed");
    assert_eq!(row.get::<_, i64>(5), 0, "plan notes erased");
    assert_eq!(row.get::<_, i64>(6), 0, "locks retired");
    // The one mail left to the address is the confirmation, which names no home.
    let mails: Vec<(String, String)> = client
        .query(
            "SELECT kind, coalesce(body_text, '') FROM notification_outbox WHERE recipient = 'owner@a.example'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].0, "account.deleted");
    assert!(mails[0].1.contains("was deleted") && !mails[0].1.contains("Elm"));
    assert_eq!(audited(app, tenant, "account.delete", "info").await, 1);
    // The plan's conditions stay (past grants were decided under them) but cannot be changed.
    assert!(
        client
            .execute(
                "UPDATE access_plans SET max_grant_minutes = 1 WHERE property_id = $1",
                &[&w.property],
            )
            .await
            .is_err()
    );
    assert!(
        client
            .execute(
                "UPDATE access_plans SET erased_at = NULL WHERE property_id = $1",
                &[&w.property],
            )
            .await
            .is_err(),
        "no un-erasing"
    );

    // Dispatch no longer finds the home, and cannot grant entry there.
    let (status, found) = call(
        app,
        Method::GET,
        "/api/v1/dispatch/properties?q=Elm",
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(found, json!([]));
    let incident = crate::emergency::open_incident(&w, "25-09999", "fire", w.fire).await;
    let (status, body) = call(
        app,
        Method::POST,
        &format!("/api/v1/incidents/{incident}/grants"),
        Some(&w.dispatcher),
        Some(json!({
            "property": w.property, "responders": [w.responder.id], "minutes": 10,
            "justification": "After deletion"
        })),
    )
    .await;
    assert!(status == 403 || status == 404, "{status} {body}");

    // The log: intact chain; exports from before still verify; new ones verify and hold the
    // same entry bytes.
    checkpoint_in(app, tenant, "town-a", false, &w.key_dir).await;
    assert!(matches!(
        audit::verify_chain(&client, tenant).await.unwrap(),
        audit::ChainCheck::Intact { .. }
    ));
    assert!(verify::verify_export(&before, &key, &[], 0).ok());
    assert!(verify::verify_export(&whole_before, &key, &[], 0).ok());
    let whole_after = export_as(app, &auditor.cookie, "").await;
    let report = verify::verify_export(&whole_after, &key, &[], 0);
    assert!(report.ok(), "{:?}", report.failures);
    let (ok, out) = cli_verify(&whole_after, &key);
    assert!(ok, "{out}");
    let old: verify::Export = serde_json::from_str(&whole_before).unwrap();
    let new: verify::Export = serde_json::from_str(&whole_after).unwrap();
    for (a, b) in old.entries.iter().zip(&new.entries) {
        assert_eq!(a.data, b.data, "entry {} rewritten", a.index);
    }
}

#[tokio::test]
async fn the_delete_page_asks_to_confirm_and_signs_out() {
    let app = spawn_app().await;
    let tenant = town(&app, "delete-town").await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let (status, _) = send(
        &app,
        Method::POST,
        "/api/v1/properties",
        &owner,
        Some(json!({ "address": "3 Leaving Lane" })),
    )
    .await;
    assert_eq!(status, 201);
    let keys = app
        .http
        .get(format!("{}/keys", app.address))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(keys.contains("href=\"/account/delete\""), "{keys}");
    let page = app
        .http
        .get(format!("{}/account/delete", app.address))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("3 Leaving Lane") && page.contains("id=\"delete-form\""));
    assert!(page.contains("<label class=\"check\"><input type=\"checkbox\" id=\"confirm\""));

    let post = |confirm: bool| {
        let mut form = vec![];
        if confirm {
            form.push(("confirm", "yes"));
        }
        app.http
            .post(format!("{}/account/delete", app.address))
            .header("cookie", &owner.cookie)
            .header("origin", ORIGIN)
            .form(&form)
            .send()
    };
    // Without the box ticked: asked again, nothing happens.
    let response = post(false).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("Tick the box"));
    // A stale step-up: the inline confirmation, which then resubmits the form.
    stale_step_up(&app, owner.user_id).await;
    let response = post(true).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("data-resubmit=\"delete-form\"")
    );
    assert_eq!(audited(&app, tenant, "account.delete", "info").await, 0);
    // A staff member has no such page.
    let responder = user(
        &app,
        tenant,
        "r@delete.example",
        None,
        Role::Responder,
        true,
    )
    .await;
    let (status, _) = call(&app, Method::GET, "/account/delete", Some(&responder), None).await;
    assert_eq!(status, 404);

    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = now() WHERE user_id = $1",
            &[&owner.user_id],
        )
        .await
        .unwrap();
    let response = post(true).await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/account/deleted");
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let done = app
        .http
        .get(format!("{}/account/deleted", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(done.contains("Your account was deleted"));
    let (status, _) = send(&app, Method::GET, "/api/v1/me", &owner, None).await;
    assert_eq!(status, 401);
    assert_eq!(audited(&app, tenant, "account.delete", "info").await, 1);
    assert_eq!(
        readable_anywhere(&app, "Leaving Lane")
            .await
            .iter()
            .map(|(_, n)| n)
            .sum::<i64>(),
        0
    );
}

/// Runs the portal's vendored verifier (`src/web/static/verify.js`, the code the `/verify` page
/// runs) under Node's WebCrypto on each `(export, key)`; `None` when Node is not installed.
fn browser_verifier(cases: &[(String, String)]) -> Option<Vec<Value>> {
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())?;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    let cases: Vec<Value> = cases
        .iter()
        .map(|(text, key)| json!({ "text": text, "key": key }))
        .collect();
    std::fs::write(&input, serde_json::to_vec(&cases).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/web/static/verify.js");
    let program = format!(
        "require({script:?});
         const cases = JSON.parse(require('fs').readFileSync({input:?}, 'utf8'));
         (async () => {{
           const out = [];
           for (const c of cases) out.push(await globalThis.firstkeyVerifyExport(c.text, c.key));
           console.log(JSON.stringify(out));
         }})();",
        input = input.display().to_string(),
    );
    let out = std::process::Command::new(node)
        .args(["-e", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test]
async fn the_in_browser_verifier_accepts_true_exports_and_refuses_every_tampering() {
    let app = spawn_app().await;
    let slug = "verify-town";
    let tenant = town(&app, slug).await;
    let owner = sign_in_as(&app, tenant, Role::Homeowner).await;
    let mut homes = Vec::new();
    for address in ["1 Proof Road", "2 Proof Road"] {
        let (status, home) = send(
            &app,
            Method::POST,
            "/api/v1/properties",
            &owner,
            Some(json!({ "address": address })),
        )
        .await;
        assert_eq!(status, 201);
        homes.push(home["id"].as_str().unwrap().to_owned());
    }
    for version in 0..2 {
        let (status, body) = send(
            &app,
            Method::PUT,
            &format!("/api/v1/properties/{}/plan", homes[1]),
            &owner,
            Some(json!({
                "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
                "max_grant_minutes": 30 + version,
                "retention_days": 365
            })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let key = checkpoint(&app, tenant, slug, true).await.unwrap();
    let other_town = town(&app, "verify-elsewhere").await;
    let other_key = checkpoint(&app, other_town, "verify-elsewhere", true)
        .await
        .unwrap()
        .to_string();
    let selection = property_export(&app, &owner, &homes[1]).await;
    let auditor = sign_in_as(&app, tenant, Role::Auditor).await;
    let complete = export_as(&app, &auditor.cookie, "").await;
    let k = key.to_string();

    // The page carries the form, the script (same origin, no inline code) and the viewer's key.
    let page = app
        .http
        .get(format!("{}/verify", app.address))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = page.text().await.unwrap();
    assert!(page.contains("data-verifier") && page.contains("/static/verify."));
    assert!(
        page.contains(&k),
        "the viewer's municipality's key is filled in"
    );
    assert!(!page.contains("<script>"), "no inline script");
    let history = app
        .http
        .get(format!("{}/homes/{}/history", app.address, homes[1]))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(history.contains("href=\"/verify\""));

    // Tamperings, each of which must fail.
    let mut sel: Value = serde_json::from_str(&selection).unwrap();
    assert!(sel["entries"].as_array().unwrap().len() >= 2);
    assert!(!sel["entries"][0]["proof"].as_array().unwrap().is_empty());
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = sel.clone();
        f(&mut v);
        v.to_string()
    };
    let flip_b64 = |s: &str| {
        use base64::Engine;
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        bytes[5] ^= 0x01;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let data0 = sel["entries"][0]["data"].as_str().unwrap().to_owned();
    let proof0 = sel["entries"][0]["proof"][0].as_str().unwrap().to_owned();
    let note = sel["checkpoint"].as_str().unwrap().to_owned();
    let mut tampered = vec![
        (
            "entry data",
            edit(&|v| {
                v["entries"][0]["data"] = json!(data0.replace("property.create", "property.delete"))
            }),
        ),
        (
            "proof hash",
            edit(&|v| v["entries"][0]["proof"][0] = json!(flip_b64(&proof0))),
        ),
        (
            "proof dropped",
            edit(&|v| {
                v["entries"][0]["proof"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "index moved",
            edit(&|v| {
                v["entries"][0]["index"] = json!(v["entries"][0]["index"].as_u64().unwrap() + 1)
            }),
        ),
        (
            "checkpoint size",
            edit(&|v| {
                let lines: Vec<&str> = note.splitn(3, '\n').collect();
                let size: u64 = lines[1].parse().unwrap();
                v["checkpoint"] = json!(format!("{}\n{}\n{}", lines[0], size + 1, lines[2]));
            }),
        ),
        (
            "checkpoint signature",
            edit(&|v| {
                let (body, sig) = note.rsplit_once(' ').unwrap();
                v["checkpoint"] = json!(format!("{body} {}\n", flip_b64(sig.trim_end())));
            }),
        ),
    ];
    sel["entries"].as_array_mut().unwrap().reverse();
    tampered.push(("reordered", sel.to_string()));
    let mut all: Value = serde_json::from_str(&complete).unwrap();
    let entries = all["entries"].as_array_mut().unwrap();
    let last = entries.len() - 1;
    let removed = entries.remove(1);
    tampered.push(("complete export with one entry dropped", all.to_string()));
    let entries = all["entries"].as_array_mut().unwrap();
    entries.insert(1, removed);
    entries.swap(1, 2);
    let mut swapped = all.clone();
    for (i, e) in swapped["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        e["index"] = json!(i);
    }
    tampered.push(("complete export reordered", swapped.to_string()));
    assert!(last >= 3);

    let mut cases = vec![
        (selection.clone(), k.clone()),
        (complete.clone(), k.clone()),
        (selection.clone(), other_key),
    ];
    cases.extend(tampered.iter().map(|(_, t)| (t.clone(), k.clone())));
    let Some(results) = browser_verifier(&cases) else {
        eprintln!("skipped: node is not installed, so the browser verifier cannot run here");
        return;
    };
    assert_eq!(results[0]["ok"], true, "{}", results[0]);
    assert!(results[0]["verified"].as_u64().unwrap() >= 2);
    assert_eq!(results[1]["ok"], true, "{}", results[1]);
    assert_eq!(results[2]["ok"], false, "another log's key: {}", results[2]);
    for ((what, text), result) in tampered.iter().zip(&results[3..]) {
        assert_eq!(result["ok"], false, "{what}: {result}");
        assert!(!result["failures"].as_array().unwrap().is_empty(), "{what}");
        // The server's own verifier agrees.
        assert!(!verify::verify_export(text, &key, &[], 0).ok(), "{what}");
    }
}

#[tokio::test]
async fn a_report_lists_activity_two_person_grants_and_exactly_the_grant_outside_its_plan() {
    let w = crate::emergency::world().await;
    let (app, tenant) = (&w.app, w.tenant);
    // A fire grant within the plan, and a police grant the plan sends to a second dispatcher.
    let (_, fire_grant) = crate::emergency::live_fire_grant(&w).await;
    let police_officer = user(
        app,
        tenant,
        "p1@a.example",
        Some(w.police),
        Role::Responder,
        true,
    )
    .await;
    let incident = crate::emergency::open_incident(&w, "25-00001", "welfare_check", w.police).await;
    let (status, g) = call(
        app,
        Method::POST,
        &format!("/api/v1/incidents/{incident}/grants"),
        Some(&w.dispatcher),
        Some(
            json!({ "property": w.property, "responders": [police_officer.id], "minutes": 20,
                     "justification": "Welfare check requested by family" }),
        ),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    let police_grant: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    let (status, _) = call(
        app,
        Method::POST,
        &format!("/api/v1/grants/{police_grant}/approve"),
        Some(&w.dispatcher2),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // An injected entry: the fire grant "for 999 minutes", which its plan (60 at most) never allowed.
    let injected = {
        let client = app.pool.get().await.unwrap();
        audit::record(
            &client,
            tenant,
            &Event::new("grant.create", Outcome::Allow)
                .actor(w.dispatcher.id)
                .subject("grant", fire_grant)
                .property(w.property)
                .details(json!({ "minutes": 999, "status": "live" })),
            Utc::now(),
        )
        .await
        .unwrap();
        audit::seal(&client, tenant).await.unwrap();
        client
            .query_one(
                "SELECT max(seq) FROM audit_entries WHERE municipality_id = $1 AND action = 'grant.create'",
                &[&tenant.id()],
            )
            .await
            .unwrap()
            .get::<_, Option<i64>>(0)
            .unwrap()
    };
    checkpoint_in(app, tenant, "town-a", true, &w.key_dir).await;
    let auditor = user(app, tenant, "aud@a.example", None, Role::Auditor, true).await;
    let from = urlencoding(&(Utc::now() - Duration::hours(1)).to_rfc3339());
    let to = urlencoding(&(Utc::now() + Duration::hours(1)).to_rfc3339());
    let (status, report) = call(
        app,
        Method::GET,
        &format!("/api/v1/audit/report?from={from}&to={to}"),
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["grants_outside_plan"],
        json!([{ "seq": injected, "grant": fire_grant,
                 "reasons": ["999 minutes, the plan allows at most 60"] }]),
        "exactly the injected grant: {report}"
    );
    assert_eq!(
        report["approved_grants"],
        json!([{ "grant": police_grant, "seq": report["approved_grants"][0]["seq"],
                 "requested_by": w.dispatcher.id, "approved_by": w.dispatcher2.id }])
    );
    let by_actor = report["by_actor"].as_array().unwrap();
    let dispatcher = by_actor
        .iter()
        .find(|a| a["actor"] == json!(w.dispatcher.id))
        .unwrap();
    assert_eq!(dispatcher["grants"], 3, "two grants and the injected entry");
    assert_eq!(dispatcher["agency"], json!(w.fire));
    let second = by_actor
        .iter()
        .find(|a| a["actor"] == json!(w.dispatcher2.id))
        .unwrap();
    assert_eq!(second["approvals"], 1);
    let fire = report["by_agency"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agency"] == json!(w.fire))
        .unwrap();
    assert_eq!(fire["name"], "A Fire");
    assert_eq!(fire["grants"], 3);

    // The same in words, and as CSV (default period: the last 30 days).
    let page = |who: &crate::helpers::As, path: String| {
        let request = app
            .http
            .get(format!("{}{path}", app.address))
            .header("cookie", &who.cookie);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, words) = page(&auditor, "/audit/report".to_owned()).await;
    assert_eq!(status, 200, "{words}");
    assert!(words.contains("Grants outside their plan:"), "{words}");
    assert!(words.contains(&format!(
        "entry {injected} (999 minutes, the plan allows at most 60)"
    )));
    assert!(words.contains("A Fire") && words.contains("id=\"approved\""));
    let (status, csv) = page(&auditor, "/audit/report.csv".to_owned()).await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("section,seq,subject,value\r\n"));
    assert!(
        csv.contains(&format!(
            "grant outside plan,{injected},{fire_grant},\"999 minutes, the plan allows at most 60\""
        )),
        "{csv}"
    );
    // The homeowner's own home, with a fresh step-up; not the whole municipality.
    let (status, words) = page(&w.owner, format!("/audit/report?property={}", w.property)).await;
    assert_eq!(status, 200, "{words}");
    assert!(words.contains("for one home"));
    let (status, _) = page(&w.owner, "/audit/report".to_owned()).await;
    assert_eq!(status, 404);
    let (status, words) = page(&auditor, "/audit/report?from=yesterday".to_owned()).await;
    assert_eq!(status, 400);
    assert!(words.contains("from: a date and time"));
}

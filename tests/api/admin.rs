//! Municipal administration over HTTP (`/api/v1/admin/…`): agencies, units and members, accounts,
//! invitations and CAD credentials, each decided by the policy (wrong role, no step-up and another
//! municipality refused, refusals audited), each change audited, bad input a 400 that changes
//! nothing; and CAD grants: signed, idempotent, decided as the named dispatcher's own grant, and
//! recorded with the credential. `firstkey admin agency …` on the command line.

use chrono::Utc;
use firstkey::domain::{AgencyKind, Role, Slug};
use firstkey::emergency::cad;
use firstkey::store::{Tenant, tenancy};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{As, TestApp, call, spawn_app, user};

struct Town {
    app: TestApp,
    tenant: Tenant,
    admin: As,
    admin_plain: As,
    dispatcher: As,
    fire: Uuid,
    other_admin: As,
    other_fire: Uuid,
}

async fn town() -> Town {
    let app = spawn_app().await;
    let now = Utc::now();
    let client = app.pool.get().await.unwrap();
    let (tenant, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("adm-a").unwrap(), "Town A", now)
            .await
            .unwrap();
    let (other, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("adm-b").unwrap(), "Town B", now)
            .await
            .unwrap();
    let fire = tenancy::ensure_agency(&client, tenant, AgencyKind::Fire, "A Fire", now)
        .await
        .unwrap()
        .id;
    let other_fire = tenancy::ensure_agency(&client, other, AgencyKind::Fire, "B Fire", now)
        .await
        .unwrap()
        .id;
    drop(client);
    Town {
        admin: user(
            &app,
            tenant,
            "admin@a.example",
            None,
            Role::MunicipalAdmin,
            true,
        )
        .await,
        admin_plain: user(
            &app,
            tenant,
            "admin2@a.example",
            None,
            Role::MunicipalAdmin,
            false,
        )
        .await,
        dispatcher: user(
            &app,
            tenant,
            "desk@a.example",
            Some(fire),
            Role::Dispatcher,
            true,
        )
        .await,
        other_admin: user(
            &app,
            other,
            "admin@b.example",
            None,
            Role::MunicipalAdmin,
            true,
        )
        .await,
        app,
        tenant,
        fire,
        other_fire,
    }
}

async fn post(app: &TestApp, who: &As, path: &str, body: Option<Value>) -> (u16, Value) {
    call(app, Method::POST, path, Some(who), body).await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.pool
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// The actions of the tenant's audit entries, in order.
async fn actions(t: &Town) -> Vec<String> {
    let client = t.app.pool.get().await.unwrap();
    firstkey::audit::seal(&client, t.tenant).await.unwrap();
    client
        .query(
            "SELECT action FROM audit_entries WHERE municipality_id = $1 ORDER BY seq",
            &[&t.tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn admins_manage_agencies_units_and_members_and_nobody_else_does() {
    let t = town().await;
    let app = &t.app;
    // Add, and the refusals of bad input (nothing added).
    let (status, body) = post(
        app,
        &t.admin,
        "/api/v1/admin/agencies",
        Some(json!({ "kind": "ems", "name": "A Ambulance" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let ems: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(body["kind"], "ems");
    for (bad, field) in [
        (json!({ "kind": "navy", "name": "X" }), "kind"),
        (json!({ "kind": "fire", "name": "   " }), "name"),
        (json!({ "kind": "fire", "name": "Nul\u{0}Fire" }), "name"),
        (json!({ "kind": "fire", "name": "x".repeat(201) }), "name"),
    ] {
        let (status, body) = post(app, &t.admin, "/api/v1/admin/agencies", Some(bad)).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["detail"].as_str().unwrap().contains(field), "{body}");
    }
    let (status, _) = post(
        app,
        &t.admin,
        "/api/v1/admin/agencies",
        Some(json!({ "kind": "fire", "name": "A Ambulance" })),
    )
    .await;
    assert_eq!(status, 409, "a name is unique in the municipality");
    assert_eq!(count(app, "SELECT count(*) FROM agencies").await, 3);

    // Wrong role, no step-up, another municipality.
    let (status, _) = call(
        app,
        Method::GET,
        "/api/v1/admin/agencies",
        Some(&t.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(
        app,
        &t.dispatcher,
        "/api/v1/admin/agencies",
        Some(json!({ "kind": "fire", "name": "Rogue" })),
    )
    .await;
    assert_eq!(status, 404);
    let (status, listed) = call(
        app,
        Method::GET,
        "/api/v1/admin/agencies",
        Some(&t.admin_plain),
        None,
    )
    .await;
    assert_eq!(status, 200, "reading needs no step-up");
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (status, body) = post(
        app,
        &t.admin_plain,
        "/api/v1/admin/agencies",
        Some(json!({ "kind": "fire", "name": "Unconfirmed" })),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = post(
        app,
        &t.other_admin,
        &format!("/api/v1/admin/agencies/{}/rename", t.fire),
        Some(json!({ "name": "Stolen" })),
    )
    .await;
    assert_eq!(
        status, 404,
        "another municipality's agency does not exist here"
    );
    let (_, theirs) = call(
        app,
        Method::GET,
        "/api/v1/admin/agencies",
        Some(&t.other_admin),
        None,
    )
    .await;
    assert_eq!(theirs.as_array().unwrap().len(), 1);
    assert_eq!(theirs[0]["id"], t.other_fire.to_string());

    // Rename and retire.
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/agencies/{ems}/rename"),
        Some(json!({ "name": "A Rescue" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "A Rescue");
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/agencies/{ems}/retire"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["retired_at"].is_string());
    let (status, _) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/agencies/{ems}/retire"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = call(
        app,
        Method::POST,
        "/api/v1/invitations",
        Some(&t.admin),
        Some(json!({ "role": "responder", "agency_id": ems, "email": "late@a.example", "display_name": "Late" })),
    )
    .await;
    assert_eq!(status, 400, "a retired agency takes no invitations: {body}");
    let (status, _) = post(
        app,
        &t.admin,
        "/api/v1/admin/units",
        Some(json!({ "agency": ems, "name": "Medic 1" })),
    )
    .await;
    assert_eq!(status, 400, "nor units");

    // Units and members.
    let (status, body) = post(
        app,
        &t.admin,
        "/api/v1/admin/units",
        Some(json!({ "agency": t.fire, "name": "Engine 7" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let engine: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let (status, _) = post(
        app,
        &t.admin,
        "/api/v1/admin/units",
        Some(json!({ "agency": t.other_fire, "name": "Engine 9" })),
    )
    .await;
    assert_eq!(
        status, 400,
        "another municipality's agency is no agency here"
    );
    let responder = user(
        app,
        t.tenant,
        "e7@a.example",
        Some(t.fire),
        Role::Responder,
        false,
    )
    .await;
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/units/{engine}/members"),
        Some(json!({ "user": responder.id })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"][0]["id"], responder.id.to_string());
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/units/{engine}/members"),
        Some(json!({ "user": t.dispatcher.id })),
    )
    .await;
    assert_eq!(status, 400, "only responders of the unit's agency: {body}");
    let (_, users) = call(
        app,
        Method::GET,
        "/api/v1/admin/users?role=responder",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(
        users[0]["unit"], "Engine 7",
        "the responder's unit: {users}"
    );
    let (status, body) = post(
        app,
        &t.admin,
        &format!(
            "/api/v1/admin/units/{engine}/members/{}/remove",
            responder.id
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], json!([]));
    let (status, _) = post(
        app,
        &t.admin,
        &format!(
            "/api/v1/admin/units/{engine}/members/{}/remove",
            responder.id
        ),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let seen = actions(&t).await;
    for expected in [
        "agency.create",
        "agency.rename",
        "agency.retire",
        "unit.create",
        "unit.member_add",
        "unit.member_remove",
        "policy.deny",
    ] {
        assert!(seen.iter().any(|a| a == expected), "{expected} in {seen:?}");
    }
}

#[tokio::test]
async fn users_invitations_and_credentials_are_listed_and_revoked() {
    let t = town().await;
    let app = &t.app;
    let responder = user(
        app,
        t.tenant,
        "e1@a.example",
        Some(t.fire),
        Role::Responder,
        false,
    )
    .await;
    let (status, listed) = call(
        app,
        Method::GET,
        &format!("/api/v1/admin/users?role=responder&agency={}", t.fire),
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], responder.id.to_string());
    let (status, _) = call(
        app,
        Method::GET,
        "/api/v1/admin/users?status=gone",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        app,
        Method::GET,
        "/api/v1/admin/users?role=king",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (_, all) = call(
        app,
        Method::GET,
        "/api/v1/admin/users",
        Some(&t.admin),
        None,
    )
    .await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|u| u["email"] != "admin@b.example"),
        "only this municipality's accounts"
    );

    // Disable and enable.
    let (status, body) = call(
        app,
        Method::POST,
        &format!("/api/v1/admin/users/{}/disable", responder.id),
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 1);
    let (_, disabled) = call(
        app,
        Method::GET,
        "/api/v1/admin/users?status=disabled",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(disabled[0]["id"], responder.id.to_string());
    let enable = format!("/api/v1/admin/users/{}/enable", responder.id);
    let (status, _) = call(app, Method::POST, &enable, Some(&t.admin_plain), None).await;
    assert_eq!(status, 401, "enabling needs a step-up");
    let (status, _) = call(app, Method::POST, &enable, Some(&t.other_admin), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(app, Method::POST, &enable, Some(&t.admin), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(app, Method::POST, &enable, Some(&t.admin), None).await;
    assert_eq!(status, 409, "not disabled any more");

    // Invitations.
    let (status, body) = call(
        app,
        Method::POST,
        "/api/v1/invitations",
        Some(&t.admin),
        Some(json!({ "role": "dispatcher", "agency_id": t.fire, "email": "new@a.example", "display_name": "New Desk" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let invitation = body["id"].as_str().unwrap().to_owned();
    let secret = crate::auth_helpers::mailed_secret(app, "new@a.example", "account.invitation")
        .await
        .unwrap();
    let (_, pending) = call(
        app,
        Method::GET,
        "/api/v1/admin/invitations",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(pending[0]["id"], invitation.as_str(), "{pending}");
    assert_eq!(pending[0]["role"], "dispatcher");
    let revoke = format!("/api/v1/admin/invitations/{invitation}/revoke");
    let (status, _) = call(app, Method::POST, &revoke, Some(&t.other_admin), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(app, Method::POST, &revoke, Some(&t.dispatcher), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(app, Method::POST, &revoke, Some(&t.admin), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(app, Method::POST, &revoke, Some(&t.admin), None).await;
    assert_eq!(status, 404, "revoked once");
    let (_, pending) = call(
        app,
        Method::GET,
        "/api/v1/admin/invitations",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(pending, json!([]));
    let (status, _) = call(
        app,
        Method::POST,
        "/api/v1/invitations/accept/start",
        None,
        Some(json!({ "secret": secret })),
    )
    .await;
    assert_eq!(status, 404, "the revoked link no longer works");

    // CAD credentials: listed without secrets, and a revoked one is refused.
    let (status, created) = call(
        app,
        Method::POST,
        "/api/v1/admin/cad-credentials",
        Some(&t.admin),
        Some(json!({ "name": "Primary CAD" })),
    )
    .await;
    assert_eq!(status, 201);
    let secret = created["secret"].as_str().unwrap().to_owned();
    let (_, listed) = call(
        app,
        Method::GET,
        "/api/v1/admin/cad-credentials",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(listed[0]["key_id"], created["key_id"]);
    assert!(
        !listed.to_string().contains(&secret),
        "no secret in the list"
    );
    let (_, theirs) = call(
        app,
        Method::GET,
        "/api/v1/admin/cad-credentials",
        Some(&t.other_admin),
        None,
    )
    .await;
    assert_eq!(theirs, json!([]));
    let body =
        br#"{"cad_number":"26-1","kind":"fire","address":"1 Main St","agency":"AGENCY"}"#.to_vec();
    let body = String::from_utf8(body)
        .unwrap()
        .replace("AGENCY", &t.fire.to_string());
    let key_id = created["key_id"].as_str().unwrap();
    let first = cad_post(
        app,
        key_id,
        &secret,
        "/api/v1/cad/incidents",
        "i1",
        body.as_bytes(),
    )
    .await;
    assert_eq!(first.status(), 201);
    let revoke = format!(
        "/api/v1/admin/cad-credentials/{}/revoke",
        created["id"].as_str().unwrap()
    );
    let (status, _) = call(app, Method::POST, &revoke, Some(&t.admin_plain), None).await;
    assert_eq!(status, 401);
    let (status, _) = call(app, Method::POST, &revoke, Some(&t.admin), None).await;
    assert_eq!(status, 204);
    let refused = cad_post(
        app,
        key_id,
        &secret,
        "/api/v1/cad/incidents",
        "i2",
        body.as_bytes(),
    )
    .await;
    assert_eq!(refused.status(), 401, "a revoked credential signs nothing");

    let seen = actions(&t).await;
    for expected in [
        "account.disabled",
        "account.enabled",
        "account.invitation_revoked",
        "cad.credential_revoke",
    ] {
        assert!(seen.iter().any(|a| a == expected), "{expected} in {seen:?}");
    }
}

async fn cad_post(
    app: &TestApp,
    key_id: &str,
    secret: &str,
    path: &str,
    idempotency_key: &str,
    body: &[u8],
) -> reqwest::Response {
    let ts = Utc::now().timestamp().to_string();
    let signature = cad::sign(
        secret,
        &cad::string_to_sign("POST", path, &ts, idempotency_key, body),
    );
    app.http
        .post(format!("{}{path}", app.address))
        .header("content-type", "application/json")
        .header(cad::KEY_ID_HEADER, key_id)
        .header(cad::TIMESTAMP_HEADER, ts)
        .header(cad::SIGNATURE_HEADER, signature)
        .header(cad::IDEMPOTENCY_HEADER, idempotency_key)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cad_grants_are_the_named_dispatchers_decided_by_policy_and_idempotent() {
    let t = town().await;
    let app = &t.app;
    // A home whose plan admits fire for fires, up to 60 minutes, and never police.
    let owner = user(
        app,
        t.tenant,
        "owner@a.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    let (status, body) = call(
        app,
        Method::POST,
        "/api/v1/properties",
        Some(&owner),
        Some(json!({ "address": "12 Elm Street" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let property: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = call(
        app,
        Method::PUT,
        &format!("/api/v1/properties/{property}/plan"),
        Some(&owner),
        Some(json!({
            "agencies": {
                "fire": { "allowed": true, "incident_types": ["fire"] },
                "ems": { "allowed": false, "incident_types": [] },
                "police": { "allowed": false, "incident_types": [] }
            },
            "max_grant_minutes": 60, "retention_days": 365
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let a = user(
        app,
        t.tenant,
        "e7a@a.example",
        Some(t.fire),
        Role::Responder,
        false,
    )
    .await;
    let b = user(
        app,
        t.tenant,
        "e7b@a.example",
        Some(t.fire),
        Role::Responder,
        false,
    )
    .await;
    for r in [&a, &b] {
        app.pool
            .get()
            .await
            .unwrap()
            .execute("UPDATE users SET unit = 'Engine 7' WHERE id = $1", &[&r.id])
            .await
            .unwrap();
    }
    let (_, created) = call(
        app,
        Method::POST,
        "/api/v1/admin/cad-credentials",
        Some(&t.admin),
        Some(json!({ "name": "Primary CAD" })),
    )
    .await;
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let incident = json!({ "cad_number": "26-1309c", "kind": "fire", "address": "12 Elm Street", "agency": t.fire });
    let opened = cad_post(
        app,
        &key_id,
        &secret,
        "/api/v1/cad/incidents",
        "open-1",
        incident.to_string().as_bytes(),
    )
    .await;
    assert_eq!(opened.status(), 201);

    let path = "/api/v1/cad/incidents/26-1309c/grants";
    let grant = |dispatcher: Uuid, minutes: u32| {
        json!({
            "dispatcher": dispatcher, "property": property, "unit": "Engine 7",
            "minutes": minutes, "justification": "Smoke alarm, occupant not answering"
        })
        .to_string()
    };
    let grants = || count(app, "SELECT count(*) FROM grants");

    // Not a dispatcher, a dispatcher of another town, nobody: 400, nothing made, key released.
    let other_desk = {
        let client = app.pool.get().await.unwrap();
        let (other, _) = tenancy::municipality_by_slug(&client, &Slug::parse("adm-b").unwrap())
            .await
            .unwrap();
        user(
            app,
            other,
            "desk@b.example",
            Some(t.other_fire),
            Role::Dispatcher,
            true,
        )
        .await
    };
    for who in [a.id, other_desk.id, Uuid::new_v4(), t.admin.id] {
        let refused = cad_post(
            app,
            &key_id,
            &secret,
            path,
            "g-bad",
            grant(who, 30).as_bytes(),
        )
        .await;
        assert_eq!(refused.status(), 400);
        let problem: Value = refused.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("dispatcher"),
            "{problem}"
        );
    }
    assert_eq!(grants().await, 0);
    // Longer than the plan allows: the policy refuses (audited), as for the dispatcher in person.
    let refused = cad_post(
        app,
        &key_id,
        &secret,
        path,
        "g-long",
        grant(t.dispatcher.id, 90).as_bytes(),
    )
    .await;
    assert_eq!(refused.status(), 404);
    assert_eq!(grants().await, 0);
    let denials = count(
        app,
        "SELECT count(*) FROM audit_entries WHERE action = 'policy.deny' AND public_details->>'action' = 'create_grant'",
    )
    .await;
    assert_eq!(denials, 1);

    // The grant: the dispatcher's, naming the unit's members, recorded with the credential.
    let body = grant(t.dispatcher.id, 30);
    let first = cad_post(app, &key_id, &secret, path, "g-1", body.as_bytes()).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let made: Value = first.json().await.unwrap();
    assert_eq!(made["granted_by"], t.dispatcher.id.to_string());
    assert_eq!(made["unit"], "Engine 7");
    assert_eq!(made["status"], "live");
    let mut named: Vec<String> = made["responders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    named.sort();
    let mut expected = vec![a.id.to_string(), b.id.to_string()];
    expected.sort();
    assert_eq!(named, expected);
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT g.granted_by, c.key_id FROM grants g JOIN api_credentials c ON c.id = g.cad_credential_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), t.dispatcher.id);
    assert_eq!(row.get::<_, String>(1), key_id);
    firstkey::audit::seal(&client, t.tenant).await.unwrap();
    let audited = client
        .query_one(
            "SELECT actor_id, public_details->>'cad_key_id' FROM audit_entries WHERE action = 'grant.create'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audited.get::<_, Option<Uuid>>(0), Some(t.dispatcher.id));
    assert_eq!(audited.get::<_, Option<String>>(1), Some(key_id.clone()));

    // Replayed: the stored answer, nothing twice. Same key, other request: 409.
    let replay = cad_post(app, &key_id, &secret, path, "g-1", body.as_bytes()).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed, made);
    assert_eq!(grants().await, 1);
    let other = cad_post(
        app,
        &key_id,
        &secret,
        path,
        "g-1",
        grant(t.dispatcher.id, 20).as_bytes(),
    )
    .await;
    assert_eq!(other.status(), 409);
    // A captured request replayed under a fresh key fails the signature (the key is signed).
    let ts = Utc::now().timestamp().to_string();
    let signature = cad::sign(
        &secret,
        &cad::string_to_sign("POST", path, &ts, "g-1", body.as_bytes()),
    );
    let forged = app
        .http
        .post(format!("{}{path}", app.address))
        .header("content-type", "application/json")
        .header(cad::KEY_ID_HEADER, &key_id)
        .header(cad::TIMESTAMP_HEADER, ts)
        .header(cad::SIGNATURE_HEADER, signature)
        .header(cad::IDEMPOTENCY_HEADER, "g-fresh")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    // A refused call released its key: the same key with a good request runs.
    let again = cad_post(
        app,
        &key_id,
        &secret,
        path,
        "g-long",
        grant(t.dispatcher.id, 15).as_bytes(),
    )
    .await;
    assert_eq!(again.status(), 201);
    assert_eq!(grants().await, 2);
    // Unknown incident: 404; malformed body: 400.
    let missing = cad_post(
        app,
        &key_id,
        &secret,
        "/api/v1/cad/incidents/26-none/grants",
        "g-x",
        body.as_bytes(),
    )
    .await;
    assert_eq!(missing.status(), 404);
    let malformed = cad_post(app, &key_id, &secret, path, "g-y", b"{\"dispatcher\": 1}").await;
    assert_eq!(malformed.status(), 400);
    assert_eq!(grants().await, 2);
}

#[tokio::test]
async fn the_policy_page_data_and_keys_overview_are_admins_only() {
    let t = town().await;
    let (status, policy) = call(
        &t.app,
        Method::GET,
        "/api/v1/admin/policy",
        Some(&t.admin_plain),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(policy["hash"].as_str().unwrap().len(), 64);
    let files: Vec<&str> = policy["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"admin.cedar") && files.contains(&"guards.cedar"),
        "{files:?}"
    );
    let (status, keys) = call(
        &t.app,
        Method::GET,
        "/api/v1/admin/keys",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(keys["issuer_keys"], json!([]));
    for path in [
        "/api/v1/admin/policy",
        "/api/v1/admin/keys",
        "/api/v1/admin/users",
    ] {
        let (status, _) = call(&t.app, Method::GET, path, Some(&t.dispatcher), None).await;
        assert_eq!(status, 404, "{path}");
        let (status, _) = call(&t.app, Method::GET, path, None, None).await;
        assert_eq!(status, 401, "{path}");
    }
}

#[tokio::test]
async fn agencies_on_the_command_line() {
    use std::process::Command;
    let db = crate::helpers::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_firstkey"))
            .args(args)
            .current_dir(dir.path())
            .env(
                "FIRSTKEY_DATABASE_URL",
                format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
            )
            .env("FIRSTKEY_KEY_DIR", "keys")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ok, said) = run(&[
        "admin",
        "create",
        "--municipality",
        "cli-agencies",
        "--email",
        "c@x.example",
        "--name",
        "C",
    ]);
    assert!(ok, "{said}");
    let m = ["--municipality", "cli-agencies"];
    let (ok, said) = run(&[
        &["admin", "agency", "add"][..],
        &m,
        &["--kind", "fire", "--name", "Town Fire"],
    ]
    .concat());
    assert!(
        ok && said.contains("Town Fire") && said.contains("active"),
        "{said}"
    );
    let (ok, said) = run(&[
        &["admin", "agency", "add"][..],
        &m,
        &["--kind", "navy", "--name", "Fleet"],
    ]
    .concat());
    assert!(!ok && said.contains("kind"), "{said}");
    let (ok, said) = run(&[
        &["admin", "agency", "rename"][..],
        &m,
        &["--agency", "Town Fire", "--name", "City Fire"],
    ]
    .concat());
    assert!(ok && said.contains("City Fire"), "{said}");
    let (ok, said) = run(&[
        &["admin", "agency", "retire"][..],
        &m,
        &["--agency", "City Fire"],
    ]
    .concat());
    assert!(ok && said.contains("retired"), "{said}");
    let (ok, said) = run(&[
        &["admin", "agency", "retire"][..],
        &m,
        &["--agency", "Nobody"],
    ]
    .concat());
    assert!(!ok && said.contains("no agency"), "{said}");
    let (ok, said) = run(&[&["admin", "agency", "list"][..], &m].concat());
    assert!(
        ok && said.lines().count() == 1 && said.contains("City Fire"),
        "{said}"
    );
}

async fn page(app: &TestApp, path: &str, who: Option<&As>) -> (u16, String) {
    let mut request = app
        .http
        .get(format!("{}{path}", app.address))
        .header("accept", "text/html");
    if let Some(who) = who {
        request = request.header("cookie", &who.cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn admin_and_audit_pages_answer_only_their_roles_and_exports_only_this_town() {
    let t = town().await;
    let app = &t.app;
    let auditor = user(app, t.tenant, "aud@a.example", None, Role::Auditor, true).await;
    let auditor_plain = user(app, t.tenant, "aud2@a.example", None, Role::Auditor, false).await;
    // Something in each town's log.
    for who in [&t.admin, &t.other_admin] {
        let name = format!("Agency of {}", who.id);
        let (status, _) = post(
            app,
            who,
            "/api/v1/admin/agencies",
            Some(json!({ "kind": "ems", "name": name })),
        )
        .await;
        assert_eq!(status, 201);
    }
    for path in [
        "/admin",
        "/admin/units",
        "/admin/people",
        "/admin/cad",
        "/admin/trust",
    ] {
        let (status, html) = page(app, path, Some(&t.admin)).await;
        assert_eq!(status, 200, "{path}: {html}");
        let (status, _) = page(app, path, Some(&t.dispatcher)).await;
        assert_eq!(status, 404, "{path}");
        let (status, _) = page(app, path, Some(&auditor)).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, html) = page(app, "/admin", Some(&t.admin_plain)).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"step-up\""), "changes offer the step-up");
    let (status, _) = page(app, "/audit", Some(&t.admin)).await;
    assert_eq!(status, 404, "an admin does not read the log");
    let (status, html) = page(app, "/audit", Some(&auditor_plain)).await;
    assert_eq!(status, 401);
    assert!(html.contains("id=\"step-up\"") && !html.contains("entries-table"));
    let (status, _) = page(app, "/audit/export.csv", Some(&auditor_plain)).await;
    assert_eq!(status, 401);
    let (status, html) = page(app, "/audit?actor=nobody", Some(&auditor)).await;
    assert_eq!(status, 400);
    assert!(html.contains("actor: not an id"), "{html}");
    let (status, _) = page(app, "/audit/export.csv?outcome=maybe", Some(&auditor)).await;
    assert_eq!(status, 400);
    let (status, csv) = page(app, "/audit/export.csv?event=agency.", Some(&auditor)).await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "only this town's entries: {csv}");
    assert!(rows[0].contains(&t.admin.id.to_string()), "{csv}");
    let (status, json) = page(
        app,
        &format!(
            "/audit/export.json?actor={}&event=agency.create",
            t.admin.id
        ),
        Some(&auditor),
    )
    .await;
    assert_eq!(status, 200);
    let entries: Value = serde_json::from_str(&json).unwrap();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == t.admin.id.to_string())
    );
    let seq = entries[0]["seq"].as_i64().unwrap();
    let (status, html) = page(app, &format!("/audit/entries/{seq}"), Some(&auditor)).await;
    assert_eq!(status, 200);
    assert!(html.contains("agency.create"), "{html}");
    let (status, _) = page(app, "/audit/entries/999999", Some(&auditor)).await;
    assert_eq!(status, 404);
    // Signed out: the sign-in page, and back here afterwards.
    let response = app
        .http
        .get(format!("{}/audit", app.address))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/sign-in?next=/audit");
}

#[tokio::test]
async fn a_retired_agency_opens_no_incidents() {
    let t = town().await;
    let app = &t.app;
    let incident = |cad: &str| json!({ "cad_number": cad, "kind": "fire", "address": "1 Elm St", "agency": t.fire });
    let (status, body) = post(
        app,
        &t.dispatcher,
        "/api/v1/incidents",
        Some(incident("26-7001")),
    )
    .await;
    assert_eq!(status, 201, "while the agency is open: {body}");
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/agencies/{}/retire", t.fire),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        app,
        &t.dispatcher,
        "/api/v1/incidents",
        Some(incident("26-7002")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("retired"),
        "{body}"
    );
    assert_eq!(
        count(
            app,
            "SELECT count(*) FROM incidents WHERE cad_number = '26-7002'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn units_are_renamed_and_retired_with_their_members() {
    let t = town().await;
    let app = &t.app;
    let responder = user(
        app,
        t.tenant,
        "r7@a.example",
        Some(t.fire),
        Role::Responder,
        false,
    )
    .await;
    let (status, unit) = post(
        app,
        &t.admin,
        "/api/v1/admin/units",
        Some(json!({ "agency": t.fire, "name": "Engine 7" })),
    )
    .await;
    assert_eq!(status, 201, "{unit}");
    let id = unit["id"].as_str().unwrap().to_owned();
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/units/{id}/members"),
        Some(json!({ "user": responder.id })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let unit_of = |who: Uuid| {
        let pool = app.pool.clone();
        async move {
            pool.get()
                .await
                .unwrap()
                .query_one("SELECT unit FROM users WHERE id = $1", &[&who])
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
        }
    };

    // Only admins with a fresh step-up, and bad names change nothing.
    for who in [&t.dispatcher, &t.admin_plain] {
        let (status, _) = post(
            app,
            who,
            &format!("/api/v1/admin/units/{id}/rename"),
            Some(json!({ "name": "Engine 9" })),
        )
        .await;
        assert!(status == 404 || status == 401, "{status}");
    }
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "a\u{0}b" }),
        json!({ "name": "x".repeat(101) }),
    ] {
        let (status, _) = post(
            app,
            &t.admin,
            &format!("/api/v1/admin/units/{id}/rename"),
            Some(bad),
        )
        .await;
        assert_eq!(status, 400);
    }
    let (status, _) = post(
        app,
        &t.other_admin,
        &format!("/api/v1/admin/units/{id}/rename"),
        Some(json!({ "name": "Theirs" })),
    )
    .await;
    assert_eq!(
        status, 404,
        "another municipality's unit does not exist there"
    );
    assert_eq!(unit_of(responder.id).await.as_deref(), Some("Engine 7"));

    // A rename moves the members with the unit.
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/units/{id}/rename"),
        Some(json!({ "name": "Engine 8" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Engine 8");
    assert_eq!(body["members"][0]["id"], json!(responder.id));
    assert_eq!(unit_of(responder.id).await.as_deref(), Some("Engine 8"));

    // Retiring releases the members and takes the unit off the list; its name stays taken.
    let (status, body) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/units/{id}/retire"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members_released"], 1);
    assert_eq!(unit_of(responder.id).await, None);
    let (_, listed) = call(
        app,
        Method::GET,
        "/api/v1/admin/units",
        Some(&t.admin),
        None,
    )
    .await;
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    let (status, _) = post(
        app,
        &t.admin,
        &format!("/api/v1/admin/units/{id}/retire"),
        None,
    )
    .await;
    assert_eq!(status, 404, "a retired unit is gone");
    let (status, _) = post(
        app,
        &t.admin,
        "/api/v1/admin/units",
        Some(json!({ "agency": t.fire, "name": "Engine 8" })),
    )
    .await;
    assert_eq!(status, 409);
    let actions = actions(&t).await;
    assert!(
        actions.iter().any(|a| a == "unit.rename") && actions.iter().any(|a| a == "unit.retire")
    );
}

#[tokio::test]
async fn a_refused_admin_form_shows_why_on_its_own_page() {
    let t = town().await;
    let app = &t.app;
    let form = |path: &str, fields: &[(&str, &str)]| {
        app.http
            .post(format!("{}{path}", app.address))
            .header("accept", "text/html")
            .header("origin", crate::helpers::ORIGIN)
            .header("cookie", &t.admin.cookie)
            .form(fields)
    };
    // A second agency with the same name: a conflict, shown on the agencies page itself.
    let response = form("/admin/agencies", &[("kind", "fire"), ("name", "A Fire")])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains(r#"id="problem""#) && body.contains("Nothing was changed"),
        "{body}"
    );
    assert!(
        body.contains("<h1>Agencies</h1>"),
        "the agencies page, not the error page: {body}"
    );
    // Bad input: a 400 with the field named, on the page.
    let response = form("/admin/agencies", &[("kind", "navy"), ("name", "Fleet")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        count(app, "SELECT count(*) FROM agencies WHERE name = 'Fleet'").await,
        0
    );
    // No link can put words in that place.
    let (status, body) = page(app, "/admin?problem=Call+555-0100+now", Some(&t.admin)).await;
    assert_eq!(status, 200);
    assert!(!body.contains("555-0100") && !body.contains(r#"id="problem""#));
}

async fn set_zone(app: &TestApp, who: &As, zone: &str) -> (u16, Value) {
    call(
        app,
        Method::PUT,
        "/api/v1/admin/time-zone",
        Some(who),
        Some(json!({ "time_zone": zone })),
    )
    .await
}

#[tokio::test]
async fn pages_show_times_in_the_municipalitys_time_zone() {
    let t = town().await;
    let app = &t.app;
    let (_, body) = call(
        app,
        Method::GET,
        "/api/v1/admin/time-zone",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(body["time_zone"], "UTC", "UTC until set");
    let (status, _) = set_zone(app, &t.dispatcher, "Europe/Amsterdam").await;
    assert_eq!(status, 404, "only admins");
    for bad in [
        "Mars/Olympus",
        "",
        "Europe/Amsterdam\u{0}",
        "UTC; DROP TABLE",
    ] {
        let (status, _) = set_zone(app, &t.admin, bad).await;
        assert_eq!(status, 400, "{bad:?}");
    }
    let (_, body) = call(
        app,
        Method::GET,
        "/api/v1/admin/time-zone",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(body["time_zone"], "UTC", "refused names change nothing");
    let (status, body) = set_zone(app, &t.admin, "Europe/Amsterdam").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["time_zone"], "Europe/Amsterdam");

    // The agencies page shows it, its times carry the zone, and the footer names it.
    let (status, html) = page(app, "/admin", Some(&t.admin)).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"value="Europe/Amsterdam""#), "{html}");
    assert!(
        html.contains("Times are shown in Europe/Amsterdam"),
        "{html}"
    );
    // A pending invitation's times on the staff page are in the zone.
    let (status, body) = call(
        app,
        Method::POST,
        "/api/v1/invitations",
        Some(&t.admin),
        Some(json!({ "role": "responder", "agency_id": t.fire, "email": "tz@a.example", "display_name": "Zone" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, html) = page(app, "/admin/people", Some(&t.admin)).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(" CET") || html.contains(" CEST"),
        "times in the zone: {html}"
    );
    assert!(!html.contains(" UTC<"), "no UTC times left: {html}");
    assert!(
        actions(&t)
            .await
            .iter()
            .any(|a| a == "municipality.time_zone")
    );
    // Another municipality keeps its own.
    let (_, theirs) = call(
        app,
        Method::GET,
        "/api/v1/admin/time-zone",
        Some(&t.other_admin),
        None,
    )
    .await;
    assert_eq!(theirs["time_zone"], "UTC");
}

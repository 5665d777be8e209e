//! Live consent over HTTP (issue 11 §3): a plan that asks for it makes every grant wait for the
//! homeowner, who answers from the mailed link with a fresh assertion; without an answer the
//! background loop of the running server (two replicas on one database here) applies the plan's
//! fallback. Time is a test clock both replicas read, so deadlines pass without sleeping for them;
//! the loop itself runs as in production (every second).

use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use firstkey::clock::Clock;
use firstkey::domain::{AgencyKind, Role, Slug};
use firstkey::emergency::keys;
use firstkey::http::Application;
use firstkey::store::{Tenant, tenancy};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth_helpers::mailed_secret;
use crate::helpers::{As, TestApp, admin_config, call, fresh_database, test_settings, user};
use crate::trusted::{TestClock, restep};

struct World {
    app: TestApp,
    /// The address of a second replica on the same database (its own sweeper).
    other: String,
    clock: Arc<TestClock>,
    tenant: Tenant,
    _tmp: tempfile::TempDir,
    owner: As,
    other_owner: As,
    dispatcher: As,
    dispatcher2: As,
    responder: As,
    fire: Uuid,
    property: Uuid,
    lock: Uuid,
}

impl World {
    fn now(&self) -> chrono::DateTime<Utc> {
        self.clock.now()
    }

    fn advance(&self, by: Duration) {
        *self.clock.0.lock().unwrap() += by;
    }

    /// Every session's step-up dated at the test clock's now.
    async fn restep_all(&self) {
        for who in [
            &self.owner,
            &self.other_owner,
            &self.dispatcher,
            &self.dispatcher2,
            &self.responder,
        ] {
            restep(&self.app, who, self.now()).await;
        }
    }
}

/// Starts a replica on `config`'s database with the shared clock; returns its address.
fn replica(
    config: &tokio_postgres::Config,
    key_dir: &std::path::Path,
    clock: Arc<TestClock>,
) -> String {
    let mut settings = test_settings(config.clone());
    settings.key_dir = key_dir.to_path_buf();
    let pool = firstkey::store::pool(config.clone(), settings.db_pool_size).unwrap();
    let server = Application::build(settings, pool, clock).unwrap();
    let address = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped());
    address
}

fn plan(consent: Value) -> Value {
    json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "notifications": { "homeowner": true, "contacts": false },
        "retention_days": 365,
        "live_consent": consent
    })
}

async fn world(consent: Value) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let key_dir = tmp.path().join("keys");
    let db = fresh_database().await;
    let mut config = admin_config();
    config.dbname(&db);
    let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
    let address = replica(&config, &key_dir, clock.clone());
    let other = replica(&config, &key_dir, clock.clone());
    let app = TestApp {
        address,
        pool: firstkey::store::pool(config.clone(), 2).unwrap(),
        http: reqwest::Client::new(),
        proxy: None,
        database: db,
    };
    let now = Utc::now();
    let mut client = app.pool.get().await.unwrap();
    let (tenant, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("town-a").unwrap(), "Town A", now)
            .await
            .unwrap();
    let fire = tenancy::ensure_agency(&client, tenant, AgencyKind::Fire, "A Fire", now)
        .await
        .unwrap()
        .id;
    keys::generate(&mut client, tenant, &key_dir, now)
        .await
        .unwrap();
    drop(client);
    let owner = user(&app, tenant, "owner@a.example", None, Role::Homeowner, true).await;
    let other_owner = user(&app, tenant, "other@a.example", None, Role::Homeowner, true).await;
    let dispatcher = user(
        &app,
        tenant,
        "d1@a.example",
        Some(fire),
        Role::Dispatcher,
        true,
    )
    .await;
    let dispatcher2 = user(
        &app,
        tenant,
        "d2@a.example",
        Some(fire),
        Role::Dispatcher,
        true,
    )
    .await;
    let responder = user(
        &app,
        tenant,
        "r1@a.example",
        Some(fire),
        Role::Responder,
        true,
    )
    .await;
    for who in [&owner, &other_owner, &dispatcher, &dispatcher2, &responder] {
        restep(&app, who, clock.now()).await;
    }
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/properties",
        Some(&owner),
        Some(json!({ "address": "12 Elm Street" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let property: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = call(
        &app,
        Method::PUT,
        &format!("/api/v1/properties/{property}/plan"),
        Some(&owner),
        Some(plan(consent)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let lock = Uuid::new_v4();
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at)
             VALUES ($1, $2, $3, 'Front door', 'paired', $4, now(), now())",
            &[&lock, &tenant.id(), &property, &Uuid::new_v4().as_bytes().repeat(2)],
        )
        .await
        .unwrap();
    World {
        app,
        other,
        clock,
        tenant,
        _tmp: tmp,
        owner,
        other_owner,
        dispatcher,
        dispatcher2,
        responder,
        fire,
        property,
        lock,
    }
}

/// Opens an incident and asks for a fire grant; returns the grant's JSON.
async fn ask(w: &World, cad: &str) -> Value {
    let (status, body) = call(
        &w.app,
        Method::POST,
        "/api/v1/incidents",
        Some(&w.dispatcher),
        Some(json!({ "cad_number": cad, "kind": "fire", "address": "12 Elm Street", "agency": w.fire })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let incident = body["id"].as_str().unwrap().to_owned();
    let (status, grant) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/incidents/{incident}/grants"),
        Some(&w.dispatcher),
        Some(json!({
            "property": w.property,
            "responders": [w.responder.id],
            "minutes": 30,
            "justification": "Smoke alarm, occupant not answering"
        })),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    grant
}

fn id(v: &Value) -> Uuid {
    v["id"].as_str().unwrap().parse().unwrap()
}

async fn token(w: &World, grant: Uuid) -> (u16, Value) {
    call(
        &w.app,
        Method::POST,
        "/api/v1/tokens",
        Some(&w.responder),
        Some(json!({ "grant": grant, "lock": w.lock })),
    )
    .await
}

async fn answer(w: &World, who: &As, grant: Uuid, secret: &str, answer: &str) -> (u16, Value) {
    call(
        &w.app,
        Method::POST,
        &format!("/api/v1/consents/{grant}/answer"),
        Some(who),
        Some(json!({ "secret": secret, "answer": answer })),
    )
    .await
}

async fn grant_status(w: &World, grant: Uuid) -> String {
    let (status, body) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/grants/{grant}"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["status"].as_str().unwrap().to_owned()
}

async fn audit(w: &World, action: &str) -> Vec<Value> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT public_details FROM audit_entries WHERE municipality_id = $1 AND action = $2
             ORDER BY recorded_at, seq",
            &[&w.tenant.id(), &action],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The console's live state of the grants of the grant's incident, as its stream sends them.
async fn console_states(w: &World, grant: Uuid) -> Vec<Value> {
    let client = w.app.pool.get().await.unwrap();
    let incident: Uuid = client
        .query_one("SELECT incident_id FROM grants WHERE id = $1", &[&grant])
        .await
        .unwrap()
        .get(0);
    let states =
        firstkey::emergency::live::states_of_incident(&client, w.tenant, incident, w.now())
            .await
            .unwrap();
    states
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect()
}

/// Waits (up to 15 s of wall time) for the replicas' loop to move the grant off `awaiting_consent`.
async fn until_moved(w: &World, grant: Uuid) -> String {
    for _ in 0..150 {
        let status = grant_status(w, grant).await;
        if status != "awaiting_consent" {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the consent timeout was not applied");
}

#[tokio::test]
async fn approve_lets_the_grant_go_live_and_a_token_be_minted_once_only() {
    let w = world(json!({ "timeout_seconds": 180, "fallback": "second_dispatcher" })).await;
    let grant = ask(&w, "26-0001").await;
    assert_eq!(grant["status"], "awaiting_consent", "{grant}");
    let g = id(&grant);
    // No token while the homeowner has not answered.
    assert_eq!(token(&w, g).await.0, 404);
    let states = console_states(&w, g).await;
    assert_eq!(states[0]["state"], "waiting_for_consent");
    assert!(
        states[0]["consent"]
            .as_str()
            .unwrap()
            .starts_with("asking the homeowner"),
        "{states:?}"
    );
    let secret = mailed_secret(&w.app, "owner@a.example", "consent.request")
        .await
        .expect("the owner was mailed a consent link");

    // An assertion from before the request does not answer it.
    restep(&w.app, &w.owner, w.now() - Duration::seconds(1)).await;
    assert_eq!(answer(&w, &w.owner, g, &secret, "approve").await.0, 401);
    w.advance(Duration::seconds(5));
    w.restep_all().await;
    // Another homeowner, even with the link, gets nothing.
    assert_eq!(
        answer(&w, &w.other_owner, g, &secret, "approve").await.0,
        404
    );
    assert_eq!(
        call(
            &w.app,
            Method::GET,
            &format!("/api/v1/consents/{g}"),
            Some(&w.other_owner),
            None
        )
        .await
        .0,
        404
    );
    // Nor does the dispatcher answer in the owner's place.
    assert_eq!(
        answer(&w, &w.dispatcher, g, &secret, "approve").await.0,
        404
    );
    // A wrong secret is refused and audited.
    let (status, body) = answer(&w, &w.owner, g, "not-the-secret", "approve").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(grant_status(&w, g).await, "awaiting_consent");

    let (status, view) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/consents/{g}"),
        Some(&w.owner),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "pending");
    assert_eq!(view["agency_kind"], "fire");

    let (status, body) = answer(&w, &w.owner, g, &secret, "approve").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["grant_status"], "live");
    let (status, t) = token(&w, g).await;
    assert_eq!(status, 201, "a token under the approved grant: {t}");
    // The window starts at the answer.
    let (_, live) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/grants/{g}"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    let starts: chrono::DateTime<Utc> = live["starts_at"].as_str().unwrap().parse().unwrap();
    assert!(starts >= w.now() - Duration::seconds(1), "{live}");

    // The link answers once: a replay (approve or refuse) changes nothing.
    assert_eq!(answer(&w, &w.owner, g, &secret, "refuse").await.0, 409);
    assert_eq!(answer(&w, &w.owner, g, &secret, "approve").await.0, 409);
    assert_eq!(grant_status(&w, g).await, "live");
    let states = console_states(&w, g).await;
    assert_eq!(states[0]["consent"], "the homeowner approved");
    assert_eq!(audit(&w, "consent.approve").await.len(), 1);
    let mut denials: Vec<String> = audit(&w, "consent.deny")
        .await
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect();
    denials.sort();
    assert_eq!(
        denials,
        ["already_answered", "already_answered", "wrong_link"]
    );
    // The secret is in no audit entry.
    let client = w.app.pool.get().await.unwrap();
    let leaked: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%' || $1 || '%'",
            &[&secret],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
}

#[tokio::test]
async fn refuse_ends_the_grant_unused_and_no_token_is_minted() {
    let w = world(json!({ "timeout_seconds": 180, "fallback": "proceed" })).await;
    let g = id(&ask(&w, "26-0002").await);
    let secret = mailed_secret(&w.app, "owner@a.example", "consent.request")
        .await
        .unwrap();
    w.advance(Duration::seconds(2));
    w.restep_all().await;
    let (status, body) = answer(&w, &w.owner, g, &secret, "refuse").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "refused");
    assert_eq!(grant_status(&w, g).await, "refused");
    assert_eq!(token(&w, g).await.0, 404);
    // Neither the deadline nor a second dispatcher brings it back.
    w.advance(Duration::seconds(600));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(grant_status(&w, g).await, "refused");
    let (status, _) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{g}/approve"),
        Some(&w.dispatcher2),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(console_states(&w, g).await[0]["state"], "refused");
    assert_eq!(audit(&w, "consent.refuse").await.len(), 1);
    assert!(audit(&w, "consent.timeout").await.is_empty());
}

#[tokio::test]
async fn without_an_answer_the_plan_says_proceed_and_exactly_one_replica_applies_it() {
    let w = world(json!({ "timeout_seconds": 30, "fallback": "proceed" })).await;
    let g = id(&ask(&w, "26-0003").await);
    let secret = mailed_secret(&w.app, "owner@a.example", "consent.request")
        .await
        .unwrap();
    // Not yet due: the loops leave it.
    w.advance(Duration::seconds(29));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(grant_status(&w, g).await, "awaiting_consent");
    w.advance(Duration::seconds(2));
    assert_eq!(until_moved(&w, g).await, "live");
    w.restep_all().await;
    assert_eq!(token(&w, g).await.0, 201);
    // Both replicas ran their loop; one applied the fallback, once.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let timeouts = audit(&w, "consent.timeout").await;
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    assert_eq!(timeouts[0]["fallback"], "proceed");
    // Too late to answer now.
    let (status, body) = answer(&w, &w.owner, g, &secret, "refuse").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(grant_status(&w, g).await, "live");
    assert_eq!(
        console_states(&w, g).await[0]["consent"],
        "no answer from the homeowner: entry goes ahead"
    );
    // The second replica serves the same state.
    let response = w
        .app
        .http
        .get(format!("{}/api/v1/consents/{g}", w.other))
        .header("cookie", &w.owner.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    assert_eq!(view["state"], "timed_out");
}

#[tokio::test]
async fn without_an_answer_the_plan_says_second_dispatcher_and_the_queue_decides() {
    let w = world(json!({ "timeout_seconds": 15, "fallback": "second_dispatcher" })).await;
    let g = id(&ask(&w, "26-0004").await);
    w.advance(Duration::seconds(16));
    assert_eq!(until_moved(&w, g).await, "awaiting_approval");
    w.restep_all().await;
    assert_eq!(token(&w, g).await.0, 404, "no token before the approval");
    let path = format!("/api/v1/grants/{g}/approve");
    assert_eq!(
        call(&w.app, Method::POST, &path, Some(&w.dispatcher), None)
            .await
            .0,
        403,
        "not the creator"
    );
    let (status, body) = call(&w.app, Method::POST, &path, Some(&w.dispatcher2), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "live");
    assert_eq!(token(&w, g).await.0, 201);
    assert_eq!(
        audit(&w, "consent.timeout").await[0]["grant_status"],
        "awaiting_approval"
    );
}

#[tokio::test]
async fn a_plan_without_consent_grants_at_once_and_revoking_a_waiting_grant_withdraws_the_request()
{
    let w = world(Value::Null).await;
    let grant = ask(&w, "26-0005").await;
    assert_eq!(grant["status"], "live");
    assert!(
        mailed_secret(&w.app, "owner@a.example", "consent.request")
            .await
            .is_none()
    );
    // Now the owner asks for consent: the next grant waits, and a revocation withdraws the request.
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &format!("/api/v1/properties/{}/plan", w.property),
        Some(&w.owner),
        Some(plan(json!({ "fallback": "proceed" }))),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let g = id(&ask(&w, "26-0006").await);
    let secret = mailed_secret(&w.app, "owner@a.example", "consent.request")
        .await
        .unwrap();
    let (status, body) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{g}/revoke"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    w.advance(Duration::seconds(5));
    w.restep_all().await;
    assert_eq!(answer(&w, &w.owner, g, &secret, "approve").await.0, 409);
    assert_eq!(grant_status(&w, g).await, "revoked");
    // The default deadline is three minutes; after it nothing revives the revoked grant.
    w.advance(Duration::seconds(180));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(grant_status(&w, g).await, "revoked");
    // A bad timeout is refused at the boundary.
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &format!("/api/v1/properties/{}/plan", w.property),
        Some(&w.owner),
        Some(plan(json!({ "timeout_seconds": 5, "fallback": "proceed" }))),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn another_municipality_never_sees_or_answers_a_request() {
    let w = world(json!({ "timeout_seconds": 180, "fallback": "proceed" })).await;
    let g = id(&ask(&w, "26-0007").await);
    let secret = mailed_secret(&w.app, "owner@a.example", "consent.request")
        .await
        .unwrap();
    let client = w.app.pool.get().await.unwrap();
    let (elsewhere, _) = tenancy::ensure_municipality(
        &client,
        &Slug::parse("town-b").unwrap(),
        "Town B",
        Utc::now(),
    )
    .await
    .unwrap();
    drop(client);
    let stranger = user(
        &w.app,
        elsewhere,
        "owner@a.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    restep(&w.app, &stranger, w.now()).await;
    assert_eq!(answer(&w, &stranger, g, &secret, "approve").await.0, 404);
    assert_eq!(
        call(
            &w.app,
            Method::GET,
            &format!("/api/v1/consents/{g}"),
            Some(&stranger),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(grant_status(&w, g).await, "awaiting_consent");
}

#[tokio::test]
async fn the_mailed_link_opens_a_page_that_answers_with_the_passkey() {
    let w = world(json!({ "timeout_seconds": 180, "fallback": "proceed" })).await;
    let g = id(&ask(&w, "26-0008").await);
    let secret = mailed_secret(&w.app, "owner@a.example", "consent.request")
        .await
        .unwrap();
    let text: String = w
        .app
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT body_text FROM notification_outbox WHERE kind = 'consent.request'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        text.contains(&format!("/consents/{g}#{secret}")) && text.contains("entry goes ahead"),
        "{text}"
    );
    let page = |who: Option<&As>| {
        let mut r = w.app.http.get(format!("{}/consents/{g}", w.app.address));
        if let Some(who) = who {
            r = r.header("cookie", &who.cookie);
        }
        r.send()
    };
    // Signed out: to the sign-in page, and back here afterwards.
    let signed_out = w
        .app
        .http
        .get(format!("{}/consents/{g}", w.app.address))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.url().path(), "/sign-in");
    assert_eq!(
        signed_out.url().query(),
        Some(format!("next=/consents/{g}").as_str())
    );
    let html = page(Some(&w.owner)).await.unwrap().text().await.unwrap();
    assert!(
        html.contains("Dispatch asks to enter 12 Elm Street"),
        "{html}"
    );
    assert!(html.contains("data-ceremony=\"consent\""), "{html}");
    assert!(html.contains("Smoke alarm, occupant not answering"));
    assert!(!html.contains(&secret), "the page never carries the secret");
    assert_eq!(page(Some(&w.other_owner)).await.unwrap().status(), 404);
    w.advance(Duration::seconds(3));
    w.restep_all().await;
    let posted = w
        .app
        .http
        .post(format!("{}/consents/{g}", w.app.address))
        .header("cookie", &w.owner.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .form(&[("secret", secret.as_str()), ("answer", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let html = posted.text().await.unwrap();
    assert!(html.contains("Approved."), "{html}");
    assert!(
        !html.contains("consent-approve"),
        "no buttons once answered"
    );
    assert_eq!(grant_status(&w, g).await, "live");
    // The same link again: refused on the page too.
    let again = w
        .app
        .http
        .post(format!("{}/consents/{g}", w.app.address))
        .header("cookie", &w.owner.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .form(&[("secret", secret.as_str()), ("answer", "refuse")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert!(again.text().await.unwrap().contains("already answered"));
}

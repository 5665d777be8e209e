//! Emergency entry over HTTP: incidents, grants (with second approval), override tokens verified as
//! a lock would (trust bundle, proof of possession with the responder's key), revocation and incident
//! close, the HMAC-signed idempotent CAD integration, and issuer key rotation.
//!
//! Sessions are made directly in the database as in `access`; a responder's step-up credential holds
//! the real P-256 public key of a software authenticator, so the token's `cnf` can be proven at the
//! "door" with real crypto.

use std::sync::Arc;

use chrono::{Duration, Utc};
use firstkey::audit::{self, ChainCheck};
use firstkey::clock::SystemClock;
use firstkey::domain::{AgencyKind, Role, Slug};
use firstkey::emergency::{cad, keys};
use firstkey::http::Application;
use firstkey::store::{Tenant, tenancy};
use firstkey_token::pop::FLAG_USER_PRESENT;
use firstkey_token::{
    Challenge, LockId, LockView, Presentation, Refusal, RootPublicKey, SoftwareAuthenticator,
    TokenHash, TokenId, TrustBundle, VerifiedToken, VerifyOptions, pop_message, token_hash,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{As, TestApp, admin_config, call, fresh_database, test_settings, user};

const RP_ID: &str = "localhost";

pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) tenant: Tenant,
    pub(crate) key_dir: std::path::PathBuf,
    pub(crate) _tmp: tempfile::TempDir,
    /// A fire dispatcher; `police_desk` opens the police incidents (dispatchers open incidents
    /// for their own agency only).
    pub(crate) dispatcher: As,
    pub(crate) police_desk: As,
    pub(crate) dispatcher2: As,
    pub(crate) dispatcher_plain: As,
    pub(crate) responder: As,
    pub(crate) responder2: As,
    pub(crate) responder_plain: As,
    pub(crate) admin: As,
    pub(crate) owner: As,
    pub(crate) fire: Uuid,
    pub(crate) police: Uuid,
    pub(crate) property: Uuid,
    pub(crate) lock: Uuid,
    pub(crate) other_lock: Uuid,
    pub(crate) bundle: TrustBundle,
}

async fn spawn_with_keys(key_dir: &std::path::Path) -> TestApp {
    let db = fresh_database().await;
    let mut config = admin_config();
    config.dbname(&db);
    let mut settings = test_settings(config.clone());
    settings.key_dir = key_dir.to_path_buf();
    let app_pool = firstkey::store::pool(config.clone(), settings.db_pool_size).unwrap();
    let app = Application::build(settings, app_pool, Arc::new(SystemClock)).unwrap();
    let address = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        pool: firstkey::store::pool(config, 2).unwrap(),
        http: reqwest::Client::new(),
        proxy: None,
        database: db,
    }
}

fn plan() -> Value {
    json!({
        "agencies": {
            "fire": { "allowed": true, "incident_types": ["fire", "medical"] },
            "ems": { "allowed": true, "incident_types": ["medical"] },
            "police": { "allowed": true, "incident_types": ["welfare_check"], "second_approval": true }
        },
        "max_grant_minutes": 60,
        "notes": { "pets": "Two dogs" },
        "contacts": [{ "name": "Sam Neighbour", "email": "sam@example.org" }],
        "notifications": { "homeowner": true, "contacts": true },
        "retention_days": 365
    })
}

async fn paired_lock(app: &TestApp, tenant: Tenant, property: Uuid, name: &str) -> Uuid {
    let client = app.pool.get().await.unwrap();
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at)
             VALUES ($1, $2, $3, $4, 'paired', $5, now(), now())",
            &[&id, &tenant.id(), &property, &name, &Uuid::new_v4().as_bytes().repeat(2)],
        )
        .await
        .unwrap();
    id
}

async fn property(app: &TestApp, owner: &As, address: &str) -> Uuid {
    let (status, body) = call(
        app,
        Method::POST,
        "/api/v1/properties",
        Some(owner),
        Some(json!({ "address": address })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = call(
        app,
        Method::PUT,
        &format!("/api/v1/properties/{id}/plan"),
        Some(owner),
        Some(plan()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    id
}

pub(crate) async fn world() -> World {
    world_with(false).await
}

/// The world; with `slug_bundle`, its first trust bundle is one made before V26: issuer = the
/// municipality's slug (and no `issuer_id_since`).
async fn world_with(slug_bundle: bool) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let key_dir = tmp.path().join("keys");
    let app = spawn_with_keys(&key_dir).await;
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
    let police = tenancy::ensure_agency(&client, tenant, AgencyKind::Police, "A Police", now)
        .await
        .unwrap()
        .id;
    keys::generate(&mut client, tenant, &key_dir, now)
        .await
        .unwrap();
    drop(client);
    let owner = user(&app, tenant, "owner@a.example", None, Role::Homeowner, true).await;
    let property_id = property(&app, &owner, "12 Elm Street").await;
    let other_property = property(&app, &owner, "14 Elm Street").await;
    let lock = paired_lock(&app, tenant, property_id, "Front door").await;
    let other_lock = paired_lock(&app, tenant, other_property, "Front door").await;
    let responder = user(
        &app,
        tenant,
        "e7a@a.example",
        Some(fire),
        Role::Responder,
        true,
    )
    .await;
    let responder2 = user(
        &app,
        tenant,
        "e7b@a.example",
        Some(fire),
        Role::Responder,
        true,
    )
    .await;
    let bundle = if slug_bundle {
        legacy_slug_bundle(&app, tenant, &tmp.path().join("root.pk8"), now).await
    } else {
        bundle(&app, tenant, &tmp.path().join("root.pk8"), now).await
    };
    World {
        dispatcher: user(
            &app,
            tenant,
            "d1@a.example",
            Some(fire),
            Role::Dispatcher,
            true,
        )
        .await,
        police_desk: user(
            &app,
            tenant,
            "d4@a.example",
            Some(police),
            Role::Dispatcher,
            true,
        )
        .await,
        dispatcher2: user(&app, tenant, "d2@a.example", None, Role::Dispatcher, true).await,
        dispatcher_plain: user(&app, tenant, "d3@a.example", None, Role::Dispatcher, false).await,
        responder_plain: As {
            id: responder.id,
            ..user(
                &app,
                tenant,
                "e7a@a.example",
                Some(fire),
                Role::Responder,
                false,
            )
            .await
        },
        responder,
        responder2,
        admin: user(
            &app,
            tenant,
            "admin@a.example",
            None,
            Role::MunicipalAdmin,
            true,
        )
        .await,
        owner,
        app,
        tenant,
        key_dir,
        _tmp: tmp,
        fire,
        police,
        property: property_id,
        lock,
        other_lock,
        bundle,
    }
}

/// Builds (or rebuilds) the trust bundle with the root key at `root` (generated on first use).
async fn bundle(
    app: &TestApp,
    tenant: Tenant,
    root: &std::path::Path,
    now: chrono::DateTime<Utc>,
) -> TrustBundle {
    if !root.exists() {
        keys::root_generate(root).unwrap();
    }
    let pair = keys::load_pair(root).unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .unwrap();
    let mut client = app.pool.get().await.unwrap();
    let built = keys::bundle(&mut client, tenant, &pair, RP_ID, now)
        .await
        .unwrap();
    TrustBundle::verify(&built.bytes, &RootPublicKey(public)).unwrap()
}

/// Version 1 of the trust bundle as `keys::bundle` made it before V26 (issuer = the slug), stored
/// and queued as it did (the root key pinned, the bundle in every lock's inbox).
async fn legacy_slug_bundle(
    app: &TestApp,
    tenant: Tenant,
    root: &std::path::Path,
    now: chrono::DateTime<Utc>,
) -> TrustBundle {
    keys::root_generate(root).unwrap();
    let pair = keys::load_pair(root).unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .unwrap();
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT s.slug, k.kid, k.public_key FROM municipalities s
             JOIN signing_keys k ON k.municipality_id = s.id WHERE s.id = $1",
            &[&tenant.id()],
        )
        .await
        .unwrap();
    let (slug, kid, key): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    let bytes = firstkey_token::mint_bundle(
        &firstkey_token::BundleContents {
            issuer: slug,
            version: 1,
            rp_id: RP_ID.into(),
            keys: vec![firstkey_token::IssuerKey {
                kid: firstkey_token::KeyId::parse(kid.as_bytes()).unwrap(),
                public_key: key.try_into().unwrap(),
            }],
            former_issuer: None,
        },
        &pair,
    )
    .unwrap();
    client
        .execute(
            "UPDATE municipalities SET root_public_key = $2 WHERE id = $1",
            &[&tenant.id(), &public.to_vec()],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO trust_bundles (municipality_id, version, bundle, created_at) VALUES ($1, 1, $2, $3)",
            &[&tenant.id(), &bytes, &now],
        )
        .await
        .unwrap();
    TrustBundle::verify(&bytes, &RootPublicKey(public)).unwrap()
}

pub(crate) async fn open_incident(w: &World, cad: &str, kind: &str, agency: Uuid) -> Uuid {
    let desk = if agency == w.police {
        &w.police_desk
    } else {
        &w.dispatcher
    };
    let (status, body) = call(
        &w.app,
        Method::POST,
        "/api/v1/incidents",
        Some(desk),
        Some(json!({ "cad_number": cad, "kind": kind, "address": "12 Elm Street", "agency": agency })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

pub(crate) async fn grant(w: &World, incident: Uuid, who: &As, body: Value) -> (u16, Value) {
    call(
        &w.app,
        Method::POST,
        &format!("/api/v1/incidents/{incident}/grants"),
        Some(who),
        Some(body),
    )
    .await
}

fn grant_body(w: &World, property: Uuid) -> Value {
    json!({
        "property": property,
        "responders": [w.responder.id],
        "minutes": 30,
        "justification": "Smoke alarm, occupant not answering"
    })
}

pub(crate) async fn live_fire_grant(w: &World) -> (Uuid, Uuid) {
    let incident = open_incident(w, "25-04711", "fire", w.fire).await;
    let (status, body) = grant(w, incident, &w.dispatcher, grant_body(w, w.property)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "live");
    (incident, body["id"].as_str().unwrap().parse().unwrap())
}

pub(crate) async fn request_token(w: &World, who: &As, grant: Uuid, lock: Uuid) -> (u16, Value) {
    call(
        &w.app,
        Method::POST,
        "/api/v1/tokens",
        Some(who),
        Some(json!({ "grant": grant, "lock": lock })),
    )
    .await
}

/// A lock's state for verification: nothing used, nothing revoked, clock floor 0.
struct Door {
    id: LockId,
    revoked: Vec<TokenHash>,
}

impl LockView for Door {
    fn lock_id(&self) -> &LockId {
        &self.id
    }
    fn time_floor(&self) -> u64 {
        0
    }
    fn is_revoked(&self, token_hash: &TokenHash) -> bool {
        self.revoked.contains(token_hash)
    }
    fn uses(&self, _: &TokenId) -> u32 {
        0
    }
}

pub(crate) fn token_bytes(body: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body["token"].as_str().unwrap())
        .unwrap()
}

/// Presents a token at `lock` as the holder of `key` would.
pub(crate) fn tap(
    bundle: &TrustBundle,
    lock: Uuid,
    bytes: &[u8],
    key: &SoftwareAuthenticator,
    revoked: Vec<TokenHash>,
) -> Result<VerifiedToken, Refusal> {
    let door = Door {
        id: LockId::parse(&lock.to_string()).unwrap(),
        revoked,
    };
    let challenge = Challenge([7u8; 32]);
    let message = pop_message(&challenge, &door.id, &token_hash(bytes));
    let proof = key
        .assert(
            &message,
            FLAG_USER_PRESENT,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap()
        .to_cbor();
    let now = u64::try_from(Utc::now().timestamp()).unwrap();
    firstkey_token::verify(
        bytes,
        bundle,
        &door,
        &Presentation {
            challenge: &challenge,
            proof: Some(&proof),
        },
        now,
        &VerifyOptions::default(),
    )
}

pub(crate) async fn audit_actions(w: &World) -> Vec<(String, String, Option<String>)> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT action, outcome, encode(policy_set_hash, 'hex') FROM audit_entries
             WHERE municipality_id = $1 ORDER BY seq",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

pub(crate) async fn mails(w: &World, kind: &str) -> Vec<String> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT recipient FROM notification_outbox WHERE municipality_id = $1 AND kind = $2 ORDER BY recipient",
            &[&w.tenant.id(), &kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn inbox(w: &World, lock: Uuid) -> Vec<(String, Vec<u8>)> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT kind, payload FROM lock_inbox WHERE lock_id = $1 ORDER BY seq",
            &[&lock],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn dispatcher_grants_and_responder_gets_a_token_the_lock_accepts() {
    let w = world().await;
    let incident = open_incident(&w, "25-04711", "fire", w.fire).await;

    // Without a fresh step-up the dispatcher is told to step up; nothing is granted.
    let (status, _) = grant(
        &w,
        incident,
        &w.dispatcher_plain,
        grant_body(&w, w.property),
    )
    .await;
    assert_eq!(status, 401);
    // Longer than the plan allows: the policy refuses (learning nothing).
    let mut long = grant_body(&w, w.property);
    long["minutes"] = json!(61);
    assert_eq!(grant(&w, incident, &w.dispatcher, long).await.0, 404);
    // A responder cannot grant.
    assert_eq!(
        grant(&w, incident, &w.responder, grant_body(&w, w.property))
            .await
            .0,
        404
    );

    let (status, g) = grant(&w, incident, &w.dispatcher, grant_body(&w, w.property)).await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["status"], "live");
    assert_eq!(g["plan_version"], 1);
    assert_eq!(g["responders"], json!([w.responder.id]));
    let grant_id: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    let ends_at: chrono::DateTime<Utc> = g["ends_at"].as_str().unwrap().parse().unwrap();
    assert!(ends_at - Utc::now() <= Duration::minutes(30));
    let policy_hash = g["policy_set_hash"].as_str().unwrap().to_owned();
    assert_eq!(policy_hash.len(), 64);
    let client = w.app.pool.get().await.unwrap();
    let plan_id: Uuid = client
        .query_one(
            "SELECT id FROM access_plans WHERE property_id = $1 AND version = 1",
            &[&w.property],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(g["plan_id"], json!(plan_id));
    assert_eq!(
        mails(&w, "grant.created").await,
        vec!["owner@a.example".to_owned(), "sam@example.org".to_owned()]
    );

    // The responder sees the grant with the property's lock.
    let (status, mine) = call(
        &w.app,
        Method::GET,
        "/api/v1/responder/grants",
        Some(&w.responder),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(mine[0]["grant_id"], json!(grant_id));
    assert_eq!(mine[0]["locks"][0]["id"], json!(w.lock));

    let (status, t) = request_token(&w, &w.responder, grant_id, w.lock).await;
    assert_eq!(status, 201, "{t}");
    let bytes = token_bytes(&t);
    let key = w.responder.key.as_ref().unwrap();
    let verified = tap(&w.bundle, w.lock, &bytes, key, vec![]).expect("the lock accepts it");
    let claims = verified.claims();
    // Every bundle of this municipality names its short issuer id (V26), so tokens do too.
    let issuer_id: String = client
        .query_one(
            "SELECT issuer_id FROM municipalities WHERE id = $1",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims.issuer, issuer_id);
    assert_eq!(w.bundle.issuer(), issuer_id);
    assert_eq!(w.bundle.former_issuer(), None);
    assert_eq!(claims.audience.as_str(), w.lock.to_string());
    assert_eq!(claims.subject, w.responder.id.to_string());
    assert_eq!(claims.incident, "25-04711");
    assert_eq!(claims.grant.0, *grant_id.as_bytes());
    assert_eq!(claims.max_uses, 1);
    assert!(claims.expires_at - claims.not_before <= 600);
    assert_eq!(claims.confirmation, Some(key.confirmation_key()));
    // Someone else's key cannot use it (proof of possession), nor can another lock.
    let other_key = w.responder2.key.as_ref().unwrap();
    assert!(tap(&w.bundle, w.lock, &bytes, other_key, vec![]).is_err());
    assert!(tap(&w.bundle, w.other_lock, &bytes, key, vec![]).is_err());

    // Recorded, audited, queued, mailed — and nothing else carries the token.
    let row = client
        .query_one(
            "SELECT grant_id, lock_id, responder_id, kid, token_hash, status FROM issued_tokens WHERE cti = $1",
            &[&hex::decode(t["token_id"].as_str().unwrap()).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), grant_id);
    assert_eq!(row.get::<_, Uuid>(1), w.lock);
    assert_eq!(row.get::<_, Uuid>(2), w.responder.id);
    assert_eq!(row.get::<_, String>(3), t["kid"].as_str().unwrap());
    assert_eq!(row.get::<_, Vec<u8>>(4), token_hash(&bytes).0.to_vec());
    assert_eq!(row.get::<_, String>(5), "issued");
    assert_eq!(
        inbox(&w, w.lock).await.last().unwrap(),
        &("token".to_owned(), bytes.clone())
    );
    assert_eq!(mails(&w, "token.issued").await.len(), 2);
    let actions = audit_actions(&w).await;
    let find = |a: &str| actions.iter().find(|(x, _, _)| x == a).cloned();
    let (_, outcome, hash) = find("grant.create").expect("grant audited");
    assert_eq!(
        (outcome.as_str(), hash.as_deref()),
        ("allow", Some(policy_hash.as_str()))
    );
    let (_, outcome, hash) = find("token.issue").expect("token audited");
    assert_eq!(outcome, "allow");
    assert!(hash.is_some());
    assert!(find("incident.open").is_some());
    assert!(
        actions
            .iter()
            .any(|(a, o, _)| a == "policy.deny" && o == "deny"),
        "the refused grants were audited"
    );
    let token_text = t["token"].as_str().unwrap();
    let leaked = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%' || $1 || '%'",
            &[&token_text],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(leaked, 0);
    assert!(matches!(
        audit::verify_chain(&client, w.tenant).await.unwrap(),
        ChainCheck::Intact { .. }
    ));
}

#[tokio::test]
async fn a_plan_asking_for_second_approval_needs_another_dispatcher() {
    let w = world().await;
    let police_officer = user(
        &w.app,
        w.tenant,
        "p1@a.example",
        Some(w.police),
        Role::Responder,
        true,
    )
    .await;
    let incident = open_incident(&w, "25-00001", "welfare_check", w.police).await;
    let (status, g) = grant(
        &w,
        incident,
        &w.dispatcher,
        json!({ "property": w.property, "responders": [police_officer.id], "minutes": 20,
                "justification": "Welfare check requested by family" }),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["status"], "awaiting_approval");
    let grant_id: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    assert!(
        mails(&w, "grant.created").await.is_empty(),
        "no mail before approval"
    );
    assert_eq!(
        request_token(&w, &police_officer, grant_id, w.lock).await.0,
        404
    );

    let path = format!("/api/v1/grants/{grant_id}/approve");
    let approve = |who| call(&w.app, Method::POST, &path, Some(who), None);
    assert_eq!(
        approve(&w.dispatcher).await.0,
        403,
        "the creator cannot approve"
    );
    assert_eq!(
        approve(&w.dispatcher_plain).await.0,
        401,
        "approval needs step-up"
    );
    assert_eq!(approve(&w.responder).await.0, 404);
    let (status, g) = approve(&w.dispatcher2).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["status"], "live");
    assert_eq!(g["approved_by"], json!(w.dispatcher2.id));
    assert_eq!(approve(&w.dispatcher2).await.0, 409, "approved once");
    assert_eq!(mails(&w, "grant.created").await.len(), 2);
    let (status, t) = request_token(&w, &police_officer, grant_id, w.lock).await;
    assert_eq!(status, 201, "{t}");
    assert!(
        audit_actions(&w)
            .await
            .iter()
            .any(|(a, o, h)| a == "grant.approve" && o == "allow" && h.is_some())
    );

    // A fire responder cannot be named under a police incident.
    let (status, _) = grant(
        &w,
        incident,
        &w.dispatcher,
        json!({ "property": w.property, "responders": [w.responder.id], "minutes": 20,
                "justification": "x" }),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tokens_are_refused_outside_a_live_grant_of_ones_own() {
    let w = world().await;
    let (incident, grant_id) = live_fire_grant(&w).await;

    // Someone else's grant, another property's lock, a grant id that does not exist: all 404.
    assert_eq!(
        request_token(&w, &w.responder2, grant_id, w.lock).await.0,
        404
    );
    assert_eq!(
        request_token(&w, &w.responder, grant_id, w.other_lock)
            .await
            .0,
        404
    );
    assert_eq!(
        request_token(&w, &w.responder, Uuid::new_v4(), w.lock)
            .await
            .0,
        404
    );
    // No fresh assertion: step up first.
    assert_eq!(
        request_token(&w, &w.responder_plain, grant_id, w.lock)
            .await
            .0,
        401
    );
    let client = w.app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = now() - interval '10 minutes' WHERE user_id = $1",
            &[&w.responder.id],
        )
        .await
        .unwrap();
    assert_eq!(
        request_token(&w, &w.responder, grant_id, w.lock).await.0,
        401
    );
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = now() WHERE user_id = $1 AND step_up_credential IS NOT NULL",
            &[&w.responder.id],
        )
        .await
        .unwrap();
    let (status, t) = request_token(&w, &w.responder, grant_id, w.lock).await;
    assert_eq!(status, 201, "{t}");
    let first = token_bytes(&t);

    // Revocation: the grant is revoked, its token revoked at the lock, no new token.
    let (status, g) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{grant_id}/revoke"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["status"], "revoked");
    assert_eq!(g["end_reason"], "revoked");
    assert_eq!(
        request_token(&w, &w.responder, grant_id, w.lock).await.0,
        404
    );
    let (kind, payload) = inbox(&w, w.lock).await.last().cloned().unwrap();
    assert_eq!(kind, "revocation");
    assert_eq!(&payload[..32], &token_hash(&first).0);
    let status: String = client
        .query_one(
            "SELECT status FROM issued_tokens WHERE token_hash = $1",
            &[&token_hash(&first).0.to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "revoked");
    let key = w.responder.key.as_ref().unwrap();
    assert_eq!(
        tap(&w.bundle, w.lock, &first, key, vec![token_hash(&first)]).unwrap_err(),
        Refusal::Revoked
    );
    assert_eq!(mails(&w, "grant.revoked").await.len(), 2);

    // Incident close: a second live grant ends with it, its token is revoked at the lock.
    let (status, g) = grant(&w, incident, &w.dispatcher, grant_body(&w, w.property)).await;
    assert_eq!(status, 201, "{g}");
    let second_grant: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    let (status, t) = request_token(&w, &w.responder, second_grant, w.lock).await;
    assert_eq!(status, 201);
    let second = token_bytes(&t);
    let (status, _) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/incidents/{incident}/close"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, g) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/grants/{second_grant}"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(g["status"], "ended");
    assert_eq!(g["end_reason"], "incident_closed");
    assert_eq!(
        request_token(&w, &w.responder, second_grant, w.lock)
            .await
            .0,
        404
    );
    let (kind, payload) = inbox(&w, w.lock).await.last().cloned().unwrap();
    assert_eq!(kind, "revocation");
    assert_eq!(&payload[..32], &token_hash(&second).0);
    assert_eq!(mails(&w, "grant.ended").await.len(), 2);
    // A closed incident takes no new grants.
    assert_eq!(
        grant(&w, incident, &w.dispatcher, grant_body(&w, w.property))
            .await
            .0,
        409
    );
}

pub(crate) struct Cad {
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

pub(crate) async fn cad_credential(w: &World) -> Cad {
    let (status, body) = call(
        &w.app,
        Method::POST,
        "/api/v1/admin/cad-credentials",
        Some(&w.admin),
        Some(json!({ "name": "Primary CAD" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    Cad {
        key_id: body["key_id"].as_str().unwrap().to_owned(),
        secret: body["secret"].as_str().unwrap().to_owned(),
    }
}

pub(crate) async fn cad_post(
    w: &World,
    cad: &Cad,
    path: &str,
    idempotency_key: &str,
    body: &[u8],
    timestamp: i64,
    secret: &str,
) -> reqwest::Response {
    let ts = timestamp.to_string();
    let signature = cad::sign(
        secret,
        &cad::string_to_sign("POST", path, &ts, idempotency_key, body),
    );
    w.app
        .http
        .post(format!("{}{path}", w.app.address))
        .header("content-type", "application/json")
        .header(cad::KEY_ID_HEADER, &cad.key_id)
        .header(cad::TIMESTAMP_HEADER, ts)
        .header(cad::SIGNATURE_HEADER, signature)
        .header(cad::IDEMPOTENCY_HEADER, idempotency_key)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cad_calls_are_signed_fresh_and_idempotent() {
    let w = world().await;
    let cad = cad_credential(&w).await;
    let client = w.app.pool.get().await.unwrap();
    let stored: Vec<u8> = client
        .query_one(
            "SELECT wrapped_secret FROM api_credentials WHERE key_id = $1",
            &[&cad.key_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !stored
            .windows(cad.secret.len())
            .any(|win| win == cad.secret.as_bytes())
    );

    let body = serde_json::to_vec(&json!({
        "cad_number": "25-09999", "kind": "fire", "address": "12 Elm Street", "agency": w.fire
    }))
    .unwrap();
    let now = Utc::now().timestamp();
    let path = "/api/v1/cad/incidents";
    let c = &client;
    let count = || async move {
        c.query_one(
            "SELECT count(*) FROM incidents WHERE cad_number = '25-09999'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };

    // Bad signature, stale or future timestamp, unknown key: 401, nothing created.
    assert_eq!(
        cad_post(&w, &cad, path, "k1", &body, now, "wrong-secret")
            .await
            .status(),
        401
    );
    assert_eq!(
        cad_post(&w, &cad, path, "k1", &body, now - 360, &cad.secret)
            .await
            .status(),
        401
    );
    assert_eq!(
        cad_post(&w, &cad, path, "k1", &body, now + 360, &cad.secret)
            .await
            .status(),
        401
    );
    let unknown = Cad {
        key_id: "cad_0000000000000000".to_owned(),
        secret: cad.secret.clone(),
    };
    assert_eq!(
        cad_post(&w, &unknown, path, "k1", &body, now, &cad.secret)
            .await
            .status(),
        401
    );
    // A signature over another idempotency key does not carry over.
    let ts = now.to_string();
    let signature = cad::sign(
        &cad.secret,
        &cad::string_to_sign("POST", path, &ts, "k1", &body),
    );
    let replayed = w
        .app
        .http
        .post(format!("{}{path}", w.app.address))
        .header(cad::KEY_ID_HEADER, &cad.key_id)
        .header(cad::TIMESTAMP_HEADER, &ts)
        .header(cad::SIGNATURE_HEADER, signature)
        .header(cad::IDEMPOTENCY_HEADER, "k-other")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 401);
    assert_eq!(count().await, 0);

    // First call creates; the retry returns the same response and creates nothing.
    let first = cad_post(&w, &cad, path, "k1", &body, now, &cad.secret).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let retry = cad_post(&w, &cad, path, "k1", &body, now + 5, &cad.secret).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    assert_eq!(count().await, 1);
    // The same key with another body: conflict.
    let mut other = body.clone();
    other.extend_from_slice(b" ");
    assert_eq!(
        cad_post(&w, &cad, path, "k1", &other, now, &cad.secret)
            .await
            .status(),
        409
    );
    // Another key for the same CAD number: the incident exists.
    assert_eq!(
        cad_post(&w, &cad, path, "k2", &body, now, &cad.secret)
            .await
            .status(),
        409
    );
    assert_eq!(count().await, 1);

    // CAD closes it, once.
    let close = "/api/v1/cad/incidents/25-09999/close";
    let closed = cad_post(&w, &cad, close, "c1", b"", now, &cad.secret).await;
    assert_eq!(closed.status(), 200);
    let closed: Value = closed.json().await.unwrap();
    assert!(closed["closed_at"].is_string());
    let again = cad_post(&w, &cad, close, "c1", b"", now, &cad.secret).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), closed);
    let actions = audit_actions(&w).await;
    assert_eq!(
        actions
            .iter()
            .filter(|(a, _, _)| a == "incident.open")
            .count(),
        1
    );
    assert_eq!(
        actions
            .iter()
            .filter(|(a, _, _)| a == "incident.close")
            .count(),
        1
    );

    // Only step-up admins create credentials.
    let (status, _) = call(
        &w.app,
        Method::POST,
        "/api/v1/admin/cad-credentials",
        Some(&w.dispatcher),
        Some(json!({ "name": "x" })),
    )
    .await;
    assert_eq!(
        status, 404,
        "the policy: not an administrator, nothing to see"
    );
}

#[tokio::test]
async fn rotated_keys_verify_until_retired() {
    let w = world().await;
    let issuer = w.key_dir.join(keys::ISSUER_DIR);
    let client = w.app.pool.get().await.unwrap();
    let first_kid: String = client
        .query_one(
            "SELECT kid FROM signing_keys WHERE municipality_id = $1",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&w.key_dir), 0o700);
        assert_eq!(mode(&issuer), 0o700);
        assert_eq!(mode(&issuer.join(format!("{first_kid}.pk8"))), 0o600);
    }
    // The database holds the public half only (32 bytes), the file the private one.
    let public: Vec<u8> = client
        .query_one(
            "SELECT public_key FROM signing_keys WHERE kid = $1",
            &[&first_kid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(public.len(), 32);
    let mut admin_client = w.app.pool.get().await.unwrap();
    assert!(matches!(
        keys::generate(&mut admin_client, w.tenant, &w.key_dir, Utc::now()).await,
        Err(keys::KeyError::Refused(_))
    ));
    drop(client);
    // The bundle was queued for every lock.
    assert_eq!(inbox(&w, w.lock).await[0].0, "trust_bundle");
    assert_eq!(inbox(&w, w.other_lock).await[0].0, "trust_bundle");

    let (_, grant_id) = live_fire_grant(&w).await;
    let (status, t) = request_token(&w, &w.responder, grant_id, w.lock).await;
    assert_eq!(status, 201);
    assert_eq!(t["kid"], json!(first_kid));
    let old = token_bytes(&t);

    let now = Utc::now();
    let rotated = keys::rotate(
        &mut admin_client,
        w.tenant,
        &w.key_dir,
        Duration::hours(1),
        now,
    )
    .await
    .unwrap();
    assert_eq!(rotated.retiring.len(), 1);
    let root = w._tmp.path().join("root.pk8");
    let overlap_bundle = bundle(&w.app, w.tenant, &root, now).await;
    assert_eq!(overlap_bundle.version(), 2);
    let key = w.responder.key.as_ref().unwrap();
    assert!(
        tap(&overlap_bundle, w.lock, &old, key, vec![]).is_ok(),
        "old key still trusted"
    );
    let (status, t) = request_token(&w, &w.responder, grant_id, w.lock).await;
    assert_eq!(status, 201);
    assert_eq!(t["kid"], json!(rotated.kid), "minting uses the newest key");
    let new = token_bytes(&t);
    assert!(tap(&overlap_bundle, w.lock, &new, key, vec![]).is_ok());
    assert!(
        tap(&w.bundle, w.lock, &new, key, vec![]).is_err(),
        "the first bundle does not know it"
    );

    // After the overlap the old key is retired: left out of the bundle, its file deleted.
    let later = now + Duration::hours(2);
    let after = bundle(&w.app, w.tenant, &root, later).await;
    assert_eq!(after.version(), 3);
    assert_eq!(
        tap(&after, w.lock, &old, key, vec![]).unwrap_err(),
        Refusal::UnknownKey
    );
    assert!(tap(&after, w.lock, &new, key, vec![]).is_ok());
    assert_eq!(
        keys::prune_retired(&admin_client, w.tenant, &w.key_dir, later)
            .await
            .unwrap(),
        1
    );
    assert!(!issuer.join(format!("{first_kid}.pk8")).exists());
    assert_eq!(
        keys::current_signing_key(&admin_client, w.tenant, &w.key_dir, later)
            .await
            .unwrap()
            .kid,
        rotated.kid
    );
}

#[tokio::test]
async fn a_unit_grant_names_the_units_active_responders() {
    let w = world().await;
    let client = w.app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE users SET unit = 'Engine 7' WHERE id = ANY($1)",
            &[&vec![w.responder.id, w.responder2.id]],
        )
        .await
        .unwrap();
    let incident = open_incident(&w, "25-04712", "medical", w.fire).await;
    let body = |unit: &str| json!({ "property": w.property, "unit": unit, "minutes": 15, "justification": "Fall, no answer" });
    let (status, g) = grant(&w, incident, &w.dispatcher, body("Engine 7")).await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["unit"], "Engine 7");
    let mut expected = vec![w.responder.id, w.responder2.id];
    expected.sort();
    assert_eq!(g["responders"], json!(expected));
    let grant_id: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        request_token(&w, &w.responder2, grant_id, w.lock).await.0,
        201
    );
    // A unit with nobody in it, or both a unit and names: refused.
    assert_eq!(
        grant(&w, incident, &w.dispatcher, body("Ladder 9")).await.0,
        400
    );
    let mut both = body("Engine 7");
    both["responders"] = json!([w.responder.id]);
    assert_eq!(grant(&w, incident, &w.dispatcher, both).await.0, 400);
}

#[tokio::test]
async fn an_approval_re_decides_against_the_plan_in_force() {
    let w = world().await;
    let police_officer = user(
        &w.app,
        w.tenant,
        "p1@a.example",
        Some(w.police),
        Role::Responder,
        true,
    )
    .await;
    let incident = open_incident(&w, "25-00002", "welfare_check", w.police).await;
    let (status, g) = grant(
        &w,
        incident,
        &w.dispatcher,
        json!({ "property": w.property, "responders": [police_officer.id], "minutes": 20,
                "justification": "Welfare check requested by family" }),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["status"], "awaiting_approval");
    assert_eq!(g["plan_version"], 1);
    let grant_id: Uuid = g["id"].as_str().unwrap().parse().unwrap();

    // The homeowner takes police out of the plan while the grant waits.
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    let mut no_police = plan();
    no_police["agencies"]["police"] = json!({ "allowed": false });
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &plan_path,
        Some(&w.owner),
        Some(no_police),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 2);

    let path = format!("/api/v1/grants/{grant_id}/approve");
    let (status, body) = call(&w.app, Method::POST, &path, Some(&w.dispatcher2), None).await;
    assert_eq!(
        status, 409,
        "the plan in force no longer admits police: {body}"
    );
    let (_, g) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/grants/{grant_id}"),
        Some(&w.dispatcher2),
        None,
    )
    .await;
    assert_eq!(g["status"], "awaiting_approval", "{g}");
    assert_eq!(g["approved_by"], Value::Null);
    assert_eq!(
        request_token(&w, &police_officer, grant_id, w.lock).await.0,
        404,
        "no token under a refused approval"
    );
    let client = w.app.pool.get().await.unwrap();
    let refusals: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'policy.deny' AND actor_id = $1
               AND public_details->>'action' = 'create_grant' AND property_id = $2",
            &[&w.dispatcher2.id, &w.property],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refusals, 1, "the refused approval is audited");

    // Police back in (version 3): the approval goes through and records the version it was decided under.
    let (status, body) = call(
        &w.app,
        Method::PUT,
        &plan_path,
        Some(&w.owner),
        Some(plan()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, g) = call(&w.app, Method::POST, &path, Some(&w.dispatcher2), None).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["status"], "live");
    assert_eq!(g["plan_version"], 1, "the version it was requested under");
    assert_eq!(
        g["approved_plan_version"], 3,
        "the version it was approved under"
    );
    let (status, t) = request_token(&w, &police_officer, grant_id, w.lock).await;
    assert_eq!(status, 201, "{t}");
}

/// Row counts of every table: what "nothing changed" means for a refused request. The Merkle
/// tree's nodes and the signed checkpoints are left out: the sealer maintains them in the
/// background from entries that were already there (the entries themselves are counted).
async fn row_counts(w: &World) -> Vec<(String, i64)> {
    let client = w.app.pool.get().await.unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
               AND table_name NOT IN ('audit_tree_nodes', 'audit_checkpoints') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{t}\""), &[])
            .await
            .unwrap()
            .get(0);
        out.push((t, n));
    }
    out
}

#[tokio::test]
async fn a_nul_in_any_free_text_field_is_a_400_naming_it_and_changes_nothing() {
    let w = world().await;
    let cad = cad_credential(&w).await;
    let client = w.app.pool.get().await.unwrap();
    let incident = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO incidents (id, municipality_id, agency_id, cad_number, kind, address, opened_at)
             VALUES ($1, $2, $3, '26-77001', 'fire', '12 Elm Street', now())",
            &[&incident, &w.tenant.id(), &w.fire],
        )
        .await
        .unwrap();
    let before = row_counts(&w).await;
    let nul = "Front\u{0}door";
    let plan_with = |pointer: &str, value: &str| {
        let mut p = plan();
        *p.pointer_mut(pointer).unwrap() = json!(value);
        p
    };
    let mut plan_notes = plan();
    plan_notes["notes"] = json!({});
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    let grants_path = format!("/api/v1/incidents/{incident}/grants");
    let mut cases: Vec<(Method, String, Option<&As>, Value, &str)> = vec![
        (
            Method::POST,
            "/api/v1/properties".into(),
            Some(&w.owner),
            json!({ "address": nul }),
            "address",
        ),
        (
            Method::POST,
            format!("/api/v1/properties/{}/locks", w.property),
            Some(&w.owner),
            json!({ "lock_id": Uuid::new_v4(), "name": nul, "pairing_code": "ABCDE-12345" }),
            "name",
        ),
        (
            Method::PUT,
            plan_path.clone(),
            Some(&w.owner),
            plan_with("/contacts/0/name", nul),
            "contacts.name",
        ),
        (
            Method::PUT,
            plan_path.clone(),
            Some(&w.owner),
            plan_with("/contacts/0/email", "sam\u{0}@example.org"),
            "contacts.email",
        ),
        (
            Method::PUT,
            plan_path.clone(),
            Some(&w.owner),
            {
                let mut p = plan();
                p["contacts"][0]["phone"] = json!("+1\u{0}555");
                p
            },
            "contacts.phone",
        ),
        (
            Method::POST,
            "/api/v1/incidents".into(),
            Some(&w.dispatcher),
            json!({ "cad_number": "26-77002", "kind": "fire", "address": nul, "agency": w.fire }),
            "address",
        ),
        (
            Method::POST,
            grants_path.clone(),
            Some(&w.dispatcher),
            json!({ "property": w.property, "responders": [w.responder.id], "minutes": 30, "justification": nul }),
            "justification",
        ),
        (
            Method::POST,
            grants_path.clone(),
            Some(&w.dispatcher),
            json!({ "property": w.property, "unit": nul, "minutes": 30, "justification": "smoke" }),
            "unit",
        ),
        (
            Method::POST,
            "/api/v1/admin/cad-credentials".into(),
            Some(&w.admin),
            json!({ "name": nul }),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/invitations".into(),
            Some(&w.admin),
            json!({ "role": "responder", "agency_id": w.fire, "email": "new\u{0}@a.example", "display_name": "New" }),
            "email",
        ),
        (
            Method::POST,
            "/api/v1/invitations".into(),
            Some(&w.admin),
            json!({ "role": "responder", "agency_id": w.fire, "email": "new@a.example", "display_name": nul }),
            "display_name",
        ),
        (
            Method::POST,
            "/api/v1/accounts/sign-up".into(),
            None,
            json!({ "municipality": "town-a", "email": "home\u{0}@a.example", "display_name": "Home" }),
            "email",
        ),
        (
            Method::POST,
            "/api/v1/accounts/sign-up".into(),
            None,
            json!({ "municipality": "town-a", "email": "home@a.example", "display_name": nul }),
            "display_name",
        ),
        (
            Method::POST,
            "/api/v1/auth/sign-in/start".into(),
            None,
            json!({ "municipality": "town-a", "email": "d1\u{0}@a.example" }),
            "email",
        ),
    ];
    for field in [
        "pets",
        "hazards",
        "medical_equipment",
        "utilities",
        "free_text",
    ] {
        let mut p = plan_notes.clone();
        p["notes"][field] = json!(nul);
        cases.push((Method::PUT, plan_path.clone(), Some(&w.owner), p, "notes"));
    }
    for (method, path, who, body, field) in cases {
        let (status, problem) = call(&w.app, method.clone(), &path, who, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(field),
            "{method} {path}: names {field}: {detail}"
        );
    }
    let (status, problem) = call(
        &w.app,
        Method::GET,
        "/api/v1/dispatch/properties?q=Elm%00Street",
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().starts_with("q"),
        "{problem}"
    );
    let body = serde_json::to_vec(
        &json!({ "cad_number": "26-77003", "kind": "fire", "address": nul, "agency": w.fire }),
    )
    .unwrap();
    let response = cad_post(
        &w,
        &cad,
        "/api/v1/cad/incidents",
        "nul-1",
        &body,
        Utc::now().timestamp(),
        &cad.secret,
    )
    .await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().starts_with("address"),
        "{problem}"
    );

    let after = row_counts(&w).await;
    assert_eq!(before, after, "a refused request changes nothing");
}

// ------------------------------------------------------------------------------------------ a responder disabled

#[tokio::test]
async fn disabling_a_responder_ends_its_grants_and_revokes_its_tokens_at_the_locks() {
    let w = world().await;
    // A grant naming only the responder, and one naming it with a colleague.
    let (_, alone) = live_fire_grant(&w).await;
    let incident = open_incident(&w, "25-04799", "medical", w.fire).await;
    let mut body = grant_body(&w, w.property);
    body["responders"] = json!([w.responder.id, w.responder2.id]);
    let (status, g) = grant(&w, incident, &w.dispatcher, body).await;
    assert_eq!(status, 201, "{g}");
    let shared: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    let mut hashes = Vec::new();
    for (who, grant_id) in [
        (&w.responder, alone),
        (&w.responder, shared),
        (&w.responder2, shared),
    ] {
        let (status, t) = request_token(&w, who, grant_id, w.lock).await;
        assert_eq!(status, 201, "{t}");
        hashes.push(token_hash(&token_bytes(&t)).0.to_vec());
    }

    let (status, body) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/accounts/{}/disable", w.responder.id),
        Some(&w.admin),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let client = w.app.pool.get().await.unwrap();
    let grant_status = |id: Uuid| {
        let client = &client;
        async move {
            client
                .query_one("SELECT status FROM grants WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(grant_status(alone).await, "revoked", "its own grant ended");
    assert_eq!(
        grant_status(shared).await,
        "live",
        "the colleague keeps the shared grant"
    );
    let mut token_status = Vec::new();
    for hash in &hashes {
        token_status.push(
            client
                .query_one(
                    "SELECT status FROM issued_tokens WHERE token_hash = $1",
                    &[hash],
                )
                .await
                .unwrap()
                .get::<_, String>(0),
        );
    }
    assert_eq!(token_status, ["revoked", "revoked", "issued"]);
    // The lock is told about both of the responder's tokens, and only those.
    let revoked: Vec<Vec<u8>> = inbox(&w, w.lock)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "revocation")
        .map(|(_, payload)| payload[..32].to_vec())
        .collect();
    assert_eq!(revoked.len(), 2);
    assert!(revoked.contains(&hashes[0]) && revoked.contains(&hashes[1]));
    assert!(!revoked.contains(&hashes[2]));
    // The colleague still gets tokens under the shared grant.
    assert_eq!(
        request_token(&w, &w.responder2, shared, w.lock).await.0,
        201
    );
    let actions = audit_actions(&w).await;
    assert!(actions.iter().any(|(a, _, _)| a == "grant.revoke"));
    assert!(actions.iter().any(|(a, _, _)| a == "account.disabled"));
}

async fn keypad_code(w: &World, who: &As, grant: Uuid, body: Value) -> (u16, Value) {
    call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{grant}/keypad-codes"),
        Some(who),
        Some(body),
    )
    .await
}

/// Issue 11 §2: a dispatcher under a live grant, with step-up, issues a one-time keypad code the
/// lock verifies offline with the secret derived from the data key; it is audited with its
/// incident and mailed to the homeowner, its digits are stored nowhere, and revoking the grant
/// revokes it at the lock.
#[tokio::test]
async fn a_dispatcher_issues_a_keypad_code_under_a_live_grant_and_revoking_the_grant_revokes_it() {
    use firstkey_agent::keypad::{self, CodeSecret, FnLedger, KeypadView};
    let w = world().await;
    let (incident, grant_id) = live_fire_grant(&w).await;
    let body = json!({ "lock": w.lock, "minutes": 30 });
    // Not a dispatcher; no step-up; another property's lock; an unknown grant; bad lengths.
    assert_eq!(
        keypad_code(&w, &w.responder, grant_id, body.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        keypad_code(&w, &w.dispatcher_plain, grant_id, body.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        keypad_code(&w, &w.dispatcher, grant_id, json!({ "lock": w.other_lock }))
            .await
            .0,
        404
    );
    assert_eq!(
        keypad_code(&w, &w.dispatcher, Uuid::new_v4(), body.clone())
            .await
            .0,
        404
    );
    for minutes in [5, 121] {
        assert_eq!(
            keypad_code(
                &w,
                &w.dispatcher,
                grant_id,
                json!({ "lock": w.lock, "minutes": minutes })
            )
            .await
            .0,
            400
        );
    }
    let before = inbox(&w, w.lock).await;
    assert!(
        !before.iter().any(|(k, _)| k == "keypad_secret"),
        "a refusal changed nothing"
    );
    let codes: i64 = w
        .app
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM keypad_codes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(codes, 0, "a refusal changed nothing");

    let (status, issued) = keypad_code(&w, &w.dispatcher, grant_id, body.clone()).await;
    assert_eq!(status, 201, "{issued}");
    let (status, second) =
        keypad_code(&w, &w.dispatcher, grant_id, json!({ "lock": w.lock })).await;
    assert_eq!(status, 201, "{second}");
    let code = issued["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 19, "{code}");
    assert_ne!(code, second["code"].as_str().unwrap());
    let from =
        chrono::DateTime::parse_from_rfc3339(issued["not_before"].as_str().unwrap()).unwrap();
    let until =
        chrono::DateTime::parse_from_rfc3339(issued["not_after"].as_str().unwrap()).unwrap();
    assert_eq!((until - from).num_seconds(), 1800);
    assert!(from.timestamp() <= Utc::now().timestamp());

    // The lock's view: the secret the channel derives from the data key opens exactly this lock.
    // The test settings' data key (32 bytes of 0x2a).
    let kek = firstkey::crypto::Kek::from_bytes([0x2a; 32]);
    let secret: CodeSecret = firstkey::codes::SecretRoot::derive(&kek).lock_secret(w.lock, 1);
    let standing = std::collections::BTreeMap::new();
    let lock_id = w.lock.to_string();
    let view = KeypadView {
        lock_id: &lock_id,
        secret: Some(&secret),
        standing: &standing,
        floor: 0,
        skew: 60,
    };
    let now = u64::try_from(Utc::now().timestamp()).unwrap();
    let fresh = FnLedger(|_: &[u8; 16]| 0, |_: &[u8; 16]| false);
    let expect = keypad::incident_code(
        &secret,
        &lock_id,
        (
            u64::try_from(from.timestamp()).unwrap(),
            u64::try_from(until.timestamp()).unwrap(),
        ),
        0,
    )
    .unwrap()
    .0;
    assert_eq!(expect.display(), code, "the server's code is the lock's");
    let verdict = keypad::verify(&view, &code, now, &fresh);
    assert!(verdict.allows(), "{verdict:?}");
    let other = w.other_lock.to_string();
    assert!(
        !keypad::verify(
            &KeypadView {
                lock_id: &other,
                ..view
            },
            &code,
            now,
            &fresh
        )
        .allows()
    );
    let (code_id, _) = verdict.code.unwrap();

    // Recorded by id, audited with the incident, mailed; the secret goes to the lock as a
    // generation; the digits are nowhere.
    let client = w.app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT incident_id, grant_id, code_id FROM keypad_codes WHERE id = $1",
            &[&issued["id"].as_str().unwrap().parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), incident);
    assert_eq!(row.get::<_, Uuid>(1), grant_id);
    assert_eq!(row.get::<_, Vec<u8>>(2), code_id.to_vec());
    let audited: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'keypad_code.issue' AND incident_id = $1",
            &[&incident],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 2);
    assert!(
        audit_actions(&w)
            .await
            .iter()
            .any(|(a, o, _)| a == "policy.deny" && o == "deny")
    );
    assert_eq!(
        mails(&w, "keypad_code.issued").await.len(),
        4,
        "owner and contact, twice"
    );
    let entries = inbox(&w, w.lock).await;
    assert_eq!(
        entries
            .iter()
            .filter(|(k, p)| k == "keypad_secret" && p == &1i32.to_be_bytes())
            .count(),
        1
    );
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let leaks: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM notification_outbox WHERE body_text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM lock_inbox WHERE encode(payload, 'escape') LIKE '%' || $1 || '%')",
            &[&&digits[4..]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0);

    // The grant is revoked: both codes are revoked at the lock, and no new code is issued.
    let (status, g) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{grant_id}/revoke"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(keypad_code(&w, &w.dispatcher, grant_id, body).await.0, 404);
    let revoked: Vec<[u8; 32]> = inbox(&w, w.lock)
        .await
        .into_iter()
        .filter(|(k, _)| k == "revocation")
        .map(|(_, p)| p[..32].try_into().unwrap())
        .collect();
    assert!(revoked.contains(&keypad::revocation_key(&code_id)));
    let at_lock = FnLedger(
        |_: &[u8; 16]| 0,
        |id: &[u8; 16]| revoked.contains(&keypad::revocation_key(id)),
    );
    assert_eq!(
        keypad::verify(&view, &code, now, &at_lock).reason,
        keypad::REASON_KEYPAD_REVOKED
    );
}

/// A municipality whose locks pin its slug (bundles made before V26) moves to its short issuer id
/// lock by lock: the next bundle renames the issuer (the slug as former issuer), tokens for a lock
/// keep the slug until that lock reports the renaming bundle, and then carry the short id and are
/// shorter. No token is refused by a lock along the way; a lock still on the slug bundle would
/// refuse the short id, which is why the server waits for the report.
#[tokio::test]
async fn a_municipality_moves_its_locks_from_the_slug_to_a_short_issuer_id_lock_by_lock() {
    let w = world_with(true).await;
    let client = w.app.pool.get().await.unwrap();
    let issuer_id: String = client
        .query_one(
            "SELECT issuer_id FROM municipalities WHERE id = $1",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(issuer_id.len() < "town-a".len(), "{issuer_id}");
    let (_, grant) = live_fire_grant(&w).await;
    let key = w.responder.key.as_ref().unwrap();
    let token = |lock: Uuid| {
        let w = &w;
        async move {
            let (status, t) = request_token(w, &w.responder, grant, lock).await;
            assert_eq!(status, 201, "{t}");
            token_bytes(&t)
        }
    };
    let v1 = w.bundle.clone();
    assert_eq!(v1.issuer(), "town-a");
    let before = token(w.lock).await;
    assert_eq!(
        tap(&v1, w.lock, &before, key, vec![])
            .unwrap()
            .claims()
            .issuer,
        "town-a"
    );

    // The operator signs the next bundle: the rename.
    let v2_served = bundle(
        &w.app,
        w.tenant,
        &w._tmp.path().join("root.pk8"),
        Utc::now(),
    )
    .await;
    assert_eq!(v2_served.version(), 2);
    assert_eq!(v2_served.issuer(), issuer_id);
    assert_eq!(v2_served.former_issuer(), Some("town-a"));
    let since: Option<i64> = client
        .query_one(
            "SELECT issuer_id_since FROM municipalities WHERE id = $1",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(since, Some(2));
    // A lock on v1 takes it as its successor (the root signed the rename).
    let root = RootPublicKey(
        ring::signature::KeyPair::public_key(
            &keys::load_pair(&w._tmp.path().join("root.pk8")).unwrap(),
        )
        .as_ref()
        .try_into()
        .unwrap(),
    );
    let v2 = v1.accept_update(v2_served.as_bytes(), &root).unwrap();

    // Not reported yet: still the slug, which both bundles accept.
    let pending = token(w.lock).await;
    for trust in [&v1, &v2] {
        assert_eq!(
            tap(trust, w.lock, &pending, key, vec![])
                .unwrap()
                .claims()
                .issuer,
            "town-a"
        );
    }
    // The lock reports bundle 2 (its status message): now the short id, and shorter.
    report_bundle_version(&w, w.lock, 2).await;
    let after = token(w.lock).await;
    assert_eq!(
        tap(&v2, w.lock, &after, key, vec![])
            .unwrap()
            .claims()
            .issuer,
        issuer_id
    );
    assert_eq!(before.len() - after.len(), "town-a".len() - issuer_id.len());
    assert_eq!(
        tap(&v1, w.lock, &after, key, vec![]).unwrap_err(),
        Refusal::WrongIssuer,
        "what the server must not send to a lock still on the slug bundle"
    );
    // A lock that reported an older bundle, or nothing, keeps getting the slug.
    report_bundle_version(&w, w.lock, 1).await;
    let reported_old = token(w.lock).await;
    assert_eq!(
        tap(&v1, w.lock, &reported_old, key, vec![])
            .unwrap()
            .claims()
            .issuer,
        "town-a"
    );
}

/// What the channel records when a lock's status report names its bundle version
/// (`health::record`).
async fn report_bundle_version(w: &World, lock: Uuid, version: i64) {
    w.app
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE locks SET trust_bundle_version = $2 WHERE id = $1",
            &[&lock, &version],
        )
        .await
        .unwrap();
}

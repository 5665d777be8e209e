//! Trusted parties over HTTP (issue 11 §1): a homeowner invites a neighbour, who accepts through the
//! real invitation ceremony and then asks for tokens as a responder does; the tokens are verified
//! as the lock verifies them (trust bundle, audience, window, revocations, proof of possession).
//! Time is a test clock the server reads, so windows end without sleeping.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use firstkey::clock::Clock;
use firstkey::domain::{AgencyKind, Role, Slug};
use firstkey::emergency::keys;
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

use crate::auth_helpers::{TestKey, enrol, mailed_secret, soft_token, trust_ca};
use crate::helpers::{As, TestApp, admin_config, call, fresh_database, test_settings, user};

const RP_ID: &str = "localhost";
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A clock the test moves; sessions' step-ups are set to its time (see [`World::restep`]).
pub(crate) struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) clock: Arc<TestClock>,
    pub(crate) tenant: Tenant,
    pub(crate) _tmp: tempfile::TempDir,
    pub(crate) owner: As,
    pub(crate) owner_plain: As,
    pub(crate) dispatcher: As,
    pub(crate) property: Uuid,
    pub(crate) lock: Uuid,
    pub(crate) back_door: Uuid,
    pub(crate) other_lock: Uuid,
    pub(crate) bundle: TrustBundle,
}

impl World {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn advance(&self, by: Duration) {
        *self.clock.0.lock().unwrap() += by;
    }

    /// Dates the step-up of `who`'s sessions at the test clock's now (the helper made them on the
    /// wall clock, which has moved on).
    pub(crate) async fn restep(&self, who: &As) {
        restep(&self.app, who, self.now()).await;
    }
}

pub(crate) async fn restep(app: &TestApp, who: &As, now: DateTime<Utc>) {
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = $2 WHERE user_id = $1 AND stepped_up_at IS NOT NULL",
            &[&who.id, &now],
        )
        .await
        .unwrap();
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
    let plan = json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "notifications": { "homeowner": true, "contacts": false },
        "retention_days": 365
    });
    let (status, body) = call(
        app,
        Method::PUT,
        &format!("/api/v1/properties/{id}/plan"),
        Some(owner),
        Some(plan),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    id
}

pub(crate) async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let key_dir = tmp.path().join("keys");
    let db = fresh_database().await;
    let mut config = admin_config();
    config.dbname(&db);
    let mut settings = test_settings(config.clone());
    settings.key_dir = key_dir.clone();
    let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
    let app_pool = firstkey::store::pool(config.clone(), settings.db_pool_size).unwrap();
    let server = Application::build(settings, app_pool, clock.clone()).unwrap();
    let address = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped());
    let app = TestApp {
        address,
        pool: firstkey::store::pool(config, 2).unwrap(),
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
    let root = tmp.path().join("root.pk8");
    keys::root_generate(&root).unwrap();
    let pair = keys::load_pair(&root).unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .unwrap();
    let built = keys::bundle(&mut client, tenant, &pair, RP_ID, now)
        .await
        .unwrap();
    let bundle = TrustBundle::verify(&built.bytes, &RootPublicKey(public)).unwrap();
    drop(client);
    let owner = user(&app, tenant, "owner@a.example", None, Role::Homeowner, true).await;
    restep(&app, &owner, clock.now()).await;
    let owner_plain = As {
        id: owner.id,
        ..user(
            &app,
            tenant,
            "owner@a.example",
            None,
            Role::Homeowner,
            false,
        )
        .await
    };
    let property_id = property(&app, &owner, "12 Elm Street").await;
    let other_property = property(&app, &owner, "14 Elm Street").await;
    let lock = paired_lock(&app, tenant, property_id, "Front door").await;
    let back_door = paired_lock(&app, tenant, property_id, "Back door").await;
    let other_lock = paired_lock(&app, tenant, other_property, "Front door").await;
    let dispatcher = user(
        &app,
        tenant,
        "d1@a.example",
        Some(fire),
        Role::Dispatcher,
        true,
    )
    .await;
    restep(&app, &dispatcher, clock.now()).await;
    World {
        app,
        clock,
        tenant,
        _tmp: tmp,
        owner,
        owner_plain,
        dispatcher,
        property: property_id,
        lock,
        back_door,
        other_lock,
        bundle,
    }
}

/// Today's one-hour slot around the clock's time, on the clock's weekday (or every day but it).
pub(crate) fn schedule(now: DateTime<Utc>, today: bool) -> Value {
    let day = usize::try_from(now.weekday().num_days_from_monday()).unwrap();
    let days: Vec<&str> = if today {
        vec![WEEKDAYS[day]]
    } else {
        WEEKDAYS
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != day)
            .map(|(_, d)| *d)
            .collect()
    };
    let hour = now.hour();
    json!({
        "days": days,
        "from": format!("{hour:02}:00"),
        "until": format!("{:02}:00", hour + 1),
    })
}

pub(crate) fn terms(w: &World, schedule: Value) -> Value {
    json!({
        "locks": [w.lock],
        "ends_at": (w.now() + Duration::days(30)).to_rfc3339(),
        "schedule": schedule,
        "uses_per_day": 1,
        "notify_on_use": true,
        "share_with_dispatch": true,
    })
}

pub(crate) async fn invite(w: &World, who: &As, email: &str, body: Value) -> (u16, Value) {
    let mut body = body;
    body["email"] = json!(email);
    body["label"] = json!("Sam at no. 12");
    call(
        &w.app,
        Method::POST,
        &format!("/api/v1/properties/{}/trusted-parties", w.property),
        Some(who),
        Some(body),
    )
    .await
}

/// Invites `email`, accepts through the real invitation ceremony, and returns the trusted-party id
/// and a stepped-up session whose credential is a software P-256 key (for proofs at the door).
pub(crate) async fn accepted(w: &World, email: &str, body: Value) -> (Uuid, As) {
    let (status, party) = invite(w, &w.owner, email, body).await;
    assert_eq!(status, 201, "{party}");
    assert_eq!(party["status"], "invited");
    let id: Uuid = party["id"].as_str().unwrap().parse().unwrap();
    let secret = mailed_secret(&w.app, email, "account.invitation")
        .await
        .expect("the invitation was mailed");
    let (token, pem) = soft_token(true);
    trust_ca(&w.app, w.tenant, &pem).await;
    let mut key = TestKey::Token(Box::new(token));
    let finish = enrol(&w.app, "/api/v1/invitations/accept", &secret, &mut key).await;
    assert_eq!(finish.status(), 200);
    let me: Value = finish.json().await.unwrap();
    assert_eq!(me["roles"], json!(["trusted_party"]));
    let who = user(&w.app, w.tenant, email, None, Role::TrustedParty, true).await;
    w.restep(&who).await;
    (id, who)
}

async fn ask(w: &World, who: &As, party: Uuid, lock: Uuid) -> (u16, Value) {
    call(
        &w.app,
        Method::POST,
        "/api/v1/trusted/tokens",
        Some(who),
        Some(json!({ "trusted_party": party, "lock": lock })),
    )
    .await
}

async fn edit(w: &World, party: Uuid, body: Value) -> (u16, Value) {
    call(
        &w.app,
        Method::PUT,
        &format!("/api/v1/properties/{}/trusted-parties/{party}", w.property),
        Some(&w.owner),
        Some(body),
    )
    .await
}

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

fn token_bytes(body: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body["token"].as_str().unwrap())
        .unwrap()
}

/// Presents a token at `lock` at `now` as the holder of `key` would, with the lock's revocations.
fn tap(
    w: &World,
    lock: Uuid,
    bytes: &[u8],
    key: &SoftwareAuthenticator,
    revoked: Vec<TokenHash>,
    now: DateTime<Utc>,
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
    firstkey_token::verify(
        bytes,
        &w.bundle,
        &door,
        &Presentation {
            challenge: &challenge,
            proof: Some(&proof),
        },
        u64::try_from(now.timestamp()).unwrap(),
        &VerifyOptions::default(),
    )
}

/// The revocations queued for a lock, as the lock would hold them.
async fn revocations(w: &World, lock: Uuid) -> Vec<TokenHash> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT payload FROM lock_inbox WHERE lock_id = $1 AND kind = 'revocation' ORDER BY seq",
            &[&lock],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let payload: Vec<u8> = r.get(0);
            TokenHash(payload[..32].try_into().unwrap())
        })
        .collect()
}

async fn audit(w: &World, action: &str) -> Vec<Value> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT public_details FROM audit_entries WHERE municipality_id = $1 AND action = $2 ORDER BY seq",
            &[&w.tenant.id(), &action],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn mails(w: &World, kind: &str) -> Vec<String> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT recipient FROM notification_outbox WHERE municipality_id = $1 AND kind = $2",
            &[&w.tenant.id(), &kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_trusted_neighbour_enters_inside_the_schedule_and_nowhere_else() {
    let w = world().await;
    // Inviting needs the owner's fresh step-up.
    let (status, _) = invite(
        &w,
        &w.owner_plain,
        "sam@a.example",
        terms(&w, schedule(w.now(), true)),
    )
    .await;
    assert_eq!(status, 401);
    let (party, sam) = accepted(&w, "sam@a.example", terms(&w, schedule(w.now(), true))).await;
    let key = sam.key.as_ref().unwrap();

    // The homeowner sees the accepted party; dispatch is told someone holds access.
    let (status, list) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/trusted-parties", w.property),
        Some(&w.owner_plain),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["id"], json!(party));
    assert_eq!(list[0]["status"], "active");
    assert_eq!(list[0]["locks"], json!([w.lock]));
    let (status, summary) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/plan/summary", w.property),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["trusted_access"], json!(["Sam at no. 12"]));
    // A dispatcher cannot read the list itself.
    let (status, _) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/trusted-parties", w.property),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let (status, mine) = call(
        &w.app,
        Method::GET,
        "/api/v1/trusted/access",
        Some(&sam),
        None,
    )
    .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine[0]["open_now"], true);
    assert_eq!(mine[0]["address"], "12 Elm Street");

    // Inside the schedule: a token the lock accepts, bound to Sam's key, for that lock only.
    let (status, t) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(status, 201, "{t}");
    let bytes = token_bytes(&t);
    let verified = tap(&w, w.lock, &bytes, key, vec![], w.now()).expect("the lock opens");
    let claims = verified.claims();
    assert_eq!(claims.subject, sam.id.to_string());
    assert_eq!(claims.grant.0, *party.as_bytes());
    assert_eq!(claims.incident, "trusted");
    assert_eq!(claims.max_uses, 1);
    assert_eq!(claims.confirmation, Some(key.confirmation_key()));
    assert!(claims.expires_at - claims.not_before <= 600);
    assert!(
        tap(&w, w.other_lock, &bytes, key, vec![], w.now()).is_err(),
        "not at another property's lock"
    );
    let other_key = w.owner.key.as_ref().unwrap();
    assert!(
        tap(&w, w.lock, &bytes, other_key, vec![], w.now()).is_err(),
        "not in another hand"
    );
    assert_eq!(mails(&w, "trusted.token").await, vec!["owner@a.example"]);
    let issued = audit(&w, "token.issue").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["trusted_party"], json!(party));

    // One entry per day; a lock not in the terms and another property's lock: nothing.
    let (status, body) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (409, Some("no entries left today"))
    );
    assert_eq!(ask(&w, &sam, party, w.back_door).await.0, 404);
    assert_eq!(ask(&w, &sam, party, w.other_lock).await.0, 404);
    // Someone else cannot use Sam's record.
    assert_eq!(ask(&w, &w.owner, party, w.lock).await.0, 404);

    // The homeowner moves the schedule to other days: the issued token is revoked at the lock,
    // and a request now is refused (audited, with the reason).
    let mut moved = terms(&w, schedule(w.now(), false));
    moved["status"] = json!("active");
    moved["uses_per_day"] = json!(5);
    let (status, body) = edit(&w, party, moved).await;
    assert_eq!(status, 200, "{body}");
    let revoked = revocations(&w, w.lock).await;
    assert_eq!(revoked, vec![token_hash(&bytes)]);
    assert!(matches!(
        tap(&w, w.lock, &bytes, key, revoked.clone(), w.now()),
        Err(Refusal::Revoked)
    ));
    let (status, body) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (409, Some("outside the schedule the homeowner set"))
    );
    let refused = audit(&w, "trusted.token").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|d| d["reason"] == "outside the schedule the homeowner set"),
        "{refused:?}"
    );

    // Back inside the schedule, paused: refused; resumed: a token again.
    let mut paused = terms(&w, schedule(w.now(), true));
    paused["status"] = json!("paused");
    paused["uses_per_day"] = json!(5);
    assert_eq!(edit(&w, party, paused.clone()).await.0, 200);
    let (status, body) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (409, Some("the homeowner has paused your access"))
    );
    paused["status"] = json!("active");
    paused["ends_at"] = json!((w.now() + Duration::minutes(3)).to_rfc3339());
    assert_eq!(edit(&w, party, paused).await.0, 200);
    let (status, t2) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(status, 201, "{t2}");
    let bytes2 = token_bytes(&t2);
    let ends: DateTime<Utc> = t2["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        ends <= w.now() + Duration::minutes(3),
        "capped at the window's end"
    );

    // After the window: refused at the server, and the token it left is refused at the lock.
    w.advance(Duration::minutes(4));
    let (status, body) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (409, Some("your access has ended"))
    );
    assert!(matches!(
        tap(&w, w.lock, &bytes2, key, vec![], w.now()),
        Err(Refusal::Expired)
    ));
}

#[tokio::test]
async fn revocation_reaches_the_lock_and_ends_access() {
    let w = world().await;
    let mut body = terms(&w, Value::Null);
    body["locks"] = json!([w.lock, w.back_door]);
    body["uses_per_day"] = json!(3);
    let (party, sam) = accepted(&w, "sam@a.example", body).await;
    let key = sam.key.as_ref().unwrap();
    let (status, front) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(status, 201, "{front}");
    let (status, back) = ask(&w, &sam, party, w.back_door).await;
    assert_eq!(status, 201, "{back}");

    // Revoking needs step-up; then every issued token is revoked at its own lock.
    let path = format!("/api/v1/properties/{}/trusted-parties/{party}", w.property);
    assert_eq!(
        call(&w.app, Method::DELETE, &path, Some(&w.owner_plain), None)
            .await
            .0,
        401
    );
    let (status, gone) = call(&w.app, Method::DELETE, &path, Some(&w.owner), None).await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["status"], "revoked");
    for (lock, t) in [(w.lock, &front), (w.back_door, &back)] {
        let bytes = token_bytes(t);
        let revoked = revocations(&w, lock).await;
        assert_eq!(revoked, vec![token_hash(&bytes)]);
        assert!(tap(&w, lock, &bytes, key, vec![], w.now()).is_ok());
        assert!(matches!(
            tap(&w, lock, &bytes, key, revoked, w.now()),
            Err(Refusal::Revoked)
        ));
    }
    let (status, body) = ask(&w, &sam, party, w.lock).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (409, Some("the homeowner has revoked your access"))
    );
    assert_eq!(audit(&w, "trusted.revoke").await[0]["tokens_revoked"], 2);
    // Revoked is final: no edit brings it back; the dispatcher is no longer told.
    let mut again = terms(&w, Value::Null);
    again["status"] = json!("active");
    assert_eq!(edit(&w, party, again).await.0, 409);
    let (_, summary) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/plan/summary", w.property),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(summary["trusted_access"], json!([]));
}

#[tokio::test]
async fn bad_terms_and_other_homeowners_change_nothing() {
    let w = world().await;
    let count = || async {
        let client = w.app.pool.get().await.unwrap();
        client
            .query_one("SELECT count(*) FROM trusted_parties", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let base = || terms(&w, schedule(w.now(), true));
    let mut long = base();
    long["ends_at"] = json!((w.now() + Duration::days(91)).to_rfc3339());
    let mut foreign_lock = base();
    foreign_lock["locks"] = json!([w.other_lock]);
    let mut no_locks = base();
    no_locks["locks"] = json!([]);
    let mut past = base();
    past["ends_at"] = json!((w.now() - Duration::minutes(1)).to_rfc3339());
    let mut bad_day = base();
    bad_day["schedule"]["days"] = json!(["someday"]);
    let mut bad_hours = base();
    bad_hours["schedule"]["until"] = json!("25:00");
    let mut many = base();
    many["uses_per_day"] = json!(51);
    for body in [long, foreign_lock, no_locks, past, bad_day, bad_hours, many] {
        let (status, answer) = invite(&w, &w.owner, "sam@a.example", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
    }
    let mut nul = base();
    nul["email"] = json!("sam@a.example");
    nul["label"] = json!("Sam\u{0}");
    let (status, answer) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/properties/{}/trusted-parties", w.property),
        Some(&w.owner),
        Some(nul),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("label"));
    // Another homeowner, or a trusted party, cannot invite for this home or see its list.
    let stranger = user(
        &w.app,
        w.tenant,
        "other@a.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    w.restep(&stranger).await;
    assert_eq!(invite(&w, &stranger, "x@a.example", base()).await.0, 404);
    let (status, _) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/trusted-parties", w.property),
        Some(&stranger),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(count().await, 0);
    let client = w.app.pool.get().await.unwrap();
    let invitations: i64 = client
        .query_one("SELECT count(*) FROM invitations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(invitations, 0, "a refused invite sends nothing");
}

#[tokio::test]
async fn a_remote_unlock_is_queued_for_the_lock_only_and_never_opens_at_the_tap() {
    let w = world().await;
    let path = format!("/api/v1/locks/{}/remote-open", w.lock);
    // Step-up first; another homeowner, a dispatcher and bad durations get nothing.
    let (status, _) = call(
        &w.app,
        Method::POST,
        &path,
        Some(&w.owner_plain),
        Some(json!({ "seconds": 10 })),
    )
    .await;
    assert_eq!(status, 401);
    let stranger = user(
        &w.app,
        w.tenant,
        "other@a.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    w.restep(&stranger).await;
    for who in [&stranger, &w.dispatcher] {
        let (status, _) = call(
            &w.app,
            Method::POST,
            &path,
            Some(who),
            Some(json!({ "seconds": 10 })),
        )
        .await;
        assert_eq!(status, 404);
    }
    for seconds in [0, 121] {
        let (status, _) = call(
            &w.app,
            Method::POST,
            &path,
            Some(&w.owner),
            Some(json!({ "seconds": seconds })),
        )
        .await;
        assert_eq!(status, 400);
    }
    let client = w.app.pool.get().await.unwrap();
    let none: i64 = client
        .query_one("SELECT count(*) FROM lock_inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "a refused request queues nothing");

    // No agent is connected here: the answer says the lock did not answer (after the bounded wait).
    let (status, answer) = call(
        &w.app,
        Method::POST,
        &path,
        Some(&w.owner),
        Some(json!({ "seconds": 10 })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "no_answer");
    assert_eq!(answer["acknowledged_at"], Value::Null);
    assert_eq!(answer["hold_seconds"], 10);
    let row = client
        .query_one(
            "SELECT kind, payload FROM lock_inbox WHERE lock_id = $1",
            &[&w.lock],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "remote_open");
    let payload: Vec<u8> = row.get(1);
    assert_eq!(payload[..4], 10u32.to_be_bytes());
    let token = &payload[4..];
    let recorded = client
        .query_one(
            "SELECT remote_open, grant_id IS NULL AND trusted_party_id IS NULL, responder_id, expires_at - not_before
             FROM issued_tokens WHERE token_hash = $1",
            &[&token_hash(token).0.to_vec()],
        )
        .await
        .unwrap();
    assert!(recorded.get::<_, bool>(0));
    assert!(recorded.get::<_, bool>(1));
    assert_eq!(recorded.get::<_, Uuid>(2), w.owner.id);
    let issued = audit(&w, "token.issue").await;
    assert_eq!(issued[0]["scope"], "remote_open");

    // The token is a `remote_open`, bearer-free token for that lock only: at the tap, with any
    // key, it is refused (no `cnf` to prove; the lock refuses the scope besides).
    let key = w.owner.key.as_ref().unwrap();
    assert!(matches!(
        tap(&w, w.lock, token, key, vec![], w.now()),
        Err(Refusal::NoConfirmationKey)
    ));
    let bearer = firstkey_token::verify(
        token,
        &w.bundle,
        &Door {
            id: LockId::parse(&w.lock.to_string()).unwrap(),
            revoked: vec![],
        },
        &Presentation {
            challenge: &Challenge([0; 32]),
            proof: None,
        },
        u64::try_from(w.now().timestamp()).unwrap(),
        &VerifyOptions {
            require_proof_of_possession: false,
            ..VerifyOptions::default()
        },
    )
    .expect("verifies as the lock's remote-open path does");
    assert_eq!(bearer.claims().scope, firstkey_token::Scope::RemoteOpen);
    assert!(bearer.claims().expires_at - bearer.claims().not_before <= 30);
    assert!(matches!(
        tap(&w, w.other_lock, token, key, vec![], w.now()),
        Err(Refusal::WrongLock | Refusal::NoConfirmationKey)
    ));
}

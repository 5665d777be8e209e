//! Registering a lock id first must not block its genuine owner (issue 8, item 13(b)): a pending
//! registration reserves nothing; the lock pairs with the registration that has its code, and the
//! others are closed and their owners told. Real processes: the HTTP application, a channel
//! listener on the same database, and a `firstkey-agent` lock process over TLS.

use chrono::Utc;
use firstkey::channel::server::RunningChannel;
use firstkey::channel::tls::DEV_CA_FILE;
use firstkey::domain::{Role, Slug};
use firstkey::store::registrations::{self, MAX_PENDING_PER_PROPERTY, PairOutcome};
use firstkey::store::{Tenant, tenancy};
use firstkey_agent::protocol::channel::{ErrorCode, ServerMessage};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::channel::{Agent, code_for, eventually, hello_as, new_device_key, replica_on};
use crate::helpers::{As, TestApp, admin_config, call, home_of, spawn_app, user};

struct Town {
    app: TestApp,
    a: Tenant,
    b: Tenant,
    /// The genuine owner (municipality A) and their home.
    owner: As,
    home: Uuid,
    /// A squatter in municipality B with a home there, and one in A with a home of their own.
    squatter_b: As,
    squat_b: Uuid,
    squatter_a: As,
    squat_a: Uuid,
    keys: tempfile::TempDir,
}

async fn town() -> Town {
    let app = spawn_app().await;
    let now = Utc::now();
    let client = app.pool.get().await.unwrap();
    let (a, _) = tenancy::ensure_municipality(&client, &Slug::parse("town-a").unwrap(), "A", now)
        .await
        .unwrap();
    let (b, _) = tenancy::ensure_municipality(&client, &Slug::parse("town-b").unwrap(), "B", now)
        .await
        .unwrap();
    drop(client);
    let owner = user(&app, a, "owner@a.example", None, Role::Homeowner, true).await;
    let squatter_b = user(&app, b, "squatter@b.example", None, Role::Homeowner, true).await;
    let squatter_a = user(&app, a, "squatter@a.example", None, Role::Homeowner, true).await;
    let home = home_of(&app, &owner, "1 Owner Lane").await;
    let squat_b = home_of(&app, &squatter_b, "9 Squat Street").await;
    let squat_a = home_of(&app, &squatter_a, "8 Squat Street").await;
    Town {
        app,
        a,
        b,
        owner,
        home,
        squatter_b,
        squat_b,
        squatter_a,
        squat_a,
        keys: tempfile::tempdir().unwrap(),
    }
}

impl Town {
    /// A channel listener on the application's database.
    async fn replica(&self) -> RunningChannel {
        let mut config = admin_config();
        config.dbname(self.app.database.name());
        replica_on(self.keys.path(), config, 0).await
    }

    async fn register(
        &self,
        who: &As,
        home: Uuid,
        lock: Uuid,
        name: &str,
        code: &str,
    ) -> (u16, Value) {
        call(
            &self.app,
            Method::POST,
            &format!("/api/v1/properties/{home}/locks"),
            Some(who),
            Some(json!({ "lock_id": lock, "name": name, "pairing_code": code })),
        )
        .await
    }

    async fn registrations(&self, who: &As, home: Uuid) -> Value {
        let (status, body) = call(
            &self.app,
            Method::GET,
            &format!("/api/v1/properties/{home}/lock-registrations"),
            Some(who),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn count(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> i64 {
        let client = self.app.pool.get().await.unwrap();
        client.query_one(sql, params).await.unwrap().get(0)
    }

    async fn page(&self, who: &As, path: &str) -> String {
        self.app
            .http
            .get(format!("{}{path}", self.app.address))
            .header("cookie", &who.cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Another code than `code` (one symbol changed), as a squatter without the code would type.
fn not(code: &str) -> String {
    let mut wrong = code.to_owned().into_bytes();
    wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
    String::from_utf8(wrong).unwrap()
}

/// A new device key: its public key, the lock id derived from it, its pairing code and that
/// code's hash as the server keeps it.
fn device() -> ([u8; 32], Uuid, String, [u8; 32]) {
    let key = new_device_key();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&key)
        .as_ref()
        .try_into()
        .unwrap();
    let id_text = firstkey_agent::pairing::derived_lock_id(&public);
    let code = code_for(&key, &id_text);
    let hash = firstkey::pairing::code_hash(&firstkey::pairing::normalise(&code).unwrap());
    (public, Uuid::parse_str(&id_text).unwrap(), code, hash)
}

#[tokio::test]
async fn a_squatter_who_registers_a_lock_id_first_does_not_stop_its_owner() {
    let t = town().await;
    let replica = t.replica().await;
    let ca = t.keys.path().join(DEV_CA_FILE);
    let mut agent = Agent::init_trusting(&ca, replica.local_addr().port(), &[]);
    let lock = agent.lock;

    // The squatters learnt the lock id (it is printed on the lock) and register it first: in
    // another municipality, and in the owner's own one, each with a code they made up.
    let (status, body) = t
        .register(
            &t.squatter_b,
            t.squat_b,
            lock,
            "Front door",
            &not(&agent.code),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = t
        .register(&t.squatter_a, t.squat_a, lock, "Front door", "ABCDE-12345")
        .await;
    assert_eq!(status, 201, "{body}");
    // The genuine owner still registers it (before: 409, the id was taken).
    let (status, body) = t
        .register(&t.owner, t.home, lock, "Front door", &agent.code)
        .await;
    assert_eq!(status, 201, "the genuine owner is not blocked: {body}");
    assert_eq!(body["state"], "pending");
    let page = t.page(&t.owner, &format!("/homes/{}", t.home)).await;
    assert!(page.contains("waiting for the lock"), "{page}");

    // Impostors who know only the id present their own keys under it: refused, and no
    // registration of the id is touched, however often they try.
    let impostor = new_device_key();
    for _ in 0..12 {
        let answer = hello_as(&replica, &lock.to_string(), &impostor).await;
        assert!(
            matches!(
                answer,
                ServerMessage::Error {
                    code: ErrorCode::AuthenticationFailed
                }
            ),
            "{answer:?}"
        );
    }
    assert_eq!(
        t.count(
            "SELECT count(*) FROM lock_registrations WHERE lock_id = $1 AND state = 'pending'",
            &[&lock],
        )
        .await,
        3
    );

    // The lock connects: it pairs with the owner's registration, in the owner's municipality.
    agent.run();
    eventually("pairing", 30, || async {
        t.count("SELECT count(*) FROM locks WHERE id = $1", &[&lock])
            .await
            == 1
    })
    .await;
    let client = t.app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT municipality_id, property_id, pairing_state FROM locks WHERE id = $1",
            &[&lock],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), t.a.id());
    assert_eq!(row.get::<_, Uuid>(1), t.home);
    assert_eq!(row.get::<_, String>(2), "paired");
    let (status, locks) = call(
        &t.app,
        Method::GET,
        &format!("/api/v1/properties/{}/locks", t.home),
        Some(&t.owner),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(locks[0]["id"], lock.to_string());
    assert_eq!(
        t.registrations(&t.owner, t.home).await[0]["state"],
        "paired"
    );

    // The squatters' registrations never paired and are closed; they are told on their page and
    // by mail, and their homes have no lock.
    for (who, home) in [(&t.squatter_b, t.squat_b), (&t.squatter_a, t.squat_a)] {
        assert_eq!(
            t.registrations(who, home).await[0]["state"],
            "paired_elsewhere"
        );
        let (_, locks) = call(
            &t.app,
            Method::GET,
            &format!("/api/v1/properties/{home}/locks"),
            Some(who),
            None,
        )
        .await;
        assert_eq!(locks, json!([]));
        let page = t.page(who, &format!("/homes/{home}")).await;
        assert!(
            page.contains("paired with another registration of its id"),
            "{page}"
        );
    }
    for (email, mails) in [
        ("squatter@b.example", 1),
        ("squatter@a.example", 1),
        ("owner@a.example", 0),
    ] {
        assert_eq!(
            t.count(
                "SELECT count(*) FROM notification_outbox WHERE kind = 'lock.registration_closed' AND recipient = $1",
                &[&email],
            )
            .await,
            mails,
            "{email}"
        );
    }
    // Audited, each in its own municipality.
    for (tenant, outcome, n) in [(t.a, "allow", 1), (t.a, "deny", 1), (t.b, "deny", 1)] {
        assert_eq!(
            t.count(
                "SELECT count(*) FROM audit_entries WHERE action = 'lock.pair' AND subject_id = $1
                 AND municipality_id = $2 AND outcome = $3",
                &[&lock, &tenant.id(), &outcome],
            )
            .await,
            n,
            "{outcome} in {tenant:?}"
        );
    }
    // Paired, the lock is its owner's: a new registration of it, anywhere, is refused (409), and
    // the refusal names no constraint.
    let (status, problem) = t
        .register(&t.squatter_b, t.squat_b, lock, "Back door", &agent.code)
        .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["detail"], "this lock is already paired with a home");
    // And the lock keeps working for its owner: it reconnects as the paired lock and takes an
    // entry from its inbox (which exists now that the lock does).
    agent.kill();
    agent.run();
    let seq = {
        let mut client = t.app.pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let seq = firstkey::channel::inbox::push(
            &tx,
            t.a,
            lock,
            &firstkey::channel::inbox::InboxMessage::Revocation {
                token_hash: [7; 32],
                expires_at: 4_000_000_000,
            },
            Utc::now(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        seq
    };
    eventually("the ack", 30, || async {
        t.count(
            "SELECT count(*) FROM locks WHERE id = $1 AND inbox_acked_seq >= $2",
            &[&lock, &seq],
        )
        .await
            == 1
    })
    .await;
}

#[tokio::test]
async fn a_mistyped_code_closes_only_its_own_registration_and_a_shared_code_pairs_nobody() {
    let t = town().await;
    let client = t.app.pool.get().await.unwrap();
    let (public, lock, code, hash) = device();
    let states = |home: Uuid| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT state FROM lock_registrations WHERE lock_id = $1 AND property_id = $2 ORDER BY created_at",
                    &[&lock, &home],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };

    // The owner mistyped; a squatter typed a guess. The lock's handshake closes both (a wrong code
    // never becomes right: the id is bound to the key), each costing only itself.
    assert_eq!(
        t.register(&t.owner, t.home, lock, "Door", &not(&code))
            .await
            .0,
        201
    );
    assert_eq!(
        t.register(&t.squatter_b, t.squat_b, lock, "Door", "ABCDE-12345")
            .await
            .0,
        201
    );
    let outcome = registrations::pair(&client, lock, &public, &hash, Utc::now())
        .await
        .unwrap();
    assert!(
        matches!(outcome, PairOutcome::NotPaired { ref closed } if closed.len() == 2),
        "{outcome:?}"
    );
    assert_eq!(states(t.home).await, ["code_mismatch"]);
    assert_eq!(states(t.squat_b).await, ["code_mismatch"]);
    let page = t.page(&t.owner, &format!("/homes/{}", t.home)).await;
    assert!(page.contains("its pairing code is not the one"), "{page}");
    // The owner adds it again with the right code: it pairs, whatever the squatter tried.
    assert_eq!(
        t.register(&t.owner, t.home, lock, "Door", &code).await.0,
        201
    );
    assert_eq!(
        t.register(&t.squatter_b, t.squat_b, lock, "Door", "ABCDE-12346")
            .await
            .0,
        201
    );
    let outcome = registrations::pair(&client, lock, &public, &hash, Utc::now())
        .await
        .unwrap();
    assert!(matches!(outcome, PairOutcome::Paired { .. }), "{outcome:?}");
    assert_eq!(states(t.home).await, ["code_mismatch", "paired"]);
    assert_eq!(
        states(t.squat_b).await,
        ["code_mismatch", "paired_elsewhere"]
    );

    // Someone who also has the lock's code (they saw `init`'s output) cannot be told apart from
    // the owner: the lock pairs with neither, and both are told.
    let (public, second, code, hash) = device();
    assert_eq!(
        t.register(&t.owner, t.home, second, "Back door", &code)
            .await
            .0,
        201
    );
    assert_eq!(
        t.register(&t.squatter_a, t.squat_a, second, "Back door", &code)
            .await
            .0,
        201
    );
    let outcome = registrations::pair(&client, second, &public, &hash, Utc::now())
        .await
        .unwrap();
    assert!(
        matches!(outcome, PairOutcome::NotPaired { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM locks WHERE id = $1", &[&second])
            .await,
        0
    );
    assert_eq!(
        t.count(
            "SELECT count(*) FROM lock_registrations WHERE lock_id = $1 AND state = 'contested'",
            &[&second],
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_flood_of_registrations_is_bounded_per_home_and_per_account() {
    let t = town().await;
    // One home waits for at most MAX_PENDING_PER_PROPERTY locks.
    for i in 0..MAX_PENDING_PER_PROPERTY {
        let (status, body) = t
            .register(
                &t.squatter_b,
                t.squat_b,
                Uuid::new_v4(),
                &format!("Door {i}"),
                "ABCDE-12345",
            )
            .await;
        assert_eq!(status, 201, "{i}: {body}");
    }
    let (status, problem) = t
        .register(
            &t.squatter_b,
            t.squat_b,
            Uuid::new_v4(),
            "One more",
            "ABCDE-12345",
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    // More homes do not lift the account's bound: 20 a day, 20 waiting.
    let mut homes = vec![t.squat_b];
    let mut made = MAX_PENDING_PER_PROPERTY;
    let refused = loop {
        let home = home_of(&t.app, &t.squatter_b, &format!("{made} Flood Road")).await;
        homes.push(home);
        let (status, body) = t
            .register(&t.squatter_b, home, Uuid::new_v4(), "Door", "ABCDE-12345")
            .await;
        if status != 201 {
            break (status, body);
        }
        made += 1;
        assert!(made <= 20, "the account bound did not hold");
    };
    assert_eq!(made, 20);
    assert_eq!(refused.0, 429, "{}", refused.1);
    // Cancelling does not give the day's registrations back.
    let waiting = t.registrations(&t.squatter_b, t.squat_b).await;
    let (status, _) = call(
        &t.app,
        Method::DELETE,
        &format!(
            "/api/v1/properties/{}/lock-registrations/{}",
            t.squat_b,
            waiting[0]["id"].as_str().unwrap()
        ),
        Some(&t.squatter_b),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = t
        .register(
            &t.squatter_b,
            t.squat_b,
            Uuid::new_v4(),
            "Again",
            "ABCDE-12345",
        )
        .await;
    assert_eq!(status, 429);
    // The page cancels too (the home's page has a Cancel button per waiting registration).
    let page = t
        .page(&t.squatter_b, &format!("/homes/{}", t.squat_b))
        .await;
    let second = waiting[1]["id"].as_str().unwrap();
    let action = format!("/homes/{}/lock-registrations/{second}/cancel", t.squat_b);
    assert!(page.contains(&action), "{page}");
    let response = t
        .app
        .http
        .post(format!("{}{action}", t.app.address))
        .header("cookie", &t.squatter_b.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .form(&[("x", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(
        t.registrations(&t.squatter_b, t.squat_b).await[1]["state"],
        "cancelled"
    );
    assert_eq!(
        t.count(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.registration_cancel' AND actor_id = $1",
            &[&t.squatter_b.id],
        )
        .await,
        2
    );
    // The table holds what the bound allows, and nobody else is affected.
    assert_eq!(
        t.count(
            "SELECT count(*) FROM lock_registrations WHERE registered_by = $1",
            &[&t.squatter_b.id],
        )
        .await,
        20
    );
    let (status, body) = t
        .register(
            &t.owner,
            t.home,
            Uuid::new_v4(),
            "Front door",
            "ABCDE-12345",
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The page says why a registration was refused.
    let response = t
        .app
        .http
        .post(format!("{}/homes/{}/locks", t.app.address, t.squat_b))
        .header("cookie", &t.squatter_b.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .form(&[
            ("lock_id", Uuid::new_v4().to_string()),
            ("name", "Page door".to_owned()),
            ("pairing_code", "ABCDE-12345".to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("Not added: you have made as many lock registrations"),
        "{page}"
    );
}

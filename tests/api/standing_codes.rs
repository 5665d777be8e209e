//! Standing keypad codes for trusted parties (issue 11 §2): the homeowner turns them on for a
//! party; each (party, lock) gets a slot at the lock; the rotation loop issues each period's code
//! (record, audit entry naming the party, mail with the digits) once whatever the number of
//! concurrent passes; the party's page shows a new code once, then only after a fresh assertion;
//! pausing or revoking clears the slot at the lock so the codes stop working there. The second
//! test runs a real `firstkey-agent` over the channel.

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{Duration, Utc};
use firstkey::channel::inbox::InboxMessage;
use firstkey::channel::server::ChannelOptions;
use firstkey::codes::SecretRoot;
use firstkey::codes::standing;
use firstkey::domain::{Email, Role};
use firstkey::store::people;
use firstkey_agent::keypad::{self, FnLedger, KeypadView, StandingSchedule};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::channel::{Agent, World as ChannelWorld, agent_bin, eventually, paired};
use crate::helpers::call;
use crate::trusted::{World, accepted, audit, edit, invite, terms, world};
use crate::trusted_pages::{page, post};

/// The code-secret root the server derives from its data key (`test_settings`: 32 × 0x2a).
fn root_of(_: &World) -> SecretRoot {
    SecretRoot::derive(&firstkey::crypto::Kek::from_bytes([0x2a; 32]))
}

/// The slots the lock's inbox says it holds now (slot → schedule), in inbox order.
async fn slots_at(pool: &deadpool_postgres::Pool, lock: Uuid) -> BTreeMap<u8, StandingSchedule> {
    let client = pool.get().await.unwrap();
    let mut out = BTreeMap::new();
    for r in client
        .query(
            "SELECT kind, payload FROM lock_inbox WHERE lock_id = $1 AND kind = 'keypad_standing'
             ORDER BY seq",
            &[&lock],
        )
        .await
        .unwrap()
    {
        let kind: String = r.get(0);
        let payload: Vec<u8> = r.get(1);
        match InboxMessage::from_stored(&kind, &payload).unwrap() {
            InboxMessage::KeypadStanding {
                slot,
                schedule: Some(s),
            } => {
                out.insert(slot, s);
            }
            InboxMessage::KeypadStanding {
                slot,
                schedule: None,
            } => {
                out.remove(&slot);
            }
            other => panic!("{other:?}"),
        }
    }
    out
}

/// The codes mailed to `to`, oldest first: the line of five groups of three digits.
async fn mailed_codes(pool: &deadpool_postgres::Pool, to: &str) -> Vec<String> {
    let client = pool.get().await.unwrap();
    client
        .query(
            "SELECT body_text FROM notification_outbox WHERE kind = 'keypad_code.standing'
               AND recipient = $1 ORDER BY created_at, id",
            &[&to],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let text: String = r.get(0);
            text.lines()
                .map(str::trim)
                .find(|l| {
                    l.len() == 19
                        && l.split(' ').count() == 5
                        && l.chars().all(|c| c == ' ' || c.is_ascii_digit())
                })
                .unwrap_or_else(|| panic!("no code in {text}"))
                .to_owned()
        })
        .collect()
}

fn verdict(
    root: &SecretRoot,
    lock: Uuid,
    slots: &BTreeMap<u8, StandingSchedule>,
    code: &str,
    at: chrono::DateTime<Utc>,
) -> &'static str {
    let secret = root.lock_secret(lock, 1);
    let wire = lock.to_string();
    let view = KeypadView {
        lock_id: &wire,
        secret: Some(&secret),
        standing: slots,
        floor: 0,
        skew: 60,
    };
    let never = FnLedger(|_: &[u8; 16]| 0, |_: &[u8; 16]| false);
    keypad::verify(&view, code, u64::try_from(at.timestamp()).unwrap(), &never).reason
}

/// Moves `who`'s sessions (and their step-up) to the test clock's now, as if they had just signed
/// in again after the clock moved by days.
async fn signed_in_again(w: &World, who: &crate::helpers::As) {
    let now = w.now();
    w.app
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE sessions SET created_at = $2, last_seen_at = $2, stepped_up_at = $2,
                 absolute_expires_at = $2::timestamptz + interval '12 hours'
             WHERE user_id = $1 AND ended_at IS NULL",
            &[&who.id, &now],
        )
        .await
        .unwrap();
}

async fn count(pool: &deadpool_postgres::Pool, sql: &str) -> i64 {
    pool.get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn standing_codes_are_issued_once_rotated_shown_once_and_cleared_when_paused_or_revoked() {
    let w = world().await;
    let root = root_of(&w);
    let pool = &w.app.pool;
    let mut body = terms(&w, Value::Null);
    body["locks"] = json!([w.lock, w.back_door]);
    body["keypad_codes"] = json!(true);

    // Keypad codes cannot honour a weekly schedule offline; rotation is 1 to 90 days.
    let mut scheduled = terms(&w, crate::trusted::schedule(w.now(), true));
    scheduled["keypad_codes"] = json!(true);
    assert_eq!(invite(&w, &w.owner, "x@a.example", scheduled).await.0, 400);
    for days in [0, 91] {
        let mut bad = body.clone();
        bad["code_rotation_days"] = json!(days);
        assert_eq!(invite(&w, &w.owner, "x@a.example", bad).await.0, 400);
    }
    assert_eq!(count(pool, "SELECT count(*) FROM trusted_parties").await, 0);

    let (party, sam) = accepted(&w, "sam@a.example", body.clone()).await;
    // Accepting gives each lock a slot with a 7-day period and a one-day overlap.
    let front = slots_at(pool, w.lock).await;
    let back = slots_at(pool, w.back_door).await;
    assert_eq!((front.len(), back.len()), (1, 1));
    let schedule = *front.values().next().unwrap();
    assert_eq!(
        (schedule.period_secs, schedule.overlap_secs),
        (7 * 86_400, 86_400)
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM lock_inbox WHERE kind = 'keypad_secret'"
        )
        .await,
        2
    );

    // The rotation loop's passes, concurrently: each period's code is issued exactly once.
    let now = w.now();
    let (a, b) = tokio::join!(
        standing::issue_due(pool, &root, now),
        standing::issue_due(pool, &root, now)
    );
    a.unwrap();
    b.unwrap();
    standing::issue_due(pool, &root, now).await.unwrap();
    let mailed = mailed_codes(pool, "sam@a.example").await;
    assert_eq!(mailed.len(), 2, "{mailed:?}");
    let issued = audit(&w, "keypad_code.issue").await;
    assert_eq!(issued.len(), 2);
    assert!(
        issued
            .iter()
            .all(|e| e["kind"] == "standing" && e["trusted_party"] == json!(party))
    );
    // Each mailed code is the lock's own computation for its slot and period 0, and opens it.
    let (slot, _) = front.iter().next().unwrap();
    let (want, _) = keypad::standing_code(
        &root.lock_secret(w.lock, 1),
        &w.lock.to_string(),
        *slot,
        &schedule,
        0,
    )
    .unwrap();
    assert!(mailed.contains(&want.display()));
    let front_code0 = want.display();
    assert_eq!(
        verdict(&root, w.lock, &front, &front_code0, now),
        "keypad_ok"
    );
    // Not at the other lock, not with the slot gone.
    assert_ne!(
        verdict(&root, w.back_door, &back, &front_code0, now),
        "keypad_ok"
    );
    assert_eq!(
        verdict(&root, w.lock, &BTreeMap::new(), &front_code0, now),
        "keypad_invalid"
    );
    // No digits in any audit entry.
    for code in &mailed {
        let digits: String = code.chars().filter(char::is_ascii_digit).collect();
        let leaks = count(
            pool,
            &format!(
                "SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%{}%'",
                &digits[4..]
            ),
        )
        .await;
        assert_eq!(leaks, 0);
    }

    // The party's page shows a new code once (not for a cache), then hides it.
    let (status, html) = page(&w, "/trusted", &sam).await;
    assert_eq!(status, 200);
    assert!(html.contains(&front_code0), "{html}");
    let (status, html) = page(&w, "/trusted", &sam).await;
    assert_eq!(status, 200);
    assert!(!html.contains(&front_code0));
    assert!(html.contains("Show my keypad codes"));
    // Showing it again needs a fresh assertion.
    let client = pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = $2 WHERE user_id = $1",
            &[&sam.id, &(w.now() - Duration::hours(1))],
        )
        .await
        .unwrap();
    let (status, _, _, html) = post(&w, "/trusted/keypad-codes", &sam, &[], true).await;
    assert_eq!(status, 401);
    assert!(!html.contains(&front_code0) && html.contains("codes-step-up"));
    w.restep(&sam).await;
    let (status, _, cache, html) = post(&w, "/trusted/keypad-codes", &sam, &[], true).await;
    assert_eq!((status, cache.as_str()), (200, "no-store"));
    assert!(html.contains(&front_code0));
    // The JSON face answers the same.
    let (status, codes) = call(
        &w.app,
        Method::POST,
        "/api/v1/trusted/keypad-codes",
        Some(&sam),
        None,
    )
    .await;
    assert_eq!(status, 200, "{codes}");
    assert!(
        codes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["digits"] == json!(front_code0) && c["lock"] == json!(w.lock))
    );
    // Nobody else sees them.
    let (status, _, _, _) = post(&w, "/trusted/keypad-codes", &w.owner, &[], true).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &w.app,
        Method::POST,
        "/api/v1/trusted/keypad-codes",
        Some(&w.owner),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // A week later the next code is issued and mailed; the old one works through the overlap,
    // then stops.
    w.advance(Duration::days(7) + Duration::minutes(1));
    standing::issue_due(pool, &root, w.now()).await.unwrap();
    let mailed = mailed_codes(pool, "sam@a.example").await;
    assert_eq!(mailed.len(), 4);
    let (next, _) = keypad::standing_code(
        &root.lock_secret(w.lock, 1),
        &w.lock.to_string(),
        *slot,
        &schedule,
        1,
    )
    .unwrap();
    let front_code1 = next.display();
    assert!(mailed.contains(&front_code1));
    assert_eq!(
        verdict(&root, w.lock, &front, &front_code0, w.now()),
        "keypad_ok"
    );
    assert_eq!(
        verdict(&root, w.lock, &front, &front_code1, w.now()),
        "keypad_ok"
    );
    let after_overlap = w.now() + Duration::days(1) + Duration::minutes(2);
    assert_eq!(
        verdict(&root, w.lock, &front, &front_code0, after_overlap),
        "keypad_expired"
    );
    assert_eq!(
        verdict(&root, w.lock, &front, &front_code1, after_overlap),
        "keypad_ok"
    );
    standing::issue_due(pool, &root, w.now()).await.unwrap();
    assert_eq!(mailed_codes(pool, "sam@a.example").await.len(), 4);

    // Paused: the slots are cleared at both locks; the codes stop there and leave the page.
    signed_in_again(&w, &w.owner).await;
    signed_in_again(&w, &sam).await;
    let mut paused = body.clone();
    paused["status"] = json!("paused");
    paused["starts_at"] = json!(w.now().to_rfc3339());
    let (status, v) = edit(&w, party, paused).await;
    assert_eq!(status, 200, "{v}");
    assert!(slots_at(pool, w.lock).await.is_empty());
    assert!(slots_at(pool, w.back_door).await.is_empty());
    assert_eq!(
        verdict(
            &root,
            w.lock,
            &slots_at(pool, w.lock).await,
            &front_code1,
            w.now()
        ),
        "keypad_invalid"
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM keypad_codes WHERE kind = 'standing' AND revoked_at IS NULL
               AND not_after > now()"
        )
        .await,
        0
    );
    let (status, _, _, html) = post(&w, "/trusted/keypad-codes", &sam, &[], true).await;
    assert_eq!(status, 200);
    assert!(!html.contains(&front_code1));

    // Resumed: new slots, and the new codes are mailed with the same commit (not the old ones).
    // (Mails of one commit share a time; the new ones are told apart by content, not order.)
    let before = mailed_codes(pool, "sam@a.example").await;
    let mut resumed = body.clone();
    resumed["status"] = json!("active");
    resumed["starts_at"] = json!(w.now().to_rfc3339());
    let (status, v) = edit(&w, party, resumed).await;
    assert_eq!(status, 200, "{v}");
    let front = slots_at(pool, w.lock).await;
    assert_eq!(front.len(), 1);
    let mailed = mailed_codes(pool, "sam@a.example").await;
    assert_eq!(mailed.len(), 6);
    let mut fresh = mailed.clone();
    for old in &before {
        let at = fresh
            .iter()
            .position(|c| c == old)
            .expect("earlier mails stay");
        fresh.remove(at);
    }
    assert_eq!(fresh.len(), 2);
    assert!(!fresh.contains(&front_code1));
    assert!(
        fresh
            .iter()
            .any(|c| verdict(&root, w.lock, &front, c, w.now()) == "keypad_ok")
    );

    // Revoked: cleared at both locks, audited.
    let path = format!("/api/v1/properties/{}/trusted-parties/{party}", w.property);
    let (status, _) = call(&w.app, Method::DELETE, &path, Some(&w.owner), None).await;
    assert_eq!(status, 200);
    assert!(slots_at(pool, w.lock).await.is_empty());
    assert!(slots_at(pool, w.back_door).await.is_empty());
    assert_eq!(
        audit(&w, "trusted.revoke").await[0]["keypad_slots_cleared"],
        2
    );
    standing::issue_due(pool, &root, w.now() + Duration::days(8))
        .await
        .unwrap();
    assert_eq!(mailed_codes(pool, "sam@a.example").await.len(), 6);
}

/// Across real processes: a trusted party's slot reaches a real agent over the channel; the
/// mailed code opens the door at its keypad (receipt audited and mailed with the party); once the
/// party is revoked the slot is cleared at the agent and the same code is refused.
#[tokio::test]
async fn a_standing_code_opens_a_real_lock_until_the_party_is_revoked() {
    let world = ChannelWorld::new().await;
    let root = SecretRoot::derive(&firstkey::crypto::Kek::from_bytes([5; 32]));
    let replica = world
        .replica_with(
            ChannelOptions {
                keypad_root: Some(root.clone()),
                ..ChannelOptions::default()
            },
            world.db_config.clone(),
        )
        .await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;

    // A trusted party with keypad codes on this lock, as an accepted invitation leaves it.
    let now = Utc::now();
    let party = Uuid::new_v4();
    {
        let mut client = world.pool.get().await.unwrap();
        let sam = people::ensure_user(
            &client,
            world.tenant,
            &Email::parse("sam@example.org").unwrap(),
            "Sam",
            None,
            &[Role::TrustedParty],
            now,
        )
        .await
        .unwrap();
        let invitation = Uuid::new_v4();
        client
            .execute(
                "INSERT INTO invitations (id, municipality_id, role, email, secret_hash, created_by,
                     created_at, expires_at, used_at)
                 VALUES ($1, $2, 'trusted_party', 'sam@example.org', $3, $4, $5, $6, $5)",
                &[
                    &invitation,
                    &world.tenant.id(),
                    &vec![9u8; 32],
                    &world.owner,
                    &now,
                    &(now + Duration::days(1)),
                ],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO trusted_parties (id, municipality_id, property_id, user_id, invitation_id,
                     invited_by, label, status, starts_at, ends_at, uses_per_day, notify_on_use,
                     share_with_dispatch, created_at, updated_at, keypad_codes, code_rotation_days)
                 VALUES ($1, $2, $3, $4, $5, $6, 'Sam at no. 12', 'active', $7, $8, 1, false, false,
                     $7, $7, true, 7)",
                &[
                    &party,
                    &world.tenant.id(),
                    &world.property,
                    &sam.id,
                    &invitation,
                    &world.owner,
                    &now,
                    &(now + Duration::days(30)),
                ],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO trusted_party_locks (municipality_id, trusted_party_id, lock_id)
                 VALUES ($1, $2, $3)",
                &[&world.tenant.id(), &party, &agent.lock],
            )
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        let synced = standing::sync_party(&tx, world.tenant, party, now)
            .await
            .unwrap();
        assert_eq!(synced.set, 1);
        assert_eq!(
            standing::issue_due_for_party(&tx, &root, world.tenant, party, now)
                .await
                .unwrap(),
            1
        );
        tx.commit().await.unwrap();
    }
    eventually("the slot at the lock", 20, || async {
        agent.status()["keypad_standing_slots"] == json!(1)
            && agent.status()["keypad_secret"] == json!(true)
    })
    .await;
    let code = mailed_codes(&world.pool, "sam@example.org").await.remove(0);
    let keypad_cli = |code: &str| {
        Command::new(agent_bin())
            .args(["keypad", "--code", code, "--state-dir"])
            .arg(&agent.state)
            .output()
            .unwrap()
    };
    let first = keypad_cli(&code);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    // A standing code opens more than once inside its period.
    assert_eq!(keypad_cli(&code).status.code(), Some(0));

    // Revoked: the slot is cleared at the lock, and the same code is refused there.
    // The revocation races the lock's receipt uploads for the same rows; PostgreSQL may pick it
    // as a deadlock victim (nothing of it commits then), and a client asks again, as here.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut client = world.pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let revoked = async {
            tx.execute(
                "UPDATE trusted_parties SET status = 'revoked', revoked_at = $2 WHERE id = $1",
                &[&party, &Utc::now()],
            )
            .await
            .map_err(firstkey::store::StoreError::from)?;
            standing::sync_party(&tx, world.tenant, party, Utc::now()).await
        }
        .await;
        match revoked {
            Ok(synced) => {
                assert_eq!(synced.cleared, 1);
                tx.commit().await.unwrap();
                break;
            }
            Err(firstkey::store::StoreError::Query(e))
                if attempt < 5
                    && e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                continue;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eventually("the slot cleared at the lock", 20, || async {
        agent.status()["keypad_standing_slots"] == json!(0)
    })
    .await;
    assert_eq!(keypad_cli(&code).status.code(), Some(2));

    // The receipts reach the server: both openings audited with the party, the refusal with none.
    eventually("three receipts stored", 60, || async {
        world
            .scalar::<i64>(
                "SELECT count(*) FROM receipts WHERE lock_id = $1",
                &[&agent.lock],
            )
            .await
            == 3
    })
    .await;
    let joined: i64 = world
        .scalar(
            "SELECT count(*) FROM audit_entries WHERE action = 'lock.receipt' AND subject_id = $1
               AND public_details->>'trusted_party' = $2 AND outcome = 'allow'",
            &[&agent.lock, &party.to_string()],
        )
        .await;
    assert_eq!(joined, 2);
    let texts: Vec<String> = world
        .pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT body_text FROM notification_outbox WHERE kind = 'door.opened'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("keypad code of Sam at no. 12")),
        "{texts:?}"
    );
    let used: i64 = world
        .scalar(
            "SELECT count(*) FROM keypad_codes WHERE trusted_party_id = $1 AND used_at IS NOT NULL",
            &[&party],
        )
        .await;
    assert_eq!(used, 1);
    replica.stop();
}

/// A form post as a browser sends it: (status, Cache-Control, body).
async fn form_post(
    app: &crate::helpers::TestApp,
    path: &str,
    who: &crate::helpers::As,
    form: &[(&str, String)],
) -> (u16, String, String) {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}{path}", app.address))
        .header("accept", "text/html")
        .header("cookie", &who.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, response.text().await.unwrap())
}

/// The five groups of three digits on a page, if any.
fn code_on(html: &str) -> Option<String> {
    let bytes: Vec<char> = html.chars().collect();
    (0..bytes.len().saturating_sub(19)).find_map(|i| {
        let s: String = bytes[i..i + 19].iter().collect();
        let ok = s.char_indices().all(|(j, c)| {
            if j % 4 == 3 {
                c == ' '
            } else {
                c.is_ascii_digit()
            }
        });
        let bounded = i == 0 || !bytes[i - 1].is_ascii_digit();
        (ok && bounded && !bytes.get(i + 19).is_some_and(char::is_ascii_digit)).then_some(s)
    })
}

/// Issue 11 §2 on the dispatcher's page: a code for a live grant, the step-up asked inline (the
/// choices kept), the code shown once (`no-store`) with the radio wording and the lock's own
/// computation, then listed without digits as not used yet, and as revoked once the grant is.
#[tokio::test]
async fn the_dispatcher_page_issues_a_keypad_code_once_and_lists_what_became_of_it() {
    let w = crate::emergency::world().await;
    let (incident, grant) = crate::emergency::live_fire_grant(&w).await;
    let path = format!("/dispatch/incidents/{incident}");
    let get = |who: &crate::helpers::As| {
        let who = who.cookie.clone();
        let url = format!("{}{path}", w.app.address);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("accept", "text/html")
                .header("cookie", who)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, html) = get(&w.dispatcher).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!("id=\"code-form-{grant}\"")),
        "{html}"
    );
    assert!(html.contains("id=\"no-codes\""));
    assert_eq!(get(&w.responder).await.0, 404);

    let form = [
        ("grant", grant.to_string()),
        ("lock", w.lock.to_string()),
        ("minutes", "20".to_owned()),
    ];
    let issue = format!("{path}/keypad-codes");
    let (status, _, html) = form_post(&w.app, &issue, &w.dispatcher_plain, &form).await;
    assert_eq!(status, 401);
    assert!(html.contains(&format!("data-resubmit=\"code-form-{grant}\"")));
    assert!(html.contains("value=\"20\""), "the minutes are kept");
    assert_eq!(code_on(&html), None);
    assert_eq!(
        count(&w.app.pool, "SELECT count(*) FROM keypad_codes").await,
        0
    );

    let (status, cache, html) = form_post(&w.app, &issue, &w.dispatcher, &form).await;
    assert_eq!((status, cache.as_str()), (201, "no-store"), "{html}");
    assert!(html.contains("Read this code to the crew over the radio"));
    let code = code_on(&html).expect("the code on the page");
    // It is the lock's code: it opens this lock once in its window.
    let secret =
        SecretRoot::derive(&firstkey::crypto::Kek::from_bytes([0x2a; 32])).lock_secret(w.lock, 1);
    let wire = w.lock.to_string();
    let none = BTreeMap::new();
    let view = KeypadView {
        lock_id: &wire,
        secret: Some(&secret),
        standing: &none,
        floor: 0,
        skew: 60,
    };
    let never = FnLedger(|_: &[u8; 16]| 0, |_: &[u8; 16]| false);
    let now = u64::try_from(Utc::now().timestamp()).unwrap();
    assert!(keypad::verify(&view, &code, now, &never).allows());
    // Shown once: the page again has no digits, and lists the code as not used yet.
    let (_, html) = get(&w.dispatcher).await;
    assert_eq!(code_on(&html), None);
    assert!(html.contains("data-code-state=\"unused\""));
    // A grant of another incident is not this page's.
    let other_incident = crate::emergency::open_incident(&w, "25-09999", "fire", w.fire).await;
    let (status, _, _) = form_post(
        &w.app,
        &format!("/dispatch/incidents/{other_incident}/keypad-codes"),
        &w.dispatcher,
        &form,
    )
    .await;
    assert_eq!(status, 404);
    // Revoking the grant revokes the code; the page says so.
    let (status, _) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{grant}/revoke"),
        Some(&w.dispatcher),
        Some(json!({})),
    )
    .await;
    assert!(status == 200 || status == 204, "{status}");
    let (_, html) = get(&w.dispatcher).await;
    assert!(html.contains("data-code-state=\"revoked\""), "{html}");
    assert!(!html.contains(&format!("id=\"code-form-{grant}\"")));
}

#[tokio::test]
async fn disabling_a_trusted_partys_account_clears_its_codes_at_the_locks() {
    let w = world().await;
    let pool = &w.app.pool;
    let mut body = terms(&w, Value::Null);
    body["locks"] = json!([w.lock]);
    body["keypad_codes"] = json!(true);
    let (_party, sam) = accepted(&w, "sam@a.example", body).await;
    assert_eq!(slots_at(pool, w.lock).await.len(), 1, "a slot while active");
    let admin = crate::helpers::user(
        &w.app,
        w.tenant,
        "admin@a.example",
        None,
        Role::MunicipalAdmin,
        true,
    )
    .await;
    w.restep(&admin).await;
    let (status, body) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/admin/users/{}/disable", sam.id),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        slots_at(pool, w.lock).await.is_empty(),
        "the lock is told to clear the slot: the codes stop working offline"
    );
    // The rotation loop issues nothing to a disabled account.
    standing::issue_due(pool, &root_of(&w), w.now() + Duration::days(8))
        .await
        .unwrap();
    let before = mailed_codes(pool, "sam@a.example").await.len();
    standing::issue_due(pool, &root_of(&w), w.now() + Duration::days(16))
        .await
        .unwrap();
    assert_eq!(mailed_codes(pool, "sam@a.example").await.len(), before);
    // Enabled again, the party's slot comes back with a new schedule.
    w.restep(&admin).await;
    let (status, body) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/admin/users/{}/enable", sam.id),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(slots_at(pool, w.lock).await.len(), 1);
}

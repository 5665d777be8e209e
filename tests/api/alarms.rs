//! The home talks back (issue 12): alarms from a monitoring centre (signed, idempotent) and from a
//! lock's detector, decided by the homeowner's rules; battery and offline mails; door events as
//! receipts in the lock's chain, uploaded after an outage, in order, audited and mailed once.

use std::process::Command;

use chrono::{Duration, Utc};
use firstkey::domain::{AgencyKind, Email, Role};
use firstkey::store::{people, tenancy};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::channel::{Agent, World as ChannelWorld, agent_bin, eventually, paired};
use crate::emergency::{
    audit_actions, cad_credential, cad_post, mails, request_token, tap, token_bytes, world,
};
use crate::helpers::call;

const ALARMS: &str = "/api/v1/monitoring/alarms";

fn alarm(kind: &str, confirmed: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "account": "ACME-1001", "kind": kind, "confirmed": confirmed, "detector": "Kitchen"
    }))
    .unwrap()
}

async fn json_of(r: reqwest::Response) -> (u16, bool, Value) {
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    (status, replayed, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn monitoring_alarms_follow_the_homeowners_rules() {
    let w = world().await;
    let cad = cad_credential(&w).await;
    let link = format!("/api/v1/properties/{}/monitoring-accounts", w.property);
    let body = json!({ "key_id": cad.key_id, "account": "ACME-1001" });
    let (status, b) = call(
        &w.app,
        Method::POST,
        &link,
        Some(&w.owner),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    let (status, _) = call(&w.app, Method::POST, &link, Some(&w.owner), Some(body)).await;
    assert_eq!(status, 409, "one account, one property");
    let unknown = json!({ "key_id": "cad_ffffffffffffffff", "account": "X-1" });
    let (status, _) = call(&w.app, Method::POST, &link, Some(&w.owner), Some(unknown)).await;
    assert_eq!(status, 400);

    let rules = format!("/api/v1/properties/{}/alarm-rules", w.property);
    let set = json!({ "rules": [
        { "kind": "smoke", "action": "incident_and_grant", "agency": w.fire, "minutes": 30 },
        { "kind": "medical", "action": "incident", "agency": w.fire },
        { "kind": "intrusion", "action": "nothing" }
    ]});
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &rules,
        Some(&w.dispatcher),
        Some(set.clone()),
    )
    .await;
    assert_eq!(status, 404, "only the homeowner sets the rules");
    let bad = json!({ "rules": [{ "kind": "smoke", "action": "incident" }] });
    let (status, _) = call(&w.app, Method::PUT, &rules, Some(&w.owner), Some(bad)).await;
    assert_eq!(status, 400, "an incident rule names its agency");
    let (status, b) = call(&w.app, Method::PUT, &rules, Some(&w.owner), Some(set)).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b.as_array().unwrap().len(), 3);

    let now = Utc::now().timestamp();
    let smoke = alarm("smoke", true);
    // A bad signature or a stale timestamp is refused and changes nothing.
    let (status, _, _) =
        json_of(cad_post(&w, &cad, ALARMS, "a1", &smoke, now, "wrong").await).await;
    assert_eq!(status, 401);
    let (status, _, _) =
        json_of(cad_post(&w, &cad, ALARMS, "a1", &smoke, now - 600, &cad.secret).await).await;
    assert_eq!(status, 401);
    let client = w.app.pool.get().await.unwrap();
    let incidents = || async {
        client
            .query_one(
                "SELECT count(*) FROM incidents WHERE municipality_id = $1",
                &[&w.tenant.id()],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(incidents().await, 0);

    // Smoke: an incident for the fire service and a live grant, as the rule says.
    let (status, replayed, first) =
        json_of(cad_post(&w, &cad, ALARMS, "a1", &smoke, now, &cad.secret).await).await;
    assert_eq!(status, 202, "{first}");
    assert!(!replayed);
    assert_eq!(first["duplicate"], false);
    let incident: Uuid = first["incident"].as_str().unwrap().parse().unwrap();
    let grant: Uuid = first["grant"].as_str().unwrap().parse().unwrap();
    let row = client
        .query_one(
            "SELECT g.status, g.granted_by, i.kind, i.agency_id FROM grants g JOIN incidents i ON i.id = g.incident_id
             WHERE g.id = $1",
            &[&grant],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "live");
    assert_eq!(
        row.get::<_, Uuid>(1),
        w.owner.id,
        "the homeowner's standing rule granted it"
    );
    assert_eq!(row.get::<_, String>(2), "smoke_alarm");
    assert_eq!(row.get::<_, Uuid>(3), w.fire);

    // The fire responder's token opens the door.
    let (status, t) = request_token(&w, &w.responder, grant, w.lock).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["lock_warnings"], json!([]));
    let bytes = token_bytes(&t);
    tap(
        &w.bundle,
        w.lock,
        &bytes,
        w.responder.key.as_ref().unwrap(),
        vec![],
    )
    .expect("the lock accepts the fire crew's token");

    // A retry with the same key is the same answer and changes nothing; the key with another
    // body is a conflict.
    let (status, replayed, again) =
        json_of(cad_post(&w, &cad, ALARMS, "a1", &smoke, now + 3, &cad.secret).await).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(again, first);
    let (status, _, _) =
        json_of(cad_post(&w, &cad, ALARMS, "a1", &alarm("co", true), now, &cad.secret).await).await;
    assert_eq!(status, 409);
    assert_eq!(incidents().await, 1);

    // The same alarm again under a new key, minutes later: the same incident, no second grant.
    let (status, _, dup) = json_of(
        cad_post(
            &w,
            &cad,
            ALARMS,
            "a2",
            &alarm("smoke", false),
            now,
            &cad.secret,
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{dup}");
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["incident"], first["incident"]);
    assert_eq!(dup["grant"], Value::Null);
    assert_eq!(incidents().await, 1);

    // The dispatcher sees the alarms on the incident.
    let (status, seen) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/incidents/{incident}/alarms"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen.as_array().unwrap().len(), 2);
    assert_eq!(seen[0]["kind"], "smoke");
    assert_eq!(seen[0]["source"], "monitoring");
    assert_eq!(seen[0]["confirmed"], true);
    assert_eq!(seen[0]["detector"], "Kitchen");
    assert_eq!(seen[1]["duplicate"], true);
    let (status, _) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/incidents/{incident}/alarms"),
        Some(&w.responder),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, detail) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/incidents/{incident}"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(
        detail["alarms"], seen,
        "the incident view carries its alarms"
    );
    // Homeowner and contact mailed once (not again for the duplicate).
    assert_eq!(
        mails(&w, "alarm.raised").await,
        vec!["owner@a.example".to_owned(), "sam@example.org".to_owned()]
    );

    // Medical, "notify only": an incident, no grant.
    let (status, _, medical) = json_of(
        cad_post(
            &w,
            &cad,
            ALARMS,
            "m1",
            &alarm("medical", true),
            now,
            &cad.secret,
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{medical}");
    assert!(medical["incident"].is_string());
    assert_eq!(medical["grant"], Value::Null);
    let grants: i64 = client
        .query_one(
            "SELECT count(*) FROM grants WHERE incident_id = $1",
            &[&medical["incident"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(grants, 0);

    // "Nothing", and a kind with no rule: only an audit entry.
    for (key, kind, rule) in [("i1", "intrusion", "nothing"), ("c1", "co", "none")] {
        let (status, _, out) =
            json_of(cad_post(&w, &cad, ALARMS, key, &alarm(kind, true), now, &cad.secret).await)
                .await;
        assert_eq!(status, 202, "{out}");
        assert_eq!(out["incident"], Value::Null);
        assert_eq!(out["alarm"], Value::Null);
        assert_eq!(out["rule"], rule);
    }
    assert_eq!(incidents().await, 2);
    let received = audit_actions(&w)
        .await
        .into_iter()
        .filter(|(a, _, _)| a == "alarm.received")
        .count();
    assert_eq!(received, 5, "every alarm is audited");

    // An account nobody linked.
    let stranger = serde_json::to_vec(&json!({ "account": "ACME-9", "kind": "smoke" })).unwrap();
    let (status, _, _) =
        json_of(cad_post(&w, &cad, ALARMS, "s1", &stranger, now, &cad.secret).await).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_token_for_a_critical_lock_carries_the_warning() {
    let w = world().await;
    let (_, grant) = crate::emergency::live_fire_grant(&w).await;
    let client = w.app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE locks SET battery_percent = 4, last_seen_at = now() - interval '3 days 1 hour' WHERE id = $1",
            &[&w.lock],
        )
        .await
        .unwrap();
    let (status, t) = request_token(&w, &w.responder, grant, w.lock).await;
    assert_eq!(status, 201, "{t}");
    let warnings = t["lock_warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("battery critical (4 %)"),
        "{t}"
    );
    assert!(
        warnings[1]
            .as_str()
            .unwrap()
            .starts_with("offline for 3 days"),
        "{t}"
    );
    // The dispatcher's plan summary shows the same.
    let (status, summary) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/plan/summary", w.property),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["lock_health"][0]["lock"], json!(w.lock));
    assert_eq!(
        summary["lock_health"][0]["warnings"],
        json!(warnings),
        "{summary}"
    );
}

/// A channel world with a plan that admits the fire service, a fire agency with one responder,
/// and a smoke rule granting it entry.
async fn home(world: &ChannelWorld) -> Uuid {
    let now = Utc::now();
    let client = world.pool.get().await.unwrap();
    let fire = tenancy::ensure_agency(&client, world.tenant, AgencyKind::Fire, "Fire", now)
        .await
        .unwrap()
        .id;
    people::ensure_user(
        &client,
        world.tenant,
        &Email::parse("engine7@example.org").unwrap(),
        "Engine 7",
        Some(fire),
        &[Role::Responder],
        now,
    )
    .await
    .unwrap();
    let plan: firstkey::plans::PlanInput = serde_json::from_value(json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "contacts": [],
        "notifications": { "homeowner": true, "contacts": false },
        "retention_days": 365
    }))
    .unwrap();
    firstkey::store::properties::insert_plan(
        &client,
        world.tenant,
        world.property,
        world.owner,
        &plan,
        |_| Ok(firstkey::store::properties::SealedPlan::default()),
        now,
    )
    .await
    .unwrap();
    let rules: firstkey::alarms::AlarmRules = serde_json::from_value(json!({ "rules": [
        { "kind": "smoke", "action": "incident_and_grant", "agency": fire, "minutes": 20 }
    ]}))
    .unwrap();
    firstkey::alarms::set_rules(
        &client,
        &test_kek(),
        world.tenant,
        world.owner,
        world.property,
        &rules,
        now,
    )
    .await
    .unwrap();
    fire
}

fn agent_cmd(agent: &Agent, args: &[&str]) {
    let out = Command::new(agent_bin())
        .args(args)
        .args(["--state-dir", agent.state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn mail_count(world: &ChannelWorld, kind: &str) -> i64 {
    world
        .scalar(
            "SELECT count(*) FROM notification_outbox WHERE municipality_id = $1 AND kind = $2",
            &[&world.tenant.id(), &kind],
        )
        .await
}

#[tokio::test]
async fn a_smoke_alarm_from_the_locks_detector_opens_an_incident_and_a_grant() {
    let world = ChannelWorld::new().await;
    let fire = home(&world).await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    agent_cmd(&agent, &["alarm", "smoke", "--detector", "Hall"]);
    eventually("the alarm's incident", 20, || async {
        world
            .scalar::<i64>(
                "SELECT count(*) FROM alarms WHERE property_id = $1 AND incident_id IS NOT NULL",
                &[&world.property],
            )
            .await
            == 1
    })
    .await;
    let client = world.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT a.source, a.source_ref, a.confirmed, a.detector, i.agency_id, g.status
             FROM alarms a JOIN incidents i ON i.id = a.incident_id JOIN grants g ON g.id = a.grant_id
             WHERE a.property_id = $1",
            &[&world.property],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "lock");
    assert_eq!(row.get::<_, String>(1), agent.lock.to_string());
    assert!(!row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("Hall"));
    assert_eq!(row.get::<_, Uuid>(4), fire);
    assert_eq!(row.get::<_, String>(5), "live");
    let named: i64 = world
        .scalar(
            "SELECT count(*) FROM grant_responders r JOIN alarms a ON a.grant_id = r.grant_id WHERE a.property_id = $1",
            &[&world.property],
        )
        .await;
    assert_eq!(named, 1, "the fire agency's responder is named");
    assert_eq!(mail_count(&world, "alarm.raised").await, 1);
    // A second report of the same smoke (the detector still sounding): no second incident.
    agent_cmd(&agent, &["alarm", "smoke", "--detector", "Hall"]);
    eventually("the duplicate", 20, || async {
        world
            .scalar::<i64>(
                "SELECT count(*) FROM alarms WHERE property_id = $1 AND duplicate",
                &[&world.property],
            )
            .await
            == 1
    })
    .await;
    let incidents: i64 = world
        .scalar(
            "SELECT count(*) FROM incidents WHERE municipality_id = $1",
            &[&world.tenant.id()],
        )
        .await;
    assert_eq!(incidents, 1);
}

#[tokio::test]
async fn battery_crossings_and_absence_are_mailed_once() {
    let world = ChannelWorld::new().await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    let battery = agent.state.join("battery");
    std::fs::write(&battery, "40").unwrap();
    std::fs::write(agent.state.join("battery_mv"), "5900").unwrap();
    agent.run();
    let lock = agent.lock;
    // The lock's row exists once it paired.
    eventually("pairing", 20, || paired(&world, lock)).await;
    let level = |p: i16| {
        let world = &world;
        move || async move {
            world
                .scalar::<Option<i16>>("SELECT battery_percent FROM locks WHERE id = $1", &[&lock])
                .await
                == Some(p)
        }
    };
    eventually("the first report", 20, level(40)).await;
    let mv: Option<i32> = world
        .scalar(
            "SELECT battery_millivolts FROM locks WHERE id = $1",
            &[&agent.lock],
        )
        .await;
    assert_eq!(mv, Some(5900));
    assert_eq!(mail_count(&world, "lock.battery_low").await, 0);
    // Down to 14 %: below 30 and 15 at once, one mail.
    for (percent, mails) in [(14, 1), (12, 1), (13, 1), (4, 2), (3, 2)] {
        agent.kill();
        std::fs::write(&battery, percent.to_string()).unwrap();
        agent.run();
        eventually("the report", 20, level(percent)).await;
        assert_eq!(
            mail_count(&world, "lock.battery_low").await,
            mails,
            "at {percent} %"
        );
    }
    let trend: Vec<i16> = world
        .scalar(
            "SELECT battery_trend_percent FROM locks WHERE id = $1",
            &[&agent.lock],
        )
        .await;
    assert_eq!(
        trend,
        [40, 14, 12, 13, 4, 3],
        "one trend entry per change of level, on the lock's own row"
    );

    // Not seen for longer than its period (24 h by default): one mail, however often the sweep runs.
    agent.kill();
    let later = Utc::now() + Duration::hours(25);
    assert_eq!(
        firstkey::health::sweep_offline(&world.pool, Utc::now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        firstkey::health::sweep_offline(&world.pool, later)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        firstkey::health::sweep_offline(&world.pool, later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(mail_count(&world, "lock.offline").await, 1);
    // Back online: the mark is cleared, so the next absence is mailed again.
    std::fs::write(&battery, "90").unwrap();
    agent.run();
    eventually("the lock back", 20, level(90)).await;
    let alerted: Option<chrono::DateTime<Utc>> = world
        .scalar(
            "SELECT offline_alerted_at FROM locks WHERE id = $1",
            &[&agent.lock],
        )
        .await;
    assert!(alerted.is_none());
}

#[tokio::test]
async fn door_events_arrive_as_receipts_after_an_outage_in_order_audited_and_mailed_once() {
    let world = ChannelWorld::new().await;
    let replica = world.replica(0).await;
    let port = replica.local_addr().port();
    let mut agent = Agent::init(&world, port, &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    // The server goes away; the door keeps reporting to its own chain.
    replica.stop();
    agent_cmd(&agent, &["event", "key-override"]);
    agent_cmd(&agent, &["event", "forced"]);
    agent_cmd(&agent, &["event", "held-open", "--seconds", "95"]);
    agent_cmd(&agent, &["event", "jammed"]);
    let receipts = || async { agent.status()["receipt_seq"].as_u64() == Some(4) };
    eventually("four receipts on the lock", 20, receipts).await;
    assert_eq!(agent.status()["pending_uploads"].as_u64(), Some(4));
    let lock = agent.lock;
    let world = &world;
    let stored = || async move {
        world
            .scalar::<i64>("SELECT count(*) FROM receipts WHERE lock_id = $1", &[&lock])
            .await
    };
    assert_eq!(stored().await, 0);
    // Back online (a new replica on the same port; the agent reconnects at once when restarted).
    let _replica = world.replica(port).await;
    agent.kill();
    agent.run();
    eventually("the uploads", 30, || async { stored().await == 4 }).await;
    let client = world.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT seq, decision, reason, door_event, door_event_seconds FROM receipts WHERE lock_id = $1 ORDER BY seq",
            &[&agent.lock],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, String, String, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let row = |seq, reason: &str, event: &str, seconds| {
        (
            seq,
            "event".to_owned(),
            reason.to_owned(),
            event.to_owned(),
            seconds,
        )
    };
    assert_eq!(
        got,
        vec![
            row(1, "door:key_override", "key_override", None),
            row(2, "door:forced", "forced", None),
            row(3, "door:held_open:95", "held_open", Some(95)),
            row(4, "door:jammed", "jammed", None),
        ]
    );
    // The typed field is in the signed receipt itself.
    let stored = client
        .query_one(
            "SELECT r.receipt, l.device_public_key FROM receipts r JOIN locks l ON l.id = r.lock_id
             WHERE r.lock_id = $1 AND r.seq = 3",
            &[&agent.lock],
        )
        .await
        .unwrap();
    let (receipt, key): (Vec<u8>, Vec<u8>) = (stored.get(0), stored.get(1));
    let verified = firstkey_agent::receipt::verify_one(&receipt, &key).map(|v| v.body.door_event);
    assert!(
        matches!(
            verified,
            Ok(Some(firstkey_agent::events::DoorEvent::HeldOpen {
                seconds: 95
            }))
        ),
        "{verified:?}"
    );
    let audited: Vec<String> = client
        .query(
            "SELECT public_details->>'event' FROM audit_entries WHERE municipality_id = $1 AND action = 'door.event' ORDER BY id",
            &[&world.tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited, ["key_override", "forced", "held_open", "jammed"]);
    let subjects: Vec<String> = client
        .query(
            "SELECT subject FROM notification_outbox WHERE municipality_id = $1 AND kind = 'door.event' ORDER BY created_at, subject",
            &[&world.tenant.id()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(subjects.len(), 4, "{subjects:?}");
    assert!(subjects.contains(&"Front door opened with the physical key".to_owned()));
    // A reconnect re-offers nothing new and mails nothing twice.
    agent.kill();
    agent.run();
    eventually("the reconnect", 20, || async {
        world
            .scalar::<Option<chrono::DateTime<Utc>>>(
                "SELECT last_seen_at FROM locks WHERE id = $1",
                &[&agent.lock],
            )
            .await
            .is_some_and(|t| t > Utc::now() - Duration::seconds(5))
    })
    .await;
    assert_eq!(mail_count(world, "door.event").await, 4);
}

/// The test settings' key-encryption key (32 bytes of 0x2a).
fn test_kek() -> firstkey::crypto::Kek {
    firstkey::crypto::Kek::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap()
}

/// The plan of the emergency world's home, with a physical key: location, a holder, a key box code.
fn plan_with_key_box(code: &str) -> Value {
    json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire", "medical"] } },
        "max_grant_minutes": 60,
        "notes": { "pets": "Two dogs" },
        "notifications": { "homeowner": true, "contacts": false },
        "retention_days": 365,
        "physical_key": {
            "location": "key box left of the garage door",
            "holders": [{ "name": "Sam at no. 14", "phone": "555-0114" }],
            "key_box_code": code
        }
    })
}

#[tokio::test]
async fn the_key_box_code_is_sealed_and_shown_only_through_the_audited_reveal_with_a_reason() {
    let w = world().await;
    const CODE: &str = "4711-93";
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    let (status, b) = call(
        &w.app,
        Method::PUT,
        &plan_path,
        Some(&w.owner),
        Some(plan_with_key_box(CODE)),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    // Stored sealed: the code is in no open column, nor in the ciphertext's bytes.
    let client = w.app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT physical_key::text, key_box_ciphertext FROM access_plans
             WHERE property_id = $1 ORDER BY version DESC LIMIT 1",
            &[&w.property],
        )
        .await
        .unwrap();
    let open: String = row.get(0);
    let sealed: Vec<u8> = row.get(1);
    assert!(
        open.contains("garage door") && !open.contains(CODE),
        "{open}"
    );
    assert!(!sealed.windows(CODE.len()).any(|win| win == CODE.as_bytes()));
    // Its owner reads it back.
    let (status, mine) = call(&w.app, Method::GET, &plan_path, Some(&w.owner), None).await;
    assert_eq!(status, 200);
    assert_eq!(mine["physical_key"]["key_box_code"], CODE);
    // The dispatcher's summary: where and who, never the code.
    let (status, summary) = call(
        &w.app,
        Method::GET,
        &format!("{plan_path}/summary"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        summary["physical_key"],
        json!({
            "location": "key box left of the garage door",
            "holders": [{ "name": "Sam at no. 14", "phone": "555-0114" }],
            "has_key_box_code": true
        })
    );
    assert!(!summary.to_string().contains(CODE));

    let reveal = format!("{plan_path}/reveal-key-box");
    let incident = crate::emergency::open_incident(&w, "25-09001", "fire", w.fire).await;
    let reveals = || async {
        client
            .query_one(
                "SELECT count(*) FROM audit_entries WHERE municipality_id = $1 AND action = 'plan.reveal_key_box'",
                &[&w.tenant.id()],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // No reason, a blank reason, an unknown field: refused, nothing revealed or recorded.
    for body in [
        json!({ "incident": incident }),
        json!({ "incident": incident, "reason": "   " }),
        json!({ "incident": incident, "reason": "fire", "code": true }),
    ] {
        let (status, b) = call(
            &w.app,
            Method::POST,
            &reveal,
            Some(&w.dispatcher),
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{b}");
        assert!(!b.to_string().contains(CODE));
    }
    // Without an incident of the dispatcher's agency here: refused (and the denial audited).
    let (status, b) = call(
        &w.app,
        Method::POST,
        &reveal,
        Some(&w.dispatcher),
        Some(json!({ "reason": "curious" })),
    )
    .await;
    assert_eq!(status, 404, "{b}");
    // Another agency's dispatcher cannot tie the fire incident to the home.
    let (status, _) = call(
        &w.app,
        Method::POST,
        &reveal,
        Some(&w.police_desk),
        Some(json!({ "incident": incident, "reason": "curious" })),
    )
    .await;
    assert_eq!(
        status, 403,
        "as `POST /api/v1/incidents/{{id}}/properties` answers it"
    );
    // A dispatcher of no agency, without a fresh step-up.
    let (status, _) = call(
        &w.app,
        Method::POST,
        &reveal,
        Some(&w.dispatcher_plain),
        Some(json!({ "incident": incident, "reason": "fire crew at the door" })),
    )
    .await;
    assert_eq!(status, 403);
    // A responder not named in a live grant sees nothing.
    let (status, _) = call(
        &w.app,
        Method::POST,
        &reveal,
        Some(&w.responder),
        Some(json!({ "reason": "at the door" })),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(reveals().await, 0);
    // The dispatcher of the incident, for a reason: the code, audited with the reason, never cached.
    let response = w
        .app
        .http
        .post(format!("{}{reveal}", w.app.address))
        .header("cookie", &w.dispatcher.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .json(&json!({ "incident": incident, "reason": "lock battery flat, crew at the door" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    let b: Value = response.json().await.unwrap();
    assert_eq!(b["code"], CODE);
    assert_eq!(b["location"], "key box left of the garage door");
    assert_eq!(reveals().await, 1);
    let entry = client
        .query_one(
            "SELECT public_details::text, incident_id FROM audit_entries
             WHERE municipality_id = $1 AND action = 'plan.reveal_key_box'",
            &[&w.tenant.id()],
        )
        .await
        .unwrap();
    let details: String = entry.get(0);
    assert!(
        !details.contains("lock battery flat, crew at the door"),
        "the reason is free text: only in the encrypted personal details: {details}"
    );
    assert!(!details.contains(CODE), "the code is in no audit entry");
    assert_eq!(entry.get::<_, Option<Uuid>>(1), Some(incident));
    // The code is in no audit entry and no mail at all.
    let leaked: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM audit_entries WHERE public_details::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM notification_outbox WHERE body_text || body_html LIKE '%' || $1 || '%')",
            &[&CODE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
    // A critical battery: the warning names the key box the plan records.
    client
        .execute(
            "UPDATE locks SET battery_percent = 3, last_seen_at = now() WHERE id = $1",
            &[&w.lock],
        )
        .await
        .unwrap();
    let (_, summary) = call(
        &w.app,
        Method::GET,
        &format!("{plan_path}/summary"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    let warning = summary["lock_health"][0]["warnings"][0].as_str().unwrap();
    assert_eq!(
        warning,
        "battery critical (3 %) — bring a 9 V jump battery or use the key box at key box left of the garage door"
    );
}

#[tokio::test]
async fn each_plan_version_records_the_alarm_rules_in_force() {
    let w = world().await;
    let versions = || async {
        let client = w.app.pool.get().await.unwrap();
        client
            .query(
                "SELECT version, alarm_rules FROM access_plans WHERE property_id = $1 ORDER BY version",
                &[&w.property],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, Option<Value>>(1)))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions().await, vec![(1, Some(json!([])))]);
    let rules = format!("/api/v1/properties/{}/alarm-rules", w.property);
    let set = json!({ "rules": [
        { "kind": "smoke", "action": "incident_and_grant", "agency": w.fire, "minutes": 30 },
        { "kind": "intrusion", "action": "nothing" }
    ]});
    let (status, b) = call(&w.app, Method::PUT, &rules, Some(&w.owner), Some(set)).await;
    assert_eq!(status, 200, "{b}");
    let recorded = json!([
        { "kind": "intrusion", "action": "nothing" },
        { "kind": "smoke", "action": "incident_and_grant", "agency": w.fire, "minutes": 30 }
    ]);
    let v = versions().await;
    assert_eq!(v.len(), 2, "a change of rules is a new plan version");
    assert_eq!(v[1], (2, Some(recorded.clone())));
    // The new version is the old plan with the new rules: notes and agencies carried over.
    let (_, plan) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/plan", w.property),
        Some(&w.owner),
        None,
    )
    .await;
    assert_eq!(plan["version"], 2);
    assert_eq!(plan["notes"]["pets"], "Two dogs");
    assert_eq!(plan["agencies"]["fire"]["allowed"], true);
    // A plan edit records the rules still in force.
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &format!("/api/v1/properties/{}/plan", w.property),
        Some(&w.owner),
        Some(plan_with_key_box("1234")),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(versions().await[2], (3, Some(recorded)));
    // Refused rules change no version.
    let bad = json!({ "rules": [{ "kind": "smoke", "action": "incident" }] });
    let (status, _) = call(&w.app, Method::PUT, &rules, Some(&w.owner), Some(bad)).await;
    assert_eq!(status, 400);
    assert_eq!(versions().await.len(), 3);
}

#[tokio::test]
async fn offline_periods_are_the_homeowners_to_set() {
    let w = world().await;
    let home = format!("/api/v1/properties/{}/offline-period", w.property);
    let lock = format!(
        "/api/v1/properties/{}/locks/{}/offline-period",
        w.property, w.lock
    );
    for bad in [
        json!({ "minutes": 9 }),
        json!({ "minutes": 43201 }),
        json!({}),
    ] {
        let (status, _) = call(&w.app, Method::PUT, &home, Some(&w.owner), Some(bad)).await;
        assert_eq!(status, 400);
    }
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &home,
        Some(&w.dispatcher),
        Some(json!({ "minutes": 60 })),
    )
    .await;
    assert_eq!(status, 404, "only the homeowner");
    let (status, h) = call(
        &w.app,
        Method::PUT,
        &home,
        Some(&w.owner),
        Some(json!({ "minutes": 60 })),
    )
    .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h[0]["offline_after_minutes"], 60);
    assert_eq!(h[0]["own_offline_period"], false);
    let (status, h) = call(
        &w.app,
        Method::PUT,
        &lock,
        Some(&w.owner),
        Some(json!({ "minutes": 720.0 })),
    )
    .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h[0]["offline_after_minutes"], 720);
    assert_eq!(h[0]["own_offline_period"], true);
    // A lock of another home is not this home's.
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &format!(
            "/api/v1/properties/{}/locks/{}/offline-period",
            w.property, w.other_lock
        ),
        Some(&w.owner),
        Some(json!({ "minutes": 30 })),
    )
    .await;
    assert_eq!(status, 404);
    let (status, h) = call(
        &w.app,
        Method::PUT,
        &lock,
        Some(&w.owner),
        Some(json!({ "minutes": null })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h[0]["offline_after_minutes"], 60, "back to the home's");
    let audited: i64 = w
        .app
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE municipality_id = $1
               AND action IN ('property.offline_period_set', 'lock.offline_period_set')",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 3);
}

#[tokio::test]
async fn a_stopped_lock_past_its_period_is_mailed_once_by_the_running_sweeper() {
    let world = ChannelWorld::new().await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    let lock = agent.lock;
    let w = &world;
    // The lock's row exists once it paired.
    eventually("pairing", 20, || crate::channel::paired(w, lock)).await;
    let reported = || async move {
        w.scalar::<Option<i64>>("SELECT time_floor FROM locks WHERE id = $1", &[&lock])
            .await
            .is_some()
    };
    eventually("the first report", 20, reported).await;
    // A second paired lock of the home, last seen an hour ago: inside the home's 24 h.
    let quiet = Uuid::new_v4();
    world
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at, last_seen_at)
             VALUES ($1, $2, $3, 'Back door', 'paired', $4, now(), now(), now() - interval '1 hour')",
            &[&quiet, &world.tenant.id(), &world.property, &quiet.as_bytes().repeat(2)],
        )
        .await
        .unwrap();
    // The sweeper as every replica runs it, on the real clock, every 200 ms.
    let sweeper = tokio::spawn(firstkey::health::run_offline_sweeper(
        world.pool.clone(),
        std::sync::Arc::new(firstkey::clock::SystemClock),
        // The test app's data key (as `standing_codes` derives it); no party here has codes.
        firstkey::codes::SecretRoot::derive(&firstkey::crypto::Kek::from_bytes([0x2a; 32])),
        std::time::Duration::from_millis(200),
    ));
    // The lock stops. Its period is shortened in the database to 2 s so the test need not wait
    // the 10 minutes the pages and JSON allow at least (longer than the channel's status-write
    // interval, so a connected lock is never taken for an absent one).
    agent.kill();
    let shorten = || async move {
        w.pool
            .get()
            .await
            .unwrap()
            .execute(
                "UPDATE locks SET offline_after_seconds = 2 WHERE id = $1",
                &[&lock],
            )
            .await
            .unwrap();
    };
    shorten().await;
    eventually("the offline mail", 20, || async {
        mail_count(w, "lock.offline").await == 1
    })
    .await;
    // However often the sweeper runs: one mail per absence.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(mail_count(w, "lock.offline").await, 1);
    let offline_entries = || async move {
        w.scalar::<i64>(
            "SELECT count(*) FROM audit_entries WHERE municipality_id = $1 AND action = 'lock.offline'",
            &[&w.tenant.id()],
        )
        .await
    };
    assert_eq!(offline_entries().await, 1);
    // The homeowner gives the lock 10 minutes again (as the page does); back online, the mark
    // clears; stopped again past a short period, it is mailed about again.
    {
        let client = world.pool.get().await.unwrap();
        firstkey::health::set_offline_period(
            &client,
            world.tenant,
            world.owner,
            world.property,
            Some(lock),
            Some(10),
            Utc::now(),
        )
        .await
        .unwrap();
    }
    agent.run();
    eventually("the lock back", 20, || async move {
        w.scalar::<Option<chrono::DateTime<Utc>>>(
            "SELECT offline_alerted_at FROM locks WHERE id = $1",
            &[&lock],
        )
        .await
        .is_none()
    })
    .await;
    agent.kill();
    shorten().await;
    eventually("the second absence's mail", 20, || async {
        mail_count(w, "lock.offline").await == 2
    })
    .await;
    // The quiet lock: nothing within the home's day; with the home's period at 10 minutes, its
    // hour away is mailed too.
    let quiet_mailed = || async move {
        w.scalar::<Option<chrono::DateTime<Utc>>>(
            "SELECT offline_alerted_at FROM locks WHERE id = $1",
            &[&quiet],
        )
        .await
        .is_some()
    };
    assert!(!quiet_mailed().await);
    {
        let client = world.pool.get().await.unwrap();
        firstkey::health::set_offline_period(
            &client,
            world.tenant,
            world.owner,
            world.property,
            None,
            Some(10),
            Utc::now(),
        )
        .await
        .unwrap();
    }
    eventually("the quiet lock's mail", 20, quiet_mailed).await;
    assert_eq!(mail_count(w, "lock.offline").await, 3);
    sweeper.abort();
}

#[tokio::test]
async fn a_lock_alarm_offered_again_after_the_window_is_recognised_by_its_id() {
    let world = ChannelWorld::new().await;
    home(&world).await;
    let replica = world.replica(0).await;
    let mut agent = Agent::init(&world, replica.local_addr().port(), &[]);
    world.register(agent.lock, "Front door", &agent.code).await;
    agent.run();
    eventually("pairing", 20, || paired(&world, agent.lock)).await;
    // The detector goes off while the agent is stopped: the alarm waits in the spool, with its id.
    agent.kill();
    agent_cmd(&agent, &["alarm", "smoke", "--detector", "Hall"]);
    let spool = agent.state.join("events");
    let spooled: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(spooled.len(), 1);
    let saved = std::fs::read(&spooled[0]).unwrap();
    let id = serde_json::from_slice::<Value>(&saved).unwrap()["Alarm"]["id"].clone();
    assert!(id.as_array().is_some_and(|b| b.len() == 16), "{id}");
    agent.run();
    let w = &world;
    let count = |sql: &'static str| async move { w.scalar::<i64>(sql, &[&w.property]).await };
    eventually("the alarm's incident", 20, || async {
        count("SELECT count(*) FROM alarms WHERE property_id = $1").await == 1
    })
    .await;
    // The incident is over (the burst window no longer holds it).
    world
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE incidents SET closed_at = now() WHERE municipality_id = $1",
            &[&world.tenant.id()],
        )
        .await
        .unwrap();
    // The same alarm is offered again (an agent that stopped after writing the frame and before
    // removing the file sends it once more at its next connection), and then a new alarm: both
    // in one session, in that order.
    agent.kill();
    std::fs::write(spool.join("00000000000000000000-0000.json"), &saved).unwrap();
    agent_cmd(&agent, &["alarm", "smoke", "--detector", "Hall"]);
    let newest = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let id_of = |bytes: &[u8]| {
        let v: Value = serde_json::from_slice(bytes).unwrap();
        let raw: Vec<u8> = v["Alarm"]["id"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
            .collect();
        Uuid::from_slice(&raw).unwrap()
    };
    let new_id = id_of(&std::fs::read(&newest).unwrap());
    assert_ne!(new_id, id_of(&saved));
    agent.run();
    eventually("the new alarm", 20, || async move {
        w.scalar::<i64>(
            "SELECT count(*) FROM alarms WHERE source_alarm_id = $1",
            &[&new_id],
        )
        .await
            == 1
    })
    .await;
    // The replay came first and did nothing: one alarm row each, an incident and a grant each.
    assert_eq!(
        count("SELECT count(*) FROM alarms WHERE property_id = $1").await,
        2
    );
    let incidents: i64 = world
        .scalar(
            "SELECT count(*) FROM incidents WHERE municipality_id = $1",
            &[&world.tenant.id()],
        )
        .await;
    assert_eq!(
        incidents, 2,
        "the replay opened no incident, the new alarm one"
    );
    let grants: i64 = count("SELECT count(*) FROM grants WHERE property_id = $1").await;
    assert_eq!(grants, 2);
    assert_eq!(mail_count(&world, "alarm.raised").await, 2);
    let ids: i64 = count(
        "SELECT count(DISTINCT source_alarm_id) FROM alarms WHERE property_id = $1 AND source_alarm_id IS NOT NULL",
    )
    .await;
    assert_eq!(ids, 2);
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn page(w: &crate::emergency::World, path: &str, who: &crate::helpers::As) -> (u16, String) {
    let r = browser()
        .get(format!("{}{path}", w.app.address))
        .header("accept", "text/html")
        .header("cookie", &who.cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post_form(
    w: &crate::emergency::World,
    path: &str,
    who: &crate::helpers::As,
    form: &[(&str, String)],
) -> (u16, String) {
    let r = browser()
        .post(format!("{}{path}", w.app.address))
        .header("accept", "text/html")
        .header("cookie", &who.cookie)
        .header("origin", crate::helpers::ORIGIN)
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_pages_show_health_alarms_rules_and_the_key_box() {
    let w = world().await;
    let plan_path = format!("/api/v1/properties/{}/plan", w.property);
    let (status, _) = call(
        &w.app,
        Method::PUT,
        &plan_path,
        Some(&w.owner),
        Some(plan_with_key_box("8086")),
    )
    .await;
    assert_eq!(status, 201);
    // The homeowner sets the smoke rule and links the monitoring account on the alarms page.
    let cad = cad_credential(&w).await;
    let alarms_page = format!("/homes/{}/alarms", w.property);
    let (status, html) = page(&w, &alarms_page, &w.owner).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"rules-form\""), "{html}");
    let mut rules = vec![
        ("smoke_action", "incident_and_grant".to_owned()),
        ("smoke_agency", w.fire.to_string()),
        ("smoke_minutes", "30".to_owned()),
        ("co_action", "incident".to_owned()),
        ("co_agency", String::new()),
    ];
    let (status, html) = post_form(&w, &alarms_page, &w.owner, &rules).await;
    assert_eq!(status, 400, "an incident rule names its agency");
    assert!(
        html.contains("carbon monoxide alarm: choose the agency."),
        "{html}"
    );
    rules.truncate(3);
    let (status, _) = post_form(&w, &alarms_page, &w.owner, &rules).await;
    assert_eq!(status, 303);
    let (_, stored) = call(
        &w.app,
        Method::GET,
        &format!("/api/v1/properties/{}/alarm-rules", w.property),
        Some(&w.owner),
        None,
    )
    .await;
    assert_eq!(
        stored,
        json!([{ "kind": "smoke", "action": "incident_and_grant", "agency": w.fire, "minutes": 30 }])
    );
    let (status, _) = post_form(
        &w,
        &format!("{alarms_page}/accounts"),
        &w.owner,
        &[
            ("key_id", cad.key_id.clone()),
            ("account", "ACME-1001".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 303);
    let (_, html) = page(&w, &alarms_page, &w.owner).await;
    assert!(html.contains("ACME-1001"));
    // Someone else's home: not found.
    let (status, _) = page(&w, &alarms_page, &w.dispatcher).await;
    assert_eq!(status, 404);

    // A smoke alarm; the lock's battery is critical.
    let now = Utc::now().timestamp();
    let (status, _, outcome) = json_of(
        cad_post(
            &w,
            &cad,
            ALARMS,
            "p1",
            &alarm("smoke", true),
            now,
            &cad.secret,
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{outcome}");
    let incident = outcome["incident"].as_str().unwrap().to_owned();
    let client = w.app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE locks SET battery_percent = 4, last_seen_at = now() WHERE id = $1",
            &[&w.lock],
        )
        .await
        .unwrap();

    // The homeowner's page: health, alarm history, the offline period.
    let home_page = format!("/homes/{}", w.property);
    let (status, html) = page(&w, &home_page, &w.owner).await;
    assert_eq!(status, 200);
    for expected in [
        "Lock health",
        "battery critical (4 %) — bring a 9 V jump battery or use the key box at key box left of the garage door",
        "smoke alarm",
        "your monitoring centre (confirmed)",
        "entry granted by your rule",
        "1 day",
    ] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
    let period = format!("/homes/{}/offline-period", w.property);
    let (status, html) = post_form(&w, &period, &w.owner, &[("minutes", "5".to_owned())]).await;
    assert_eq!(status, 400);
    assert!(html.contains("10 to 43200 minutes"), "{html}");
    let (status, _) = post_form(&w, &period, &w.owner, &[("minutes", "120".to_owned())]).await;
    assert_eq!(status, 303);
    let (status, _) = post_form(
        &w,
        &period,
        &w.owner,
        &[("lock", w.lock.to_string()), ("minutes", "45".to_owned())],
    )
    .await;
    assert_eq!(status, 303);
    let periods = client
        .query_one(
            "SELECT p.offline_after_seconds, l.offline_after_seconds FROM properties p JOIN locks l ON l.property_id = p.id
             WHERE l.id = $1",
            &[&w.lock],
        )
        .await
        .unwrap();
    assert_eq!(
        (periods.get::<_, i32>(0), periods.get::<_, Option<i32>>(1)),
        (7200, Some(2700))
    );

    // The dispatcher's incident page: the alarm, the key box and holders, the lock's warning.
    let incident_page = format!("/dispatch/incidents/{incident}?property={}", w.property);
    let (status, html) = page(&w, &incident_page, &w.dispatcher).await;
    assert_eq!(status, 200);
    for expected in [
        "id=\"alarm-list\"",
        "confirmed by the monitoring centre",
        "the monitoring centre (Kitchen)",
        "key box left of the garage door",
        "Sam at no. 14 (555-0114)",
        "Front door: battery critical (4 %)",
        "Reveal the key box code",
    ] {
        assert!(html.contains(expected), "{expected}: {html}");
    }
    assert!(!html.contains("8086"));
    // The key box reveal from the console: a reason is required; with one, the code, audited.
    let reveal = format!("/dispatch/incidents/{incident}/reveal");
    let (status, html) = post_form(
        &w,
        &reveal,
        &w.dispatcher,
        &[
            ("property", w.property.to_string()),
            ("what", "key_box".to_owned()),
            ("reason", " ".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(!html.contains("8086"));
    let (status, html) = post_form(
        &w,
        &reveal,
        &w.dispatcher,
        &[
            ("property", w.property.to_string()),
            ("what", "key_box".to_owned()),
            ("reason", "battery flat, crew at the door".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Key box code") && html.contains("8086"),
        "{html}"
    );
    let reason: bool = client
        .query_one(
            "SELECT public_details->>'reason' IS NULL AND private_details IS NOT NULL FROM audit_entries
             WHERE municipality_id = $1 AND action = 'plan.reveal_key_box'",
            &[&w.tenant.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason,
        "the reason is recorded, encrypted as personal details"
    );
}

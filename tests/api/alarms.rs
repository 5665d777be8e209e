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
    let history: i64 = world
        .scalar(
            "SELECT count(*) FROM lock_battery_history WHERE lock_id = $1",
            &[&agent.lock],
        )
        .await;
    assert_eq!(history, 6, "one history row per change of level");

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
            "SELECT seq, decision, reason FROM receipts WHERE lock_id = $1 ORDER BY seq",
            &[&agent.lock],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "event".to_owned(), "door:key_override".to_owned()),
            (2, "event".to_owned(), "door:forced".to_owned()),
            (3, "event".to_owned(), "door:held_open:95".to_owned()),
            (4, "event".to_owned(), "door:jammed".to_owned()),
        ]
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

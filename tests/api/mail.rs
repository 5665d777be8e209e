//! Notifications through the durable outbox and a real SMTP server (the sink): during an SMTP outage
//! mail waits; after it, everything arrives, once.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use firstkey::domain::{Email, Slug};
use firstkey::notify::{self, Mail, Mailer, sink::SmtpSink};
use firstkey::settings::SmtpSettings;
use firstkey::store::tenancy;

use crate::helpers::spawn_app;

fn mail(n: u32) -> Mail {
    Mail {
        dedupe_key: format!("test:{n}"),
        kind: "test.notice",
        to: Email::parse(&format!("home{n}@example.org")).unwrap(),
        subject: format!("Front door opened ({n})"),
        text: "Front door opened by Engine 7 for incident 26-04711 at 14:02.".to_owned(),
        html: "<p>Front door opened by <b>Engine 7</b> for incident 26-04711 at 14:02.</p>"
            .to_owned(),
    }
}

async fn start_sink(addr: SocketAddr, dir: &std::path::Path) -> SmtpSink {
    for _ in 0..50 {
        if let Ok(sink) = SmtpSink::start(addr, dir).await {
            return sink;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not bind the SMTP sink at {addr}");
}

#[tokio::test]
async fn mail_waits_through_an_smtp_outage_and_arrives_once() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    // Find a free port for the relay, then leave it closed: SMTP is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mailer = Mailer::new(&SmtpSettings {
        relay: format!("smtp://{addr}").into(),
        from: "firstkey <noreply@firstkey.test>".to_owned(),
    })
    .unwrap();

    let now = Utc::now();
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let (tenant, _) =
        tenancy::ensure_municipality(&tx, &Slug::parse("mail-town").unwrap(), "Mail", now)
            .await
            .unwrap();
    for n in 0..3 {
        assert!(notify::enqueue(&tx, tenant, &mail(n), now).await.unwrap());
    }
    assert!(
        !notify::enqueue(&tx, tenant, &mail(0), now).await.unwrap(),
        "same event, enqueued once"
    );
    tx.commit().await.unwrap();

    // Outage: nothing is sent, nothing is lost, each row records the failure and backs off.
    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, now, 10)
            .await
            .unwrap(),
        0
    );
    let row = client
        .query_one("SELECT count(*), min(attempts), bool_and(last_error IS NOT NULL), bool_and(next_attempt_at > $1) FROM notification_outbox WHERE sent_at IS NULL", &[&now])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, now, 10)
            .await
            .unwrap(),
        0,
        "not due again before the backoff"
    );

    // SMTP returns: everything arrives, once.
    let sink = start_sink(addr, dir.path()).await;
    let later = now + chrono::Duration::minutes(1);
    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, later, 10)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, later + chrono::Duration::hours(1), 10)
            .await
            .unwrap(),
        0
    );
    let messages = notify::sink::messages(sink.dir()).unwrap();
    assert_eq!(messages.len(), 3);
    for m in &messages {
        assert!(m.contains("Subject: Front door opened"), "{m}");
        assert!(
            m.contains("text/plain") && m.contains("text/html"),
            "plain text and HTML: {m}"
        );
    }
    let recipients: Vec<&str> = messages.iter().map(|m| m.lines().next().unwrap()).collect();
    assert!(
        recipients.iter().any(|r| r.contains("home0@example.org")),
        "{recipients:?}"
    );
}

#[tokio::test]
async fn a_grant_succeeds_while_smtp_is_down_and_its_mail_arrives_after() {
    use firstkey::domain::{AgencyKind, Role};
    use serde_json::json;

    use crate::helpers::{call, user};

    let app = spawn_app().await;
    let now = Utc::now();
    let client = app.pool.get().await.unwrap();
    let (tenant, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("outage-town").unwrap(), "Outage", now)
            .await
            .unwrap();
    let fire = tenancy::ensure_agency(&client, tenant, AgencyKind::Fire, "Outage Fire", now)
        .await
        .unwrap();
    drop(client);
    let owner = user(
        &app,
        tenant,
        "owner@outage.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    let dispatcher = user(
        &app,
        tenant,
        "dispatch@outage.example",
        Some(fire.id),
        Role::Dispatcher,
        true,
    )
    .await;
    let responder = user(
        &app,
        tenant,
        "engine1@outage.example",
        Some(fire.id),
        Role::Responder,
        true,
    )
    .await;
    let (status, property) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/properties",
        Some(&owner),
        Some(json!({ "address": "5 Outage Lane" })),
    )
    .await;
    assert_eq!(status, 201);
    let property = property["id"].as_str().unwrap().to_owned();
    let plan = json!({
        "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
        "max_grant_minutes": 60,
        "retention_days": 30
    });
    assert_eq!(
        call(
            &app,
            reqwest::Method::PUT,
            &format!("/api/v1/properties/{property}/plan"),
            Some(&owner),
            Some(plan)
        )
        .await
        .0,
        201
    );

    // SMTP is down (no relay reachable): the grant still succeeds.
    let (status, incident) = call(&app, reqwest::Method::POST, "/api/v1/incidents", Some(&dispatcher), Some(json!({ "cad_number": "26-99001", "kind": "fire", "address": "5 Outage Lane", "agency": fire.id })))
    .await;
    assert_eq!(status, 201, "{incident}");
    let (status, grant) = call(&app, reqwest::Method::POST, &format!("/api/v1/incidents/{}/grants", incident["id"].as_str().unwrap()), Some(&dispatcher), Some(json!({ "property": property, "responders": [responder.id], "minutes": 30, "justification": "smoke from the roof" })))
    .await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["status"], "live");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mailer = Mailer::new(&SmtpSettings {
        relay: format!("smtp://{addr}").into(),
        from: "firstkey <noreply@firstkey.test>".to_owned(),
    })
    .unwrap();
    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, Utc::now(), 50)
            .await
            .unwrap(),
        0
    );
    let waiting: i64 = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM notification_outbox WHERE recipient = 'owner@outage.example' AND sent_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(waiting >= 1, "the grant's mail waits in the outbox");

    // SMTP returns: the homeowner's mail arrives, once.
    let dir = tempfile::tempdir().unwrap();
    let sink = start_sink(addr, dir.path()).await;
    let later = Utc::now() + chrono::Duration::minutes(30);
    notify::deliver_due(&app.pool, &mailer, later, 50)
        .await
        .unwrap();
    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, later + chrono::Duration::hours(2), 50)
            .await
            .unwrap(),
        0
    );
    let to_owner: Vec<String> = notify::sink::messages(sink.dir())
        .unwrap()
        .into_iter()
        .filter(|m| {
            m.lines()
                .next()
                .is_some_and(|l| l.contains("owner@outage.example"))
        })
        .collect();
    assert_eq!(
        to_owner.len(),
        usize::try_from(waiting).unwrap(),
        "each waiting mail arrives once"
    );
    assert!(
        to_owner.iter().any(|m| m.contains("26-99001")),
        "the grant mail names the incident"
    );
}

#[tokio::test]
async fn a_delivered_invitation_leaves_no_link_secret_in_the_database() {
    use firstkey::auth::accounts::{self, NewInvitation};
    use firstkey::domain::Role;

    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = start_sink(SocketAddr::from(([127, 0, 0, 1], 0)), dir.path()).await;
    let mailer = Mailer::new(&SmtpSettings {
        relay: sink.relay_url().into(),
        from: "firstkey <noreply@firstkey.test>".to_owned(),
    })
    .unwrap();
    let now = Utc::now();
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let (tenant, _) =
        tenancy::ensure_municipality(&tx, &Slug::parse("secret-town").unwrap(), "Secret", now)
            .await
            .unwrap();
    let admin = firstkey::store::people::ensure_user(
        &tx,
        tenant,
        &Email::parse("admin@secret.example").unwrap(),
        "Admin",
        None,
        &[Role::MunicipalAdmin],
        now,
    )
    .await
    .unwrap();
    let origin = firstkey::settings::PublicOrigin::parse(crate::helpers::ORIGIN).unwrap();
    let (_, secret) = accounts::invite(
        &tx,
        tenant,
        admin.id,
        &NewInvitation {
            role: Role::Auditor,
            agency_id: None,
            email: "auditor@secret.example".to_owned(),
            display_name: "Auditor".to_owned(),
        },
        &origin,
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let secret = secret.expose().to_owned();
    let outbox_text = || async {
        app.pool
            .get()
            .await
            .unwrap()
            .query(
                "SELECT row_to_json(n)::text FROM notification_outbox n",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        outbox_text().await.contains(&secret),
        "waiting mail holds its link"
    );

    assert_eq!(
        notify::deliver_due(&app.pool, &mailer, now, 10)
            .await
            .unwrap(),
        1
    );
    let delivered = notify::sink::messages(sink.dir()).unwrap();
    assert!(
        delivered
            .iter()
            .any(|m| m.replace("=\r\n", "").contains(&secret)),
        "the mail carried the link"
    );
    let after = outbox_text().await;
    assert!(
        !after.contains(&secret),
        "link secret left in the outbox: {after}"
    );
    assert!(
        after.contains("auditor@secret.example"),
        "the delivery record stays: {after}"
    );
}

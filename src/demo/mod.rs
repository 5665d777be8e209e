//! `firstkey demo`: a seeded demo municipality with agencies and one user of each role, and the whole
//! emergency-entry story ([`story`]) walked through the real server, a real lock agent process and
//! an SMTP sink, so a person can see it work and then explore.

pub mod client;
pub mod softkey;
pub mod story;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::domain::{AgencyKind, Email, Role, Slug};
use crate::notify;
use crate::store::{self, StoreError, Tenant};

/// What the demo seed created.
#[derive(Debug)]
pub struct DemoWorld {
    /// The demo municipality.
    pub tenant: Tenant,
    /// Its slug.
    pub slug: String,
    /// (role, e-mail) of each seeded user.
    pub users: Vec<(Role, String)>,
}

/// Seeds the demo municipality; running it again changes nothing.
pub async fn seed(pool: &Pool, now: DateTime<Utc>) -> Result<DemoWorld, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let slug = Slug::parse("demo-city").map_err(|e| StoreError::Conflict(e.to_string()))?;
    let (tenant, municipality) =
        store::tenancy::ensure_municipality(&tx, &slug, "Demo City", now).await?;
    let fire = store::tenancy::ensure_agency(
        &tx,
        tenant,
        AgencyKind::Fire,
        "Demo City Fire Department",
        now,
    )
    .await?;
    store::tenancy::ensure_agency(&tx, tenant, AgencyKind::Ems, "Demo City EMS", now).await?;
    store::tenancy::ensure_agency(&tx, tenant, AgencyKind::Police, "Demo City Police", now).await?;
    let seeds: [(&str, &str, Option<uuid::Uuid>, Role); 5] = [
        (
            "admin@demo-city.example",
            "Avery Admin",
            None,
            Role::MunicipalAdmin,
        ),
        (
            "dispatch@demo-city.example",
            "Dana Dispatcher",
            // Dispatchers open incidents for their own agency only; the demo's incident is the fire
            // service's.
            Some(fire.id),
            Role::Dispatcher,
        ),
        (
            "engine7@demo-city.example",
            "Engine 7",
            Some(fire.id),
            Role::Responder,
        ),
        (
            "privacy@demo-city.example",
            "Alex Auditor",
            None,
            Role::Auditor,
        ),
        (
            "home@demo-city.example",
            "Harper Homeowner",
            None,
            Role::Homeowner,
        ),
    ];
    let mut users = Vec::new();
    for (email, name, agency, role) in seeds {
        let email = Email::parse(email).map_err(|e| StoreError::Conflict(e.to_string()))?;
        store::people::ensure_user(&tx, tenant, &email, name, agency, &[role], now).await?;
        users.push((role, email.as_str().to_owned()));
    }
    tx.commit().await?;
    Ok(DemoWorld {
        tenant,
        slug: municipality.slug,
        users,
    })
}

/// `firstkey demo`: seeds the demo municipality, starts the server (HTTP, agent channel, mail
/// worker) with an SMTP sink writing mail to `.firstkey/demo-mail`, walks the whole story with a
/// real lock agent process, and then keeps serving (or, with `once`, stops).
pub async fn run(
    mut settings: crate::settings::Settings,
    database: crate::server::Database,
    once: bool,
) -> anyhow::Result<()> {
    use std::sync::Arc;

    use anyhow::Context;

    use crate::clock::{Clock, SystemClock};

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    crate::server::migrate_with_patience(&database.pool, std::time::Duration::from_secs(60))
        .await?;
    let world = seed(&database.pool, clock.now()).await?;
    let demo_dir = std::path::PathBuf::from(".firstkey/demo");
    let mail_dir = demo_dir.join("mail");
    let sink = match &settings.smtp {
        Some(_) => None,
        None => {
            let sink = notify::sink::SmtpSink::start(([127, 0, 0, 1], 0).into(), &mail_dir)
                .await
                .context("starting the demo SMTP sink")?;
            settings.smtp = Some(crate::settings::SmtpSettings {
                relay: sink.relay_url().into(),
                from: "firstkey demo <noreply@demo-city.example>".to_owned(),
            });
            Some(sink)
        }
    };
    if once {
        // A one-shot run must not collide with a server already running here.
        settings.listen = ([127, 0, 0, 1], 0).into();
        settings.agent_listen = ([127, 0, 0, 1], 0).into();
    }
    let mail_worker = crate::server::spawn_mail_worker(&settings, &database.pool, clock.clone())?;
    let channel = crate::channel::server::start(
        &settings,
        database.pool.clone(),
        database.config.clone(),
        clock.clone(),
    )
    .await?;
    let agent_addr = channel.local_addr();
    let origin = settings.public_origin.as_str().to_owned();
    let key_dir = settings.key_dir.clone();
    let app = crate::http::Application::build(settings, database.pool.clone(), clock.clone())?;
    let base = format!("{}://{}", app.scheme(), app.local_addr());
    let server = tokio::spawn(app.run_until_stopped());
    println!(
        "firstkey demo: {} (database: {})",
        base, database.description
    );
    println!("mail goes to {}", mail_dir.display());
    let stage = story::Stage {
        base: base.clone(),
        origin,
        pool: database.pool.clone(),
        tenant: world.tenant,
        slug: world.slug.clone(),
        key_dir,
        agent_addr,
        mail_dir: mail_dir.clone(),
        work_dir: demo_dir.clone(),
    };
    let outcome = story::run(&stage, clock.now()).await;
    if outcome.is_ok() {
        // Let the outbox worker deliver what the last steps queued before the run ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            let client = database.pool.get().await.map_err(StoreError::from)?;
            let pending: i64 = client
                .query_one(
                    "SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL",
                    &[],
                )
                .await
                .map_err(StoreError::from)?
                .get(0);
            if pending == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    match &outcome {
        Ok(_) => println!("the story is complete."),
        Err(e) => eprintln!("firstkey demo: the story stopped: {e:#}"),
    }
    if !once {
        println!();
        println!("still serving at {base} (agent channel {agent_addr}); Ctrl-C to stop.");
        println!("  curl {base}/readyz   curl {base}/metrics   curl {base}/api/openapi.json");
        println!(
            "  mail: ls {}   lock: firstkey-agent status --state-dir {}",
            mail_dir.display(),
            demo_dir.display()
        );
        let _ = server.await;
    } else {
        server.abort();
    }
    channel.stop();
    if let Some(worker) = mail_worker {
        worker.abort();
    }
    drop(sink);
    outcome.map(|_| ())
}

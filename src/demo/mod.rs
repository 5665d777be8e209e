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

/// The demo municipality's slug (a fresh run in a database whose `demo-city` was made with other keys
/// uses `demo-city-2`, `demo-city-3`, …: see [`choose_municipality`]).
pub const DEMO_SLUG: &str = "demo-city";

/// The demo's root key file in the key directory.
pub const ROOT_KEY_FILE: &str = "demo-root.pk8";

/// Which demo municipality a run uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// None existed: it will be created.
    Created(String),
    /// It exists and its keys are in this key directory.
    Reused(String),
    /// `made_elsewhere` exists but was made with keys this key directory does not hold (another
    /// folder, or `.firstkey/` was deleted); a fresh municipality is used and `made_elsewhere` is
    /// left exactly as it is.
    Fresh {
        /// The municipality left alone.
        made_elsewhere: String,
        /// The one used instead.
        slug: String,
    },
}

impl Choice {
    /// The slug to use.
    pub fn slug(&self) -> &str {
        match self {
            Self::Created(s) | Self::Reused(s) | Self::Fresh { slug: s, .. } => s,
        }
    }

    /// One line for the person running the demo.
    pub fn describe(&self, key_dir: &std::path::Path) -> String {
        match self {
            Self::Created(slug) => format!("demo municipality {slug}: created"),
            Self::Reused(slug) => format!(
                "demo municipality {slug}: reused (its keys are in {})",
                key_dir.display()
            ),
            Self::Fresh {
                made_elsewhere,
                slug,
            } => format!(
                "demo municipality {made_elsewhere} in this database was made with other keys (another \
                 folder, or .firstkey/ was deleted); it is left as it is and this run uses a fresh one: {slug}"
            ),
        }
    }
}

/// Whether the demo municipality `slug` can be driven with the keys in `key_dir`: it does not exist
/// (`None`), or its pinned root key is the demo root key there and every live issuer key has its
/// private file there (`Some(true)`), or not (`Some(false)`). Reads only.
async fn usable_with(
    client: &impl deadpool_postgres::GenericClient,
    slug: &str,
    key_dir: &std::path::Path,
    now: DateTime<Utc>,
) -> Result<Option<bool>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT id, root_public_key FROM municipalities WHERE slug = $1",
            &[&slug],
        )
        .await?
    else {
        return Ok(None);
    };
    let id: uuid::Uuid = row.get(0);
    let pinned: Option<Vec<u8>> = row.get(1);
    if let Some(pinned) = pinned {
        let ours = crate::emergency::keys::load_pair(&key_dir.join(ROOT_KEY_FILE))
            .ok()
            .map(|pair| {
                ring::signature::KeyPair::public_key(&pair)
                    .as_ref()
                    .to_vec()
            });
        if ours.as_deref() != Some(pinned.as_slice()) {
            return Ok(Some(false));
        }
    }
    let issuer_dir = key_dir.join(crate::emergency::keys::ISSUER_DIR);
    for row in client
        .query(
            "SELECT kid FROM signing_keys WHERE municipality_id = $1 AND (retired_at IS NULL OR retired_at > $2)",
            &[&id, &now],
        )
        .await?
    {
        let kid: String = row.get(0);
        if !issuer_dir.join(format!("{kid}.pk8")).is_file() {
            return Ok(Some(false));
        }
    }
    Ok(Some(true))
}

/// Picks the demo municipality for the keys in `key_dir`: `demo-city` when it is new or usable with
/// them, else the first of `demo-city-2`, `demo-city-3`, … that is. Nothing is changed or deleted:
/// a demo municipality made with other keys may still be someone's (another folder's) demo.
pub async fn choose_municipality(
    pool: &Pool,
    key_dir: &std::path::Path,
    now: DateTime<Utc>,
) -> Result<Choice, StoreError> {
    let client = pool.get().await?;
    for n in 1..1000u32 {
        let slug = if n == 1 {
            DEMO_SLUG.to_owned()
        } else {
            format!("{DEMO_SLUG}-{n}")
        };
        match usable_with(&client, &slug, key_dir, now).await? {
            None if n == 1 => return Ok(Choice::Created(slug)),
            None => {
                return Ok(Choice::Fresh {
                    made_elsewhere: DEMO_SLUG.to_owned(),
                    slug,
                });
            }
            Some(true) => return Ok(Choice::Reused(slug)),
            Some(false) => {}
        }
    }
    Err(StoreError::Conflict(
        "every demo municipality slug is taken by one made with other keys".to_owned(),
    ))
}

/// Seeds the demo municipality `slug`; running it again changes nothing.
pub async fn seed(pool: &Pool, slug: &str, now: DateTime<Utc>) -> Result<DemoWorld, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let slug = Slug::parse(slug).map_err(|e| StoreError::Conflict(e.to_string()))?;
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
    // Staff keys need not carry a trusted attestation here (and only in a demo municipality), so
    // the person trying the demo can enrol whatever key they have.
    crate::auth::pins::set_demo_mode(&tx, tenant, true, now)
        .await
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
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

/// One-time enrolment links for the person at the keyboard, one per staff role of the demo
/// municipality (admin, dispatcher, responder, auditor): fresh invitations of accounts of their
/// own, from the seeded admin, the dispatcher and responder in the fire department. Each run issues
/// new links; the previous ones stay valid until they expire or are used.
pub async fn enrolment_links(
    pool: &Pool,
    world: &DemoWorld,
    origin: &crate::settings::PublicOrigin,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    use crate::auth::accounts::{self, NewInvitation};
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let admin_email = Email::parse("admin@demo-city.example")?;
    let inviter = store::people::ensure_user(
        &tx,
        world.tenant,
        &admin_email,
        "Avery Admin",
        None,
        &[Role::MunicipalAdmin],
        now,
    )
    .await?
    .id;
    let fire = store::tenancy::agencies(&tx, world.tenant)
        .await?
        .into_iter()
        .find(|a| a.kind == AgencyKind::Fire)
        .ok_or_else(|| anyhow::anyhow!("the demo fire department is missing"))?;
    let roles = [
        (
            "admin",
            Role::MunicipalAdmin,
            None,
            "you.admin",
            "You (admin)",
        ),
        (
            "dispatcher",
            Role::Dispatcher,
            Some(fire.id),
            "you.dispatch",
            "You (dispatcher)",
        ),
        (
            "responder",
            Role::Responder,
            Some(fire.id),
            "you.responder",
            "You (responder)",
        ),
        (
            "auditor",
            Role::Auditor,
            None,
            "you.auditor",
            "You (auditor)",
        ),
    ];
    let mut links = Vec::new();
    for (label, role, agency_id, local, name) in roles {
        let new = NewInvitation {
            role,
            agency_id,
            email: format!("{local}@demo-city.example"),
            display_name: name.to_owned(),
        };
        let (_, secret) = accounts::invite(&tx, world.tenant, inviter, &new, origin, now).await?;
        links.push((label, secret.invitation_url(origin)));
    }
    tx.commit().await?;
    Ok(links)
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
    crate::server::migrate_with_patience(&database, std::time::Duration::from_secs(60)).await?;
    let choice = choose_municipality(&database.pool, &settings.key_dir, clock.now()).await?;
    let world = seed(&database.pool, choice.slug(), clock.now()).await?;
    println!("{}", choice.describe(&settings.key_dir));
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
    let public_origin = settings.public_origin.clone();
    let key_dir = settings.key_dir.clone();
    let mut app = crate::http::Application::build(settings, database.pool.clone(), clock.clone())?;
    app.listen_grant_events_on(database.config.clone());
    let base = format!("{}://{}", app.scheme(), app.local_addr());
    let handle = app.handle();
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
    let lock_hint = outcome.as_ref().ok().map(|ending| {
        format!(
            "lock: firstkey-agent status --state-dir {}",
            ending.lock_dir.display()
        )
    });
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
    if let Some(hint) = &lock_hint {
        println!("{hint}");
    }
    if !once {
        println!();
        match enrolment_links(&database.pool, &world, &public_origin, clock.now()).await {
            Ok(links) => {
                println!(
                    "your own accounts in {} (one-time links, valid 72 hours; open them in your browser \
                     and enrol a passkey or security key: staff keys need no trusted attestation in a demo municipality):",
                    world.slug
                );
                for (role, link) in links {
                    println!("  {role:<11} {link}");
                }
                println!(
                    "  {:<11} {}/sign-up (municipality {})",
                    "homeowner",
                    public_origin.as_str().trim_end_matches('/'),
                    world.slug
                );
            }
            Err(e) => eprintln!("firstkey demo: no enrolment links: {e}"),
        }
        println!();
        println!("still serving at {base} (agent channel {agent_addr}); Ctrl-C to stop.");
        println!("  curl {base}/readyz   curl {base}/metrics   curl {base}/api/openapi.json");
        println!("  mail: ls {}", mail_dir.display());
        let _ = server.await;
    } else {
        handle.stop(true).await;
        let _ = server.await;
    }
    channel.stop();
    if let Some(worker) = mail_worker {
        worker.abort();
    }
    drop(sink);
    outcome.map(|_| ())
}

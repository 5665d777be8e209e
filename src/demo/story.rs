//! The whole emergency-entry story, walked through the real server by real clients: the JSON API
//! over HTTP with WebAuthn ceremonies from software security keys, a `firstkey-agent` process on
//! the lock side over TLS, and mail through SMTP into the demo's sink folder.
//!
//! homeowner signs up and writes the plan → lock is provisioned and paired → staff enrol security
//! keys → dispatcher opens an incident and grants entry → responder gets a token → the token is
//! pushed to the lock → tap → door opens → receipt reaches the server → the homeowner is mailed → a keypad code
//! read over radio opens the door once, offline.

// Indexing a `serde_json::Value` by key yields `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use ring::signature::KeyPair;
use serde_json::json;
use tokio::process::{Child, Command};
use uuid::Uuid;

use super::client::ApiClient;
use super::softkey::SoftSecurityKey;
use crate::audit::{self, ChainCheck};
use crate::domain::{AgencyKind, Email};
use crate::emergency::keys;
use crate::notify::sink;
use crate::store::{StoreError, Tenant, tenancy};

/// Where the story runs.
pub struct Stage {
    /// `http://host:port` of the running server.
    pub base: String,
    /// The server's public origin (WebAuthn origin of the soft keys).
    pub origin: String,
    /// The database, for the operator steps (keys, bootstrap) and for waiting on effects.
    pub pool: Pool,
    /// The demo municipality.
    pub tenant: Tenant,
    /// Its slug.
    pub slug: String,
    /// The server's key directory (issuer keys, agent-channel CA).
    pub key_dir: PathBuf,
    /// Address of the agent channel.
    pub agent_addr: std::net::SocketAddr,
    /// The SMTP sink's folder.
    pub mail_dir: PathBuf,
    /// Scratch directory for this run (lock state, token and key files).
    pub work_dir: PathBuf,
}

/// What the story leaves running.
pub struct Ending {
    /// The lock agent process (killed on drop).
    pub agent: Child,
    /// The lock's state directory.
    pub lock_dir: PathBuf,
}

struct Narrator {
    started: Instant,
    last: Instant,
    step: u32,
}

impl Narrator {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            step: 0,
        }
    }

    fn say(&mut self, what: impl AsRef<str>) {
        self.step = self.step.saturating_add(1);
        let now = Instant::now();
        println!(
            "[{:>2}] {:>8.1} ms  (+{:>7.1} ms)  {}",
            self.step,
            now.duration_since(self.started).as_secs_f64() * 1000.0,
            now.duration_since(self.last).as_secs_f64() * 1000.0,
            what.as_ref()
        );
        self.last = now;
    }
}

/// Waits until `check` yields a value, polling every 50 ms, for at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The secret of the newest link mailed to `to` (the text after `#`), read from the sink folder.
async fn mailed_link_secret(mail_dir: &Path, to: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("the mail to {to}"),
        Duration::from_secs(20),
        || async {
            let messages = sink::messages(mail_dir).unwrap_or_default();
            Ok(messages
                .iter()
                .rev()
                .filter(|m| m.lines().next().is_some_and(|l| l.contains(to)))
                .find_map(|m| {
                    // Undo quoted-printable soft line breaks (RFC 2045 §6.7) before reading the link.
                    let m = m.replace("=\r\n", "").replace("=\n", "");
                    let (_, after) = m.split_once('#')?;
                    let secret: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                        .collect();
                    (secret.len() >= 20).then_some(secret)
                }))
        },
    )
    .await
}

/// Locates the `firstkey-agent` binary next to this one; under `cargo run`, builds it if missing.
pub async fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    let candidates = [dir.join("firstkey-agent"), dir.join("../firstkey-agent")];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        println!("building the lock agent (cargo build -p firstkey-agent) …");
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "firstkey-agent"])
            .status()
            .await?;
        if status.success()
            && let Some(found) = candidates.iter().find(|p| p.is_file())
        {
            return Ok(found.clone());
        }
    }
    bail!(
        "the lock agent binary `firstkey-agent` is not next to {}; build it with `cargo build -p firstkey-agent`",
        exe.display()
    )
}

fn write_secret_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    keys::write_private_file(path, bytes).map_err(|e| anyhow!("{e}"))
}

/// Runs the story; returns the lock agent, still running.
pub async fn run(stage: &Stage, now: DateTime<Utc>) -> anyhow::Result<Ending> {
    let run_id = Uuid::new_v4().simple().to_string();
    let short = run_id.get(..8).unwrap_or("demo");
    let http = ApiClient::new(&stage.base, &stage.origin)?;
    let mut n = Narrator::new();
    std::fs::create_dir_all(&stage.work_dir)?;
    let pool = &stage.pool;
    let tenant = stage.tenant;

    // --- The municipality's keys (operator, offline root key in a file).
    let root_path = stage.key_dir.join(super::ROOT_KEY_FILE);
    if !root_path.exists() {
        keys::root_generate(&root_path).map_err(|e| anyhow!("{e}"))?;
    }
    let root = keys::load_pair(&root_path).map_err(|e| anyhow!("{e}"))?;
    let mut client = pool.get().await.map_err(StoreError::from)?;
    match keys::generate(&mut client, tenant, &stage.key_dir, now).await {
        Ok(_) | Err(keys::KeyError::Refused(_)) => {}
        Err(e) => return Err(anyhow!("{e}")),
    }
    let rp_id = "localhost";
    let bundle = keys::bundle(&mut client, tenant, &root, rp_id, now)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let bundle_path = stage.work_dir.join("bundle.cbor");
    std::fs::write(&bundle_path, &bundle.bytes)?;
    n.say(format!(
        "operator: issuer key ready, trust bundle v{} signed with the offline root key",
        bundle.version
    ));

    // --- Homeowner: sign up, verify by mail, enrol a passkey, register the home, write the plan.
    let home_email = format!("harper+{short}@demo-city.example");
    http.post(
        "/api/v1/accounts/sign-up",
        &json!({ "municipality": stage.slug, "email": home_email, "display_name": "Harper Homeowner" }),
        None,
    )
    .await?;
    let secret = mailed_link_secret(&stage.mail_dir, &home_email).await?;
    let mut home_key = SoftSecurityKey::new(&stage.origin)?;
    let home = http
        .enrol("/api/v1/accounts/verify", &secret, &mut home_key)
        .await?;
    n.say(format!(
        "homeowner {home_email}: signed up, verified by mail, enrolled a passkey"
    ));
    let address = format!(
        "{} Elm Street",
        100 + u32::from(short.as_bytes().first().copied().unwrap_or(0) % 100)
    );
    let property = http
        .post(
            "/api/v1/properties",
            &json!({ "address": address }),
            Some(&home),
        )
        .await?;
    let property_id = property["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no property id"))?
        .to_owned();
    let plan = json!({
        "agencies": {
            "fire": { "allowed": true, "incident_types": ["fire", "medical"] },
            "ems": { "allowed": true, "incident_types": ["medical"] },
            "police": { "allowed": false }
        },
        "max_grant_minutes": 60,
        "notes": { "pets": "Friendly dog, Biscuit", "medical_equipment": "Home oxygen in the bedroom" },
        "contacts": [{ "name": "Sam Neighbour", "email": format!("sam+{short}@demo-city.example") }],
        "notifications": { "homeowner": true, "contacts": true },
        "retention_days": 365
    });
    let (version, _) = http
        .expect(
            reqwest::Method::PUT,
            &format!("/api/v1/properties/{property_id}/plan"),
            Some(&plan),
            Some(&home),
        )
        .await?;
    n.say(format!(
        "homeowner: registered {address} and wrote access plan v{}",
        version["version"]
    ));

    // --- The lock: provision the agent, register it with the printed pairing code, run it.
    let agent = agent_binary().await?;
    let lock_dir = stage.work_dir.join(format!("lock-{short}"));
    let ca = stage.key_dir.join("agent-ca.pem");
    let init = Command::new(&agent)
        .arg("init")
        .arg("--state-dir")
        .arg(&lock_dir)
        .args([
            "--root-public-key",
            &hex::encode(root.public_key().as_ref()),
        ])
        .arg("--trust-bundle")
        .arg(&bundle_path)
        .args([
            "--server",
            &stage.agent_addr.to_string(),
            "--server-name",
            "localhost",
        ])
        .arg("--server-ca")
        .arg(&ca)
        .args(["--hold-ms", "3000"])
        .output()
        .await?;
    if !init.status.success() {
        bail!(
            "firstkey-agent init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let printed = String::from_utf8_lossy(&init.stdout);
    let code = printed
        .lines()
        .find(|l| l.contains("pairing code:"))
        .and_then(|l| l.split_whitespace().last())
        .ok_or_else(|| anyhow!("firstkey-agent init printed no pairing code"))?
        .to_owned();
    // The lock id is derived from the device key (the only one the server pairs).
    let lock_id = printed
        .lines()
        .find_map(|l| l.strip_prefix("lock id:"))
        .and_then(|l| Uuid::parse_str(l.trim()).ok())
        .ok_or_else(|| anyhow!("firstkey-agent init printed no lock id"))?;
    http.post(
        &format!("/api/v1/properties/{property_id}/locks"),
        &json!({ "lock_id": lock_id, "name": "Front door", "pairing_code": code }),
        Some(&home),
    )
    .await?;
    let log = std::fs::File::create(stage.work_dir.join(format!("lock-{short}.log")))?;
    let mut agent_process = Command::new(&agent)
        .arg("run")
        .arg("--state-dir")
        .arg(&lock_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    wait_for(
        "the lock to pair over its TLS channel",
        Duration::from_secs(30),
        || async {
            let client = pool.get().await.map_err(StoreError::from)?;
            // The locks row exists once the lock paired (a registration waits until then).
            let row = client
                .query_opt("SELECT pairing_state FROM locks WHERE id = $1", &[&lock_id])
                .await?;
            Ok(row
                .filter(|r| r.get::<_, String>(0) == "paired")
                .map(|_| ()))
        },
    )
    .await?;
    n.say(format!(
        "lock {lock_id}: agent provisioned, homeowner typed its pairing code, agent proved its device key over TLS: paired"
    ));

    // --- Staff: the admin bootstraps, enrols a security key, invites a dispatcher and a responder.
    tenancy::ensure_agency(&client, tenant, AgencyKind::Ems, "Demo City EMS", now).await?;
    let fire = tenancy::ensure_agency(
        &client,
        tenant,
        AgencyKind::Fire,
        "Demo City Fire Department",
        now,
    )
    .await?;
    let mut admin_key = SoftSecurityKey::new(&stage.origin)?;
    let mut dispatch_key = SoftSecurityKey::new(&stage.origin)?;
    let mut responder_key = SoftSecurityKey::new(&stage.origin)?;
    let mut neighbour_key = SoftSecurityKey::new(&stage.origin)?;
    let admin_email = format!("avery+{short}@demo-city.example");
    let invite_secret = {
        let tx = client.transaction().await.map_err(StoreError::from)?;
        for key in [&admin_key, &dispatch_key, &responder_key, &neighbour_key] {
            crate::auth::webauthn::add_attestation_ca(&tx, tenant, key.ca_pem(), None, now)
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
        let email = Email::parse(&admin_email)?;
        let (_, secret) =
            crate::auth::accounts::bootstrap_admin(&tx, tenant, &email, "Avery Admin", now)
                .await
                .map_err(|e| anyhow!("{e}"))?;
        tx.commit().await.map_err(StoreError::from)?;
        secret.expose().to_owned()
    };
    let admin = http
        .enrol("/api/v1/invitations/accept", &invite_secret, &mut admin_key)
        .await?;
    let mut staff = Vec::new();
    for (role, email, name, agency, key) in [
        (
            "dispatcher",
            format!("dana+{short}@demo-city.example"),
            "Dana Dispatcher",
            // Dispatchers open incidents for their own agency only.
            fire.id,
            &mut dispatch_key,
        ),
        (
            "responder",
            format!("engine7+{short}@demo-city.example"),
            "Engine 7",
            fire.id,
            &mut responder_key,
        ),
    ] {
        http.post(
            "/api/v1/invitations",
            &json!({ "role": role, "agency_id": agency, "email": email, "display_name": name }),
            Some(&admin),
        )
        .await?;
        let secret = mailed_link_secret(&stage.mail_dir, &email).await?;
        staff.push(
            http.enrol("/api/v1/invitations/accept", &secret, key)
                .await?,
        );
    }
    let (dispatcher, responder) = match staff.as_slice() {
        [d, r] => (d.clone(), r.clone()),
        _ => bail!("staff enrolment incomplete"),
    };
    let me = http.get("/api/v1/me", Some(&responder)).await?;
    let responder_id = me["user_id"].clone();
    n.say("admin enrolled a security key and invited a dispatcher (Fire) and a responder (Engine 7); both enrolled keys");

    // --- Dispatcher: incident and grant (the policy decides; the homeowner is mailed).
    let cad = format!("26-{}", &short.get(..5).unwrap_or("00000"));
    let incident = http
        .post(
            "/api/v1/incidents",
            &json!({ "cad_number": cad, "kind": "medical", "address": address, "agency": fire.id }),
            Some(&dispatcher),
        )
        .await?;
    let incident_id = incident["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no incident id"))?
        .to_owned();
    let grant = http
        .post(
            &format!("/api/v1/incidents/{incident_id}/grants"),
            &json!({
                "property": property_id,
                "responders": [responder_id],
                "minutes": 30,
                "justification": "Caller unresponsive behind a locked door; neighbour reports oxygen in use"
            }),
            Some(&dispatcher),
        )
        .await?;
    let grant_id = grant["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no grant id: {grant}"))?
        .to_owned();
    n.say(format!(
        "dispatcher opened incident {cad} and granted Engine 7 entry for 30 min (status {}, policy {})",
        grant["status"],
        grant["policy_set_hash"].as_str().map(|h| h.get(..12).unwrap_or(h)).unwrap_or("?")
    ));

    // --- Responder: a token for the front door in one request, carrying an assertion of the
    // security key it is bound to.
    let issued = http
        .request_token(
            &responder,
            &mut responder_key,
            &grant_id,
            &lock_id.to_string(),
        )
        .await?;
    let token = URL_SAFE_NO_PAD
        .decode(
            issued["token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token"))?,
        )
        .context("token is base64url")?;
    let token_path = stage.work_dir.join(format!("token-{short}.cbor"));
    let key_path = stage.work_dir.join(format!("responder-{short}.pk8"));
    write_secret_file(&token_path, &token)?;
    write_secret_file(&key_path, responder_key.credential_pkcs8())?;
    n.say(format!(
        "responder got a {}-byte token for the front door, expiring {}",
        token.len(),
        issued["expires_at"].as_str().unwrap_or("?")
    ));
    let token_id = issued["token_id"].as_str().unwrap_or_default().to_owned();
    let cti = hex::decode(&token_id).unwrap_or_default();
    wait_for(
        "the lock to acknowledge the token",
        Duration::from_secs(20),
        || async {
            let client = pool.get().await.map_err(StoreError::from)?;
            let row = client
                .query_one("SELECT status FROM issued_tokens WHERE cti = $1", &[&cti])
                .await?;
            let status: String = row.get(0);
            Ok((status != "issued").then_some(()))
        },
    )
    .await?;
    n.say("token pushed to the lock over its TLS channel and acknowledged");

    // --- At the door.
    let tap = Command::new(&agent)
        .arg("tap")
        .arg("--state-dir")
        .arg(&lock_dir)
        .arg("--token")
        .arg(&token_path)
        .arg("--key")
        .arg(&key_path)
        .args(["--rp-id", rp_id])
        .output()
        .await?;
    if !tap.status.success() {
        bail!(
            "the door did not open: {}{}",
            String::from_utf8_lossy(&tap.stdout),
            String::from_utf8_lossy(&tap.stderr)
        );
    }
    n.say("tap: challenge → token + security-key proof → ALLOW; the door is open for 3 s");
    let replay = Command::new(&agent)
        .arg("tap")
        .arg("--state-dir")
        .arg(&lock_dir)
        .arg("--token")
        .arg(&token_path)
        .arg("--key")
        .arg(&key_path)
        .args(["--rp-id", rp_id])
        .output()
        .await?;
    n.say(format!(
        "the same token tapped again: {}",
        if replay.status.success() {
            "ALLOW (unexpected!)"
        } else {
            "DENY (single use)"
        }
    ));

    // --- Back at the server: receipts, audit, mail.
    wait_for(
        "the lock's receipts to reach the server",
        Duration::from_secs(30),
        || async {
            let client = pool.get().await.map_err(StoreError::from)?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM receipts WHERE lock_id = $1",
                    &[&lock_id],
                )
                .await?;
            Ok((row.get::<_, i64>(0) >= 2).then_some(()))
        },
    )
    .await?;
    n.say("signed receipts (allow, then deny: replayed) uploaded, verified against the chain, audited");
    let opened_mail = wait_for("the door-opened mail", Duration::from_secs(20), || async {
        Ok(sink::messages(&stage.mail_dir)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|m| {
                m.lines().next().is_some_and(|l| l.contains(&home_email))
                    && m.to_lowercase().contains("opened")
            }))
    })
    .await?;
    let subject = opened_mail
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or("Subject: (none)")
        .to_owned();
    n.say(format!(
        "mail to {home_email}: {}",
        subject.trim_start_matches("Subject: ")
    ));
    // --- A trusted neighbour's entry: standing access the homeowner gives, used as a responder would.
    let lee_email = format!("lee+{short}@demo-city.example");
    let ends_at = (now + chrono::Duration::days(30)).to_rfc3339();
    let party = http
        .post(
            &format!("/api/v1/properties/{property_id}/trusted-parties"),
            &json!({
                "email": lee_email, "label": "Lee at no. 12", "locks": [lock_id],
                "ends_at": ends_at, "uses_per_day": 2, "notify_on_use": true,
                "share_with_dispatch": true
            }),
            Some(&home),
        )
        .await?;
    let party_id = party["id"].clone();
    let secret = mailed_link_secret(&stage.mail_dir, &lee_email).await?;
    let lee = http
        .enrol("/api/v1/invitations/accept", &secret, &mut neighbour_key)
        .await?;
    let lee_token = http
        .token_in_one_request(
            &lee,
            &mut neighbour_key,
            "/api/v1/trusted/tokens",
            &format!("trusted_party={}", party_id.as_str().unwrap_or_default()),
            &lock_id.to_string(),
            json!({ "trusted_party": party_id, "lock": lock_id }),
        )
        .await?;
    let lee_bytes = URL_SAFE_NO_PAD
        .decode(
            lee_token["token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token"))?,
        )
        .context("token is base64url")?;
    let lee_token_path = stage.work_dir.join(format!("trusted-{short}.cbor"));
    let lee_key_path = stage.work_dir.join(format!("trusted-{short}.pk8"));
    write_secret_file(&lee_token_path, &lee_bytes)?;
    write_secret_file(&lee_key_path, neighbour_key.credential_pkcs8())?;
    let lee_tap = Command::new(&agent)
        .arg("tap")
        .arg("--state-dir")
        .arg(&lock_dir)
        .arg("--token")
        .arg(&lee_token_path)
        .arg("--key")
        .arg(&lee_key_path)
        .args(["--rp-id", rp_id])
        .output()
        .await?;
    if !lee_tap.status.success() {
        bail!(
            "the trusted neighbour's tap was refused: {}{}",
            String::from_utf8_lossy(&lee_tap.stdout),
            String::from_utf8_lossy(&lee_tap.stderr)
        );
    }
    n.say("trusted neighbour Lee (invited by the homeowner in their own words, enrolled a passkey) asked for a token and tapped: ALLOW");

    // --- A remote unlock: the homeowner opens the door from afar for the ambulance crew.
    let remote = http
        .post(
            &format!("/api/v1/locks/{lock_id}/remote-open"),
            &json!({ "seconds": 10 }),
            Some(&home),
        )
        .await?;
    if remote["outcome"] != "opened" {
        bail!("the remote unlock did not open the door: {remote}");
    }
    n.say(format!(
        "homeowner's remote unlock: queued {}, lock acknowledged {} and opened for {} s",
        remote["queued_at"].as_str().unwrap_or("?"),
        remote["acknowledged_at"].as_str().unwrap_or("?"),
        remote["hold_seconds"]
    ));

    // --- A crew without a device: a one-time keypad code, read to them over the radio.
    let issued_code = http
        .post(
            &format!("/api/v1/grants/{grant_id}/keypad-codes"),
            &json!({ "lock": lock_id }),
            Some(&dispatcher),
        )
        .await?;
    let code = issued_code["code"]
        .as_str()
        .ok_or_else(|| anyhow!("no keypad code: {issued_code}"))?
        .to_owned();
    n.say(format!(
        "dispatcher issued a one-time keypad code for the front door, valid until {}; a keypad code read over radio to the crew",
        issued_code["not_after"].as_str().unwrap_or("?")
    ));
    wait_for(
        "the lock's keypad code secret",
        Duration::from_secs(20),
        || async {
            let client = pool.get().await.map_err(StoreError::from)?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM lock_inbox i JOIN locks l ON l.id = i.lock_id
                     WHERE i.lock_id = $1 AND i.kind = 'keypad_secret' AND i.seq <= l.inbox_acked_seq",
                    &[&lock_id],
                )
                .await?;
            Ok((row.get::<_, i64>(0) >= 1).then_some(()))
        },
    )
    .await?;
    let typed = |code: String| {
        let agent = agent.clone();
        let lock_dir = lock_dir.clone();
        async move {
            Command::new(&agent)
                .arg("keypad")
                .arg("--state-dir")
                .arg(&lock_dir)
                .arg("--code")
                .arg(&code)
                .output()
                .await
        }
    };
    let first = typed(code.clone()).await?;
    if !first.status.success() {
        bail!(
            "the keypad did not open: {}{}",
            String::from_utf8_lossy(&first.stdout),
            String::from_utf8_lossy(&first.stderr)
        );
    }
    let again = typed(code).await?;
    n.say(format!(
        "keypad: the code typed at the door → ALLOW; typed again: {}",
        if again.status.success() {
            "ALLOW (unexpected!)"
        } else {
            "DENY (one use)"
        }
    ));
    wait_for(
        "the keypad receipts to reach the server",
        Duration::from_secs(30),
        || async {
            let client = pool.get().await.map_err(StoreError::from)?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM receipts WHERE lock_id = $1 AND reason LIKE 'keypad_%'",
                    &[&lock_id],
                )
                .await?;
            Ok((row.get::<_, i64>(0) >= 2).then_some(()))
        },
    )
    .await?;
    n.say("keypad receipts (allow, then deny: replayed) uploaded and audited with the incident");

    // --- The home talks back: a smoke alarm lets the fire crew in; a low battery and a
    // physical-key opening are mailed to the homeowner.
    http.step_up(&home, &mut home_key).await?;
    http.expect(
        reqwest::Method::PUT,
        &format!("/api/v1/properties/{property_id}/alarm-rules"),
        Some(&json!({ "rules": [
            { "kind": "smoke", "action": "incident_and_grant", "agency": fire.id, "minutes": 30 }
        ]})),
        Some(&home),
    )
    .await?;
    n.say("homeowner: on a smoke alarm, open an incident and let the fire service in for 30 min");
    let hardware = |args: &[&str]| {
        let mut cmd = Command::new(&agent);
        cmd.args(args).arg("--state-dir").arg(&lock_dir);
        cmd
    };
    let fired = hardware(&["alarm", "smoke", "--detector", "Kitchen"])
        .output()
        .await?;
    if !fired.status.success() {
        bail!(
            "firstkey-agent alarm: {}",
            String::from_utf8_lossy(&fired.stderr)
        );
    }
    let property_uuid: Uuid = property_id.parse()?;
    let alarm_grant: Uuid = wait_for(
        "the smoke alarm's automatic grant",
        Duration::from_secs(30),
        || async {
            let client = pool.get().await.map_err(StoreError::from)?;
            let row = client
                .query_opt(
                    "SELECT grant_id FROM alarms WHERE property_id = $1 AND grant_id IS NOT NULL",
                    &[&property_uuid],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, Uuid>(0)))
        },
    )
    .await?;
    n.say("the lock's kitchen smoke detector went off: incident opened, the fire service granted entry automatically");
    let issued = http
        .request_token(
            &responder,
            &mut responder_key,
            &alarm_grant.to_string(),
            &lock_id.to_string(),
        )
        .await?;
    let token = URL_SAFE_NO_PAD
        .decode(
            issued["token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token"))?,
        )
        .context("token is base64url")?;
    let alarm_token = stage.work_dir.join(format!("token-alarm-{short}.cbor"));
    write_secret_file(&alarm_token, &token)?;
    let tap = Command::new(&agent)
        .arg("tap")
        .arg("--state-dir")
        .arg(&lock_dir)
        .arg("--token")
        .arg(&alarm_token)
        .arg("--key")
        .arg(&key_path)
        .args(["--rp-id", rp_id])
        .output()
        .await?;
    if !tap.status.success() {
        bail!(
            "the fire crew's tap was refused: {}",
            String::from_utf8_lossy(&tap.stderr)
        );
    }
    n.say("fire crew's token under the alarm grant: tap → ALLOW, the fire crew is in");
    // The battery runs low: the lock reports it at its next connection (restarted here).
    std::fs::write(lock_dir.join("battery"), "12")?;
    agent_process.kill().await?;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(stage.work_dir.join(format!("lock-{short}.log")))?;
    agent_process = Command::new(&agent)
        .arg("run")
        .arg("--state-dir")
        .arg(&lock_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let mail_about = |needle: &'static str| {
        let home_email = home_email.clone();
        move || {
            let home_email = home_email.clone();
            async move {
                Ok(sink::messages(&stage.mail_dir)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|m| {
                        m.lines().next().is_some_and(|l| l.contains(&home_email))
                            && m.contains(needle)
                    }))
            }
        }
    };
    wait_for(
        "the low-battery mail",
        Duration::from_secs(30),
        mail_about("battery is low"),
    )
    .await?;
    n.say("lock reported 12 % battery: homeowner mailed \"your lock's battery is low\"");
    let opened = hardware(&["event", "key-override"]).output().await?;
    if !opened.status.success() {
        bail!(
            "firstkey-agent event: {}",
            String::from_utf8_lossy(&opened.stderr)
        );
    }
    wait_for(
        "the physical-key mail",
        Duration::from_secs(30),
        mail_about("opened with the physical key"),
    )
    .await?;
    n.say("someone opened the front door with the physical key: a signed receipt in the lock's chain, homeowner mailed");
    wait_for(
        "the alarm mail",
        Duration::from_secs(30),
        mail_about("an alarm went off"),
    )
    .await?;

    let client = pool.get().await.map_err(StoreError::from)?;
    match audit::verify_chain(&client, tenant).await? {
        ChainCheck::Intact { entries, head } => n.say(format!(
            "audit log of {}: {entries} entries, chain intact, head {}",
            stage.slug,
            head.get(..16).unwrap_or(&head)
        )),
        ChainCheck::Broken { seq } => bail!("audit chain broken at entry {seq}"),
    }
    Ok(Ending {
        agent: agent_process,
        lock_dir,
    })
}

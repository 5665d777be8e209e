//! Server-side sessions. The browser holds only a random secret in the cookie
//! `__Host-firstkey-session` (Secure, HttpOnly, SameSite=Strict, Path=/); the database holds its
//! SHA-256, so a stolen database does not yield usable cookies.
//!
//! A session ends at the idle timeout, the absolute timeout, sign-out, sign-out everywhere, or when its
//! user is disabled (checked on every request, so disabling takes effect at once). High-risk actions
//! also require a fresh WebAuthn assertion (step-up) within [`STEP_UP_WINDOW`].

use actix_web::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use crate::domain::Role;
use crate::error::CoreError;
use crate::store::{StoreError, Tenant};

/// Name of the session cookie.
pub const COOKIE: &str = "__Host-firstkey-session";
/// A session unused for this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::minutes(30);
/// A session ends this long after sign-in, however active.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::hours(12);
/// A step-up assertion counts as fresh for this long.
pub const STEP_UP_WINDOW: Duration = Duration::minutes(5);

/// The random secret of a new session; goes into the cookie and nowhere else.
pub struct SessionSecret(String);

impl SessionSecret {
    /// The cookie that carries it.
    pub fn cookie(&self) -> Cookie<'static> {
        Cookie::build(COOKIE, self.0.clone())
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(actix_web::cookie::time::Duration::seconds(
                ABSOLUTE_TIMEOUT.num_seconds(),
            ))
            .finish()
    }

    /// The raw value, for clients that set the cookie header themselves (tests, CLI).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

/// A cookie that ends the session in the browser.
pub fn removal_cookie() -> Cookie<'static> {
    let mut cookie = Cookie::build(COOKIE, "")
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    cookie.make_removal();
    cookie
}

fn hash(secret: &str) -> Vec<u8> {
    digest(&SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// Random bytes from the system RNG, base64url.
pub fn random_secret(rng: &SystemRandom, bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf)
        .map_err(|_| StoreError::Unavailable("system random number generator failed".to_owned()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// Starts a session for `user`. `step_up` records the credential of the assertion that signed in (or
/// enrolled): the session begins stepped up, and remembers which credential opened it.
pub async fn create(
    tx: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    step_up: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<(Uuid, SessionSecret), StoreError> {
    let secret = random_secret(&SystemRandom::new(), 32)?;
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO sessions (id, municipality_id, user_id, secret_hash, created_at, last_seen_at,
             absolute_expires_at, stepped_up_at, step_up_credential, opened_with)
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $8)",
        &[
            &id,
            &tenant.id(),
            &user,
            &hash(&secret),
            &now,
            &(now + ABSOLUTE_TIMEOUT),
            &step_up.map(|_| now),
            &step_up,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    Ok((id, SessionSecret(secret)))
}

/// The signed-in user behind a request: a capability for their own tenant and roles.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user's municipality.
    pub tenant: Tenant,
    /// The user.
    pub user_id: Uuid,
    /// Roles held.
    pub roles: Vec<Role>,
    /// Agency, for dispatchers and responders.
    pub agency_id: Option<Uuid>,
    /// The session.
    pub session_id: Uuid,
    /// When the session last saw a fresh WebAuthn assertion.
    pub stepped_up_at: Option<DateTime<Utc>>,
    /// The credential of that assertion.
    pub step_up_credential: Option<Uuid>,
}

impl Actor {
    /// Whether the actor holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the last step-up is recent enough for a high-risk action.
    pub fn stepped_up(&self, now: DateTime<Utc>) -> bool {
        self.stepped_up_at
            .is_some_and(|at| now - at <= STEP_UP_WINDOW && at <= now)
    }

    /// Refuses unless the last step-up is fresh.
    pub fn require_step_up(&self, now: DateTime<Utc>) -> Result<(), CoreError> {
        if self.stepped_up(now) {
            Ok(())
        } else {
            Err(CoreError::StepUpRequired)
        }
    }
}

/// How stale `last_seen_at` may get before a request writes it again. Sliding the idle timeout on
/// every request would cost a durable write (and a WAL flush) per request; a minute of slack on a
/// 30-minute idle timeout costs nothing.
const TOUCH_EVERY: Duration = Duration::seconds(60);

/// Resolves a cookie secret to its live session, sliding the idle timeout.
pub async fn authenticate(
    client: &impl GenericClient,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Option<Actor>, StoreError> {
    let row = client
        .query_opt(
            "SELECT s.id, s.municipality_id, s.user_id, u.agency_id, s.stepped_up_at, s.step_up_credential,
               ARRAY(SELECT role FROM user_roles r WHERE r.user_id = s.user_id ORDER BY role),
               s.last_seen_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.secret_hash = $1 AND s.ended_at IS NULL AND s.absolute_expires_at > $2
               AND s.last_seen_at > $3 AND u.status = 'active'",
            &[&hash(secret), &now, &(now - IDLE_TIMEOUT)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let last_seen: DateTime<Utc> = row.get(7);
    if now - last_seen >= TOUCH_EVERY {
        client
            .execute(
                "UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2",
                &[&row.get::<_, Uuid>(0), &now],
            )
            .await?;
    }
    let roles: Vec<String> = row.get(6);
    Ok(Some(Actor {
        session_id: row.get(0),
        tenant: Tenant::assume(row.get(1)),
        user_id: row.get(2),
        agency_id: row.get(3),
        stepped_up_at: row.get(4),
        step_up_credential: row.get(5),
        roles: roles.iter().filter_map(|r| Role::parse(r).ok()).collect(),
    }))
}

/// Records a fresh WebAuthn assertion on the session.
pub async fn step_up(
    client: &impl GenericClient,
    actor: &Actor,
    credential: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = $3, step_up_credential = $4
             WHERE id = $1 AND municipality_id = $2 AND ended_at IS NULL",
            &[&actor.session_id, &actor.tenant.id(), &now, &credential],
        )
        .await?;
    Ok(())
}

/// Ends one session.
pub async fn end(
    client: &impl GenericClient,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE sessions SET ended_at = $3 WHERE id = $1 AND municipality_id = $2 AND ended_at IS NULL",
            &[&actor.session_id, &actor.tenant.id(), &now],
        )
        .await?;
    Ok(())
}

/// Ends every live session that `credential` opened (signed in or enrolled with) or last stepped up;
/// returns how many ended (a suspended key takes its sessions with it).
pub async fn end_opened_with(
    client: &impl GenericClient,
    tenant: Tenant,
    credential: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE sessions SET ended_at = $3
             WHERE municipality_id = $1 AND (opened_with = $2 OR step_up_credential = $2) AND ended_at IS NULL",
            &[&tenant.id(), &credential, &now],
        )
        .await?)
}

/// Ends every session of a user (sign-out everywhere, account disabled); returns how many ended.
pub async fn end_all(
    client: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE sessions SET ended_at = $3 WHERE user_id = $1 AND municipality_id = $2 AND ended_at IS NULL",
            &[&user, &tenant.id(), &now],
        )
        .await?)
}

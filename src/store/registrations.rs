//! Lock registrations: a homeowner's "this lock, with this code, belongs to my home", waiting for
//! the lock to prove it. A pending registration does not reserve the lock id: several homes (in
//! any municipality) may name the same id, each with its own code hash and expiry. At the lock's
//! first handshake [`pair`] pairs it with the one registration whose code the lock's proven key
//! derives and closes every other one naming that id; only then does the lock's `locks` row exist.
//! Bounded: a registration expires after [`LIFETIME`]; a home has at most [`MAX_PENDING_PER_PROPERTY`]
//! waiting, an account at most [`MAX_PENDING_PER_ACCOUNT`] waiting and [`MAX_PER_ACCOUNT_PER_DAY`]
//! made in a day; closed ones are kept [`CLOSED_KEPT`] for the owner's page, then deleted.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::{StoreError, Tenant, conflict_or_query};

/// How long a registration waits for its lock (renewable by the homeowner).
pub const LIFETIME: Duration = Duration::days(7);
/// Registrations waiting at once on one home.
pub const MAX_PENDING_PER_PROPERTY: i64 = 10;
/// Registrations waiting at once for one account, over all its homes.
pub const MAX_PENDING_PER_ACCOUNT: i64 = 20;
/// Registrations one account may make in 24 hours.
pub const MAX_PER_ACCOUNT_PER_DAY: i64 = 20;
/// How long a closed registration stays on its owner's page.
pub const CLOSED_KEPT: Duration = Duration::days(30);

/// A registration as its homeowner sees it (never the code or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LockRegistration {
    /// The registration's own id.
    pub id: Uuid,
    /// The lock id `firstkey-agent init` printed.
    pub lock_id: Uuid,
    /// Name, e.g. "Front door".
    pub name: String,
    /// `pending` (waiting for the lock), `paired` (the lock paired with this registration),
    /// `paired_elsewhere` (the lock paired with another registration of its id), `code_mismatch`
    /// (the lock connected and its code is not the one typed), `contested` (the lock's code was
    /// typed into more than one registration: it paired with none), `cancelled` or `expired`.
    pub state: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Until when a pending registration waits.
    pub expires_at: DateTime<Utc>,
    /// When it closed, if it did.
    pub closed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, lock_id, name, state, created_at, expires_at, closed_at";

fn from_row(row: &tokio_postgres::Row) -> LockRegistration {
    LockRegistration {
        id: row.get(0),
        lock_id: row.get(1),
        name: row.get(2),
        state: row.get(3),
        created_at: row.get(4),
        expires_at: row.get(5),
        closed_at: row.get(6),
    }
}

/// Why a registration was refused; each says so in words safe for the homeowner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A lock with this id is paired (with some home, in some municipality): it is its owner's.
    AlreadyPaired,
    /// This home already waits for this lock.
    AlreadyWaiting,
    /// A lock or a waiting registration of this home has this name.
    NameTaken,
    /// This home has [`MAX_PENDING_PER_PROPERTY`] registrations waiting.
    PropertyFull,
    /// The account has [`MAX_PENDING_PER_ACCOUNT`] waiting or made [`MAX_PER_ACCOUNT_PER_DAY`] today;
    /// a new one may be made after `retry_after` seconds.
    AccountFull {
        /// Seconds until the account may register again.
        retry_after: u64,
    },
}

impl Refusal {
    /// The refusal in words.
    pub fn message(self) -> &'static str {
        match self {
            Self::AlreadyPaired => "this lock is already paired with a home",
            Self::AlreadyWaiting => "this home already waits for this lock",
            Self::NameTaken => "this home already has a lock with this name",
            Self::PropertyFull => {
                "this home has 10 locks waiting to pair; cancel one or wait until one pairs"
            }
            Self::AccountFull { .. } => {
                "you have made as many lock registrations as allowed for now; try again later"
            }
        }
    }
}

/// A registration's failure: refused (nothing written), or the database.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Refused for the reason given.
    #[error("registration refused: {}", .0.message())]
    Refused(Refusal),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for RegisterError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(conflict_or_query(e))
    }
}

/// Serialises, for the rest of the transaction, everything that decides about one key (a lock id
/// or an account): registering, pairing.
async fn serialise_on(client: &impl GenericClient, key: Uuid) -> Result<(), StoreError> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 22))",
            &[&key.to_string()],
        )
        .await?;
    Ok(())
}

/// Closes the pending registrations past their expiry among those `filter` selects (`$1` is now).
async fn expire_where(
    client: &impl GenericClient,
    filter: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), StoreError> {
    client
        .execute(
            &format!(
                "UPDATE lock_registrations SET state = 'expired', closed_at = $1, code_hash = NULL
                 WHERE state = 'pending' AND expires_at <= $1 AND {filter}"
            ),
            params,
        )
        .await?;
    Ok(())
}

/// Registers `lock_id` on `property` for `by`, with the SHA-256 of the code the homeowner typed.
/// Refused when the lock is already paired (anywhere), when this home already waits for it, when
/// the name is taken in this home, or past the bounds. Another home waiting for the same id is no
/// reason to refuse: the lock decides, by the code it proves.
#[allow(clippy::too_many_arguments)]
pub async fn register(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    by: Uuid,
    lock_id: Uuid,
    name: &str,
    code_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<LockRegistration, RegisterError> {
    serialise_on(client, by).await?;
    serialise_on(client, lock_id).await?;
    let t = tenant.id();
    expire_where(
        client,
        "municipality_id = $2 AND (property_id = $3 OR registered_by = $4)",
        &[&now, &t, &property, &by],
    )
    .await?;
    client
        .execute(
            "DELETE FROM lock_registrations
             WHERE municipality_id = $1 AND (property_id = $2 OR registered_by = $3)
               AND state <> 'pending' AND closed_at < $4",
            &[&t, &property, &by, &(now - CLOSED_KEPT)],
        )
        .await?;
    let refuse = |r| Err(RegisterError::Refused(r));
    if client
        .query_opt("SELECT 1 FROM locks WHERE id = $1", &[&lock_id])
        .await?
        .is_some()
    {
        return refuse(Refusal::AlreadyPaired);
    }
    let row = client
        .query_one(
            "SELECT
                 count(*) FILTER (WHERE property_id = $2 AND state = 'pending' AND lock_id = $4),
                 count(*) FILTER (WHERE property_id = $2 AND state = 'pending' AND name = $5),
                 count(*) FILTER (WHERE property_id = $2 AND state = 'pending'),
                 count(*) FILTER (WHERE registered_by = $3 AND state = 'pending'),
                 count(*) FILTER (WHERE registered_by = $3 AND created_at > $6),
                 min(created_at) FILTER (WHERE registered_by = $3 AND created_at > $6)
             FROM lock_registrations WHERE municipality_id = $1 AND (property_id = $2 OR registered_by = $3)",
            &[&t, &property, &by, &lock_id, &name, &(now - Duration::days(1))],
        )
        .await?;
    let count = |i: usize| row.get::<_, i64>(i);
    if count(0) > 0 {
        return refuse(Refusal::AlreadyWaiting);
    }
    let lock_named = client
        .query_opt(
            "SELECT 1 FROM locks WHERE municipality_id = $1 AND property_id = $2 AND name = $3",
            &[&t, &property, &name],
        )
        .await?
        .is_some();
    if count(1) > 0 || lock_named {
        return refuse(Refusal::NameTaken);
    }
    if count(2) >= MAX_PENDING_PER_PROPERTY {
        return refuse(Refusal::PropertyFull);
    }
    if count(3) >= MAX_PENDING_PER_ACCOUNT || count(4) >= MAX_PER_ACCOUNT_PER_DAY {
        let oldest: Option<DateTime<Utc>> = row.get(5);
        let retry_after = oldest.map_or(60, |o| {
            u64::try_from((o + Duration::days(1) - now).num_seconds())
                .unwrap_or(0)
                .max(1)
        });
        return refuse(Refusal::AccountFull { retry_after });
    }
    let row = client
        .query_one(
            &format!(
                "INSERT INTO lock_registrations (id, municipality_id, property_id, lock_id, name, registered_by, code_hash,
                     created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &t,
                &property,
                &lock_id,
                &name,
                &by,
                &code_hash.to_vec(),
                &now,
                &(now + LIFETIME),
            ],
        )
        .await?;
    Ok(from_row(&row))
}

/// The registrations of a home: those waiting and those closed in the last [`CLOSED_KEPT`], newest
/// first. A pending one past its expiry shows as `expired`.
pub async fn of_property(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<LockRegistration>, StoreError> {
    Ok(client
        .query(
            "SELECT id, lock_id, name,
                    CASE WHEN state = 'pending' AND expires_at <= $3 THEN 'expired' ELSE state END,
                    created_at, expires_at, closed_at
             FROM lock_registrations
             WHERE municipality_id = $1 AND property_id = $2 AND (state = 'pending' OR closed_at >= $4)
             ORDER BY created_at DESC, id LIMIT 100",
            &[&tenant.id(), &property, &now, &(now - CLOSED_KEPT)],
        )
        .await?
        .iter()
        .map(from_row)
        .collect())
}

/// The homeowner renews the home's pending registration of `lock_id` for another [`LIFETIME`].
/// `NotFound` when the home does not wait for that lock.
pub async fn renew(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    lock_id: Uuid,
    now: DateTime<Utc>,
) -> Result<LockRegistration, StoreError> {
    client
        .query_opt(
            &format!(
                "UPDATE lock_registrations SET expires_at = $4
                 WHERE municipality_id = $1 AND property_id = $2 AND lock_id = $3 AND state = 'pending'
                 RETURNING {COLUMNS}"
            ),
            &[&tenant.id(), &property, &lock_id, &(now + LIFETIME)],
        )
        .await?
        .map(|r| from_row(&r))
        .ok_or(StoreError::NotFound)
}

/// The homeowner cancels a pending registration of the home. `NotFound` when it is not pending
/// (or not this home's).
pub async fn cancel(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    registration: Uuid,
    now: DateTime<Utc>,
) -> Result<LockRegistration, StoreError> {
    client
        .query_opt(
            &format!(
                "UPDATE lock_registrations SET state = 'cancelled', closed_at = $4, code_hash = NULL
                 WHERE municipality_id = $1 AND property_id = $2 AND id = $3 AND state = 'pending'
                 RETURNING {COLUMNS}"
            ),
            &[&tenant.id(), &property, &registration, &now],
        )
        .await?
        .map(|r| from_row(&r))
        .ok_or(StoreError::NotFound)
}

/// A registration [`pair`] decided about.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The registration.
    pub id: Uuid,
    /// Its municipality.
    pub tenant: Tenant,
    /// Its home.
    pub property: Uuid,
    /// Its name (the paired lock's name, for the one that paired).
    pub name: String,
    /// Who made it.
    pub registered_by: Uuid,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Its new state: `paired`, `paired_elsewhere`, `code_mismatch` or `contested`.
    pub state: &'static str,
}

/// What the lock's handshake decided.
#[derive(Debug, Clone)]
pub enum PairOutcome {
    /// No registration waits for this lock id (or it paired meanwhile): nothing changed.
    NothingWaiting,
    /// The lock paired with `paired`; `closed` are the other registrations of its id, now closed.
    Paired {
        /// The registration it paired with.
        paired: Decided,
        /// The others, closed as `paired_elsewhere`.
        closed: Vec<Decided>,
    },
    /// The lock paired with none: each registration of its id is closed (`code_mismatch`, or
    /// `contested` where its code was the lock's but so was another's).
    NotPaired {
        /// The registrations closed.
        closed: Vec<Decided>,
    },
}

/// At the handshake of a lock not yet paired, after the agent proved it holds `device_public_key`
/// and `lock_id` is the id derived from that key: pairs the lock with the one pending
/// registration whose code hash is `derived_code_hash` (the hash of the code derived from that
/// key), creating its `locks` row, and closes every other pending registration of the id. Since
/// the id is bound to the key, a registration whose code is not the lock's never will be: it is
/// closed at once (`code_mismatch`) and costs no other registration anything. A code typed into
/// two registrations pairs neither (`contested`): whoever holds the code has the lock's authority,
/// and two holders cannot be told apart.
pub async fn pair(
    client: &impl GenericClient,
    lock_id: Uuid,
    device_public_key: &[u8; 32],
    derived_code_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<PairOutcome, StoreError> {
    serialise_on(client, lock_id).await?;
    if client
        .query_opt("SELECT 1 FROM locks WHERE id = $1", &[&lock_id])
        .await?
        .is_some()
    {
        return Ok(PairOutcome::NothingWaiting);
    }
    expire_where(client, "lock_id = $2", &[&now, &lock_id]).await?;
    let rows = client
        .query(
            "SELECT id, municipality_id, property_id, name, registered_by, created_at, code_hash
             FROM lock_registrations WHERE lock_id = $1 AND state = 'pending'
             ORDER BY created_at, id FOR UPDATE",
            &[&lock_id],
        )
        .await?;
    if rows.is_empty() {
        return Ok(PairOutcome::NothingWaiting);
    }
    let matches = |r: &tokio_postgres::Row| {
        let hash: Vec<u8> = r.get(6);
        ring_eq(&hash, derived_code_hash)
    };
    let matching = rows.iter().filter(|r| matches(r)).count();
    let mut decided: Vec<Decided> = rows
        .iter()
        .map(|r| Decided {
            id: r.get(0),
            tenant: Tenant::assume(r.get(1)),
            property: r.get(2),
            name: r.get(3),
            registered_by: r.get(4),
            created_at: r.get(5),
            state: match (matches(r), matching) {
                (true, 1) => "paired",
                (true, _) => "contested",
                (false, 1) => "paired_elsewhere",
                (false, _) => "code_mismatch",
            },
        })
        .collect();
    for d in &decided {
        client
            .execute(
                "UPDATE lock_registrations SET state = $2, closed_at = $3, code_hash = NULL WHERE id = $1",
                &[&d.id, &d.state, &now],
            )
            .await?;
    }
    let Some(at) = decided.iter().position(|d| d.state == "paired") else {
        return Ok(PairOutcome::NotPaired { closed: decided });
    };
    let paired = decided.remove(at);
    client
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at,
                 created_at)
             VALUES ($1, $2, $3, $4, 'paired', $5, $6, $6)",
            &[
                &lock_id,
                &paired.tenant.id(),
                &paired.property,
                &paired.name,
                &device_public_key.to_vec(),
                &now,
            ],
        )
        .await
        .map_err(conflict_or_query)?;
    Ok(PairOutcome::Paired {
        paired,
        closed: decided,
    })
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! The homeowner's remote unlock (issue 11 §3): "let the ambulance crew in".
//!
//! With a fresh passkey assertion the owner asks to open one lock of their property for N seconds.
//! The server mints a token with the dedicated `remote_open` scope and no `cnf` (no one proves a
//! key at the door), lifetime [`REMOTE_TOKEN_SECS`], single use, audience that lock, through the
//! same [`tokens::mint_recorded`] as every token (recorded, audited, queued), and queues it as a
//! `RemoteOpen` inbox entry. The lock verifies it offline as any token (signature, audience,
//! window, revocations, replay) and opens; a `remote_open` token presented at the tap, or a tap
//! token sent as a remote open, is refused by the lock (`wrong_scope`). The answer waits, bounded,
//! for the lock's acknowledgement and receipt; the receipt's mail to the household follows as for
//! any opening. A lock that does not answer in time is reported as such: its token expires within
//! [`REMOTE_TOKEN_SECS`] (plus the lock's skew allowance), so a lock that comes back later does not
//! open.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use firstkey_token::Scope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::auth::Actor;
use crate::clock::Clock;
use crate::domain::Role;
use crate::emergency::EmergencyError;
use crate::emergency::tokens::{self, Holder, Mint, Minting, Signer};
use crate::error::CoreError;
use crate::policy::{AuthzRequest, PolicyEngine, StepUpContext};
use crate::store::StoreError;

/// Lifetime of a remote-open token: it must reach the lock now or never.
pub const REMOTE_TOKEN_SECS: i64 = 30;
/// Longest hold a homeowner may ask for.
pub const MAX_HOLD_SECS: u32 = 120;
/// How long the answer waits for the lock's receipt.
pub const ACK_WAIT: StdDuration = StdDuration::from_secs(5);
/// How often the wait looks.
const POLL: StdDuration = StdDuration::from_millis(5);

/// Body of a remote unlock.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteUnlockRequest {
    /// How long the door stays open, 1 to 120 seconds.
    #[schema(minimum = 1, maximum = 120)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub seconds: u32,
}

/// What became of a remote unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemoteOutcome {
    /// The lock acknowledged, verified the token and opened.
    Opened,
    /// The lock acknowledged but refused (the receipt's reason says why).
    Refused,
    /// The lock did not answer in time (offline, or slow): it will not open once the token expires.
    NoAnswer,
}

/// The answer to a remote unlock.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RemoteUnlock {
    /// The lock.
    pub lock_id: Uuid,
    /// The token id (`cti`), hex.
    pub token_id: String,
    /// `opened`, `refused` or `no_answer`.
    pub outcome: RemoteOutcome,
    /// When the server queued the request for the lock.
    pub queued_at: DateTime<Utc>,
    /// When the server saw the lock acknowledge the entry (after deciding), if it did.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When the lock decided (its receipt's time), if it answered.
    pub decided_at: Option<DateTime<Utc>>,
    /// The receipt's reason (`ok`, or why the lock refused), if it answered.
    pub reason: Option<String>,
    /// Seconds the door is held open.
    pub hold_seconds: u32,
    /// The token stops working at this instant.
    pub expires_at: DateTime<Utc>,
}

fn denied(e: CoreError) -> EmergencyError {
    match e {
        CoreError::NotFound => EmergencyError::NotFound,
        CoreError::StepUpRequired => EmergencyError::StepUpRequired,
        other => EmergencyError::Denied(other),
    }
}

/// Opens `lock` remotely for the homeowner `actor` (see the module documentation). Waits at most
/// `wait` for the lock's receipt.
#[allow(clippy::too_many_arguments)]
pub async fn unlock(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    minting: Minting<'_>,
    clock: &dyn Clock,
    actor: &Actor,
    lock: Uuid,
    request: &RemoteUnlockRequest,
    wait: StdDuration,
) -> Result<RemoteUnlock, EmergencyError> {
    if !(1..=MAX_HOLD_SECS).contains(&request.seconds) {
        return Err(EmergencyError::Invalid(format!(
            "seconds: 1 to {MAX_HOLD_SECS}"
        )));
    }
    if !actor.has(Role::Homeowner) {
        return Err(EmergencyError::NotFound);
    }
    let now = clock.now();
    let tenant = actor.tenant;
    let property: Uuid = client
        .query_opt(
            "SELECT property_id FROM locks WHERE municipality_id = $1 AND id = $2 AND pairing_state = 'paired'",
            &[&tenant.id(), &lock],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?
        .get(0);
    let ctx = access::property(&*client, tenant, property).await?;
    let principal = access::principal(&*client, actor).await?;
    let decision = access::authorize(client, engine, actor, Some(property), now, |fresh| {
        AuthzRequest::remote_unlock(
            &principal,
            &ctx.attrs,
            StepUpContext {
                step_up_fresh: fresh,
            },
        )
    })
    .await
    .map_err(denied)?;
    let credential = actor
        .step_up_credential
        .ok_or(EmergencyError::StepUpRequired)?;
    let signer = Signer::load(&*client, tenant, lock, minting.key_dir, now).await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let minted = tokens::mint_recorded(
        &tx,
        &signer,
        &Mint {
            tenant,
            holder: Holder::Remote {
                hold_secs: request.seconds,
            },
            subject: actor.user_id,
            property,
            lock,
            credential,
            confirmation: None,
            scope: Scope::RemoteOpen,
            expires_at: now + Duration::seconds(REMOTE_TOKEN_SECS),
            policy_set_hash: decision.policy_set_hash,
            policies: &decision.determining_policies,
            proven_in_request: false,
        },
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    crate::metrics::count(|m| m.tokens_issued.inc());

    let hash = firstkey_token::token_hash(&minted.bytes)
        .as_bytes()
        .to_vec();
    let started = tokio::time::Instant::now();
    let mut acknowledged_at = None;
    let mut answer = None;
    loop {
        // The agent acknowledges the entry once it has decided (receipt first), then uploads the
        // receipt; the answer waits for both, bounded.
        let row = client
            .query_one(
                "SELECT l.inbox_acked_seq >= $3,
                        (SELECT row(r.decision, r.reason, r.decided_at)::text FROM receipts r
                         WHERE r.lock_id = l.id AND r.token_hash = $2 ORDER BY r.seq LIMIT 1) IS NOT NULL
                 FROM locks l WHERE l.id = $1",
                &[&lock, &hash, &minted.inbox_seq],
            )
            .await?;
        if acknowledged_at.is_none() && row.get::<_, bool>(0) {
            acknowledged_at = Some(clock.now());
        }
        if row.get::<_, bool>(1) {
            let r = client
                .query_one(
                    "SELECT decision, reason, decided_at FROM receipts
                     WHERE lock_id = $1 AND token_hash = $2 ORDER BY seq LIMIT 1",
                    &[&lock, &hash],
                )
                .await?;
            answer = Some((
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, DateTime<Utc>>(2),
            ));
            break;
        }
        if started.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let (outcome, decided_at, reason) = match answer {
        Some((decision, reason, decided_at)) => {
            acknowledged_at.get_or_insert_with(|| clock.now());
            (
                if decision == "allow" {
                    RemoteOutcome::Opened
                } else {
                    RemoteOutcome::Refused
                },
                Some(decided_at),
                Some(reason),
            )
        }
        None => (RemoteOutcome::NoAnswer, None, None),
    };
    Ok(RemoteUnlock {
        lock_id: lock,
        token_id: hex::encode(minted.cti),
        outcome,
        queued_at: now,
        acknowledged_at,
        decided_at,
        reason,
        hold_seconds: request.seconds,
        expires_at: minted.expires_at,
    })
}

//! Offline keypad codes, the server side (issue 11 §2; `firmware-agent/PROTOCOL.md`, "Keypad
//! codes"): the per-lock code secret, incident codes issued by a dispatcher under a live grant,
//! their revocation with the grant, and the join from a lock's keypad receipts back to who was
//! given the code. Standing codes for trusted parties (slots, rotation, mail) are in [`standing`].
//!
//! The code secret is never stored. Every replica derives it from the data key (KEK) with
//! HKDF and then per lock and generation with HMAC, so a database dump alone can make no code;
//! the inbox carries only the generation, and the channel derives the secret as it sends it. The
//! digits of a code are returned once, to the dispatcher who asked, and are in no row, log or
//! audit entry: records name a code by its id (an HMAC the lock also computes).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use firstkey_agent::keypad::{self, CodeSecret};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::channel::inbox::{self, InboxMessage};
use crate::domain::Role;
use crate::emergency::{EmergencyError, Notice, grants, notify_property, unix_seconds};
use crate::error::CoreError;
use crate::policy::{AuthzRequest, KeypadCodeContext, PolicyEngine};
use crate::store::{StoreError, Tenant};

pub mod standing;

/// HKDF label of the key every lock's code secret is derived from.
const SECRET_LABEL: &[u8] = b"firstkey keypad code secret v1";

/// Default length of an incident code's window, in minutes.
pub const DEFAULT_INCIDENT_MINUTES: u32 = 30;

/// The root of every lock's code secret, derived from the KEK.
#[derive(Clone)]
pub struct SecretRoot(ring::hmac::Key);

impl std::fmt::Debug for SecretRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretRoot(<redacted>)")
    }
}

impl SecretRoot {
    /// The root for a KEK.
    pub fn derive(kek: &crate::crypto::Kek) -> Self {
        Self(kek.derive_hmac_key(SECRET_LABEL))
    }

    /// The code secret of `lock` in `generation`.
    pub fn lock_secret(&self, lock: Uuid, generation: i32) -> CodeSecret {
        let mut m = Vec::with_capacity(8 + 16 + 4);
        m.extend_from_slice(b"lock-v1:");
        m.extend_from_slice(lock.as_bytes());
        m.extend_from_slice(&generation.to_be_bytes());
        let tag = ring::hmac::sign(&self.0, &m);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(tag.as_ref());
        CodeSecret(secret)
    }
}

/// Queues the lock's first code secret if it has none yet, in the caller's transaction; returns
/// the generation in force.
pub async fn ensure_secret(
    tx: &impl GenericClient,
    tenant: Tenant,
    lock: Uuid,
    now: DateTime<Utc>,
) -> Result<i32, StoreError> {
    let row = tx
        .query_opt(
            "UPDATE locks SET keypad_secret_generation = 1
             WHERE municipality_id = $1 AND id = $2 AND keypad_secret_generation IS NULL
             RETURNING keypad_secret_generation",
            &[&tenant.id(), &lock],
        )
        .await?;
    if let Some(r) = row {
        let generation: i32 = r.get(0);
        inbox::push(
            tx,
            tenant,
            lock,
            &InboxMessage::KeypadSecret { generation },
            now,
        )
        .await?;
        return Ok(generation);
    }
    tx.query_opt(
        "SELECT keypad_secret_generation FROM locks WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &lock],
    )
    .await?
    .and_then(|r| r.get::<_, Option<i32>>(0))
    .ok_or(StoreError::NotFound)
}

/// Body of an incident-code request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentCodeRequest {
    /// The lock (a paired lock of the grant's property).
    pub lock: Uuid,
    /// How long the code should work, in minutes (default 30). The window is the longest of
    /// 10, 15, 20, 30, 45, 60, 90, 120 minutes from the current 5-minute boundary that ends by
    /// both this and the grant's end.
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 10, maximum = 120)]
    pub minutes: Option<u32>,
}

/// An issued code, shown once to the dispatcher who asked, to read to the crew by radio.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedCode {
    /// The code's record.
    pub id: Uuid,
    /// The 15 digits in groups of three. Secret: read it to the crew, never write it down.
    pub code: String,
    /// The lock it opens, once.
    pub lock_id: Uuid,
    /// The grant it was issued under.
    pub grant_id: Uuid,
    /// The incident.
    pub incident_id: Uuid,
    /// Valid from (a 5-minute boundary at or before the request).
    pub not_before: DateTime<Utc>,
    /// Valid until (never after the grant's end).
    pub not_after: DateTime<Utc>,
}

fn denied(e: CoreError) -> EmergencyError {
    match e {
        CoreError::NotFound => EmergencyError::NotFound,
        CoreError::StepUpRequired => EmergencyError::StepUpRequired,
        other => EmergencyError::Denied(other),
    }
}

fn at(secs: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0).unwrap_or_default()
}

/// A dispatcher issues a one-time incident code for a lock of the grant's property: the policy
/// decides (`issue_keypad_code`: a live grant, a fresh step-up); the code's record, its audit
/// entry (joined to the incident and grant) and the homeowner's mail commit together.
pub async fn issue_incident(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    root: &SecretRoot,
    actor: &Actor,
    grant_id: Uuid,
    request: &IncidentCodeRequest,
    now: DateTime<Utc>,
) -> Result<IssuedCode, EmergencyError> {
    if !actor.has(Role::Dispatcher) {
        return Err(EmergencyError::Forbidden);
    }
    let minutes = request.minutes.unwrap_or(DEFAULT_INCIDENT_MINUTES);
    if !(10..=120).contains(&minutes) {
        return Err(EmergencyError::Invalid(
            "minutes must be between 10 and 120".to_owned(),
        ));
    }
    let tenant = actor.tenant;
    let grant = grants::by_id(&*client, tenant, grant_id).await?;
    let lock = client
        .query_opt(
            "SELECT id, name FROM locks WHERE municipality_id = $1 AND id = $2 AND property_id = $3
               AND pairing_state = 'paired'",
            &[&tenant.id(), &request.lock, &grant.property_id],
        )
        .await?
        .map(|r| (r.get::<_, Uuid>(0), r.get::<_, String>(1)));
    let incident = crate::emergency::incidents::by_id(&*client, tenant, grant.incident_id).await?;
    let live = grant.is_live(now) && incident.closed_at.is_none();
    let ctx = access::property(&*client, tenant, grant.property_id).await?;
    let principal = access::principal(&*client, actor).await?;
    let decision = access::authorize(client, engine, actor, Some(ctx.property.id), now, |fresh| {
        AuthzRequest::issue_keypad_code(
            &principal,
            &ctx.attrs,
            KeypadCodeContext {
                step_up_fresh: fresh,
                grant_live: live,
            },
        )
    })
    .await
    .map_err(denied)?;
    let (lock, lock_name) = lock.ok_or(EmergencyError::NotFound)?;
    let now_s = unix_seconds(now);
    let until = unix_seconds(grant.ends_at).min(now_s + u64::from(minutes) * 60);
    let window = keypad::incident_window(now_s, until).map_err(|_| {
        EmergencyError::Conflict("the grant ends too soon for a keypad code".to_owned())
    })?;

    let tx = client.transaction().await.map_err(StoreError::from)?;
    // As for tokens: a revocation or incident close that commits first wins; one that comes later
    // waits for this code and then revokes it.
    let still_live = tx
        .query_opt(
            "SELECT 1 FROM grants g JOIN incidents i ON i.id = g.incident_id
             WHERE g.municipality_id = $1 AND g.id = $2 AND g.status = 'live'
               AND g.starts_at <= $3 AND g.ends_at > $3 AND i.closed_at IS NULL
             FOR SHARE OF g",
            &[&tenant.id(), &grant.id, &now],
        )
        .await?
        .is_some();
    if !still_live {
        return Err(EmergencyError::NotFound);
    }
    // One writer per lock at a time picks the index digit.
    tx.execute("SELECT 1 FROM locks WHERE id = $1 FOR UPDATE", &[&lock])
        .await?;
    let generation = ensure_secret(&tx, tenant, lock, now).await?;
    let (not_before, not_after) = (at(window.0), at(window.1));
    let taken: Vec<i16> = tx
        .query(
            "SELECT slot_index FROM keypad_codes WHERE lock_id = $1 AND kind = 'incident'
               AND not_before = $2 AND not_after = $3",
            &[&lock, &not_before, &not_after],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let index = (0u32..10)
        .find(|i| !taken.iter().any(|t| i64::from(*t) == i64::from(*i)))
        .ok_or_else(|| {
            EmergencyError::Conflict(
                "ten codes already issued for this lock in this window; try in five minutes"
                    .to_owned(),
            )
        })?;
    let wire_lock = lock.to_string();
    let secret = root.lock_secret(lock, generation);
    let (code, spec) = keypad::incident_code(&secret, &wire_lock, window, index)
        .map_err(|e| EmergencyError::Invalid(e.to_string()))?;
    let code_id = keypad::code_id(&secret, &wire_lock, &spec);
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO keypad_codes (id, municipality_id, lock_id, kind, code_id, secret_generation,
             grant_id, incident_id, slot_index, not_before, not_after, issued_by, issued_at)
         VALUES ($1, $2, $3, 'incident', $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &id,
            &tenant.id(),
            &lock,
            &code_id.to_vec(),
            &generation,
            &grant.id,
            &grant.incident_id,
            &i16::try_from(index).unwrap_or(0),
            &not_before,
            &not_after,
            &actor.user_id,
            &now,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let event = Event::new("keypad_code.issue", Outcome::Allow)
        .actor(actor.user_id)
        .subject("keypad_code", id)
        .property(grant.property_id)
        .incident(grant.incident_id)
        .policy(decision.policy_set_hash)
        .details(serde_json::json!({
            "kind": "incident",
            "grant": grant.id,
            "lock": lock,
            "code_id": hex::encode(code_id),
            "not_before": not_before.to_rfc3339(),
            "not_after": not_after.to_rfc3339(),
            "policies": decision.determining_policies,
        }));
    audit::record(&tx, tenant, &event, now).await?;
    let text = format!(
        "A one-time keypad code for your lock \"{lock_name}\" at {} was issued to a crew for incident {} \
         ({}). It opens the door once and only until {}.",
        ctx.property.address,
        incident.cad_number,
        incident.kind,
        not_after.format("%Y-%m-%d %H:%M UTC"),
    );
    notify_property(
        &tx,
        tenant,
        grant.property_id,
        &Notice {
            kind: "keypad_code.issued",
            event: id.to_string(),
            subject: "firstkey: a keypad code for your home was issued",
            text: &text,
        },
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(IssuedCode {
        id,
        code: code.display(),
        lock_id: lock,
        grant_id: grant.id,
        incident_id: grant.incident_id,
        not_before,
        not_after,
    })
}

/// Revokes the live incident codes of a grant (revoked, ended, incident closed): each becomes a
/// revocation in its lock's inbox, under the code's revocation key.
pub async fn revoke_of_grant(
    tx: &impl GenericClient,
    tenant: Tenant,
    grant: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let rows = tx
        .query(
            "UPDATE keypad_codes SET revoked_at = $3
             WHERE municipality_id = $1 AND grant_id = $2 AND revoked_at IS NULL AND not_after > $3
             RETURNING lock_id, code_id, not_after",
            &[&tenant.id(), &grant, &now],
        )
        .await?;
    for row in &rows {
        let lock: Uuid = row.get(0);
        let id: Vec<u8> = row.get(1);
        let not_after: DateTime<Utc> = row.get(2);
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| StoreError::Conflict("stored code id length".to_owned()))?;
        inbox::push(
            tx,
            tenant,
            lock,
            &InboxMessage::Revocation {
                token_hash: keypad::revocation_key(&id),
                // The lock's skew allowance is added on its side.
                expires_at: unix_seconds(not_after),
            },
            now,
        )
        .await?;
    }
    Ok(rows.len())
}

/// An incident code as the dispatcher's page lists it (never the digits).
#[derive(Debug, Clone)]
pub struct IncidentCodeRow {
    /// The code's record.
    pub id: Uuid,
    /// The grant it was issued under.
    pub grant: Uuid,
    /// The lock's name.
    pub lock_name: String,
    /// Who issued it.
    pub issued_by: String,
    /// When.
    pub issued_at: DateTime<Utc>,
    /// Valid from.
    pub not_before: DateTime<Utc>,
    /// Valid until.
    pub not_after: DateTime<Utc>,
    /// `used`, `revoked`, `expired` or `unused`.
    pub state: &'static str,
}

/// The incident codes issued for `incident`, newest first, with their state at `now`: used (a
/// receipt showed it open the door), revoked (with its grant), expired, or unused.
pub async fn of_incident(
    client: &impl GenericClient,
    tenant: Tenant,
    incident: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<IncidentCodeRow>, StoreError> {
    Ok(client
        .query(
            "SELECT c.id, c.grant_id, l.name, u.display_name, c.issued_at, c.not_before, c.not_after,
                    c.used_at IS NOT NULL, c.revoked_at IS NOT NULL
             FROM keypad_codes c JOIN locks l ON l.id = c.lock_id
             JOIN users u ON u.id = c.issued_by
             WHERE c.municipality_id = $1 AND c.incident_id = $2 AND c.kind = 'incident'
             ORDER BY c.issued_at DESC, c.id",
            &[&tenant.id(), &incident],
        )
        .await?
        .iter()
        .map(|r| {
            let not_after: DateTime<Utc> = r.get(6);
            let state = match (r.get::<_, bool>(7), r.get::<_, bool>(8)) {
                (true, _) => "used",
                (false, true) => "revoked",
                _ if not_after <= now => "expired",
                _ => "unused",
            };
            IncidentCodeRow {
                id: r.get(0),
                grant: r.get(1),
                lock_name: r.get(2),
                issued_by: r.get(3),
                issued_at: r.get(4),
                not_before: r.get(5),
                not_after,
                state,
            }
        })
        .collect())
}

/// Who was given the code a keypad receipt names.
#[derive(Debug, Clone)]
pub struct CodeHolder {
    /// The code's record.
    pub id: Uuid,
    /// `incident` or `standing`.
    pub kind: String,
    /// The incident, for an incident code.
    pub incident: Option<Uuid>,
    /// The grant, for an incident code.
    pub grant: Option<Uuid>,
    /// The incident's CAD number, for an incident code.
    pub cad_number: Option<String>,
    /// The trusted party, for a standing code.
    pub trusted_party: Option<Uuid>,
    /// What the homeowner calls that trusted party.
    pub trusted_label: Option<String>,
}

/// The record of the code with this id at this lock, if the server issued it.
pub async fn holder(
    tx: &impl GenericClient,
    lock: Uuid,
    code_id: &[u8; 16],
) -> Result<Option<CodeHolder>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT c.id, c.kind, c.incident_id, c.grant_id, i.cad_number, c.trusted_party_id, t.label
             FROM keypad_codes c LEFT JOIN incidents i ON i.id = c.incident_id
             LEFT JOIN trusted_parties t ON t.id = c.trusted_party_id
             WHERE c.lock_id = $1 AND c.code_id = $2",
            &[&lock, &code_id.to_vec()],
        )
        .await?;
    Ok(row.map(|r| CodeHolder {
        id: r.get(0),
        kind: r.get(1),
        incident: r.get(2),
        grant: r.get(3),
        cad_number: r.get(4),
        trusted_party: r.get(5),
        trusted_label: r.get(6),
    }))
}

/// Whether a receipt reason is a keypad decision's.
pub fn is_keypad_reason(reason: &str) -> bool {
    reason.starts_with("keypad_")
}

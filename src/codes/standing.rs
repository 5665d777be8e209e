//! Standing keypad codes for trusted parties (issue 11 §2; `firmware-agent/PROTOCOL.md`, "Keypad
//! codes", standing codes).
//!
//! A homeowner who gives a trusted party keypad codes (`trusted_parties.keypad_codes`) gets, for
//! each (party, lock), one standing **slot** at the lock: [`sync_party`] sends the lock the slot's
//! schedule (`KeypadStanding`: epoch, rotation period, overlap, the window's end) whenever the
//! party's terms change, and clears it (`KeypadStanding` without a schedule) when the party is
//! paused, revoked, loses the lock or the keypad, so its codes stop working at the lock at once.
//!
//! The lock recomputes each period's code itself, so a rotation sends nothing to the lock. The
//! server **issues** each period's code when the period starts ([`issue_due`], run by every
//! replica's background loop): the code's record (`keypad_codes`, by its id, never the digits),
//! its audit entry naming the trusted party, and the mail to the party carrying the digits, in
//! one transaction on the slot's row claimed with `FOR UPDATE SKIP LOCKED` — so a rotation happens
//! fully or not at all, and once whatever the number of replicas. The previous code keeps working
//! for the overlap after the new one starts, so a party who reads their mail a little late is not
//! locked out; then it stops.
//!
//! The party sees their current codes on `/trusted`: a newly issued code once without asking
//! ([`codes_of`] marks it shown), and again only after a fresh assertion (the policy's
//! `request_trusted_token` decides, as for a token). The outbox drops a mail's body once it is
//! sent, so the digits stay in the database only until delivery.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use firstkey_agent::keypad::{self, StandingSchedule};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{SecretRoot, at, ensure_secret};
use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::channel::inbox::{self, InboxMessage};
use crate::domain::Email;
use crate::domain::Role;
use crate::emergency::EmergencyError;
use crate::emergency::unix_seconds;
use crate::error::CoreError;
use crate::notify::{self, Mail};
use crate::policy::{AuthzRequest, PolicyEngine, TrustedTokenContext};
use crate::store::{StoreError, Tenant};

/// Default rotation period of a trusted party's standing codes, in days.
pub const DEFAULT_ROTATION_DAYS: i16 = 7;
/// Longest rotation period a homeowner may set, in days (the longest window).
pub const MAX_ROTATION_DAYS: i16 = 90;
/// Slots claimed per batch of the rotation loop.
const BATCH: i64 = 100;

/// How long a period's code keeps working into the next period: a quarter of the period, at most
/// a day (7 days → 1 day, 1 day → 6 hours).
pub fn overlap_secs(period_secs: u64) -> u64 {
    (period_secs / 4).min(86_400)
}

/// The schedule of a party's slot from its terms, starting at `epoch`.
pub fn schedule_for(
    epoch: DateTime<Utc>,
    rotation_days: i16,
    ends_at: DateTime<Utc>,
) -> StandingSchedule {
    let period = u64::try_from(rotation_days.max(1)).unwrap_or(1) * 86_400;
    StandingSchedule {
        epoch: unix_seconds(epoch),
        period_secs: period,
        overlap_secs: overlap_secs(period),
        until: unix_seconds(ends_at),
    }
}

/// A live slot as stored.
struct Slot {
    id: Uuid,
    lock: Uuid,
    slot: u8,
    schedule: StandingSchedule,
    issued_through: i64,
}

const SLOT_COLUMNS: &str =
    "id, lock_id, slot, epoch, period_secs, overlap_secs, until, issued_through";

fn slot_row(r: &tokio_postgres::Row) -> Slot {
    let secs = |i: usize| u64::try_from(r.get::<_, i32>(i)).unwrap_or(0);
    Slot {
        id: r.get(0),
        lock: r.get(1),
        slot: u8::try_from(r.get::<_, i16>(2)).unwrap_or(0),
        schedule: StandingSchedule {
            epoch: unix_seconds(r.get(3)),
            period_secs: secs(4),
            overlap_secs: secs(5),
            until: unix_seconds(r.get(6)),
        },
        issued_through: i64::from(r.get::<_, i32>(7)),
    }
}

/// What [`sync_party`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Slots given a (new) schedule at their lock.
    pub set: usize,
    /// Slots cleared at their lock.
    pub cleared: usize,
}

/// Clears a slot at its lock (inbox entry) and ends its codes, inside `tx`.
async fn clear(
    tx: &impl GenericClient,
    tenant: Tenant,
    slot: &Slot,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE keypad_standing_slots SET cleared_at = $2 WHERE id = $1",
        &[&slot.id, &now],
    )
    .await?;
    tx.execute(
        "UPDATE keypad_codes SET revoked_at = $2
         WHERE standing_slot_id = $1 AND revoked_at IS NULL AND not_after > $2",
        &[&slot.id, &now],
    )
    .await?;
    inbox::push(
        tx,
        tenant,
        slot.lock,
        &InboxMessage::KeypadStanding {
            slot: slot.slot,
            schedule: None,
        },
        now,
    )
    .await?;
    Ok(())
}

/// Brings a trusted party's standing slots in line with its record, inside the caller's
/// transaction (which holds the party's row): a slot with the schedule its terms give on every
/// paired lock it may open while it is active with keypad codes, its account is not disabled and
/// its window is not over, and no slot anywhere else. A slot whose schedule would change is cleared and given a new one (a
/// new epoch: the codes mailed before stop working, the next issue mails the new one). Nothing is
/// issued here; [`issue_due`] (or [`issue_due_for_party`] in the same transaction) does that.
pub async fn sync_party(
    tx: &impl GenericClient,
    tenant: Tenant,
    party: Uuid,
    now: DateTime<Utc>,
) -> Result<Synced, StoreError> {
    let row = tx
        .query_opt(
            "SELECT CASE WHEN u.status = 'disabled' THEN 'account_disabled' ELSE t.status END,
                    t.keypad_codes, t.code_rotation_days, t.starts_at, t.ends_at
             FROM trusted_parties t
             JOIN users u ON u.municipality_id = t.municipality_id AND u.id = t.user_id
             WHERE t.municipality_id = $1 AND t.id = $2",
            &[&tenant.id(), &party],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    let (status, keypad_on, days, starts_at, ends_at): (
        String,
        bool,
        i16,
        DateTime<Utc>,
        DateTime<Utc>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let wanted_locks: Vec<Uuid> = if status == "active" && keypad_on && ends_at > now {
        tx.query(
            "SELECT l.id FROM trusted_party_locks t JOIN locks l ON l.id = t.lock_id
             WHERE t.trusted_party_id = $1 AND l.pairing_state = 'paired' ORDER BY l.id",
            &[&party],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()
    } else {
        Vec::new()
    };
    let current: Vec<Slot> = tx
        .query(
            &format!(
                "SELECT {SLOT_COLUMNS} FROM keypad_standing_slots
                 WHERE trusted_party_id = $1 AND cleared_at IS NULL ORDER BY lock_id FOR UPDATE"
            ),
            &[&party],
        )
        .await?
        .iter()
        .map(slot_row)
        .collect();
    let mut out = Synced::default();
    let period = u64::try_from(days.max(1)).unwrap_or(1) * 86_400;
    let mut keep = Vec::new();
    for slot in &current {
        let same = wanted_locks.contains(&slot.lock)
            && slot.schedule.period_secs == period
            && slot.schedule.until == unix_seconds(ends_at)
            && slot.schedule.epoch >= unix_seconds(starts_at);
        if same {
            keep.push(slot.lock);
        } else {
            clear(tx, tenant, slot, now).await?;
            out.cleared += 1;
        }
    }
    for lock in wanted_locks.iter().filter(|l| !keep.contains(l)) {
        // One writer per lock at a time picks the slot number: the lowest never used at this lock,
        // else the one cleared longest ago (a new epoch makes its old codes differ anyway).
        tx.execute("SELECT 1 FROM locks WHERE id = $1 FOR UPDATE", &[lock])
            .await?;
        let free: Option<i16> = tx
            .query_opt(
                "SELECT n::smallint FROM generate_series(0, 99) n
                 WHERE NOT EXISTS (SELECT 1 FROM keypad_standing_slots s
                                   WHERE s.lock_id = $1 AND s.slot = n AND s.cleared_at IS NULL)
                 ORDER BY (SELECT max(s.cleared_at) FROM keypad_standing_slots s
                           WHERE s.lock_id = $1 AND s.slot = n) NULLS FIRST, n
                 LIMIT 1",
                &[lock],
            )
            .await?
            .map(|r| r.get(0));
        let Some(slot) = free else {
            return Err(StoreError::Conflict(
                "this lock already holds 100 trusted parties' keypad codes".to_owned(),
            ));
        };
        let epoch = starts_at.max(now);
        let schedule = schedule_for(epoch, days, ends_at);
        if !schedule.is_valid() || schedule.window(0).is_none() {
            continue;
        }
        ensure_secret(tx, tenant, *lock, now).await?;
        tx.execute(
            "INSERT INTO keypad_standing_slots (id, municipality_id, trusted_party_id, lock_id, slot,
                 epoch, period_secs, overlap_secs, until, next_due_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $6, $10)",
            &[
                &Uuid::new_v4(),
                &tenant.id(),
                &party,
                lock,
                &slot,
                &at(schedule.epoch),
                &i32::try_from(schedule.period_secs).unwrap_or(i32::MAX),
                &i32::try_from(schedule.overlap_secs).unwrap_or(0),
                &ends_at,
                &now,
            ],
        )
        .await
        .map_err(crate::store::conflict_or_query)?;
        inbox::push(
            tx,
            tenant,
            *lock,
            &InboxMessage::KeypadStanding {
                slot: u8::try_from(slot).unwrap_or(0),
                schedule: Some(schedule),
            },
            now,
        )
        .await?;
        out.set += 1;
    }
    Ok(out)
}

/// Issues the due code of one claimed slot, inside `tx` (which holds the slot's row): the
/// current period's code if not issued yet (record, audit entry, mail), or the slot cleared when
/// its window is over. Returns whether a code was issued.
async fn issue_slot(
    tx: &impl GenericClient,
    root: &SecretRoot,
    tenant: Tenant,
    slot: &Slot,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let s = slot.schedule;
    let now_s = unix_seconds(now);
    if now_s >= s.until {
        clear(tx, tenant, slot, now).await?;
        return Ok(false);
    }
    let Some(k) = s.period_at(now_s) else {
        tx.execute(
            "UPDATE keypad_standing_slots SET next_due_at = $2 WHERE id = $1",
            &[&slot.id, &at(s.epoch)],
        )
        .await?;
        return Ok(false);
    };
    let next_due = s
        .epoch
        .saturating_add(k.saturating_add(1).saturating_mul(s.period_secs))
        .min(s.until);
    tx.execute(
        "UPDATE keypad_standing_slots SET next_due_at = $2, issued_through = greatest(issued_through, $3)
         WHERE id = $1",
        &[&slot.id, &at(next_due), &i32::try_from(k).unwrap_or(i32::MAX)],
    )
    .await?;
    if i64::try_from(k).unwrap_or(i64::MAX) <= slot.issued_through {
        return Ok(false);
    }
    let party = tx
        .query_one(
            "SELECT t.id, t.property_id, t.invited_by, t.label, u.email, p.address, l.name
             FROM keypad_standing_slots s
             JOIN trusted_parties t ON t.id = s.trusted_party_id
             JOIN users u ON u.id = t.user_id
             JOIN properties p ON p.id = t.property_id
             JOIN locks l ON l.id = s.lock_id
             WHERE s.id = $1",
            &[&slot.id],
        )
        .await?;
    let (party_id, property, invited_by, label, email, address, lock_name): (
        Uuid,
        Uuid,
        Uuid,
        String,
        String,
        String,
        String,
    ) = (
        party.get(0),
        party.get(1),
        party.get(2),
        party.get(3),
        party.get(4),
        party.get(5),
        party.get(6),
    );
    let generation = ensure_secret(tx, tenant, slot.lock, now).await?;
    let secret = root.lock_secret(slot.lock, generation);
    let wire_lock = slot.lock.to_string();
    let (code, spec) = keypad::standing_code(&secret, &wire_lock, slot.slot, &s, k)
        .map_err(|e| StoreError::Conflict(format!("standing code: {e}")))?;
    let code_id = keypad::code_id(&secret, &wire_lock, &spec);
    let id = Uuid::new_v4();
    let (not_before, not_after) = (at(spec.not_before), at(spec.not_after));
    let inserted = tx
        .execute(
            "INSERT INTO keypad_codes (id, municipality_id, lock_id, kind, code_id, secret_generation,
                 trusted_party_id, standing_slot_id, slot_index, not_before, not_after, issued_by, issued_at)
             VALUES ($1, $2, $3, 'standing', $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (lock_id, code_id) DO NOTHING",
            &[
                &id,
                &tenant.id(),
                &slot.lock,
                &code_id.to_vec(),
                &generation,
                &party_id,
                &slot.id,
                &i16::from(slot.slot),
                &not_before,
                &not_after,
                &invited_by,
                &now,
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    let event = Event::new("keypad_code.issue", Outcome::Allow)
        .subject("keypad_code", id)
        .property(property)
        .details(serde_json::json!({
            "kind": "standing",
            "trusted_party": party_id,
            "lock": slot.lock,
            "slot": slot.slot,
            "period": k,
            "code_id": hex::encode(code_id),
            "not_before": not_before.to_rfc3339(),
            "not_after": not_after.to_rfc3339(),
        }));
    audit::record(tx, tenant, &event, now).await?;
    let when = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let next = at(spec.not_before.saturating_add(s.period_secs));
    let rotation = if next < at(s.until) {
        format!(
            "A new code is mailed to you at {}; this one keeps working until {} so you have time \
             to read it, then it stops.",
            when(next),
            when(not_after)
        )
    } else {
        format!(
            "It is the last code of your access, which ends at {}.",
            when(not_after)
        )
    };
    let text = format!(
        "Hello {label},\n\nyour keypad code for the lock \"{lock_name}\" at {address}:\n\n    {}\n\n\
         Type it at the lock's keypad. It works from {} until {}, any number of times. {rotation}\n\n\
         Keep it to yourself: anyone who has it can open the door. The homeowner can pause or end \
         your access at any time, and the code stops working at once. You can see your current \
         codes on your firstkey page (/trusted).",
        code.display(),
        when(not_before),
        when(not_after),
    );
    let html = format!(
        "<p>Hello {},</p><p>your keypad code for the lock \"{}\" at {}:</p><p><strong>{}</strong></p>\
         <p>Type it at the lock's keypad. It works from {} until {}, any number of times. {}</p>\
         <p>Keep it to yourself: anyone who has it can open the door. The homeowner can pause or end \
         your access at any time, and the code stops working at once. You can see your current \
         codes on your firstkey page (/trusted).</p>",
        notify::html_escape(&label),
        notify::html_escape(&lock_name),
        notify::html_escape(&address),
        code.display(),
        when(not_before),
        when(not_after),
        notify::html_escape(&rotation),
    );
    if let Ok(to) = Email::parse(&email) {
        notify::enqueue(
            tx,
            tenant,
            &Mail {
                dedupe_key: format!("keypad_code.standing:{id}"),
                kind: "keypad_code.standing",
                to,
                subject: format!("firstkey: your keypad code for {lock_name}"),
                text,
                html,
            },
            now,
        )
        .await?;
    }
    Ok(true)
}

/// Issues the due codes of one trusted party's slots inside the caller's transaction (after
/// [`sync_party`], so a party given keypad codes is mailed its first code with the same commit).
pub async fn issue_due_for_party(
    tx: &impl GenericClient,
    root: &SecretRoot,
    tenant: Tenant,
    party: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let slots: Vec<Slot> = tx
        .query(
            &format!(
                "SELECT {SLOT_COLUMNS} FROM keypad_standing_slots
                 WHERE municipality_id = $1 AND trusted_party_id = $2 AND cleared_at IS NULL
                   AND next_due_at <= $3 ORDER BY lock_id FOR UPDATE"
            ),
            &[&tenant.id(), &party, &now],
        )
        .await?
        .iter()
        .map(slot_row)
        .collect();
    let mut issued = 0;
    for slot in &slots {
        issued += usize::from(issue_slot(tx, root, tenant, slot, now).await?);
    }
    Ok(issued)
}

/// One pass of the rotation loop: claims due slots (`FOR UPDATE SKIP LOCKED`, so replicas share
/// the work and never issue a period twice) and issues their codes, each slot in its own
/// transaction (a failure leaves that slot due, nothing half done). Returns the codes issued.
pub async fn issue_due(
    pool: &Pool,
    root: &SecretRoot,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let mut issued = 0;
    for _ in 0..BATCH {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {SLOT_COLUMNS}, municipality_id FROM keypad_standing_slots
                     WHERE cleared_at IS NULL AND next_due_at <= $1
                     ORDER BY next_due_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                &[&now],
            )
            .await?;
        let Some(row) = row else {
            break;
        };
        let slot = slot_row(&row);
        let tenant = Tenant::assume(row.get(8));
        issued += usize::from(issue_slot(&tx, root, tenant, &slot, now).await?);
        tx.commit().await?;
    }
    Ok(issued)
}

/// One of a trusted party's current standing codes, as their page shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShownCode {
    /// The code's record.
    pub id: Uuid,
    /// The trusted-party record.
    pub trusted_party: Uuid,
    /// The lock.
    pub lock: Uuid,
    /// Its name.
    pub lock_name: String,
    /// The 15 digits in groups of three, or `None` when they may be shown only after a fresh
    /// assertion. Secret: anyone who has it can open the door.
    pub digits: Option<String>,
    /// Valid from.
    pub not_before: DateTime<Utc>,
    /// Valid until.
    pub not_after: DateTime<Utc>,
}

/// Which digits [`codes_of`] may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    /// Only codes not shown before (each is marked shown).
    New,
    /// Every current code (the caller checked a fresh assertion).
    All,
}

/// The current standing codes (not revoked, window not over) of the trusted party `user`, newest
/// first per lock, inside `tx`; digits as [`Reveal`] allows.
pub async fn codes_of(
    tx: &impl GenericClient,
    root: &SecretRoot,
    tenant: Tenant,
    user: Uuid,
    reveal: Reveal,
    now: DateTime<Utc>,
) -> Result<Vec<ShownCode>, StoreError> {
    let rows = tx
        .query(
            "SELECT c.id, c.trusted_party_id, c.lock_id, l.name, c.not_before, c.not_after,
                    c.shown_at IS NOT NULL, c.secret_generation, s.slot, s.epoch, s.period_secs,
                    s.overlap_secs, s.until
             FROM keypad_codes c
             JOIN keypad_standing_slots s ON s.id = c.standing_slot_id
             JOIN trusted_parties t ON t.id = c.trusted_party_id
             JOIN locks l ON l.id = c.lock_id
             WHERE c.municipality_id = $1 AND t.user_id = $2 AND c.kind = 'standing'
               AND c.revoked_at IS NULL AND c.not_after > $3 AND s.cleared_at IS NULL
               AND t.status = 'active'
             ORDER BY l.name, c.lock_id, c.not_before DESC
             FOR UPDATE OF c",
            &[&tenant.id(), &user, &now],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.get(0);
        let lock: Uuid = r.get(2);
        let shown: bool = r.get(6);
        let not_before: DateTime<Utc> = r.get(4);
        let digits = if reveal == Reveal::All || !shown {
            let schedule = StandingSchedule {
                epoch: unix_seconds(r.get(9)),
                period_secs: u64::try_from(r.get::<_, i32>(10)).unwrap_or(1),
                overlap_secs: u64::try_from(r.get::<_, i32>(11)).unwrap_or(0),
                until: unix_seconds(r.get(12)),
            };
            let k = unix_seconds(not_before).saturating_sub(schedule.epoch)
                / schedule.period_secs.max(1);
            let secret = root.lock_secret(lock, r.get(7));
            let slot = u8::try_from(r.get::<_, i16>(8)).unwrap_or(0);
            let (code, _) = keypad::standing_code(&secret, &lock.to_string(), slot, &schedule, k)
                .map_err(|e| StoreError::Conflict(format!("standing code: {e}")))?;
            if !shown {
                tx.execute(
                    "UPDATE keypad_codes SET shown_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await?;
            }
            Some(code.display())
        } else {
            None
        };
        out.push(ShownCode {
            id,
            trusted_party: r.get(1),
            lock,
            lock_name: r.get(3),
            digits,
            not_before,
            not_after: r.get(5),
        });
    }
    Ok(out)
}

/// The signed-in trusted party's current codes with every digit, after a fresh assertion: the
/// policy decides as for a token (`request_trusted_token`, the party active), once per home.
/// Someone who is not a trusted party gets nothing (`NotFound`).
pub async fn reveal(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    root: &SecretRoot,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Vec<ShownCode>, EmergencyError> {
    if !actor.has(Role::TrustedParty) {
        return Err(EmergencyError::NotFound);
    }
    let properties: Vec<Uuid> = client
        .query(
            "SELECT DISTINCT property_id FROM trusted_parties
             WHERE municipality_id = $1 AND user_id = $2 AND status = 'active' AND keypad_codes
               AND starts_at <= $3 AND ends_at > $3",
            &[&actor.tenant.id(), &actor.user_id, &now],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let principal = access::principal(&*client, actor).await?;
    for property in &properties {
        let ctx = access::property(&*client, actor.tenant, *property).await?;
        access::authorize(client, engine, actor, Some(*property), now, |fresh| {
            AuthzRequest::request_trusted_token(
                &principal,
                &ctx.attrs,
                TrustedTokenContext {
                    step_up_fresh: fresh,
                    trusted_now: true,
                },
            )
        })
        .await
        .map_err(|e| match e {
            CoreError::StepUpRequired => EmergencyError::StepUpRequired,
            CoreError::NotFound => EmergencyError::NotFound,
            other => EmergencyError::Denied(other),
        })?;
    }
    if properties.is_empty() && !actor.stepped_up(now) {
        return Err(EmergencyError::StepUpRequired);
    }
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let codes = codes_of(&tx, root, actor.tenant, actor.user_id, Reveal::All, now).await?;
    let event = Event::new("keypad_code.reveal", Outcome::Allow)
        .actor(actor.user_id)
        .details(serde_json::json!({
            "codes": codes.iter().map(|c| c.id).collect::<Vec<_>>(),
        }));
    audit::record(&tx, actor.tenant, &event, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(codes)
}

/// Re-syncs the slots of every trusted party whose account is `user`, after the account was
/// disabled (its codes stop working at the locks) or enabled again (the rotation loop issues it
/// new ones). Returns the slots cleared or made.
pub async fn sync_parties_of_account(
    tx: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let parties: Vec<Uuid> = tx
        .query(
            "SELECT id FROM trusted_parties WHERE municipality_id = $1 AND user_id = $2
             ORDER BY id FOR UPDATE",
            &[&tenant.id(), &user],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut changed = 0;
    for party in parties {
        let synced = sync_party(tx, tenant, party, now).await?;
        changed += synced.cleared + synced.set;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlap_is_a_quarter_of_the_period_at_most_a_day() {
        assert_eq!(overlap_secs(86_400), 21_600);
        assert_eq!(overlap_secs(7 * 86_400), 86_400);
        assert_eq!(overlap_secs(90 * 86_400), 86_400);
        let epoch = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for days in 1..=MAX_ROTATION_DAYS {
            let s = schedule_for(epoch, days, epoch + chrono::Duration::days(90));
            assert!(s.is_valid(), "{days}");
        }
    }
}

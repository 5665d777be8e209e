//! Lock health: battery level and voltage with a history and a days-left estimate, the trust-bundle
//! version and time floor each lock reports, the homeowner's mails when a battery crosses 30, 15 or
//! 5 % and when a lock has not been seen for its period, and the warnings dispatchers and responders
//! see before relying on a lock.
//!
//! **Writes.** The channel calls [`record`] only when a report differs from the session's last one
//! (battery or bundle) or the status interval has passed, so an idle lock costs no write. A report
//! updates the lock's row and nothing else (one row): a changed battery level is appended to the
//! recent trend kept on that same row (the last [`TREND_LEN`] changes). A threshold crossing
//! additionally writes its mail and audit entry, once per crossing: the lowest threshold mailed is
//! kept on the lock and cleared only when the level climbs above 30 %.
//!
//! **Offline.** [`sweep_offline`] runs periodically in every replica. A lock is due when it has not
//! been seen for its period: its own, or its property's (default 24 h), both set by the homeowner
//! ([`set_offline_period`]). The sweep claims due locks with `FOR UPDATE SKIP LOCKED`, so replicas
//! never mail the same lock twice, marks each mailed (`offline_alerted_at`) and mails in the same
//! transaction; the mark is cleared when the lock reports again.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{self, Event, Outcome};
use crate::channel::receipts::LockIdentity;
use crate::emergency::{Notice, notify_property};
use crate::store::{StoreError, Tenant};

/// Battery levels (percent) the homeowner is mailed at, highest first.
pub const THRESHOLDS: [u8; 3] = [30, 15, 5];

/// At or below this level the battery is critical.
pub const CRITICAL_PERCENT: u8 = 5;

/// Most locks one sweep claims (the next sweep takes the rest).
const SWEEP_BATCH: i64 = 200;

/// Changes of battery level kept on the lock's row for the trend.
pub const TREND_LEN: usize = 100;

/// The shortest offline period a homeowner may set, minutes: longer than the channel's
/// status-write interval (5 min), so a connected lock is never taken for an absent one.
pub const MIN_OFFLINE_MINUTES: u32 = 10;

/// The longest offline period, minutes (30 days).
pub const MAX_OFFLINE_MINUTES: u32 = 43_200;

/// The offline period of a property whose homeowner set none, minutes (24 h).
pub const DEFAULT_OFFLINE_MINUTES: u32 = 1440;

/// A lock's health report as the channel received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Battery charge, percent.
    pub battery_percent: Option<u8>,
    /// Battery voltage, millivolts.
    pub battery_millivolts: Option<u32>,
    /// Trust-bundle version in force.
    pub bundle_version: u64,
    /// The lock's time floor, Unix seconds.
    pub time_floor: u64,
}

/// The lowest threshold `percent` is at or below, if any.
pub fn threshold_for(percent: u8) -> Option<u8> {
    THRESHOLDS.into_iter().rev().find(|t| percent <= *t)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Records a report (see the module documentation for what it writes).
pub async fn record(
    pool: &Pool,
    lock: &LockIdentity,
    report: &Report,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let percent = report.battery_percent.map(i16::from);
    let level = report
        .battery_percent
        .and_then(threshold_for)
        .map(i16::from);
    let millivolts = report
        .battery_millivolts
        .map(|mv| i32::try_from(mv).unwrap_or(i32::MAX));
    // One transaction: the report and, on a crossing, its audit entry and mail commit together.
    let tx = client.transaction().await?;
    // One statement, one row: the lock's row, its trend extended only when the level changed.
    let row = tx
        .query_one(
            "WITH old AS (SELECT battery_alert_level FROM locks WHERE id = $1),
             upd AS (
               UPDATE locks l SET last_seen_at = $2, battery_percent = coalesce($3, l.battery_percent),
                   battery_millivolts = coalesce($4, l.battery_millivolts),
                   trust_bundle_version = $5, time_floor = $6, offline_alerted_at = NULL,
                   battery_alert_level = CASE
                       WHEN $3::smallint IS NULL THEN l.battery_alert_level
                       WHEN $7::smallint IS NULL THEN NULL
                       ELSE LEAST(coalesce(l.battery_alert_level, 100::smallint), $7::smallint) END,
                   battery_trend_at = CASE
                       WHEN $3::smallint IS NULL OR l.battery_percent IS NOT DISTINCT FROM $3::smallint
                           THEN l.battery_trend_at
                       ELSE (l.battery_trend_at || $2::timestamptz)[greatest(cardinality(l.battery_trend_at) + 2 - $8::int, 1):] END,
                   battery_trend_percent = CASE
                       WHEN $3::smallint IS NULL OR l.battery_percent IS NOT DISTINCT FROM $3::smallint
                           THEN l.battery_trend_percent
                       ELSE (l.battery_trend_percent || $3::smallint)[greatest(cardinality(l.battery_trend_percent) + 2 - $8::int, 1):] END
               WHERE l.id = $1
               RETURNING l.battery_alert_level)
             SELECT old.battery_alert_level, (SELECT battery_alert_level FROM upd) FROM old",
            &[
                &lock.id,
                &now,
                &percent,
                &millivolts,
                &i64_of(report.bundle_version),
                &i64_of(report.time_floor),
                &level,
                &i32::try_from(TREND_LEN).unwrap_or(100),
            ],
        )
        .await?;
    let before: Option<i16> = row.get(0);
    let after: Option<i16> = row.get(1);
    let crossed = match (before, after) {
        (_, None) => None,
        (None, Some(a)) => Some(a),
        (Some(b), Some(a)) if a < b => Some(a),
        _ => None,
    };
    let Some(crossed) = crossed else {
        tx.commit().await?;
        return Ok(());
    };
    let percent = report.battery_percent.unwrap_or(0);
    let critical = percent <= CRITICAL_PERCENT;
    let event = Event::new("lock.battery_low", Outcome::Info)
        .subject("lock", lock.id)
        .property(lock.property)
        .details(serde_json::json!({ "percent": percent, "threshold": crossed, "millivolts": report.battery_millivolts }));
    audit::record(&tx, lock.tenant, &event, now).await?;
    let advice = if critical {
        "Replace the batteries now: the lock may soon stop opening for anyone, responders included."
    } else {
        "Please replace the batteries soon."
    };
    let text = format!(
        "The battery of your lock \"{}\" is at {percent} % (below {crossed} %).\n{advice}",
        lock.name
    );
    notify_property(
        &tx,
        lock.tenant,
        lock.property,
        &Notice {
            kind: "lock.battery_low",
            // Once per crossing: a later discharge below the same threshold is a new event.
            event: format!("{}:{crossed}:{}", lock.id, now.timestamp()),
            subject: "firstkey: your lock's battery is low",
            text: &text,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Mails the homeowners of locks not seen for their period (the lock's, else the property's;
/// default 24 h), once per absence; see the module documentation. Returns how many locks it mailed
/// about.
pub async fn sweep_offline(pool: &Pool, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "WITH due AS (
               SELECT l.id FROM locks l JOIN properties p ON p.id = l.property_id
               WHERE l.pairing_state = 'paired' AND l.offline_alerted_at IS NULL AND l.last_seen_at IS NOT NULL
                 AND l.last_seen_at < $1::timestamptz
                     - make_interval(secs => coalesce(l.offline_after_seconds, p.offline_after_seconds))
               ORDER BY l.last_seen_at LIMIT $2 FOR UPDATE OF l SKIP LOCKED)
             UPDATE locks l SET offline_alerted_at = $1 FROM due WHERE l.id = due.id
             RETURNING l.id, l.municipality_id, l.property_id, l.name, l.last_seen_at",
            &[&now, &SWEEP_BATCH],
        )
        .await?;
    for row in &rows {
        let (lock, tenant, property, name, seen): (Uuid, Uuid, Uuid, String, DateTime<Utc>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let tenant = Tenant::assume(tenant);
        let event = Event::new("lock.offline", Outcome::Info)
            .subject("lock", lock)
            .property(property)
            .details(serde_json::json!({ "last_seen_at": seen }));
        audit::record(&tx, tenant, &event, now).await?;
        let text = format!(
            "Your lock \"{name}\" has not been in touch since {}. It still decides at the door on its \
             own, but changes (a revoked entry, new keys) cannot reach it until it is back online. \
             Please check its power and network.",
            seen.format("%Y-%m-%d %H:%M UTC")
        );
        notify_property(
            &tx,
            tenant,
            property,
            &Notice {
                kind: "lock.offline",
                event: format!("{lock}:{}", seen.timestamp()),
                subject: "firstkey: your lock is offline",
                text: &text,
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// Runs [`sweep_offline`] every `period` until the task is dropped, and in the same loop the
/// rotation of trusted parties' standing keypad codes (`codes::standing::issue_due`).
pub async fn run_offline_sweeper(
    pool: Pool,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    keypad_root: crate::codes::SecretRoot,
    period: std::time::Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_offline(&pool, clock.now()).await {
            tracing::warn!(error = %e, "offline sweep failed");
        }
        match crate::codes::standing::issue_due(&pool, &keypad_root, clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(codes = n, "standing keypad codes issued"),
            Err(e) => tracing::warn!(error = %e, "standing keypad code rotation failed"),
        }
        // The same minute also forgets token challenges that can no longer be answered.
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = crate::auth::proof::prune(&client, clock.now()).await {
                    tracing::warn!(error = %e, "pruning used token challenges failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning used token challenges: no connection"),
        }
    }
}

/// What dispatchers and responders see about a lock before relying on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LockHealth {
    /// The lock.
    pub lock: Uuid,
    /// Its name.
    pub name: String,
    /// Battery charge, percent, as last reported.
    pub battery_percent: Option<i16>,
    /// Battery voltage, millivolts, as last reported.
    pub battery_millivolts: Option<i32>,
    /// Days until the battery is flat at the recent rate of discharge (none without a trend).
    pub battery_days_left: Option<u32>,
    /// The recent changes of battery level (last 30 days, at most 10, oldest first).
    pub battery_trend: Vec<BatterySample>,
    /// When the lock was last in touch.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// After how many minutes out of touch the homeowner is mailed (the lock's own period, else
    /// the property's).
    pub offline_after_minutes: u32,
    /// Whether the lock has a period of its own (otherwise the property's applies).
    pub own_offline_period: bool,
    /// Plain-language warnings, most urgent first (empty when all is well).
    pub warnings: Vec<String>,
}

/// One change of battery level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BatterySample {
    /// When it was reported.
    pub at: DateTime<Utc>,
    /// The level, percent.
    pub percent: i16,
}

/// Days left from a history of (time, percent), newest last: the least-squares slope over the
/// samples; `None` without two samples or without a falling trend.
pub fn days_left(samples: &[(DateTime<Utc>, f64)]) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    if samples.len() < 2 {
        return None;
    }
    let n = f64::from(u32::try_from(samples.len()).ok()?);
    let xs: Vec<f64> = samples
        .iter()
        .map(|(t, _)| (*t - first.0).num_seconds() as f64 / 86_400.0)
        .collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = samples.iter().map(|(_, y)| y).sum::<f64>() / n;
    let mut num = 0.0;
    let mut den = 0.0;
    for (x, (_, y)) in xs.iter().zip(samples) {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den <= 0.0 {
        return None;
    }
    let slope = num / den;
    (slope < 0.0).then(|| (last.1 / -slope).max(0.0))
}

/// The warnings for one lock's state at `now`. `key_location` is where the plan says the physical
/// key or key box is, named in the critical-battery warning.
pub fn warnings(
    battery_percent: Option<i16>,
    last_seen_at: Option<DateTime<Utc>>,
    offline_after: Duration,
    key_location: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = battery_percent {
        if p <= i16::from(CRITICAL_PERCENT) {
            out.push(match key_location {
                Some(at) => format!(
                    "battery critical ({p} %) — bring a 9 V jump battery or use the key box at {at}"
                ),
                None => format!(
                    "battery critical ({p} %) — bring a 9 V jump battery; the plan names no key box"
                ),
            });
        } else if p <= 15 {
            out.push(format!("battery low ({p} %)"));
        }
    }
    if let Some(seen) = last_seen_at {
        let away = now - seen;
        if away > offline_after {
            let span = if away.num_days() >= 1 {
                format!("{} days", away.num_days())
            } else if away.num_hours() >= 1 {
                format!("{} hours", away.num_hours())
            } else {
                format!("{} minutes", away.num_minutes())
            };
            out.push(format!(
                "offline for {span} — the token still works at the door, the grant's revocation may not reach it"
            ));
        }
    }
    out
}

/// The columns [`health_of_row`] reads; `$3` is the time of the reading.
const HEALTH_COLUMNS: &str =
    "l.id, l.name, l.battery_percent, l.battery_millivolts, l.last_seen_at,
    coalesce(l.offline_after_seconds, p.offline_after_seconds), l.offline_after_seconds IS NOT NULL,
    l.battery_trend_at, l.battery_trend_percent,
    (SELECT ap.physical_key->>'location' FROM access_plans ap
      WHERE ap.property_id = l.property_id ORDER BY ap.version DESC LIMIT 1)";

/// The health of every lock of a property (at most 50), with warnings at `now`.
pub async fn of_property(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<LockHealth>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT {HEALTH_COLUMNS}
                 FROM locks l JOIN properties p ON p.id = l.property_id
                 WHERE l.municipality_id = $1 AND l.property_id = $2 AND l.pairing_state = 'paired'
                 ORDER BY l.name LIMIT 50"
            ),
            &[&tenant.id(), &property],
        )
        .await?;
    Ok(rows.iter().map(|r| health_of_row(r, now)).collect())
}

/// The health of one lock, with warnings at `now`.
pub async fn of_lock(
    client: &impl GenericClient,
    tenant: Tenant,
    lock: Uuid,
    now: DateTime<Utc>,
) -> Result<LockHealth, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {HEALTH_COLUMNS}
                 FROM locks l JOIN properties p ON p.id = l.property_id
                 WHERE l.municipality_id = $1 AND l.id = $2"
            ),
            &[&tenant.id(), &lock],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(health_of_row(&row, now))
}

fn health_of_row(r: &tokio_postgres::Row, now: DateTime<Utc>) -> LockHealth {
    let battery_percent: Option<i16> = r.get(2);
    let last_seen_at: Option<DateTime<Utc>> = r.get(4);
    let offline_secs: i32 = r.get(5);
    let offline_after = Duration::seconds(i64::from(offline_secs));
    let times: Vec<DateTime<Utc>> = r.get(7);
    let levels: Vec<i16> = r.get(8);
    let key_location: Option<String> = r.get(9);
    let recent: Vec<(DateTime<Utc>, i16)> = times
        .into_iter()
        .zip(levels)
        .filter(|(t, _)| *t > now - Duration::days(30))
        .collect();
    let samples: Vec<(DateTime<Utc>, f64)> =
        recent.iter().map(|(t, p)| (*t, f64::from(*p))).collect();
    LockHealth {
        lock: r.get(0),
        name: r.get(1),
        battery_percent,
        battery_millivolts: r.get(3),
        battery_days_left: days_left(&samples).map(|d| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let whole = d.floor().min(f64::from(u32::MAX)) as u32;
            whole
        }),
        battery_trend: recent
            .iter()
            .skip(recent.len().saturating_sub(10))
            .map(|(at, percent)| BatterySample {
                at: *at,
                percent: *percent,
            })
            .collect(),
        last_seen_at,
        offline_after_minutes: u32::try_from(offline_secs / 60).unwrap_or(0),
        own_offline_period: r.get(6),
        warnings: warnings(
            battery_percent,
            last_seen_at,
            offline_after,
            key_location.as_deref(),
            now,
        ),
    }
}

/// Sets after how many minutes out of touch the homeowner is mailed: for the whole property
/// (`lock: None`; `minutes` required), or for one of its locks (`minutes: None` goes back to the
/// property's). The caller has checked `minutes` with [`check_offline_minutes`] and authorized
/// `manage_locks`. Audited; a lock of another property is `NotFound`.
pub async fn set_offline_period(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    property: Uuid,
    lock: Option<Uuid>,
    minutes: Option<u32>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let seconds = minutes.map(|m| {
        i32::try_from(m.clamp(MIN_OFFLINE_MINUTES, MAX_OFFLINE_MINUTES) * 60).unwrap_or(i32::MAX)
    });
    let (updated, event) = match lock {
        None => {
            let seconds =
                seconds.unwrap_or(i32::try_from(DEFAULT_OFFLINE_MINUTES * 60).unwrap_or(86_400));
            let n = tx
                .execute(
                    "UPDATE properties SET offline_after_seconds = $3 WHERE municipality_id = $1 AND id = $2",
                    &[&tenant.id(), &property, &seconds],
                )
                .await?;
            (
                n,
                Event::new("property.offline_period_set", Outcome::Info)
                    .subject("property", property),
            )
        }
        Some(lock) => {
            let n = tx
                .execute(
                    "UPDATE locks SET offline_after_seconds = $4
                     WHERE municipality_id = $1 AND property_id = $2 AND id = $3",
                    &[&tenant.id(), &property, &lock, &seconds],
                )
                .await?;
            (
                n,
                Event::new("lock.offline_period_set", Outcome::Info).subject("lock", lock),
            )
        }
    };
    if updated != 1 {
        return Err(StoreError::NotFound);
    }
    let event = event
        .actor(actor)
        .property(property)
        .details(serde_json::json!({ "minutes": minutes }));
    audit::record(tx, tenant, &event, now).await?;
    Ok(())
}

/// Checks an offline period the homeowner typed, minutes; the error says the limits.
pub fn check_offline_minutes(minutes: u32) -> Result<u32, String> {
    if (MIN_OFFLINE_MINUTES..=MAX_OFFLINE_MINUTES).contains(&minutes) {
        Ok(minutes)
    } else {
        Err(format!(
            "minutes: {MIN_OFFLINE_MINUTES} to {MAX_OFFLINE_MINUTES} (10 minutes to 30 days)"
        ))
    }
}

/// The property's own offline period, minutes.
pub async fn property_offline_minutes(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<u32, StoreError> {
    let row = client
        .query_opt(
            "SELECT offline_after_seconds FROM properties WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &property],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(u32::try_from(row.get::<_, i32>(0) / 60).unwrap_or(DEFAULT_OFFLINE_MINUTES))
}

/// A lock whose trust bundle is behind its municipality's newest, or whose reported time floor is
/// far from the server's clock.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LockDrift {
    /// The lock.
    pub lock: Uuid,
    /// Its property.
    pub property: Uuid,
    /// Its name.
    pub name: String,
    /// The bundle version it reported (none before its first report).
    pub bundle_version: Option<i64>,
    /// The municipality's newest bundle version.
    pub latest_bundle_version: Option<i64>,
    /// The time floor it reported (Unix seconds).
    pub time_floor: Option<i64>,
    /// Seconds its floor is ahead of (positive) or behind (negative) the server's clock at its
    /// last report.
    pub floor_offset_seconds: Option<i64>,
    /// When it last reported.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Locks of the tenant whose bundle is behind or whose floor is more than `tolerance` away from the
/// server's clock at their last report (at most 500).
pub async fn drift(
    client: &impl GenericClient,
    tenant: Tenant,
    tolerance: Duration,
) -> Result<Vec<LockDrift>, StoreError> {
    let rows = client
        .query(
            "WITH latest AS (SELECT max(version) AS v FROM trust_bundles WHERE municipality_id = $1)
             SELECT l.id, l.property_id, l.name, l.trust_bundle_version, latest.v, l.time_floor,
                    (l.time_floor - extract(epoch FROM l.last_seen_at)::bigint), l.last_seen_at
             FROM locks l, latest
             WHERE l.municipality_id = $1 AND l.pairing_state = 'paired'
               AND ((latest.v IS NOT NULL AND coalesce(l.trust_bundle_version, 0) < latest.v)
                    OR abs(l.time_floor - extract(epoch FROM l.last_seen_at)::bigint) > $2)
             ORDER BY l.last_seen_at NULLS FIRST, l.id LIMIT 500",
            &[&tenant.id(), &tolerance.num_seconds()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LockDrift {
            lock: r.get(0),
            property: r.get(1),
            name: r.get(2),
            bundle_version: r.get(3),
            latest_bundle_version: r.get(4),
            time_floor: r.get(5),
            floor_offset_seconds: r.get(6),
            last_seen_at: r.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_pick_the_lowest_crossed() {
        assert_eq!(threshold_for(31), None);
        assert_eq!(threshold_for(30), Some(30));
        assert_eq!(threshold_for(16), Some(30));
        assert_eq!(threshold_for(15), Some(15));
        assert_eq!(threshold_for(5), Some(5));
        assert_eq!(threshold_for(0), Some(5));
    }

    #[test]
    fn days_left_follows_a_falling_trend_only() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let falling: Vec<_> = (0..5)
            .map(|d| (t0 + Duration::days(d), 50.0 - 2.0 * d as f64))
            .collect();
        let left = days_left(&falling).unwrap();
        assert!((left - 21.0).abs() < 1e-9, "{left}");
        let flat = vec![(t0, 40.0), (t0 + Duration::days(1), 40.0)];
        assert_eq!(days_left(&flat), None);
        assert_eq!(days_left(&falling[..1]), None);
    }

    #[test]
    fn warnings_name_a_critical_battery_and_a_long_absence() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let w = warnings(
            Some(4),
            Some(now - Duration::days(3)),
            Duration::hours(24),
            Some("the garage door, left"),
            now,
        );
        assert!(
            w[0].starts_with("battery critical (4 %)")
                && w[0].ends_with("use the key box at the garage door, left"),
            "{w:?}"
        );
        assert!(w[1].starts_with("offline for 3 days"), "{w:?}");
        let none = warnings(Some(3), None, Duration::hours(24), None, now);
        assert!(none[0].ends_with("the plan names no key box"), "{none:?}");
        assert!(warnings(Some(60), Some(now), Duration::hours(24), None, now).is_empty());
    }
}

//! Lock health: battery level and voltage with a history and a days-left estimate, the trust-bundle
//! version and time floor each lock reports, the homeowner's mails when a battery crosses 30, 15 or
//! 5 % and when a lock has not been seen for its period, and the warnings dispatchers and responders
//! see before relying on a lock.
//!
//! **Writes.** The channel calls [`record`] only when a report differs from the session's last one
//! (battery or bundle) or the status interval has passed, so an idle lock costs no write. A report
//! updates the lock's row (one row); a report whose battery level changed also appends one history
//! row. A threshold crossing additionally writes its mail and audit entry, once per crossing: the
//! lowest threshold mailed is kept on the lock and cleared only when the level climbs above 30 %.
//!
//! **Offline.** [`sweep_offline`] runs periodically in every replica. It claims due locks with
//! `FOR UPDATE SKIP LOCKED`, so replicas never mail the same lock twice, marks each mailed
//! (`offline_alerted_at`) and mails in the same transaction; the mark is cleared when the lock
//! reports again.

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
    // One statement: the lock's row, and a history row only when the level changed.
    let row = tx
        .query_one(
            "WITH old AS (SELECT battery_percent, battery_alert_level FROM locks WHERE id = $1),
             upd AS (
               UPDATE locks l SET last_seen_at = $2, battery_percent = coalesce($3, l.battery_percent),
                   battery_millivolts = coalesce($4, l.battery_millivolts),
                   trust_bundle_version = $5, time_floor = $6, offline_alerted_at = NULL,
                   battery_alert_level = CASE
                       WHEN $3::smallint IS NULL THEN l.battery_alert_level
                       WHEN $7::smallint IS NULL THEN NULL
                       ELSE LEAST(coalesce(l.battery_alert_level, 100::smallint), $7::smallint) END
               WHERE l.id = $1
               RETURNING l.battery_alert_level),
             hist AS (
               INSERT INTO lock_battery_history (lock_id, at, percent, millivolts)
               SELECT $1, $2, $3, $4 FROM old
               WHERE $3::smallint IS NOT NULL AND old.battery_percent IS DISTINCT FROM $3::smallint
               ON CONFLICT DO NOTHING
               RETURNING 1)
             SELECT old.battery_alert_level, (SELECT battery_alert_level FROM upd) FROM old",
            &[
                &lock.id,
                &now,
                &percent,
                &millivolts,
                &i64_of(report.bundle_version),
                &i64_of(report.time_floor),
                &level,
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

/// Mails the homeowners of locks not seen for their period (default 24 h), once per absence; see
/// the module documentation. Returns how many locks it mailed about.
pub async fn sweep_offline(pool: &Pool, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "WITH due AS (
               SELECT id FROM locks
               WHERE pairing_state = 'paired' AND offline_alerted_at IS NULL AND last_seen_at IS NOT NULL
                 AND last_seen_at < $1::timestamptz - make_interval(mins => offline_after_minutes)
               ORDER BY last_seen_at LIMIT $2 FOR UPDATE SKIP LOCKED)
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

/// Runs [`sweep_offline`] every `period` until the task is dropped.
pub async fn run_offline_sweeper(
    pool: Pool,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    period: std::time::Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_offline(&pool, clock.now()).await {
            tracing::warn!(error = %e, "offline sweep failed");
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
    /// When the lock was last in touch.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Plain-language warnings, most urgent first (empty when all is well).
    pub warnings: Vec<String>,
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

/// The warnings for one lock's state at `now`.
pub fn warnings(
    battery_percent: Option<i16>,
    last_seen_at: Option<DateTime<Utc>>,
    offline_after: Duration,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = battery_percent {
        if p <= i16::from(CRITICAL_PERCENT) {
            out.push(format!(
                "battery critical ({p} %) — bring a 9 V jump battery or use the physical key"
            ));
        } else if p <= 15 {
            out.push(format!("battery low ({p} %)"));
        }
    }
    if let Some(seen) = last_seen_at {
        let away = now - seen;
        if away > offline_after {
            let span = if away.num_days() >= 1 {
                format!("{} days", away.num_days())
            } else {
                format!("{} hours", away.num_hours())
            };
            out.push(format!(
                "offline for {span} — the token still works at the door, the grant's revocation may not reach it"
            ));
        }
    }
    out
}

/// The health of every lock of a property (at most 50), with warnings at `now`.
pub async fn of_property(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<LockHealth>, StoreError> {
    let rows = client
        .query(
            "SELECT l.id, l.name, l.battery_percent, l.battery_millivolts, l.last_seen_at, l.offline_after_minutes,
                    (SELECT array_agg(extract(epoch FROM h.at)::float8 ORDER BY h.at)
                       FROM (SELECT at FROM lock_battery_history WHERE lock_id = l.id AND at > $3::timestamptz - interval '30 days'
                             ORDER BY at DESC LIMIT 100) h),
                    (SELECT array_agg(h.percent::float8 ORDER BY h.at)
                       FROM (SELECT at, percent FROM lock_battery_history WHERE lock_id = l.id AND at > $3::timestamptz - interval '30 days'
                             ORDER BY at DESC LIMIT 100) h)
             FROM locks l WHERE l.municipality_id = $1 AND l.property_id = $2 AND l.pairing_state = 'paired'
             ORDER BY l.name LIMIT 50",
            &[&tenant.id(), &property, &now],
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
            "SELECT l.id, l.name, l.battery_percent, l.battery_millivolts, l.last_seen_at, l.offline_after_minutes,
                    (SELECT array_agg(extract(epoch FROM h.at)::float8 ORDER BY h.at)
                       FROM (SELECT at FROM lock_battery_history WHERE lock_id = l.id AND at > $3::timestamptz - interval '30 days'
                             ORDER BY at DESC LIMIT 100) h),
                    (SELECT array_agg(h.percent::float8 ORDER BY h.at)
                       FROM (SELECT at, percent FROM lock_battery_history WHERE lock_id = l.id AND at > $3::timestamptz - interval '30 days'
                             ORDER BY at DESC LIMIT 100) h)
             FROM locks l WHERE l.municipality_id = $1 AND l.id = $2",
            &[&tenant.id(), &lock, &now],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(health_of_row(&row, now))
}

fn health_of_row(r: &tokio_postgres::Row, now: DateTime<Utc>) -> LockHealth {
    let battery_percent: Option<i16> = r.get(2);
    let last_seen_at: Option<DateTime<Utc>> = r.get(4);
    let offline_after = Duration::minutes(i64::from(r.get::<_, i32>(5)));
    let times: Vec<f64> = r.get::<_, Option<Vec<f64>>>(6).unwrap_or_default();
    let levels: Vec<f64> = r.get::<_, Option<Vec<f64>>>(7).unwrap_or_default();
    let samples: Vec<(DateTime<Utc>, f64)> = times
        .iter()
        .zip(&levels)
        .filter_map(|(t, p)| {
            #[allow(clippy::cast_possible_truncation)]
            let secs = *t as i64;
            DateTime::from_timestamp(secs, 0).map(|t| (t, *p))
        })
        .collect();
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
        last_seen_at,
        warnings: warnings(battery_percent, last_seen_at, offline_after, now),
    }
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
            now,
        );
        assert!(w[0].starts_with("battery critical (4 %)"), "{w:?}");
        assert!(w[1].starts_with("offline for 3 days"), "{w:?}");
        assert!(warnings(Some(60), Some(now), Duration::hours(24), now).is_empty());
    }
}

//! Times on pages in the municipality's time zone, with the zone named ("2026-12-01 15:02 CET").
//!
//! A municipality keeps its IANA zone (`municipalities.time_zone`, set by its admins; UTC until
//! then). Every request runs inside [`scope`], which holds the zone for that request; the page
//! extractors ([`super::page::SignedIn`], [`super::page::Viewer`]) adopt the signed-in user's
//! municipality's zone as soon as they know who is looking, so every page formats with
//! [`when`] and reads typed times with [`parse_local`] without passing the zone around. Outside a
//! request (or before anyone is known) the zone is UTC. Each replica remembers a municipality's
//! zone for [`REMEMBER`]; a change made on another replica shows there within that time.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::store::{StoreError, Tenant};

tokio::task_local! {
    static ZONE: Cell<Tz>;
}

/// How long a replica trusts the zone it read for a municipality.
pub const REMEMBER: Duration = Duration::from_secs(30);

static KNOWN: LazyLock<Mutex<HashMap<Uuid, (Tz, Instant)>>> = LazyLock::new(Default::default);

/// Middleware: the request runs with its own zone, UTC until a page extractor adopts one.
pub async fn scope(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    ZONE.scope(Cell::new(Tz::UTC), next.call(req)).await
}

/// The zone of this request (UTC outside one).
pub fn current() -> Tz {
    ZONE.try_with(Cell::get).unwrap_or(Tz::UTC)
}

/// Makes `tenant`'s zone this request's (a connection is taken only when this replica does not
/// remember the zone).
pub async fn adopt(pool: &deadpool_postgres::Pool, tenant: Tenant) -> Result<(), StoreError> {
    let remembered = KNOWN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&tenant.id())
        .filter(|(_, at)| at.elapsed() < REMEMBER)
        .map(|(tz, _)| *tz);
    let tz = match remembered {
        Some(tz) => tz,
        None => {
            let tz = crate::municipal::zone_of(&pool.get().await?, tenant).await?;
            KNOWN
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(tenant.id(), (tz, Instant::now()));
            tz
        }
    };
    // Outside a request scope there is nothing to set (UTC stays).
    let _ = ZONE.try_with(|z| z.set(tz));
    Ok(())
}

/// Forgets what this replica remembered of `tenant`'s zone (after its admin changed it).
pub fn forget(tenant: Tenant) {
    KNOWN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&tenant.id());
}

/// A time as pages show it, to the minute, in this request's zone with its abbreviation.
pub fn when(at: DateTime<Utc>) -> String {
    at.with_timezone(&current())
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// A time to the second, as the audit log shows it.
pub fn when_seconds(at: DateTime<Utc>) -> String {
    at.with_timezone(&current())
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// The zone's name for labels ("times in Europe/Amsterdam").
pub fn name() -> &'static str {
    current().name()
}

/// A `datetime-local` value typed in this request's zone. A time the clocks skip is refused; a
/// time they pass twice is read as its first occurrence.
pub fn parse_local(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    let naive = NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M"))
        .map_err(|_| {
            format!(
                "{field}: a date and time like 2026-12-01T14:02 ({})",
                name()
            )
        })?;
    match current().from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
        LocalResult::None => Err(format!(
            "{field}: {trimmed} does not exist in {} (the clocks skip it)",
            name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn times_read_and_show_in_the_requests_zone() {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 14, 2, 0).unwrap();
        assert_eq!(when(at), "2026-12-01 14:02 UTC", "UTC outside a request");
        ZONE.scope(Cell::new(chrono_tz::Europe::Amsterdam), async {
            assert_eq!(when(at), "2026-12-01 15:02 CET");
            assert_eq!(when_seconds(at), "2026-12-01 15:02:00 CET");
            assert_eq!(parse_local("from", "2026-12-01T15:02"), Ok(at));
            // The spring-forward gap does not exist; the autumn hour is read as its first pass.
            assert!(parse_local("from", "2026-03-29T02:30").is_err());
            let first = parse_local("from", "2026-10-25T02:30").unwrap();
            assert_eq!(first, Utc.with_ymd_and_hms(2026, 10, 25, 0, 30, 0).unwrap());
            assert!(parse_local("from", "yesterday").is_err());
        })
        .await;
        use crate::municipal::parse_zone;
        assert_eq!(
            parse_zone(" Europe/Amsterdam "),
            Ok(chrono_tz::Europe::Amsterdam)
        );
        for bad in ["", "Mars/Olympus", "Europe/Amsterdam\0", &"x".repeat(65)] {
            assert!(parse_zone(bad).is_err(), "{bad:?}");
        }
    }
}

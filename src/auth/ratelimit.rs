//! Rate limits on signing in and signing up, kept in PostgreSQL (`auth_rate_limits`) so every replica
//! behind the load balancer counts against the same buckets. This module counts and decides; it does
//! not know HTTP (the handlers turn [`Decision::Limited`] into `429` with `Retry-After`).
//!
//! # The rule: slow attackers down, never lock a dispatcher out
//!
//! A WebAuthn assertion cannot be guessed, so these limits exist against floods (challenge and mail
//! spam, account enumeration), not password guessing. They are built so that an emergency is never
//! blocked by them:
//!
//! 1. **A valid assertion is never refused by a limit.** Limits are checked only when a ceremony
//!    *starts*; finishing one is never rate-limited.
//! 2. **Per client address** ([`SIGN_IN_PER_ADDRESS`] starts a minute, [`SIGN_UP_PER_ADDRESS`] sign-ups
//!    an hour): beyond it a start is answered `429` — *except* when the named account holds an active
//!    hardware security key (dispatchers, responders, admins, auditors). Their challenge is always
//!    issued, because a challenge is worthless without the physical key, and because a dispatch centre
//!    puts every console behind one address: a flood from that address must not stop a dispatcher.
//!    What such an account can be made to store is bounded instead: at most
//!    [`MAX_OPEN_CEREMONIES`] live ceremonies per user; older ones are dropped.
//! 3. **Per account** only *failures* count (a failed assertion, never a start or a success). After
//!    [`FREE_FAILURES`] failures in [`FAILURE_WINDOW`], the next start must wait an exponential backoff
//!    ([`backoff`]: 2 s, 4 s, … at most [`MAX_BACKOFF`]) after the latest failure — a slow-down, never
//!    a lock. A success clears the account's failures. Accounts with a hardware key are exempt from the
//!    wait as in rule 2 (their failures are still counted and audited).
//! 4. **Sign-up per e-mail address**: at most [`SIGN_UP_MAILS_PER_ADDRESS`] verification mails an hour;
//!    further requests are accepted but send nothing (no mail bombing, and nothing to enumerate).
//!
//! Client addresses come from `http::client_address`: the TCP peer address, or the forwarded address
//! when the peer is one of the `trusted_proxies`. Behind a proxy that is not configured as trusted,
//! everyone shares the proxy's address (safe by rule 2, coarser for homeowners).

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;

use crate::store::StoreError;

/// Sign-in starts per client address per minute before `429` (hardware-key accounts excepted).
pub const SIGN_IN_PER_ADDRESS: i32 = 30;
/// Sign-ups per client address per hour before `429`.
pub const SIGN_UP_PER_ADDRESS: i32 = 10;
/// Verification mails per e-mail address per hour.
pub const SIGN_UP_MAILS_PER_ADDRESS: i32 = 3;
/// Failed assertions of one account that cost nothing.
pub const FREE_FAILURES: i32 = 5;
/// How long failures are remembered.
pub const FAILURE_WINDOW: Duration = Duration::minutes(15);
/// The longest backoff after failures.
pub const MAX_BACKOFF: Duration = Duration::minutes(5);
/// Live ceremonies kept per user; starting another drops the oldest.
pub const MAX_OPEN_CEREMONIES: i64 = 5;

/// What a limit says about one more attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused for now; a retry after this many seconds may succeed.
    Limited {
        /// Seconds to wait, at least 1.
        retry_after: u64,
    },
}

/// Counts one hit on `bucket` in a fixed window of `window`; returns [`Decision::Limited`] once the
/// window holds more than `limit` hits. Runs as its own statement so the hit counts even when the
/// caller's work fails.
pub async fn hit(
    client: &impl GenericClient,
    bucket: &str,
    window: Duration,
    limit: i32,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO auth_rate_limits (bucket, window_start, hits, last_hit_at) VALUES ($1, $2, 1, $2)
             ON CONFLICT (bucket) DO UPDATE SET
                 hits = CASE WHEN auth_rate_limits.window_start <= $2 - make_interval(secs => $3) THEN 1 ELSE auth_rate_limits.hits + 1 END,
                 window_start = CASE WHEN auth_rate_limits.window_start <= $2 - make_interval(secs => $3) THEN $2
                                     ELSE auth_rate_limits.window_start END,
                 last_hit_at = $2
             RETURNING hits, window_start",
            &[&bucket, &now, &pg_seconds(window)],
        )
        .await?;
    let hits: i32 = row.get(0);
    let window_start: DateTime<Utc> = row.get(1);
    if hits > limit {
        Ok(Decision::Limited {
            retry_after: seconds_until(window_start + window, now),
        })
    } else {
        Ok(Decision::Allow)
    }
}

/// Records one failed assertion of the account `user`.
pub async fn record_failure(
    client: &impl GenericClient,
    user: uuid::Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    hit(client, &failure_bucket(user), FAILURE_WINDOW, i32::MAX, now).await?;
    Ok(())
}

/// Forgets the account's failures (after a successful sign-in).
pub async fn clear_failures(
    client: &impl GenericClient,
    user: uuid::Uuid,
) -> Result<(), StoreError> {
    client
        .execute(
            "DELETE FROM auth_rate_limits WHERE bucket = $1",
            &[&failure_bucket(user)],
        )
        .await?;
    Ok(())
}

/// Whether the account must wait before its next sign-in start (rule 3).
pub async fn failure_backoff(
    client: &impl GenericClient,
    user: uuid::Uuid,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    let row = client
        .query_opt(
            "SELECT hits, last_hit_at FROM auth_rate_limits WHERE bucket = $1 AND window_start > $2",
            &[&failure_bucket(user), &(now - FAILURE_WINDOW)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Decision::Allow);
    };
    let failures: i32 = row.get(0);
    let last: DateTime<Utc> = row.get(1);
    match backoff(failures) {
        Some(wait) if last + wait > now => Ok(Decision::Limited {
            retry_after: seconds_until(last + wait, now),
        }),
        _ => Ok(Decision::Allow),
    }
}

/// The wait after `failures` failures: none up to [`FREE_FAILURES`], then 2 s doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(failures: i32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES).filter(|n| *n > 0)?;
    let exponent = u32::try_from(over.min(16)).unwrap_or(16);
    Some(Duration::seconds(2i64.saturating_pow(exponent)).min(MAX_BACKOFF))
}

/// Drops buckets nobody has hit for a day (called opportunistically).
pub async fn prune(client: &impl GenericClient, now: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM auth_rate_limits WHERE last_hit_at < $1",
            &[&(now - Duration::days(1))],
        )
        .await?)
}

fn failure_bucket(user: uuid::Uuid) -> String {
    format!("sign_in:fail:{user}")
}

fn seconds_until(then: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((then - now).num_seconds())
        .unwrap_or(0)
        .max(1)
}

/// Whole seconds of a duration, as the `float8` that `make_interval(secs => …)` takes.
fn pg_seconds(d: Duration) -> f64 {
    // Windows are minutes to hours: far inside f64's exact integer range.
    d.num_seconds() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), None);
        assert_eq!(backoff(FREE_FAILURES), None);
        assert_eq!(backoff(FREE_FAILURES + 1), Some(Duration::seconds(2)));
        assert_eq!(backoff(FREE_FAILURES + 2), Some(Duration::seconds(4)));
        assert_eq!(backoff(FREE_FAILURES + 40), Some(MAX_BACKOFF));
    }
}

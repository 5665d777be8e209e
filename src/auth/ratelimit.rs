//! Rate limits on signing in and signing up, kept in PostgreSQL (`auth_rate_limits`) so every replica
//! behind the load balancer counts against the same buckets. This module counts and decides; it does
//! not know HTTP (the handlers turn [`Decision::Limited`] into `429` with `Retry-After`).
//!
//! # The rule: slow attackers down, never tell accounts apart, never lock a dispatcher out
//!
//! A WebAuthn assertion cannot be guessed, so these limits exist against floods (challenge and mail
//! spam), not password guessing. Every limit is decided by *who asks* (the client), never by *whom
//! they name*: a start for a dispatcher, a homeowner, a pending account or an address nobody holds is
//! counted and answered the same way, so the limits reveal nothing about accounts (the decoy
//! ceremonies of `signin` do the same for the answer itself). They are built so that an emergency is
//! never blocked by them:
//!
//! 1. **A valid assertion is never refused by a limit.** Limits are checked only when a ceremony
//!    *starts*; finishing one is never rate-limited.
//! 2. **Per client.** A *returning* client — one presenting a ceremony cookie this server issued
//!    within [`client::CLIENT_LIFETIME`](super::client::CLIENT_LIFETIME), e.g. a dispatch console
//!    that has signed in before — is counted on its own: [`SIGN_IN_PER_CLIENT`] starts a minute. A
//!    new client (no cookie, or one we did not issue) is counted per address:
//!    [`SIGN_IN_PER_ADDRESS`] starts a minute. Beyond either, the start is answered `429`. So a flood
//!    from a dispatch centre's shared address (every console behind one NAT) slows down new clients
//!    there, but not a console that holds its cookie: the flood cannot spend that console's budget.
//!    What a client can store is bounded too: at most [`MAX_OPEN_CEREMONIES`] live ceremonies per
//!    client (per session for step-ups); older ones of *that client* are dropped, nobody else's.
//! 3. **Failures per client.** A failed assertion counts against the client that presented it (its
//!    cookie) and its address. After [`FREE_FAILURES`] failures in [`FAILURE_WINDOW`], the next start
//!    of that client (a returning client's own count, a new client's address count) must wait an
//!    exponential backoff ([`backoff`]: 2 s, 4 s, … at most [`MAX_BACKOFF`]) after the latest
//!    failure — a slow-down, never a lock. A success clears them. Failing on purpose slows down only
//!    the one failing (and new clients at its address), never the account's holder elsewhere.
//! 4. **Sign-up per client address** ([`SIGN_UP_PER_ADDRESS`] an hour) and **per e-mail address**
//!    ([`SIGN_UP_MAILS_PER_ADDRESS`] verification mails an hour; further requests are accepted but
//!    send nothing: no mail bombing, and nothing to enumerate).
//!
//! Client addresses come from `http::client_address`: the TCP peer address, or the forwarded address
//! when the peer is one of the `trusted_proxies`. Behind a proxy that is not configured as trusted,
//! everyone shares the proxy's address (safe by rule 2, coarser for homeowners).

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;

use std::net::IpAddr;

use super::client::Binding;
use crate::store::StoreError;

/// Sign-in starts of new clients per client address per minute before `429`.
pub const SIGN_IN_PER_ADDRESS: i32 = 30;
/// Sign-in starts per returning client (ceremony cookie) per minute before `429`.
pub const SIGN_IN_PER_CLIENT: i32 = 10;
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
/// Live ceremonies kept per client (ceremony cookie, session or link); starting another drops that
/// client's oldest.
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

/// Who starts or finishes a sign-in, as the limits count them (rule 2).
#[derive(Debug, Clone, Copy)]
pub struct SignInClient {
    /// The TCP peer address, if known.
    pub address: Option<IpAddr>,
    /// The ceremony cookie's binding.
    pub binding: Binding,
    /// Whether the cookie is one this server issued (a returning client).
    pub returning: bool,
}

impl SignInClient {
    fn start_bucket(&self) -> Option<(String, i32)> {
        if self.returning {
            Some((
                format!("sign_in:client:{}", self.binding.hex()),
                SIGN_IN_PER_CLIENT,
            ))
        } else {
            self.address
                .map(|ip| (format!("sign_in:addr:{ip}"), SIGN_IN_PER_ADDRESS))
        }
    }

    fn client_failures(&self) -> String {
        format!("sign_in:fail:client:{}", self.binding.hex())
    }

    fn address_failures(&self) -> Option<String> {
        self.address.map(|ip| format!("sign_in:fail:addr:{ip}"))
    }

    /// The failure count that decides this client's next start.
    fn failures_deciding_start(&self) -> Option<String> {
        if self.returning {
            Some(self.client_failures())
        } else {
            self.address_failures()
        }
    }
}

/// Whether `who` may start a sign-in (rules 2 and 3); counts the start.
pub async fn sign_in_start(
    client: &impl GenericClient,
    who: &SignInClient,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    if let Some((bucket, limit)) = who.start_bucket() {
        let decision = hit(client, &bucket, Duration::minutes(1), limit, now).await?;
        if decision != Decision::Allow {
            return Ok(decision);
        }
    }
    match who.failures_deciding_start() {
        Some(bucket) => failure_backoff(client, &bucket, now).await,
        None => Ok(Decision::Allow),
    }
}

/// Records one failed sign-in assertion presented by `who`.
pub async fn record_sign_in_failure(
    client: &impl GenericClient,
    who: &SignInClient,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for bucket in std::iter::once(who.client_failures()).chain(who.address_failures()) {
        hit(client, &bucket, FAILURE_WINDOW, i32::MAX, now).await?;
    }
    Ok(())
}

/// Forgets the failures of `who` (after a successful sign-in).
pub async fn clear_sign_in_failures(
    client: &impl GenericClient,
    who: &SignInClient,
) -> Result<(), StoreError> {
    let buckets: Vec<String> = std::iter::once(who.client_failures())
        .chain(who.address_failures())
        .collect();
    client
        .execute(
            "DELETE FROM auth_rate_limits WHERE bucket = ANY($1)",
            &[&buckets],
        )
        .await?;
    Ok(())
}

/// Whether the failures counted in `bucket` make the next start wait (rule 3).
async fn failure_backoff(
    client: &impl GenericClient,
    bucket: &str,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    let row = client
        .query_opt(
            "SELECT hits, last_hit_at FROM auth_rate_limits WHERE bucket = $1 AND window_start > $2",
            &[&bucket, &(now - FAILURE_WINDOW)],
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

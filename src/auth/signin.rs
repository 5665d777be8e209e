//! Signing in and stepping up with an enrolled credential: start a ceremony (rate-limited as
//! `ratelimit` documents), finish it with an assertion, and get a session (sign-in) or a fresh step-up
//! on the current session. Every finish is audited, success and failure.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, Webauthn};

use super::accounts::SignedIn;
use super::error::AuthError;
use super::ratelimit::{self, Decision};
use super::session::{self, Actor};
use super::webauthn::{self as wa, CeremonyState, Challenge, Claimant, CredentialKind, Purpose};
use crate::audit::{self, Event, Outcome};
use crate::domain::{Email, Role, Slug};
use crate::store::{StoreError, Tenant, tenancy};

struct Account {
    tenant: Tenant,
    user: Uuid,
    active: bool,
    roles: Vec<Role>,
}

async fn account(
    client: &impl GenericClient,
    municipality: &Slug,
    email: &Email,
) -> Result<Option<Account>, AuthError> {
    let tenant = match tenancy::municipality_by_slug(client, municipality).await {
        Ok((tenant, _)) => tenant,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let row = client
        .query_opt(
            "SELECT u.id, u.status, ARRAY(SELECT role FROM user_roles r WHERE r.user_id = u.id ORDER BY role)
             FROM users u WHERE u.municipality_id = $1 AND lower(u.email) = lower($2)",
            &[&tenant.id(), &email.as_str()],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(row.map(|row| {
        let status: String = row.get(1);
        let roles: Vec<String> = row.get(2);
        Account {
            tenant,
            user: row.get(0),
            active: status == "active",
            roles: roles.iter().filter_map(|r| Role::parse(r).ok()).collect(),
        }
    }))
}

/// Starts a sign-in for the account `email` of `municipality`. Limits (see `ratelimit`): the client
/// address, unless the account holds an active hardware security key; the account's failure backoff,
/// with the same exception. An unknown, inactive or credential-less account fails like a bad
/// assertion would.
pub async fn start_sign_in(
    client: &impl GenericClient,
    rp: &Webauthn,
    municipality: &Slug,
    email: &Email,
    address: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<Challenge, AuthError> {
    let account = account(client, municipality, email).await?;
    let usable = match &account {
        Some(a) if a.active && !a.roles.is_empty() => {
            let kind = CredentialKind::for_roles(&a.roles);
            let credentials = wa::active_credentials(client, a.tenant, a.user, kind).await?;
            Some((a, kind, credentials))
        }
        _ => None,
    };
    let hardware_key = usable
        .as_ref()
        .is_some_and(|(_, kind, creds)| *kind == CredentialKind::SecurityKey && !creds.is_empty());
    if let Some(ip) = address {
        let bucket = format!("sign_in:addr:{ip}");
        let decision = ratelimit::hit(
            client,
            &bucket,
            Duration::minutes(1),
            ratelimit::SIGN_IN_PER_ADDRESS,
            now,
        )
        .await?;
        if let (Decision::Limited { retry_after }, false) = (decision, hardware_key) {
            return Err(AuthError::Limited { retry_after });
        }
    }
    let Some((account, kind, credentials)) = usable else {
        return Err(AuthError::AuthenticationFailed);
    };
    if !hardware_key
        && let Decision::Limited { retry_after } =
            ratelimit::failure_backoff(client, account.user, now).await?
    {
        return Err(AuthError::Limited { retry_after });
    }
    let Some((options, authenticating)) = wa::start_authentication(rp, kind, &credentials)? else {
        return Err(AuthError::AuthenticationFailed);
    };
    let state = CeremonyState::SignIn { authenticating };
    let ceremony = wa::store_ceremony(client, account.tenant, account.user, &state, now).await?;
    if now.timestamp() % 64 == 0 {
        // Opportunistic cleanup; no scheduler needed.
        ratelimit::prune(client, now).await?;
    }
    Ok(Challenge { ceremony, options })
}

/// Finishes a sign-in: the ceremony is used up, the assertion verified (and audited), and a session
/// created that starts stepped up with the credential used.
pub async fn finish_sign_in(
    client: &mut deadpool_postgres::Client,
    rp: &Webauthn,
    ceremony: Uuid,
    response: &PublicKeyCredential,
    now: DateTime<Utc>,
) -> Result<SignedIn, AuthError> {
    let taken = wa::take_ceremony(&*client, ceremony, now).await?;
    let CeremonyState::SignIn { authenticating } = taken.state else {
        return Err(AuthError::CeremonyInvalid);
    };
    let (tenant, user) = (taken.tenant, taken.user);
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let active = tx
        .query_opt(
            "SELECT 1 FROM users WHERE municipality_id = $1 AND id = $2 AND status = 'active'",
            &[&tenant.id(), &user],
        )
        .await
        .map_err(StoreError::from)?
        .is_some();
    if !active {
        let event = Event::new(Purpose::SignIn.action(), Outcome::Deny)
            .actor(user)
            .details(serde_json::json!({ "reason": "account_inactive" }));
        audit::record(&tx, tenant, &event, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Err(AuthError::AuthenticationFailed);
    }
    let verified = wa::verify_assertion(
        &tx,
        rp,
        Claimant {
            tenant,
            user,
            purpose: Purpose::SignIn,
        },
        &authenticating,
        response,
        now,
    )
    .await;
    let credential = match verified {
        Ok(credential) => credential,
        Err(e) => {
            tx.commit().await.map_err(StoreError::from)?;
            return Err(e);
        }
    };
    let (_, session) = session::create(&tx, tenant, user, Some(credential), now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(SignedIn {
        tenant,
        user,
        credential,
        session,
    })
}

/// Starts a step-up ceremony for the signed-in `actor` over their own credentials.
pub async fn start_step_up(
    client: &impl GenericClient,
    rp: &Webauthn,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Challenge, AuthError> {
    let kind = CredentialKind::for_roles(&actor.roles);
    let credentials = wa::active_credentials(client, actor.tenant, actor.user_id, kind).await?;
    let Some((options, authenticating)) = wa::start_authentication(rp, kind, &credentials)? else {
        return Err(AuthError::AuthenticationFailed);
    };
    let state = CeremonyState::StepUp {
        session: actor.session_id,
        authenticating,
    };
    let ceremony = wa::store_ceremony(client, actor.tenant, actor.user_id, &state, now).await?;
    Ok(Challenge { ceremony, options })
}

/// Finishes a step-up: the assertion must come from the same user, for a ceremony started by the same
/// session. Returns the credential used.
pub async fn finish_step_up(
    client: &mut deadpool_postgres::Client,
    rp: &Webauthn,
    actor: &Actor,
    ceremony: Uuid,
    response: &PublicKeyCredential,
    now: DateTime<Utc>,
) -> Result<Uuid, AuthError> {
    let taken = wa::take_ceremony(&*client, ceremony, now).await?;
    let CeremonyState::StepUp {
        session: started_by,
        authenticating,
    } = taken.state
    else {
        return Err(AuthError::CeremonyInvalid);
    };
    if started_by != actor.session_id || taken.user != actor.user_id || taken.tenant != actor.tenant
    {
        return Err(AuthError::CeremonyInvalid);
    }
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let verified = wa::verify_assertion(
        &tx,
        rp,
        Claimant {
            tenant: actor.tenant,
            user: actor.user_id,
            purpose: Purpose::StepUp,
        },
        &authenticating,
        response,
        now,
    )
    .await;
    let credential = match verified {
        Ok(credential) => credential,
        Err(e) => {
            tx.commit().await.map_err(StoreError::from)?;
            return Err(e);
        }
    };
    session::step_up(&tx, actor, credential, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(credential)
}

/// Ends the actor's session (audited).
pub async fn sign_out(
    client: &impl GenericClient,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    session::end(client, actor, now).await?;
    let event = Event::new("auth.sign_out", Outcome::Info).actor(actor.user_id);
    audit::record(client, actor.tenant, &event, now).await?;
    Ok(())
}

/// Ends every session of the actor (audited); returns how many ended.
pub async fn sign_out_everywhere(
    client: &impl GenericClient,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<u64, AuthError> {
    let ended = session::end_all(client, actor.tenant, actor.user_id, now).await?;
    let event = Event::new("auth.sign_out_everywhere", Outcome::Info)
        .actor(actor.user_id)
        .details(serde_json::json!({ "sessions_ended": ended }));
    audit::record(client, actor.tenant, &event, now).await?;
    Ok(ended)
}

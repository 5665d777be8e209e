//! Signing in and stepping up with an enrolled credential: start a ceremony (rate-limited as
//! `ratelimit` documents, bound to the client that started it as `client` documents), finish it with
//! an assertion, and get a session (sign-in) or a fresh step-up on the current session. Every finish
//! of a real ceremony is audited, success and failure. Sign-in answers every address alike: where
//! there is no usable account the ceremony is a decoy that no assertion finishes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, Webauthn};

use super::accounts::SignedIn;
use super::client::{AuthKeys, Binding};
use super::error::AuthError;
use super::ratelimit::{self, Decision, SignInClient};
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

/// Starts a sign-in for the account `email` of `municipality`, from the client `who` (its ceremony
/// cookie binds the ceremony; the limits of `ratelimit` count it). Every address is answered alike:
/// an account that is active with a credential gets a real challenge; an unknown, pending or
/// disabled account, one without a usable credential, or an unknown municipality gets a decoy of
/// the same shape whose credential ids are derived from the address under a server secret (the same
/// on every start), and whose finish fails as a wrong key does.
#[allow(clippy::too_many_arguments)]
pub async fn start_sign_in(
    client: &impl GenericClient,
    rp: &Webauthn,
    rp_id: &str,
    keys: &AuthKeys,
    municipality: &Slug,
    email: &Email,
    who: &SignInClient,
    now: DateTime<Utc>,
) -> Result<Challenge, AuthError> {
    if let Decision::Limited { retry_after } = ratelimit::sign_in_start(client, who, now).await? {
        return Err(AuthError::Limited { retry_after });
    }
    let account = account(client, municipality, email).await?;
    let mut real = None;
    if let Some(a) = account.as_ref().filter(|a| a.active && !a.roles.is_empty()) {
        let kind = CredentialKind::for_roles(&a.roles);
        let credentials = wa::active_credentials(client, a.tenant, a.user, kind).await?;
        if let Some((options, authenticating)) = wa::start_authentication(rp, kind, &credentials)? {
            real = Some((a.tenant, a.user, options, authenticating));
        }
    }
    let ceremony = match real {
        Some((tenant, user, options, authenticating)) => {
            let state = CeremonyState::SignIn { authenticating };
            let id =
                wa::store_ceremony(client, Some((tenant, Some(user))), &state, who.binding, now)
                    .await?;
            Challenge {
                ceremony: id,
                options,
            }
        }
        None => {
            let options = wa::decoy_request(rp_id, keys.decoy_credential_ids(municipality, email))?;
            let owner = account.as_ref().map(|a| (a.tenant, None));
            let id =
                wa::store_ceremony(client, owner, &CeremonyState::Decoy, who.binding, now).await?;
            Challenge {
                ceremony: id,
                options,
            }
        }
    };
    if now.timestamp() % 64 == 0 {
        // Opportunistic cleanup; no scheduler needed.
        ratelimit::prune(client, now).await?;
    }
    Ok(ceremony)
}

/// Finishes a sign-in presented by the client `who`: the ceremony (which must be bound to `who`'s
/// ceremony cookie) is used up, the assertion verified (and audited), and a session created that
/// starts stepped up with the credential used. A failure counts against `who`; a decoy fails as a
/// wrong key does.
pub async fn finish_sign_in(
    client: &mut deadpool_postgres::Client,
    rp: &Webauthn,
    who: &SignInClient,
    ceremony: Uuid,
    response: &PublicKeyCredential,
    now: DateTime<Utc>,
) -> Result<SignedIn, AuthError> {
    let taken = wa::take_ceremony(&*client, ceremony, Some(who.binding), now).await?;
    let owner = taken.owner();
    let authenticating = match taken.state {
        CeremonyState::SignIn { authenticating } => authenticating,
        CeremonyState::Decoy => {
            ratelimit::record_sign_in_failure(&*client, who, now).await?;
            return Err(AuthError::AuthenticationFailed);
        }
        _ => return Err(AuthError::CeremonyInvalid),
    };
    let (tenant, user) = owner?;
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
        ratelimit::record_sign_in_failure(&tx, who, now).await?;
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
        wa::Expected::Ceremony(&authenticating),
        response,
        now,
    )
    .await;
    let credential = match verified {
        Ok(credential) => credential,
        Err(e) => {
            ratelimit::record_sign_in_failure(&tx, who, now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Err(e);
        }
    };
    ratelimit::clear_sign_in_failures(&tx, who).await?;
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
    let ceremony = wa::store_ceremony(
        client,
        Some((actor.tenant, Some(actor.user_id))),
        &state,
        Binding::session(actor.session_id),
        now,
    )
    .await?;
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
    let taken = wa::take_ceremony(
        &*client,
        ceremony,
        Some(Binding::session(actor.session_id)),
        now,
    )
    .await?;
    let (tenant, user) = taken.owner()?;
    let CeremonyState::StepUp {
        session: started_by,
        authenticating,
    } = taken.state
    else {
        return Err(AuthError::CeremonyInvalid);
    };
    if started_by != actor.session_id || user != actor.user_id || tenant != actor.tenant {
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
        wa::Expected::Ceremony(&authenticating),
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

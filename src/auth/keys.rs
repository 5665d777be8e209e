//! "My security keys": every signed-in user lists, adds, names and removes their own WebAuthn
//! credentials (hardware security keys for staff, passkeys for homeowners).
//!
//! Adding is a registration ceremony bound to the session (as a step-up is), of the kind the user's
//! roles require (`CredentialKind::for_roles`: staff keys are attested, against the municipality's
//! CAs, and never synced). Adding and removing need a fresh step-up: a stolen session must neither
//! plant its own key nor take the owner's away. A removal never leaves the user without an active
//! key of their kind, ends the sessions the key opened or last stepped up, and keeps the row
//! (`status = 'removed'`: sessions and tokens refer to it). Adding, naming and removing are audited
//! in the transaction that does them; a key's name is the holder's own label and never goes into
//! the audit log or the server log.
//!
//! Every function takes the signed-in [`Actor`] and touches only that user's credentials: another
//! user's key id is [`AuthError::NotFound`], as an unknown one is.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;
use webauthn_rs::prelude::{AuthenticatorAttachment, RegisterPublicKeyCredential, Webauthn};

use super::accounts::{
    RegistrationRefusal, attestation_summary, credential_is_synced, kind_name,
    registration_format_refusal,
};
use super::client::Binding;
use super::error::AuthError;
use super::session::{self, Actor};
use super::webauthn::{self as wa, CeremonyState, Challenge, CredentialKind, Registering};
use crate::audit::{self, Event, Outcome};
use crate::domain::Text;
use crate::store::StoreError;

/// Longest key name, in characters.
pub const NAME_MAX: usize = 100;

/// One of the user's keys, as they see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecurityKey {
    /// Id of the key (the credential's row id, not the WebAuthn credential id).
    pub id: Uuid,
    /// The holder's name for it, if they gave one.
    pub name: Option<String>,
    /// Hardware security key or passkey.
    pub kind: CredentialKind,
    /// `active`, or `suspended` (its signature counter went back: it may have been cloned).
    pub status: String,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it last signed in or stepped up, if ever recorded.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether the current session last stepped up with it.
    pub current: bool,
}

/// The user's keys that were not removed, oldest first.
pub async fn list(
    client: &impl GenericClient,
    actor: &Actor,
) -> Result<Vec<SecurityKey>, AuthError> {
    let rows = client
        .query(
            "SELECT id, name, kind, status, created_at, last_used_at FROM webauthn_credentials
             WHERE municipality_id = $1 AND user_id = $2 AND status <> 'removed'
             ORDER BY created_at, id",
            &[&actor.tenant.id(), &actor.user_id],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let kind: String = r.get(2);
            SecurityKey {
                id,
                name: r.get(1),
                kind: if kind == "security_key" {
                    CredentialKind::SecurityKey
                } else {
                    CredentialKind::Passkey
                },
                status: r.get(3),
                created_at: r.get(4),
                last_used_at: r.get(5),
                current: actor.step_up_credential == Some(id),
            }
        })
        .collect())
}

/// Parses a key name: 1 to [`NAME_MAX`] characters, no control characters.
pub fn parse_name(input: &str) -> Result<Text, AuthError> {
    let name =
        Text::parse("name", input, NAME_MAX).map_err(|e| AuthError::Invalid(e.to_string()))?;
    if name.as_str().chars().any(char::is_control) {
        return Err(AuthError::Invalid("name: no control characters".to_owned()));
    }
    Ok(name)
}

/// Starts adding a key: creation options of the kind the user's roles require, excluding the
/// credentials they already have. Needs a fresh step-up.
pub async fn start_add(
    client: &impl GenericClient,
    rp: &Webauthn,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Challenge, AuthError> {
    if !actor.stepped_up(now) {
        return Err(AuthError::StepUpRequired);
    }
    let user = client
        .query_one(
            "SELECT email, display_name FROM users WHERE municipality_id = $1 AND id = $2",
            &[&actor.tenant.id(), &actor.user_id],
        )
        .await
        .map_err(StoreError::from)?;
    let (email, display_name): (String, String) = (user.get(0), user.get(1));
    let existing: Vec<Vec<u8>> = client
        .query(
            "SELECT credential_id FROM webauthn_credentials WHERE municipality_id = $1 AND user_id = $2",
            &[&actor.tenant.id(), &actor.user_id],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exclude = Some(existing);
    let configuration =
        |e: webauthn_rs::prelude::WebauthnError| AuthError::Configuration(e.to_string());
    let (options, registering) = match CredentialKind::for_roles(&actor.roles) {
        CredentialKind::SecurityKey => {
            let cas = wa::attestation_cas(client, actor.tenant).await?;
            let (ccr, state) = rp
                .start_attested_passkey_registration(
                    actor.user_id,
                    &email,
                    &display_name,
                    exclude,
                    cas,
                    Some(AuthenticatorAttachment::CrossPlatform),
                )
                .map_err(configuration)?;
            (serde_json::to_value(ccr)?, Registering::SecurityKey(state))
        }
        CredentialKind::Passkey => {
            let (ccr, state) = rp
                .start_passkey_registration(actor.user_id, &email, &display_name, exclude)
                .map_err(configuration)?;
            (serde_json::to_value(ccr)?, Registering::Passkey(state))
        }
    };
    let state = CeremonyState::AddKey {
        session: actor.session_id,
        registering,
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

/// Finishes adding a key started by this session: verifies the registration (as an enrolment
/// does), stores the credential with its name, audits. A refused registration is audited too. The
/// step-up must still be fresh.
pub async fn finish_add(
    client: &mut deadpool_postgres::Client,
    rp: &Webauthn,
    actor: &Actor,
    ceremony: Uuid,
    response: &RegisterPublicKeyCredential,
    name: Option<&Text>,
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
    let CeremonyState::AddKey {
        session,
        registering,
    } = taken.state
    else {
        return Err(AuthError::CeremonyInvalid);
    };
    if tenant != actor.tenant || user != actor.user_id || session != actor.session_id {
        return Err(AuthError::CeremonyInvalid);
    }
    if !actor.stepped_up(now) {
        return Err(AuthError::StepUpRequired);
    }
    let (kind, result) = match &registering {
        Registering::SecurityKey(state) => (
            CredentialKind::SecurityKey,
            rp.finish_attested_passkey_registration(response, state)
                .map(Into::into),
        ),
        Registering::Passkey(state) => (
            CredentialKind::Passkey,
            rp.finish_passkey_registration(response, state)
                .map(Into::into),
        ),
    };
    let result = match (registration_format_refusal(response), result) {
        (Some(refusal), _) => Err(refusal),
        (None, Ok(credential))
            if kind == CredentialKind::SecurityKey && credential_is_synced(&credential) =>
        {
            Err(RegistrationRefusal::Synced)
        }
        (None, Ok(credential)) => Ok(credential),
        (None, Err(e)) => {
            tracing::info!(error = %e, "key registration refused");
            Err(RegistrationRefusal::of(&e))
        }
    };
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let credential = match result {
        Ok(credential) => credential,
        Err(refusal) => {
            let event = Event::new("auth.key_add", Outcome::Deny)
                .actor(user)
                .details(serde_json::json!({ "reason": refusal.code(), "kind": kind_name(kind) }));
            audit::record(&tx, tenant, &event, now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Err(AuthError::EnrolmentRefused(refusal.detail()));
        }
    };
    let attestation_ca = match kind {
        CredentialKind::SecurityKey => Some(attestation_summary(&credential)),
        CredentialKind::Passkey => None,
    };
    let id = wa::insert_credential(
        &tx,
        tenant,
        user,
        kind,
        &credential,
        attestation_ca.as_deref(),
        now,
    )
    .await?;
    if let Some(name) = name {
        tx.execute(
            "UPDATE webauthn_credentials SET name = $3 WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &id, &name.as_str()],
        )
        .await
        .map_err(StoreError::from)?;
    }
    let event = Event::new("auth.key_add", Outcome::Allow)
        .actor(user)
        .subject("credential", id)
        .details(serde_json::json!({ "kind": kind_name(kind) }));
    audit::record(&tx, tenant, &event, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(id)
}

/// Names one of the user's keys (audited, without the name).
pub async fn rename(
    tx: &impl GenericClient,
    actor: &Actor,
    key: Uuid,
    name: &Text,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let changed = tx
        .execute(
            "UPDATE webauthn_credentials SET name = $4
             WHERE municipality_id = $1 AND user_id = $2 AND id = $3 AND status <> 'removed'",
            &[&actor.tenant.id(), &actor.user_id, &key, &name.as_str()],
        )
        .await
        .map_err(StoreError::from)?;
    if changed != 1 {
        return Err(AuthError::NotFound);
    }
    let event = Event::new("auth.key_rename", Outcome::Info)
        .actor(actor.user_id)
        .subject("credential", key);
    audit::record(tx, actor.tenant, &event, now).await?;
    Ok(())
}

/// What a removal took away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Sessions the key opened or last stepped up, ended.
    pub sessions_ended: u64,
}

/// Removes one of the user's keys, in a transaction of its own. Needs a fresh step-up; refuses
/// (and audits the refusal) when it is the user's last active key of the kind they sign in with.
/// The user's credential rows are locked first, so two removals at once cannot both pass the
/// check and leave none.
pub async fn remove(
    client: &mut deadpool_postgres::Client,
    actor: &Actor,
    key: Uuid,
    now: DateTime<Utc>,
) -> Result<Removed, AuthError> {
    if !actor.stepped_up(now) {
        return Err(AuthError::StepUpRequired);
    }
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let kind = CredentialKind::for_roles(&actor.roles);
    let rows = tx
        .query(
            "SELECT id, kind, status FROM webauthn_credentials
             WHERE municipality_id = $1 AND user_id = $2 AND status <> 'removed'
             ORDER BY id FOR UPDATE",
            &[&actor.tenant.id(), &actor.user_id],
        )
        .await
        .map_err(StoreError::from)?;
    let usable = |r: &tokio_postgres::Row| {
        r.get::<_, String>(2) == "active" && r.get::<_, String>(1) == kind_name(kind)
    };
    let Some(target) = rows.iter().find(|r| r.get::<_, Uuid>(0) == key) else {
        return Err(AuthError::NotFound);
    };
    let others_usable = rows
        .iter()
        .filter(|r| r.get::<_, Uuid>(0) != key)
        .any(usable);
    if usable(target) && !others_usable {
        let event = Event::new("auth.key_remove", Outcome::Deny)
            .actor(actor.user_id)
            .subject("credential", key)
            .details(serde_json::json!({ "reason": "last_key" }));
        audit::record(&tx, actor.tenant, &event, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Err(AuthError::Conflict(
            "this is your last key: add another one before removing it",
        ));
    }
    tx.execute(
        "UPDATE webauthn_credentials SET status = 'removed', removed_at = $3
         WHERE municipality_id = $1 AND id = $2",
        &[&actor.tenant.id(), &key, &now],
    )
    .await
    .map_err(StoreError::from)?;
    let sessions_ended = session::end_opened_with(&tx, actor.tenant, key, now).await?;
    let event = Event::new("auth.key_remove", Outcome::Allow)
        .actor(actor.user_id)
        .subject("credential", key)
        .details(serde_json::json!({ "sessions_ended": sessions_ended }));
    audit::record(&tx, actor.tenant, &event, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Removed { sessions_ended })
}

//! A homeowner deletes their own account (GDPR Art. 17; issue 10, item 9).
//!
//! What goes, in one transaction (a fault loses nothing and changes nothing):
//! - **the audit log's personal details** about each of their homes: every data key erased
//!   (`audit::personal::erase_property`, reason `account_deleted`), so the encrypted details in
//!   the log (the address, grant justifications, reveal reasons, contacts, trusted parties'
//!   names) can never be read again, while every entry, the chain, the tree, checkpoints and
//!   proofs verify exactly as before: no sealed row is updated or deleted;
//! - **the operational copies**: each home's address, the responder notes and contacts of every
//!   plan version (V34 lets a version's personal parts be erased once; its conditions stay, as
//!   past grants were decided under them), the justifications of its grants, its trusted
//!   parties (revoked, their tokens revoked at the locks, their labels erased, open invitations
//!   withdrawn), monitoring-account links and alarm rules; its locks are retired (no token can be
//!   issued for them again) and the home leaves dispatch search;
//! - **the account**: every session (deleted: signed out everywhere at once), every key
//!   (removed, its name, credential id and public key overwritten), pending verifications and
//!   ceremonies, its mail records; its address and name are overwritten and it is disabled for
//!   good (`deleted_at`). The row stays, pseudonymous, because entries and grants name it by id.
//!
//! Refused while entry to one of the homes is granted or awaiting approval (an emergency in
//! progress): the grant must end first. A mail to the address the account had confirms the
//! deletion; its delivery record (recipient, subject) is what remains of the address. The
//! deletion itself is audited (`account.delete`, counts only).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Actor;
use crate::audit::personal::{self, ERASED};
use crate::audit::{self, Event, Outcome};
use crate::domain::Email;
use crate::error::CoreError;
use crate::notify::{self, Mail};
use crate::store::StoreError;

/// What a deletion removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Deleted {
    /// Homes whose personal data was erased.
    pub homes: u64,
    /// Audit data keys destroyed (the log's personal details about those homes).
    pub audit_keys_erased: u64,
    /// Grant justifications overwritten.
    pub justifications_erased: u64,
    /// Plan versions whose notes and contacts were erased.
    pub plan_versions_erased: u64,
    /// Trusted parties revoked (and their labels erased).
    pub trusted_parties_revoked: u64,
    /// Override tokens revoked at the locks (trusted parties', remote opens).
    pub tokens_revoked: u64,
    /// Locks retired.
    pub locks_retired: u64,
    /// Sessions deleted.
    pub sessions_ended: u64,
    /// Security keys and passkeys removed.
    pub keys_removed: u64,
    /// Mail records deleted.
    pub mails_deleted: u64,
}

/// Why a deletion was refused.
const GRANT_IN_PROGRESS: &str = "Entry to one of your homes is granted or awaiting approval right \
    now. Your account can be deleted once that grant has ended.";

/// Deletes the signed-in homeowner's account in `tx` (see the module documentation). The caller
/// has checked a fresh step-up and asked the policy (`edit_plan`) for each of `homes`; `homes`
/// must be every live home the account owns (checked again here, under lock).
pub async fn delete_account(
    tx: &impl GenericClient,
    actor: &Actor,
    homes: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Deleted, CoreError> {
    let t = actor.tenant.id();
    let user = actor.user_id;
    let row = tx
        .query_opt(
            "SELECT email FROM users WHERE municipality_id = $1 AND id = $2 AND deleted_at IS NULL
             FOR UPDATE",
            &[&t, &user],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(CoreError::NotFound)?;
    let email: String = row.get(0);
    let mut owned: Vec<Uuid> = tx
        .query(
            "SELECT id FROM properties WHERE municipality_id = $1 AND owner_id = $2 AND deleted_at IS NULL
             ORDER BY id FOR UPDATE",
            &[&t, &user],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut asked = homes.to_vec();
    asked.sort_unstable();
    owned.sort_unstable();
    if asked != owned {
        // A home was added meanwhile, without the policy asked about it: start again.
        return Err(CoreError::Conflict(
            "Your homes changed while deleting; try again.".to_owned(),
        ));
    }
    let busy: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM grants WHERE municipality_id = $1 AND property_id = ANY($2)
                 AND (status = 'awaiting_approval' OR (status = 'live' AND ends_at > $3)))",
            &[&t, &owned, &now],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    if busy {
        return Err(CoreError::Conflict(GRANT_IN_PROGRESS.to_owned()));
    }
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut out = Deleted {
        homes: count(owned.len()),
        ..Deleted::default()
    };
    for &home in &owned {
        let erased =
            personal::erase_property(tx, actor.tenant, home, user, "account_deleted", now).await?;
        out.audit_keys_erased += erased.keys_erased;
        out.justifications_erased += erased.justifications_erased;
        out.plan_versions_erased += tx
            .execute(
                "UPDATE access_plans SET notes_ciphertext = NULL, notes_wrapped_key = NULL,
                     notes_kek_id = NULL, contacts = '[]'::jsonb, erased_at = $3
                 WHERE municipality_id = $1 AND property_id = $2 AND erased_at IS NULL",
                &[&t, &home, &now],
            )
            .await
            .map_err(StoreError::from)?;
        let parties = tx
            .query(
                "UPDATE trusted_parties SET status = 'revoked', revoked_at = coalesce(revoked_at, $3),
                     label = $4, label_erased_at = $3, updated_at = $3
                 WHERE municipality_id = $1 AND property_id = $2 AND label_erased_at IS NULL
                 RETURNING id, invitation_id",
                &[&t, &home, &now, &ERASED],
            )
            .await
            .map_err(StoreError::from)?;
        for p in &parties {
            let party: Uuid = p.get(0);
            let invitation: Uuid = p.get(1);
            out.tokens_revoked += count(
                crate::emergency::revoke_tokens_of_trusted_party(tx, actor.tenant, party, now)
                    .await?,
            );
            tx.execute(
                "UPDATE invitations SET revoked_at = $3
                 WHERE municipality_id = $1 AND id = $2 AND used_at IS NULL AND revoked_at IS NULL",
                &[&t, &invitation, &now],
            )
            .await
            .map_err(StoreError::from)?;
        }
        out.trusted_parties_revoked += count(parties.len());
        for sql in [
            "DELETE FROM monitoring_accounts WHERE municipality_id = $1 AND property_id = $2",
            "DELETE FROM alarm_rules WHERE municipality_id = $1 AND property_id = $2",
            // Registrations still waiting for their lock close: no lock pairs into a deleted home.
            "UPDATE lock_registrations SET state = 'cancelled', code_hash = NULL, closed_at = now()
             WHERE municipality_id = $1 AND property_id = $2 AND state = 'pending'",
        ] {
            tx.execute(sql, &[&t, &home])
                .await
                .map_err(StoreError::from)?;
        }
        out.locks_retired += tx
            .execute(
                "UPDATE locks SET pairing_state = 'retired'
                 WHERE municipality_id = $1 AND property_id = $2 AND pairing_state <> 'retired'",
                &[&t, &home],
            )
            .await
            .map_err(StoreError::from)?;
        tx.execute(
            "UPDATE properties SET address = $3, deleted_at = $4 WHERE municipality_id = $1 AND id = $2",
            &[&t, &home, &ERASED, &now],
        )
        .await
        .map_err(StoreError::from)?;
    }
    // Remote opens are minted to the homeowner as "responder".
    out.tokens_revoked +=
        count(crate::emergency::revoke_tokens_of_responder(tx, actor.tenant, user, now).await?);
    out.sessions_ended = tx
        .execute(
            "DELETE FROM sessions WHERE municipality_id = $1 AND user_id = $2",
            &[&t, &user],
        )
        .await
        .map_err(StoreError::from)?;
    // Tokens and grants refer to a key by its row, so the row stays; what identified the
    // authenticator (its credential id, public key, name) is overwritten.
    out.keys_removed = tx
        .execute(
            "UPDATE webauthn_credentials SET status = 'removed', removed_at = coalesce(removed_at, $3),
                 name = NULL, credential = '{}'::jsonb, public_key_cose = '\\x'::bytea,
                 credential_id = decode(md5(random()::text || id::text) || md5(id::text || random()::text), 'hex')
             WHERE municipality_id = $1 AND user_id = $2",
            &[&t, &user, &now],
        )
        .await
        .map_err(StoreError::from)?;
    for sql in [
        "DELETE FROM email_verifications WHERE municipality_id = $1 AND user_id = $2",
        "DELETE FROM webauthn_ceremonies WHERE municipality_id = $1 AND user_id = $2",
    ] {
        tx.execute(sql, &[&t, &user])
            .await
            .map_err(StoreError::from)?;
    }
    tx.execute(
        "UPDATE invitations SET revoked_at = $3
         WHERE municipality_id = $1 AND created_by = $2 AND used_at IS NULL AND revoked_at IS NULL",
        &[&t, &user, &now],
    )
    .await
    .map_err(StoreError::from)?;
    out.mails_deleted = tx
        .execute(
            "DELETE FROM notification_outbox WHERE municipality_id = $1 AND lower(recipient) = lower($2)",
            &[&t, &email],
        )
        .await
        .map_err(StoreError::from)?;
    tx.execute(
        "UPDATE users SET email = 'deleted-' || id::text || '@deleted.invalid', display_name = 'Deleted account',
             unit = NULL, status = 'disabled', disabled_at = coalesce(disabled_at, $3), deleted_at = $3
         WHERE municipality_id = $1 AND id = $2",
        &[&t, &user, &now],
    )
    .await
    .map_err(StoreError::from)?;
    let event = Event::new("account.delete", Outcome::Info)
        .actor(user)
        .subject("user", user)
        .details(serde_json::json!({
            "homes": out.homes,
            "audit_keys_erased": out.audit_keys_erased,
            "justifications_erased": out.justifications_erased,
            "plan_versions_erased": out.plan_versions_erased,
            "trusted_parties_revoked": out.trusted_parties_revoked,
            "tokens_revoked": out.tokens_revoked,
            "locks_retired": out.locks_retired,
            "sessions_ended": out.sessions_ended,
            "keys_removed": out.keys_removed,
            "mails_deleted": out.mails_deleted,
        }));
    audit::record(tx, actor.tenant, &event, now).await?;
    if let Ok(to) = Email::parse(&email) {
        notify::enqueue(tx, actor.tenant, &confirmation(user, to, &out), now).await?;
    }
    Ok(out)
}

/// The mail that confirms a deletion (no address, name or home in it).
fn confirmation(user: Uuid, to: Email, d: &Deleted) -> Mail {
    let homes = match d.homes {
        0 => "You had no homes registered.".to_owned(),
        1 => "The personal details of your home were erased: its address, the notes and contacts \
              of its access plan, the reasons given for entry, and the details in its access \
              history."
            .to_owned(),
        n => format!(
            "The personal details of your {n} homes were erased: their addresses, the notes and \
             contacts of their access plans, the reasons given for entry, and the details in \
             their access histories."
        ),
    };
    let text = format!(
        "Your firstkey account was deleted, as you asked.\n\n{homes}\n\nYour sessions and keys \
         were removed and your locks were disconnected from firstkey. The access history itself \
         stays, without your personal details, so that it can still be verified; nobody can read \
         those details again.\n\nIf you did not ask for this, contact your municipality.\n"
    );
    let html = format!(
        "<p>Your firstkey account was deleted, as you asked.</p><p>{}</p><p>Your sessions and keys \
         were removed and your locks were disconnected from firstkey. The access history itself \
         stays, without your personal details, so that it can still be verified; nobody can read \
         those details again.</p><p>If you did not ask for this, contact your municipality.</p>",
        notify::html_escape(&homes)
    );
    Mail {
        dedupe_key: format!("account.deleted:{user}"),
        kind: "account.deleted",
        to,
        subject: "Your firstkey account was deleted".to_owned(),
        text,
        html,
    }
}

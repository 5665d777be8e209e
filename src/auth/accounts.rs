//! Accounts: the bootstrap municipal admin, invitations of staff by an admin, homeowner sign-up with
//! e-mail verification, enrolment of the first credential through a one-time link, and disabling an
//! account.
//!
//! Every account starts `pending`. It becomes `active` only when its holder enrols a credential
//! through a one-time link: an invitation (staff: a hardware security key) or an e-mail verification
//! (homeowners: a passkey). Links carry a random secret; the database keeps only its SHA-256. Links
//! expire ([`INVITATION_LIFETIME`], [`VERIFICATION_LIFETIME`]) and are used once. Roles of an
//! invitation are granted when it is accepted, not when it is sent.
//!
//! Sign-in with an enrolled credential is `signin`'s; this module does not see HTTP.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webauthn_rs::prelude::{
    AuthenticatorAttachment, RegisterPublicKeyCredential, Webauthn, WebauthnError,
};

use super::client::Binding;
use super::error::AuthError;
use super::session::{self, Actor, SessionSecret};
use super::webauthn::{self as wa, CeremonyState, Challenge, CredentialKind, Registering, Ticket};
use crate::audit::{self, Event, Outcome};
use crate::domain::{Email, Role};
use crate::notify::{self, Mail};
use crate::settings::PublicOrigin;
use crate::store::people::{self, User};
use crate::store::{StoreError, Tenant, tenancy};

/// How long an invitation link can be used.
pub const INVITATION_LIFETIME: Duration = Duration::hours(72);
/// How long an e-mail verification link can be used.
pub const VERIFICATION_LIFETIME: Duration = Duration::hours(24);

/// The secret of a one-time link (invitation or e-mail verification). Never logged; it leaves the
/// server only in the mail (or, for the bootstrap admin, on the operator's terminal).
pub struct LinkSecret(String);

impl LinkSecret {
    fn new() -> Result<Self, StoreError> {
        session::random_secret(&SystemRandom::new(), 32).map(Self)
    }

    /// The raw secret, as the enrolment endpoints take it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The link of an invitation: the secret is in the fragment, so it never reaches a server log.
    pub fn invitation_url(&self, origin: &PublicOrigin) -> String {
        format!("{}/invitations/accept#{}", origin.as_str(), self.0)
    }

    /// The link of a trusted party's invitation: the same enrolment, on a page in their words.
    pub fn trusted_invitation_url(&self, origin: &PublicOrigin) -> String {
        format!("{}/trusted/accept#{}", origin.as_str(), self.0)
    }

    /// The link of an e-mail verification.
    pub fn verification_url(&self, origin: &PublicOrigin) -> String {
        format!("{}/accounts/verify#{}", origin.as_str(), self.0)
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

fn hash(secret: &str) -> Vec<u8> {
    digest(&SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// Creates (or finds) the pending account with `email`; a disabled account is refused.
async fn ensure_pending_user(
    tx: &impl GenericClient,
    tenant: Tenant,
    email: &Email,
    display_name: &str,
    now: DateTime<Utc>,
) -> Result<(Uuid, String), AuthError> {
    let name = crate::domain::Text::parse("display_name", display_name, 200)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let name = name.as_str();
    let row = tx
        .query_one(
            "INSERT INTO users (id, municipality_id, email, display_name, status, created_at)
             VALUES ($1, $2, $3, $4, 'pending', $5)
             ON CONFLICT (municipality_id, lower(email)) DO UPDATE SET display_name = users.display_name
             RETURNING id, status",
            &[&Uuid::new_v4(), &tenant.id(), &email.as_str(), &name, &now],
        )
        .await
        .map_err(crate::store::conflict_or_query)?;
    Ok((row.get(0), row.get(1)))
}

/// Creates the municipality's first admin account (pending) and a one-time invitation for it; the
/// operator hands the link to the admin, who enrols a hardware security key through it. Running it
/// again for the same address issues a fresh link (the recovery path for a lost key) that replaces
/// the earlier unused ones: only the newest link works.
pub async fn bootstrap_admin(
    tx: &impl GenericClient,
    tenant: Tenant,
    email: &Email,
    display_name: &str,
    now: DateTime<Utc>,
) -> Result<(User, LinkSecret), AuthError> {
    let (user, status) = ensure_pending_user(tx, tenant, email, display_name, now).await?;
    if status == "disabled" {
        return Err(AuthError::Conflict("the account is disabled"));
    }
    // Unused earlier bootstrap links of this address stop working (they carry no history: the
    // audit log has each bootstrap).
    tx.execute(
        "DELETE FROM invitations WHERE municipality_id = $1 AND lower(email) = lower($2)
             AND role = 'municipal_admin' AND used_at IS NULL",
        &[&tenant.id(), &email.as_str()],
    )
    .await
    .map_err(StoreError::from)?;
    let secret = LinkSecret::new()?;
    let invitation = Uuid::new_v4();
    tx.execute(
        "INSERT INTO invitations (id, municipality_id, agency_id, role, email, secret_hash, created_by,
             created_at, expires_at)
         VALUES ($1, $2, NULL, 'municipal_admin', $3, $4, $5, $6, $7)",
        &[&invitation, &tenant.id(), &email.as_str(), &hash(secret.expose()), &user, &now, &(now + INVITATION_LIFETIME)],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let event = Event::new("account.bootstrap_admin", Outcome::Info)
        .subject("invitation", invitation)
        .details(serde_json::json!({ "role": Role::MunicipalAdmin.as_str() }));
    audit::record(tx, tenant, &event, now).await?;
    Ok((people::user(tx, tenant, user).await?, secret))
}

/// An invitation to create.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewInvitation {
    /// The role to grant on acceptance (not `homeowner`: homeowners sign up themselves).
    pub role: Role,
    /// The agency, required for dispatchers and responders.
    pub agency_id: Option<Uuid>,
    /// Where the link is mailed.
    #[schema(value_type = crate::domain::Email)]
    pub email: String,
    /// The invitee's name as shown to colleagues, 1 to 200 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub display_name: String,
}

/// An invitation as the admin sees it (never with its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Invitation {
    /// Identifier.
    pub id: Uuid,
    /// The account it enrols.
    pub user_id: Uuid,
    /// The role granted on acceptance.
    pub role: Role,
    /// The agency.
    pub agency_id: Option<Uuid>,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// The mail that carries an invitation's link: subject and plain text, made from the link.
pub struct InvitationMail {
    /// Subject line.
    pub subject: String,
    /// Plain-text body (the HTML body is derived from it); must contain the link.
    pub text: String,
}

/// Invites a member of staff: a pending account, a one-time link mailed to them (through the outbox),
/// an audit entry. Returns the invitation and its link secret (the HTTP API does not return the
/// secret; operator tooling and tests may use it).
pub async fn invite(
    tx: &impl GenericClient,
    tenant: Tenant,
    inviter: Uuid,
    new: &NewInvitation,
    origin: &PublicOrigin,
    now: DateTime<Utc>,
) -> Result<(Invitation, LinkSecret), AuthError> {
    let role = new.role;
    invite_worded(tx, tenant, inviter, new, now, |secret| {
        let link = secret.invitation_url(origin);
        InvitationMail {
            subject: "firstkey: your invitation".to_owned(),
            text: format!(
                "You have been invited to firstkey as {role}.\n\nOpen this link within 72 hours and \
                 enrol your hardware security key:\n{link}\n\nIf you did not expect this, ignore this mail.",
                role = role.as_str()
            ),
        }
    })
    .await
}

/// [`invite`] with the caller's own mail, made from the link secret by `mail` (trusted parties get
/// theirs: who invited them, for which home, when).
pub async fn invite_worded(
    tx: &impl GenericClient,
    tenant: Tenant,
    inviter: Uuid,
    new: &NewInvitation,
    now: DateTime<Utc>,
    mail: impl FnOnce(&LinkSecret) -> InvitationMail,
) -> Result<(Invitation, LinkSecret), AuthError> {
    let email = Email::parse(&new.email).map_err(|e| AuthError::Invalid(e.to_string()))?;
    if new.role == Role::Homeowner {
        return Err(AuthError::Invalid(
            "role: homeowners sign up themselves".to_owned(),
        ));
    }
    let needs_agency = matches!(new.role, Role::Dispatcher | Role::Responder);
    match (needs_agency, new.agency_id) {
        (true, None) => {
            return Err(AuthError::Invalid(
                "agency_id: required for dispatchers and responders".to_owned(),
            ));
        }
        (_, Some(agency)) => {
            tenancy::agency(tx, tenant, agency)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => {
                        AuthError::Invalid("agency_id: no such agency".to_owned())
                    }
                    other => AuthError::Store(other),
                })?;
            let retired = crate::store::exists(
                tx,
                "SELECT 1 FROM agencies WHERE municipality_id = $1 AND id = $2 AND retired_at IS NOT NULL",
                &[&tenant.id(), &agency],
            )
            .await?;
            if retired {
                return Err(AuthError::Invalid(
                    "agency_id: the agency is retired".to_owned(),
                ));
            }
        }
        (false, None) => {}
    }
    let (user, status) = ensure_pending_user(tx, tenant, &email, &new.display_name, now).await?;
    if status == "disabled" {
        return Err(AuthError::Conflict("the account is disabled"));
    }
    let secret = LinkSecret::new()?;
    let invitation = Invitation {
        id: Uuid::new_v4(),
        user_id: user,
        role: new.role,
        agency_id: new.agency_id,
        expires_at: now + INVITATION_LIFETIME,
    };
    tx.execute(
        "INSERT INTO invitations (id, municipality_id, agency_id, role, email, secret_hash, created_by,
             created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &invitation.id,
            &tenant.id(),
            &new.agency_id,
            &new.role.as_str(),
            &email.as_str(),
            &hash(secret.expose()),
            &inviter,
            &now,
            &invitation.expires_at,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let InvitationMail { subject, text } = mail(&secret);
    let mail = Mail {
        dedupe_key: format!("invitation:{}", invitation.id),
        kind: "account.invitation",
        to: email,
        subject,
        html: format!(
            "<p>{}</p>",
            notify::html_escape(&text).replace('\n', "<br>")
        ),
        text,
    };
    notify::enqueue(tx, tenant, &mail, now).await?;
    let event = Event::new("account.invited", Outcome::Info)
        .actor(inviter)
        .subject("invitation", invitation.id)
        .details(serde_json::json!({ "role": new.role.as_str() }));
    audit::record(tx, tenant, &event, now).await?;
    Ok((invitation, secret))
}

/// Homeowner sign-up: a pending account and a verification link mailed through the outbox. Nothing
/// is sent for an address that already has an active or disabled account, or when `send_mail` is
/// false (the per-address mail limit), and the caller answers the same in every case, so the
/// endpoint reveals nothing about which addresses have accounts.
pub async fn sign_up(
    tx: &impl GenericClient,
    tenant: Tenant,
    email: &Email,
    display_name: &str,
    origin: &PublicOrigin,
    send_mail: bool,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let (user, status) = ensure_pending_user(tx, tenant, email, display_name, now).await?;
    if status != "pending" || !send_mail {
        return Ok(());
    }
    let secret = LinkSecret::new()?;
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO email_verifications (id, municipality_id, user_id, secret_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &tenant.id(), &user, &hash(secret.expose()), &now, &(now + VERIFICATION_LIFETIME)],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let link = secret.verification_url(origin);
    let text = format!(
        "Confirm your e-mail address for firstkey and create your passkey within 24 hours:\n{link}\n\n\
         If you did not sign up, ignore this mail."
    );
    let mail = Mail {
        dedupe_key: format!("verify_email:{id}"),
        kind: "account.verify_email",
        to: email.clone(),
        subject: "firstkey: confirm your e-mail address".to_owned(),
        html: format!(
            "<p>{}</p>",
            notify::html_escape(&text).replace('\n', "<br>")
        ),
        text,
    };
    notify::enqueue(tx, tenant, &mail, now).await?;
    let event = Event::new("account.sign_up", Outcome::Info).subject("user", user);
    audit::record(tx, tenant, &event, now).await?;
    Ok(())
}

/// Which kind of one-time link an enrolment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A staff invitation.
    Invitation,
    /// A homeowner's e-mail verification.
    EmailVerification,
}

struct Pending {
    ticket: Ticket,
    tenant: Tenant,
    user: Uuid,
    email: String,
    display_name: String,
    /// The kind of credential the account signs in with once the link is used: its roles with the
    /// invitation's (a trusted party, like a homeowner, a passkey; staff a security key).
    kind: CredentialKind,
}

async fn find_link(
    client: &impl GenericClient,
    kind: LinkKind,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Pending, AuthError> {
    let sql = match kind {
        LinkKind::Invitation => {
            "SELECT i.id, i.municipality_id, u.id, u.email, u.display_name,
                    ARRAY(SELECT r.role FROM user_roles r WHERE r.user_id = u.id) || i.role
             FROM invitations i
             JOIN users u ON u.municipality_id = i.municipality_id AND lower(u.email) = lower(i.email)
             WHERE i.secret_hash = $1 AND i.used_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > $2
               AND u.status <> 'disabled'"
        }
        LinkKind::EmailVerification => {
            "SELECT v.id, v.municipality_id, u.id, u.email, u.display_name,
                    ARRAY(SELECT r.role FROM user_roles r WHERE r.user_id = u.id) || 'homeowner'::text
             FROM email_verifications v
             JOIN users u ON u.municipality_id = v.municipality_id AND u.id = v.user_id
             WHERE v.secret_hash = $1 AND v.used_at IS NULL AND v.expires_at > $2 AND u.status <> 'disabled'"
        }
    };
    let row = client
        .query_opt(sql, &[&hash(secret), &now])
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::TicketInvalid)?;
    let id: Uuid = row.get(0);
    let roles: Vec<Role> = row
        .get::<_, Vec<String>>(5)
        .iter()
        .filter_map(|r| Role::parse(r).ok())
        .collect();
    Ok(Pending {
        kind: CredentialKind::for_roles(&roles),
        ticket: match kind {
            LinkKind::Invitation => Ticket::Invitation(id),
            LinkKind::EmailVerification => Ticket::EmailVerification(id),
        },
        tenant: Tenant::assume(row.get(1)),
        user: row.get(2),
        email: row.get(3),
        display_name: row.get(4),
    })
}

/// Starts enrolling a credential through a one-time link: a hardware security key for a staff
/// invitation (attestation checked against the municipality's CAs, user verification required,
/// synced credentials refused), a passkey for an e-mail verification and for a trusted party's
/// invitation (user verification required) — the kind the account then signs in with
/// ([`CredentialKind::for_roles`] of its roles and the invitation's). The link stays usable until
/// an enrolment through it succeeds.
pub async fn start_enrolment(
    client: &impl GenericClient,
    rp: &Webauthn,
    kind: LinkKind,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Challenge, AuthError> {
    let pending = find_link(client, kind, secret, now).await?;
    let existing: Vec<Vec<u8>> = client
        .query(
            "SELECT credential_id FROM webauthn_credentials WHERE municipality_id = $1 AND user_id = $2",
            &[&pending.tenant.id(), &pending.user],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exclude = Some(existing);
    let (options, registering) = match pending.kind {
        CredentialKind::SecurityKey => {
            let cas = wa::attestation_cas(client, pending.tenant).await?;
            let (ccr, state) = rp
                .start_attested_passkey_registration(
                    pending.user,
                    &pending.email,
                    &pending.display_name,
                    exclude,
                    cas,
                    Some(AuthenticatorAttachment::CrossPlatform),
                )
                .map_err(|e| AuthError::Configuration(e.to_string()))?;
            let mut options = serde_json::to_value(ccr)?;
            // In a demo municipality, or one that pins a test-only attestation key, credProtect is
            // asked for but not enforced by the client: Chromium's virtual authenticator, which
            // test configurations pin, cannot apply it. A pin for a real batch key keeps it
            // enforced. User verification stays required and is checked on the registration.
            if super::pins::trust(client, pending.tenant)
                .await?
                .relaxes_cred_protect()
                && let Some(extensions) = options
                    .pointer_mut("/publicKey/extensions")
                    .and_then(serde_json::Value::as_object_mut)
            {
                extensions.insert(
                    "enforceCredentialProtectionPolicy".to_owned(),
                    serde_json::Value::Bool(false),
                );
            }
            (options, Registering::SecurityKey(state))
        }
        // Homeowners and trusted parties: a passkey (any authenticator, user verification
        // required, as webauthn-rs's passkey ceremony always asks and checks).
        CredentialKind::Passkey => {
            let (ccr, state) = rp
                .start_passkey_registration(
                    pending.user,
                    &pending.email,
                    &pending.display_name,
                    exclude,
                )
                .map_err(|e| AuthError::Configuration(e.to_string()))?;
            (serde_json::to_value(ccr)?, Registering::Passkey(state))
        }
    };
    let state = CeremonyState::Enrol {
        ticket: pending.ticket,
        registering,
    };
    let link = match pending.ticket {
        Ticket::Invitation(id) | Ticket::EmailVerification(id) => id,
    };
    let ceremony = wa::store_ceremony(
        client,
        Some((pending.tenant, Some(pending.user))),
        &state,
        Binding::link(link),
        now,
    )
    .await?;
    Ok(Challenge { ceremony, options })
}

/// A signed-in user: the new session's secret goes into the cookie.
#[derive(Debug)]
pub struct SignedIn {
    /// Municipality.
    pub tenant: Tenant,
    /// User.
    pub user: Uuid,
    /// The credential that signed in (the session starts stepped up with it).
    pub credential: Uuid,
    /// The session's secret.
    pub session: SessionSecret,
}

/// Why a registration was refused: a small closed set, each naming the check that failed. The
/// client learns which check, never more (no certificate, no key material): everything named here
/// is about the response the client itself sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationRefusal {
    /// `clientDataJSON.origin` is not this server's origin (or the call was cross-origin).
    Origin,
    /// The authenticator data's RP id hash is not this server's RP id.
    RpId,
    /// The response answers another challenge (or a ceremony that no longer exists).
    Challenge,
    /// `clientDataJSON.type` is not `webauthn.create`.
    CeremonyType,
    /// The credential's JSON is malformed: `type` is not `public-key`, `id` is not `rawId`, or it
    /// does not parse.
    CredentialFormat,
    /// The attestation is missing, does not verify, or is not from a CA the municipality trusts.
    Attestation,
    /// The authenticator did not verify its user.
    UserVerification,
    /// The authenticator did not see the user present.
    UserPresence,
    /// A synced (backup-eligible) credential where a hardware security key is required.
    Synced,
    /// The key type or algorithm is not accepted.
    Algorithm,
    /// The authenticator is already enrolled.
    AlreadyEnrolled,
    /// Any other reason the registration did not verify.
    NotVerified,
}

impl RegistrationRefusal {
    /// The reason code (for the audit log, and the start of the problem detail).
    pub fn code(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::RpId => "rp_id",
            Self::Challenge => "challenge",
            Self::CeremonyType => "ceremony_type",
            Self::CredentialFormat => "credential_format",
            Self::Attestation => "attestation",
            Self::UserVerification => "user_verification",
            Self::UserPresence => "user_presence",
            Self::Synced => "synced",
            Self::Algorithm => "algorithm",
            Self::AlreadyEnrolled => "already_enrolled",
            Self::NotVerified => "not_verified",
        }
    }

    /// The problem detail: `<code>: <what failed>`.
    pub fn detail(self) -> &'static str {
        match self {
            Self::Origin => "origin: the response was made for another origin than this server's",
            Self::RpId => "rp_id: the authenticator signed for another relying party id",
            Self::Challenge => {
                "challenge: the response answers another challenge; start the enrolment again"
            }
            Self::CeremonyType => "ceremony_type: the response is not a registration",
            Self::CredentialFormat => {
                "credential_format: the credential is malformed (type must be public-key, id must equal rawId)"
            }
            Self::Attestation => {
                "attestation: the security key's attestation is not from a manufacturer this municipality trusts"
            }
            Self::UserVerification => "user_verification: user verification is required",
            Self::UserPresence => "user_presence: the authenticator did not confirm user presence",
            Self::Synced => {
                "synced: synced (backup-eligible) credentials are not accepted; use a hardware security key"
            }
            Self::Algorithm => "algorithm: the credential's key type or algorithm is not accepted",
            Self::AlreadyEnrolled => "already_enrolled: this authenticator is already enrolled",
            Self::NotVerified => "not_verified: the registration did not verify",
        }
    }

    /// The reason for one of webauthn-rs's errors.
    pub fn of(e: &WebauthnError) -> Self {
        use WebauthnError as E;
        match e {
            E::InvalidRPOrigin | E::CredentialCrossOrigin => Self::Origin,
            E::InvalidRPIDHash => Self::RpId,
            E::MismatchedChallenge | E::ChallengeNotFound => Self::Challenge,
            E::InvalidClientDataType => Self::CeremonyType,
            E::UserNotVerified | E::InconsistentUserVerificationPolicy => Self::UserVerification,
            E::UserNotPresent => Self::UserPresence,
            E::CredentialMayNotBeHardwareBound | E::CredentialBackupEligibilityInconsistent => {
                Self::Synced
            }
            E::CredentialExcludedFromRequest | E::CredentialAlreadyExists => Self::AlreadyEnrolled,
            E::CredentialAlteredAlgFromRequest
            | E::CredentialInsecureCryptography
            | E::COSEKeyInvalidCBORValue
            | E::COSEKeyInvalidType
            | E::COSEKeyEDUnsupported
            | E::COSEKeyECDSAXYInvalid
            | E::COSEKeyRSANEInvalid
            | E::COSEKeyECDSAInvalidCurve
            | E::COSEKeyEDDSAXInvalid
            | E::COSEKeyEDDSAInvalidCurve
            | E::COSEKeyInvalidAlgorithm => Self::Algorithm,
            E::ParseBase64Failure(_)
            | E::ParseCBORFailure(_)
            | E::ParseJSONFailure(_)
            | E::ParseNOMFailure
            | E::ParseInsufficientBytesAvailable => Self::CredentialFormat,
            E::MissingAttestationCredentialData
            | E::AttestationNotSupported
            | E::AttestationStatementMapInvalid
            | E::AttestationStatementResponseMissing
            | E::AttestationStatementResponseInvalid
            | E::AttestationStatementSigMissing
            | E::AttestationStatementSigInvalid
            | E::AttestationStatementVerMissing
            | E::AttestationStatementVerInvalid
            | E::AttestationStatementVerUnsupported
            | E::AttestationStatementX5CMissing
            | E::AttestationStatementX5CInvalid
            | E::AttestationStatementAlgMissing
            | E::AttestationStatementCertInfoMissing
            | E::AttestationStatementMissingExtension
            | E::AttestationStatementPubAreaMissing
            | E::AttestationStatementAlgMismatch
            | E::AttestationStatementAlgInvalid
            | E::AttestationTrustFailure
            | E::AttestationCertificateAAGUIDMismatch
            | E::AttestationCertificateNonceMismatch
            | E::AttestationTpmStInvalid
            | E::AttestationTpmPubAreaMismatch
            | E::AttestationTpmExtraDataInvalid
            | E::AttestationTpmExtraDataMismatch
            | E::AttestationTpmPubAreaHashUnknown
            | E::AttestationTpmPubAreaHashInvalid
            | E::AttestationTpmAttestCertifyInvalid
            | E::AttestationCertificateRequirementsNotMet
            | E::AttestationCertificateTrustStoreEmpty
            | E::AttestationLeafCertMissing
            | E::AttestationNotVerifiable
            | E::AttestationUntrustedAaguid
            | E::AttestationFormatMissingAaguid
            | E::AttestationChainNotTrusted(_)
            | E::AttestationCredentialSubjectKeyMismatch
            | E::MissingAttestationCaList
            | E::CertificatePublicKeyInvalid
            | E::CertificatePublicKeyAlgorthimMismatch
            | E::X509DerInvalid => Self::Attestation,
            _ => Self::NotVerified,
        }
    }
}

/// What webauthn-rs leaves to the relying party about a registration's JSON.
pub(crate) fn registration_format_refusal(
    response: &RegisterPublicKeyCredential,
) -> Option<RegistrationRefusal> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let id_is_raw_id = response.id == URL_SAFE_NO_PAD.encode(response.raw_id.as_slice());
    (response.type_ != "public-key" || !id_is_raw_id)
        .then_some(RegistrationRefusal::CredentialFormat)
}

/// Finishes an enrolment: verifies the registration, uses up the link, activates the account, grants
/// the invitation's role, stores the credential, audits, and signs the user in. A refused
/// registration is audited and leaves the link usable; the ceremony is used up either way.
pub async fn finish_enrolment(
    client: &mut deadpool_postgres::Client,
    rp: &Webauthn,
    ceremony: Uuid,
    response: &RegisterPublicKeyCredential,
    now: DateTime<Utc>,
) -> Result<SignedIn, AuthError> {
    let taken = wa::take_ceremony(&*client, ceremony, None, now).await?;
    let (tenant, user) = taken.owner()?;
    let CeremonyState::Enrol {
        ticket,
        registering,
    } = taken.state
    else {
        return Err(AuthError::CeremonyInvalid);
    };
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let format_refused = registration_format_refusal(response);
    let mut admitted = None;
    let (kind, result) = match &registering {
        Registering::SecurityKey(state) => {
            let by_ca_list = rp
                .finish_attested_passkey_registration(response, state)
                .map(Into::into);
            let result = match by_ca_list {
                // Not from a CA the municipality trusts: a pinned attestation key, or the demo
                // municipality's mode without attestation, may still admit it.
                Err(e) if RegistrationRefusal::of(&e) == RegistrationRefusal::Attestation => {
                    let trust = super::pins::trust(&tx, tenant).await?;
                    match super::pins::finish_beyond_ca_list(rp, response, state, &trust) {
                        Ok(Some((credential, how))) => {
                            admitted = Some(how);
                            Ok(credential)
                        }
                        Ok(None) => Err(e),
                        Err(other) => Err(other),
                    }
                }
                other => other,
            };
            (CredentialKind::SecurityKey, result)
        }
        Registering::Passkey(state) => (
            CredentialKind::Passkey,
            rp.finish_passkey_registration(response, state)
                .map(Into::into),
        ),
    };
    let result = match (format_refused, result) {
        (Some(refusal), _) => Err(refusal),
        (None, Ok(credential))
            if kind == CredentialKind::SecurityKey && credential_is_synced(&credential) =>
        {
            Err(RegistrationRefusal::Synced)
        }
        (None, Ok(credential)) => Ok(credential),
        (None, Err(e)) => {
            tracing::info!(error = %e, "registration refused");
            Err(RegistrationRefusal::of(&e))
        }
    };
    let credential = match result {
        Ok(credential) => credential,
        Err(refusal) => {
            let event = Event::new("auth.enrol", Outcome::Deny)
                .actor(user)
                .details(serde_json::json!({ "reason": refusal.code(), "kind": kind_name(kind) }));
            audit::record(&tx, tenant, &event, now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Err(AuthError::EnrolmentRefused(refusal.detail()));
        }
    };
    let invitation_id = match ticket {
        Ticket::Invitation(id) => Some(id),
        Ticket::EmailVerification(_) => None,
    };
    let (role, agency): (Option<Role>, Option<Uuid>) = match ticket {
        Ticket::Invitation(id) => {
            let row = tx
                .query_opt(
                    "UPDATE invitations SET used_at = $3
                     WHERE municipality_id = $1 AND id = $2 AND used_at IS NULL AND revoked_at IS NULL
                       AND expires_at > $3
                     RETURNING role, agency_id",
                    &[&tenant.id(), &id, &now],
                )
                .await
                .map_err(StoreError::from)?
                .ok_or(AuthError::TicketInvalid)?;
            let role = Role::parse(row.get::<_, &str>(0))
                .map_err(|e| AuthError::Invalid(e.to_string()))?;
            (Some(role), row.get(1))
        }
        Ticket::EmailVerification(id) => {
            tx.query_opt(
                "UPDATE email_verifications SET used_at = $3
                 WHERE municipality_id = $1 AND id = $2 AND used_at IS NULL AND expires_at > $3 RETURNING id",
                &[&tenant.id(), &id, &now],
            )
            .await
            .map_err(StoreError::from)?
            .ok_or(AuthError::TicketInvalid)?;
            (Some(Role::Homeowner), None)
        }
    };
    let activated = tx
        .execute(
            "UPDATE users SET status = 'active', email_verified_at = coalesce(email_verified_at, $3),
                 agency_id = coalesce($4, agency_id)
             WHERE municipality_id = $1 AND id = $2 AND status <> 'disabled'",
            &[&tenant.id(), &user, &now, &agency],
        )
        .await
        .map_err(StoreError::from)?;
    if activated != 1 {
        return Err(AuthError::TicketInvalid);
    }
    if let Some(role) = role {
        tx.execute(
            "INSERT INTO user_roles (municipality_id, user_id, role, granted_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&tenant.id(), &user, &role.as_str(), &now],
        )
        .await
        .map_err(StoreError::from)?;
    }
    if role == Some(Role::TrustedParty)
        && let Some(invitation) = invitation_id
    {
        crate::trusted::accept(&tx, tenant, invitation, user, now).await?;
    }
    let attestation_ca = match kind {
        CredentialKind::SecurityKey => Some(match &admitted {
            Some(how) => how.summary(),
            None => attestation_summary(&credential),
        }),
        CredentialKind::Passkey => None,
    };
    let credential_id = wa::insert_credential(
        &tx,
        tenant,
        user,
        kind,
        &credential,
        attestation_ca.as_deref(),
        now,
    )
    .await?;
    let event = Event::new("auth.enrol", Outcome::Allow)
        .actor(user)
        .subject("credential", credential_id)
        .details(serde_json::json!({
            "kind": kind_name(kind),
            "role": role.map(Role::as_str),
            "attestation": admitted.as_ref().map(super::pins::Admitted::summary),
        }));
    audit::record(&tx, tenant, &event, now).await?;
    let (_, session) = session::create(&tx, tenant, user, Some(credential_id), now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(SignedIn {
        tenant,
        user,
        credential: credential_id,
        session,
    })
}

pub(crate) fn credential_is_synced(credential: &webauthn_rs::prelude::Credential) -> bool {
    credential.backup_eligible || credential.backup_state
}

pub(crate) fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::SecurityKey => "security_key",
        CredentialKind::Passkey => "passkey",
    }
}

/// What the attestation said about the device, for the `attestation_ca` column (no personal data).
pub(crate) fn attestation_summary(credential: &webauthn_rs::prelude::Credential) -> String {
    use webauthn_rs::prelude::AttestationMetadata;
    match &credential.attestation.metadata {
        AttestationMetadata::Packed { aaguid } | AttestationMetadata::Tpm { aaguid, .. } => {
            format!("{:?} aaguid {aaguid}", credential.attestation_format)
        }
        _ => format!("{:?}", credential.attestation_format),
    }
}

/// What disabling an account took away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disabled {
    /// Sessions ended.
    pub sessions_ended: u64,
    /// Open invitations it had sent, revoked.
    pub invitations_revoked: u64,
    /// Grants naming it as responder that ended (no other active responder left in them).
    pub grants_ended: usize,
    /// Its override tokens revoked, at the locks too.
    pub tokens_revoked: usize,
}

/// An admin disables an account of their municipality, in the caller's transaction: status
/// `disabled`; every session ended at once (the session check reads the status on every request
/// too); the open invitations it sent revoked (an invitee of a disabled admin cannot become one);
/// the grants naming it as responder ended where nobody else active is named, and its own override
/// tokens revoked, with revocations queued to the locks' inboxes as grant revocation does
/// (`emergency::grants::end_for_disabled_responder`); an audit entry. The caller has asked the policy
/// first (`municipal::authorize` with `Intent::Change`: the JSON and HTML faces both do); an account
/// of another municipality gets [`AuthError::NotFound`].
pub async fn disable(
    tx: &impl GenericClient,
    actor: &Actor,
    target: Uuid,
    now: DateTime<Utc>,
) -> Result<Disabled, AuthError> {
    if target == actor.user_id {
        return Err(AuthError::Conflict("you cannot disable your own account"));
    }
    let found = tx
        .query_opt(
            "UPDATE users SET status = 'disabled', disabled_at = coalesce(disabled_at, $3)
             WHERE municipality_id = $1 AND id = $2 RETURNING id",
            &[&actor.tenant.id(), &target, &now],
        )
        .await
        .map_err(StoreError::from)?;
    if found.is_none() {
        return Err(AuthError::NotFound);
    }
    let sessions_ended = session::end_all(tx, actor.tenant, target, now).await?;
    let invitations_revoked = tx
        .execute(
            "UPDATE invitations SET revoked_at = $3
             WHERE municipality_id = $1 AND created_by = $2 AND used_at IS NULL AND revoked_at IS NULL",
            &[&actor.tenant.id(), &target, &now],
        )
        .await
        .map_err(StoreError::from)?;
    // A trusted party's standing keypad codes stop working at the locks (its slots are cleared);
    // its tokens are revoked there too.
    for party in tx
        .query(
            "SELECT id FROM trusted_parties WHERE municipality_id = $1 AND user_id = $2",
            &[&actor.tenant.id(), &target],
        )
        .await
        .map_err(StoreError::from)?
    {
        crate::emergency::revoke_tokens_of_trusted_party(tx, actor.tenant, party.get(0), now)
            .await?;
    }
    crate::codes::standing::sync_parties_of_account(tx, actor.tenant, target, now).await?;
    let (grants_ended, tokens_revoked) = crate::emergency::grants::end_for_disabled_responder(
        tx,
        actor.tenant,
        actor.user_id,
        target,
        now,
    )
    .await?;
    let disabled = Disabled {
        sessions_ended,
        invitations_revoked,
        grants_ended,
        tokens_revoked,
    };
    let event = Event::new("account.disabled", Outcome::Info)
        .actor(actor.user_id)
        .subject("user", target)
        .details(serde_json::json!({
            "sessions_ended": disabled.sessions_ended,
            "invitations_revoked": disabled.invitations_revoked,
            "grants_ended": disabled.grants_ended,
            "tokens_revoked": disabled.tokens_revoked,
        }));
    audit::record(tx, actor.tenant, &event, now).await?;
    Ok(disabled)
}

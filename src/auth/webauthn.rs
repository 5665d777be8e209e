//! WebAuthn with webauthn-rs: the relying party, the attestation CAs a municipality trusts, the
//! server-side ceremony store, stored credentials, and the assertion check behind sign-in and step-up.
//!
//! Two kinds of credential:
//! - **Hardware security keys** ([`CredentialKind::SecurityKey`]) for municipal admins, dispatchers,
//!   responders and auditors: webauthn-rs's *attested passkey* ceremony, i.e. direct attestation
//!   verified against the municipality's CA list ([`attestation_cas`]), user verification required,
//!   backup-eligible (synced) credentials refused.
//! - **Passkeys** ([`CredentialKind::Passkey`]) for homeowners and trusted parties: user
//!   verification required, any authenticator, synced ones included.
//!
//! Ceremony state lives in `webauthn_ceremonies`: it is written when a ceremony starts, expires after
//! [`CEREMONY_LIFETIME`], and is deleted by the statement that reads it ([`take_ceremony`]), so each
//! ceremony can be finished once. Each is bound to what started it (a [`Binding`]: the ceremony
//! cookie of a sign-in, the session of a step-up, the link of an enrolment); a finish must present
//! the same binding, and at most [`ratelimit::MAX_OPEN_CEREMONIES`] live ceremonies are kept per
//! binding, so nobody can finish or evict another client's ceremonies. A sign-in for an address
//! without a usable account gets a *decoy* ceremony ([`decoy_request`]) that looks like a real one
//! and fails like a wrong key.
//!
//! Assertions are checked beyond what webauthn-rs checks: `type` must be `public-key`, `id` must
//! be `rawId` in base64url, and a `userHandle`, when present, must name the user the ceremony is
//! for (WebAuthn §7.2 step 6). Authentication request options are normalised
//! ([`request_options`]) to one shape for every kind of account, without hints, extensions or
//! transports, so the answer does not tell a security key's holder from a homeowner's or from
//! nobody. A signature counter that does not move forward suspends the credential, ends the
//! sessions it opened, writes an audit entry and mails the municipality's admins.
//!
//! Account and invitation logic is in `accounts`; sessions in `session`; this module never sees HTTP.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webauthn_rs::prelude::{
    AttestationCaList, AttestationCaListBuilder, AttestedPasskey, AttestedPasskeyAuthentication,
    AttestedPasskeyRegistration, AuthenticationResult, COSEKey, COSEKeyType, Credential, Passkey,
    PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RequestChallengeResponse, Url,
    Webauthn, WebauthnBuilder, WebauthnError,
};

use super::client::Binding;
use super::error::AuthError;
use super::{ratelimit, session};
use crate::audit::{self, Event, Outcome};
use crate::domain::{Email, Role};
use crate::notify::{self, Mail};
use crate::settings::PublicOrigin;
use crate::store::{StoreError, Tenant};

/// How long a started ceremony may be finished.
pub const CEREMONY_LIFETIME: Duration = Duration::minutes(5);
/// The timeout the options tell the browser (the ceremony's lifetime).
const CEREMONY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The Yubico root of webauthn-rs's strict device list (`webauthn-rs-device-catalog`'s
/// `Data::strict()`), with the AAGUIDs that list admits under it.
const YUBICO_ROOT_PEM: &[u8] = include_bytes!("attestation/yubico-u2f-root-ca-457200631.pem");
const STRICT_AAGUIDS: [(&str, &str); 2] = [
    (
        "73bb0cd4-e502-49b8-9c6f-b59445bf720b",
        "YubiKey 5 FIPS Series",
    ),
    ("d8522d9f-575b-4866-88a9-ba99fa02f35b", "YubiKey Bio Series"),
];

/// Which kind of credential a user enrols and signs in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An attested, non-synced hardware key with user verification (staff).
    SecurityKey,
    /// A passkey (homeowners).
    Passkey,
}

impl CredentialKind {
    /// The kind a holder of `roles` must use: any staff role requires a hardware security key;
    /// homeowners and trusted parties (neighbours, relatives) use passkeys.
    pub fn for_roles(roles: &[Role]) -> Self {
        if roles
            .iter()
            .any(|r| !matches!(r, Role::Homeowner | Role::TrustedParty))
        {
            Self::SecurityKey
        } else {
            Self::Passkey
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::SecurityKey => "security_key",
            Self::Passkey => "passkey",
        }
    }

    fn parse(stored: &str) -> Self {
        if stored == "security_key" {
            Self::SecurityKey
        } else {
            Self::Passkey
        }
    }
}

/// The relying party for `origin`: its host is the RP id, the origin the only one allowed.
pub fn relying_party(origin: &PublicOrigin) -> Result<Webauthn, AuthError> {
    let url = Url::parse(origin.as_str()).map_err(|e| AuthError::Configuration(e.to_string()))?;
    WebauthnBuilder::new(origin.host(), &url)
        .and_then(|b| b.rp_name("firstkey").timeout(CEREMONY_TIMEOUT).build())
        .map_err(|e| AuthError::Configuration(e.to_string()))
}

/// webauthn-rs's strict list, built once.
fn strict_list() -> Result<&'static AttestationCaList, AuthError> {
    static STRICT: OnceLock<Result<AttestationCaList, String>> = OnceLock::new();
    STRICT
        .get_or_init(|| {
            let mut builder = AttestationCaListBuilder::new();
            for (aaguid, name) in STRICT_AAGUIDS {
                let aaguid = Uuid::parse_str(aaguid).map_err(|e| e.to_string())?;
                builder
                    .insert_device_pem(YUBICO_ROOT_PEM, aaguid, name.to_owned(), Default::default())
                    .map_err(|e| e.to_string())?;
            }
            Ok(builder.build())
        })
        .as_ref()
        .map_err(|e| AuthError::Configuration(format!("strict attestation list: {e}")))
}

/// The attestation CAs the municipality trusts for hardware keys: webauthn-rs's strict list, plus
/// every CA in `municipalities.attestation_cas` (PEM strings; each admits any device it attests).
/// An unparseable entry is skipped with a warning rather than failing every enrolment.
pub async fn attestation_cas(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<AttestationCaList, AuthError> {
    let mut list = strict_list()?.clone();
    let row = client
        .query_opt(
            "SELECT attestation_cas FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::NotFound)?;
    let extra: serde_json::Value = row.get(0);
    for (index, pem) in extra.as_array().into_iter().flatten().enumerate() {
        let Some(pem) = pem.as_str() else {
            tracing::warn!(index, "attestation CA entry is not a PEM string; skipped");
            continue;
        };
        match AttestationCaList::try_from(pem.as_bytes()) {
            Ok(one) => list.union(&one),
            Err(e) => {
                tracing::warn!(index, error = %e, "attestation CA entry does not parse; skipped")
            }
        }
    }
    Ok(list)
}

/// One attestation CA a municipality added, as listed to its admins.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrustedCa {
    /// Hex SHA-256 of the certificate's DER (webauthn-rs's key id for it).
    pub fingerprint: String,
    /// The certificate, PEM.
    pub pem: String,
}

/// The fingerprint of a PEM certificate that webauthn-rs accepts as an attestation CA.
fn ca_fingerprint(pem: &str) -> Result<String, AuthError> {
    let list = AttestationCaList::try_from(pem.as_bytes())
        .map_err(|_| AuthError::Invalid("pem: not a PEM-encoded X.509 certificate".to_owned()))?;
    list.cas()
        .keys()
        .next()
        .map(|kid| hex::encode(kid.as_slice()))
        .ok_or_else(|| AuthError::Invalid("pem: no certificate".to_owned()))
}

/// The CAs the municipality added to webauthn-rs's strict list.
pub async fn added_attestation_cas(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<TrustedCa>, AuthError> {
    let row = client
        .query_opt(
            "SELECT attestation_cas FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::NotFound)?;
    let stored: serde_json::Value = row.get(0);
    Ok(stored
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter_map(|pem| {
            ca_fingerprint(pem).ok().map(|fingerprint| TrustedCa {
                fingerprint,
                pem: pem.to_owned(),
            })
        })
        .collect())
}

/// Adds an attestation CA (PEM) to the municipality's list, audited as `auth.attestation_ca_added`
/// (by `actor` when an admin did it, none for operator tooling). Adding one already listed is a no-op.
pub async fn add_attestation_ca(
    tx: &impl GenericClient,
    tenant: Tenant,
    pem: &str,
    actor: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<TrustedCa, AuthError> {
    let fingerprint = ca_fingerprint(pem)?;
    let listed = added_attestation_cas(tx, tenant).await?;
    if let Some(existing) = listed.into_iter().find(|c| c.fingerprint == fingerprint) {
        return Ok(existing);
    }
    let pem = pem.trim().to_owned();
    tx.execute(
        "UPDATE municipalities SET attestation_cas = attestation_cas || jsonb_build_array($2::text) WHERE id = $1",
        &[&tenant.id(), &pem],
    )
    .await
    .map_err(StoreError::from)?;
    let mut event = Event::new("auth.attestation_ca_added", Outcome::Info)
        .details(serde_json::json!({ "fingerprint": fingerprint }));
    if let Some(actor) = actor {
        event = event.actor(actor);
    }
    audit::record(tx, tenant, &event, now).await?;
    Ok(TrustedCa { fingerprint, pem })
}

/// Removes an added attestation CA by fingerprint (audited). Credentials already enrolled under it stay;
/// only new enrolments are affected.
pub async fn remove_attestation_ca(
    tx: &impl GenericClient,
    tenant: Tenant,
    fingerprint: &str,
    actor: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let listed = added_attestation_cas(tx, tenant).await?;
    if !listed.iter().any(|c| c.fingerprint == fingerprint) {
        return Err(AuthError::NotFound);
    }
    let kept: Vec<String> = listed
        .into_iter()
        .filter(|c| c.fingerprint != fingerprint)
        .map(|c| c.pem)
        .collect();
    tx.execute(
        "UPDATE municipalities SET attestation_cas = $2 WHERE id = $1",
        &[&tenant.id(), &serde_json::json!(kept)],
    )
    .await
    .map_err(StoreError::from)?;
    let event = Event::new("auth.attestation_ca_removed", Outcome::Info)
        .actor(actor)
        .details(serde_json::json!({ "fingerprint": fingerprint }));
    audit::record(tx, tenant, &event, now).await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------ ceremonies

/// What a registration ceremony is for: the link that authorised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ticket", content = "id", rename_all = "snake_case")]
pub enum Ticket {
    /// An invitation (staff, or the bootstrap admin).
    Invitation(Uuid),
    /// A homeowner's e-mail verification.
    EmailVerification(Uuid),
}

/// Registration state of either kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "state", rename_all = "snake_case")]
pub enum Registering {
    /// A hardware key enrolment.
    SecurityKey(AttestedPasskeyRegistration),
    /// A passkey enrolment.
    Passkey(PasskeyRegistration),
}

/// Authentication state of either kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "state", rename_all = "snake_case")]
pub enum Authenticating {
    /// An assertion from a hardware key.
    SecurityKey(AttestedPasskeyAuthentication),
    /// An assertion from a passkey.
    Passkey(PasskeyAuthentication),
}

/// Server-side state of one ceremony, stored as JSONB.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "purpose", rename_all = "snake_case")]
pub enum CeremonyState {
    /// Enrolling a credential through an invitation or verification link.
    Enrol {
        /// The link.
        ticket: Ticket,
        /// webauthn-rs state.
        registering: Registering,
    },
    /// Signing in.
    SignIn {
        /// webauthn-rs state.
        authenticating: Authenticating,
    },
    /// A fresh assertion for the signed-in session `session`.
    StepUp {
        /// The session to step up.
        session: Uuid,
        /// webauthn-rs state.
        authenticating: Authenticating,
    },
    /// A sign-in for an address without a usable account: no assertion can finish it.
    Decoy,
    /// A signed-in user adds another credential ("my security keys"), bound to the session.
    AddKey {
        /// The session that started it.
        session: Uuid,
        /// webauthn-rs state.
        registering: Registering,
    },
}

impl CeremonyState {
    fn kind(&self) -> &'static str {
        match self {
            Self::Enrol { .. } | Self::AddKey { .. } => "registration",
            Self::SignIn { .. } | Self::StepUp { .. } | Self::Decoy => "authentication",
        }
    }
}

/// A started ceremony: its id and the options for `navigator.credentials.create/get`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Challenge {
    /// Pass back when finishing.
    pub ceremony: Uuid,
    /// `CreationChallengeResponse` or `RequestChallengeResponse` of WebAuthn, as JSON.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// Stores a new ceremony bound to `binding` (for `user` of `tenant`; neither for a decoy of an
/// unknown account) and returns its id. Keeps at most [`ratelimit::MAX_OPEN_CEREMONIES`] live
/// ceremonies per binding, dropping that binding's oldest, and prunes expired ones. Nothing another
/// client does can drop this client's ceremonies.
pub async fn store_ceremony(
    client: &impl GenericClient,
    owner: Option<(Tenant, Option<Uuid>)>,
    state: &CeremonyState,
    binding: Binding,
    now: DateTime<Utc>,
) -> Result<Uuid, AuthError> {
    let id = Uuid::new_v4();
    let json = serde_json::to_value(state)?;
    let (tenant, user) = match owner {
        Some((tenant, user)) => (Some(tenant.id()), user),
        None => (None, None),
    };
    client
        .execute(
            "DELETE FROM webauthn_ceremonies WHERE expires_at <= $1",
            &[&now],
        )
        .await
        .map_err(StoreError::from)?;
    client
        .execute(
            "DELETE FROM webauthn_ceremonies WHERE id IN (
                 SELECT id FROM webauthn_ceremonies WHERE client_hash = $1
                 ORDER BY created_at DESC OFFSET $2)",
            &[&binding.as_bytes(), &(ratelimit::MAX_OPEN_CEREMONIES - 1)],
        )
        .await
        .map_err(StoreError::from)?;
    client
        .execute(
            "INSERT INTO webauthn_ceremonies (id, municipality_id, user_id, kind, state, created_at, expires_at,
                 client_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&id, &tenant, &user, &state.kind(), &json, &now, &(now + CEREMONY_LIFETIME), &binding.as_bytes()],
        )
        .await
        .map_err(crate::store::conflict_or_query)?;
    Ok(id)
}

/// A ceremony taken from the store.
#[derive(Debug)]
pub struct TakenCeremony {
    /// Its municipality (none for a decoy naming an unknown municipality).
    pub tenant: Option<Tenant>,
    /// The user it was started for (none for a decoy).
    pub user: Option<Uuid>,
    /// Its state.
    pub state: CeremonyState,
}

impl TakenCeremony {
    /// The municipality and user of a real ceremony.
    pub fn owner(&self) -> Result<(Tenant, Uuid), AuthError> {
        match (self.tenant, self.user) {
            (Some(tenant), Some(user)) => Ok((tenant, user)),
            _ => Err(AuthError::CeremonyInvalid),
        }
    }
}

/// Deletes and returns a live ceremony bound to `binding` (any binding when `None`: an enrolment,
/// whose link is found from the ceremony). A second call with the same id, a call after it
/// expired, or a call with another binding is [`AuthError::CeremonyInvalid`]; a call with another
/// binding leaves the ceremony to its client. Run it outside the caller's transaction so the
/// ceremony stays used even when the rest of the finish fails.
pub async fn take_ceremony(
    client: &impl GenericClient,
    id: Uuid,
    binding: Option<Binding>,
    now: DateTime<Utc>,
) -> Result<TakenCeremony, AuthError> {
    let hash: Option<&[u8]> = binding.as_ref().map(Binding::as_bytes);
    let row = client
        .query_opt(
            "DELETE FROM webauthn_ceremonies WHERE id = $1 AND ($2::bytea IS NULL OR client_hash = $2)
             RETURNING municipality_id, user_id, state, expires_at",
            &[&id, &hash],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::CeremonyInvalid)?;
    let expires_at: DateTime<Utc> = row.get(3);
    if expires_at <= now {
        return Err(AuthError::CeremonyInvalid);
    }
    let state: CeremonyState =
        serde_json::from_value(row.get(2)).map_err(|_| AuthError::CeremonyInvalid)?;
    Ok(TakenCeremony {
        tenant: row.get::<_, Option<Uuid>>(0).map(Tenant::assume),
        user: row.get(1),
        state,
    })
}

// ------------------------------------------------------------------------------------------ credentials

/// One stored credential of a user.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    /// Row id (what sessions record as the step-up credential).
    pub id: Uuid,
    /// Kind.
    pub kind: CredentialKind,
    /// webauthn-rs's credential.
    pub credential: Credential,
    /// Whether it is suspended.
    pub suspended: bool,
    /// The last signature counter seen.
    pub sign_count: i64,
}

fn stored_from_row(row: &tokio_postgres::Row) -> Result<StoredCredential, AuthError> {
    let kind: String = row.get(1);
    let status: String = row.get(3);
    Ok(StoredCredential {
        id: row.get(0),
        kind: CredentialKind::parse(&kind),
        credential: serde_json::from_value(row.get(2))?,
        suspended: status != "active",
        sign_count: row.get(4),
    })
}

/// The user's active credentials of `kind`.
pub async fn active_credentials(
    client: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    kind: CredentialKind,
) -> Result<Vec<StoredCredential>, AuthError> {
    client
        .query(
            "SELECT id, kind, credential, status, sign_count FROM webauthn_credentials
             WHERE municipality_id = $1 AND user_id = $2 AND kind = $3 AND status = 'active'
             ORDER BY created_at",
            &[&tenant.id(), &user, &kind.as_str()],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(stored_from_row)
        .collect()
}

/// Stores a newly enrolled credential; returns its row id. A credential id already registered
/// anywhere is refused (WebAuthn §7.1 step 22).
pub async fn insert_credential(
    client: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    kind: CredentialKind,
    credential: &Credential,
    attestation_ca: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Uuid, AuthError> {
    if kind == CredentialKind::SecurityKey && credential.backup_eligible {
        return Err(AuthError::EnrolmentRefused(
            "synced (backup-eligible) credentials are not accepted as security keys",
        ));
    }
    let id = Uuid::new_v4();
    let json = serde_json::to_value(credential)?;
    client
        .execute(
            "INSERT INTO webauthn_credentials (id, municipality_id, user_id, credential_id, kind, credential,
                 public_key_cose, attestation_ca, sign_count, backup_eligible, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &id,
                &tenant.id(),
                &user,
                &credential.cred_id.as_slice(),
                &kind.as_str(),
                &json,
                &cose_key_bytes(&credential.cred),
                &attestation_ca,
                &i64::from(credential.counter),
                &credential.backup_eligible,
                &now,
            ],
        )
        .await
        .map_err(|e| match crate::store::conflict_or_query(e) {
            StoreError::Conflict(_) => AuthError::Conflict("this authenticator is already enrolled"),
            other => AuthError::Store(other),
        })?;
    Ok(id)
}

/// Starts an authentication ceremony over `user`'s active credentials of `kind`; `None` when the
/// user has none.
pub fn start_authentication(
    rp: &Webauthn,
    kind: CredentialKind,
    credentials: &[StoredCredential],
) -> Result<Option<(serde_json::Value, Authenticating)>, AuthError> {
    if credentials.is_empty() {
        return Ok(None);
    }
    let refused = |e: WebauthnError| AuthError::Configuration(e.to_string());
    let (options, state) = match kind {
        CredentialKind::SecurityKey => {
            let keys: Vec<AttestedPasskey> = credentials
                .iter()
                .map(|c| c.credential.clone().into())
                .collect();
            let (rcr, state) = rp
                .start_attested_passkey_authentication(&keys)
                .map_err(refused)?;
            (request_options(rcr)?, Authenticating::SecurityKey(state))
        }
        CredentialKind::Passkey => {
            let keys: Vec<Passkey> = credentials
                .iter()
                .map(|c| c.credential.clone().into())
                .collect();
            let (rcr, state) = rp.start_passkey_authentication(&keys).map_err(refused)?;
            (request_options(rcr)?, Authenticating::Passkey(state))
        }
    };
    Ok(Some((options, state)))
}

/// An authentication ceremony over `credentials` whose challenge is `challenge` instead of a random
/// one: the stateless token challenges of [`super::proof`], which the server recomputes rather
/// than stores. webauthn-rs draws its challenges itself, so the state and the options it returns
/// get `challenge` put in their (serialised) challenge fields; a layout that lacks one is an error,
/// never a ceremony over the random challenge.
pub fn start_authentication_over(
    rp: &Webauthn,
    kind: CredentialKind,
    credentials: &[StoredCredential],
    challenge: &[u8],
) -> Result<Option<(serde_json::Value, Authenticating)>, AuthError> {
    use base64::Engine;
    let Some((mut options, state)) = start_authentication(rp, kind, credentials)? else {
        return Ok(None);
    };
    let encoded = serde_json::Value::String(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(challenge),
    );
    let mut state = serde_json::to_value(&state)?;
    let layout = || AuthError::Configuration("webauthn-rs state layout changed".to_owned());
    match state.pointer_mut("/state/ast/challenge") {
        Some(slot @ serde_json::Value::String(_)) => *slot = encoded.clone(),
        _ => return Err(layout()),
    }
    match options.pointer_mut("/publicKey/challenge") {
        Some(slot @ serde_json::Value::String(_)) => *slot = encoded,
        _ => return Err(layout()),
    }
    Ok(Some((options, serde_json::from_value(state)?)))
}

/// The options of an authentication ceremony as sent to the client: one shape for every account
/// (no hints, extensions, transports or mediation, which differ between security keys and
/// passkeys). allowCredentials is what the browser needs; the rest is convenience, and the
/// server-side checks (user verification, no backup eligibility for security keys) do not depend
/// on it.
pub fn request_options(mut rcr: RequestChallengeResponse) -> Result<serde_json::Value, AuthError> {
    rcr.mediation = None;
    rcr.public_key.hints = None;
    rcr.public_key.extensions = None;
    for allowed in &mut rcr.public_key.allow_credentials {
        allowed.transports = None;
    }
    Ok(serde_json::to_value(rcr)?)
}

/// The options of a decoy sign-in: a fresh challenge over `credential_ids`, shaped by
/// [`request_options`] like every real one.
pub fn decoy_request(
    rp_id: &str,
    credential_ids: Vec<Vec<u8>>,
) -> Result<serde_json::Value, AuthError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut challenge = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut challenge)
        .map_err(|_| StoreError::Unavailable("system random number generator failed".to_owned()))?;
    let timeout = u64::try_from(CEREMONY_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let allowed: Vec<serde_json::Value> = credential_ids
        .iter()
        .map(|id| serde_json::json!({ "type": "public-key", "id": URL_SAFE_NO_PAD.encode(id) }))
        .collect();
    // Through webauthn-rs's own type, so a decoy is serialised exactly as a real request is.
    let rcr: RequestChallengeResponse = serde_json::from_value(serde_json::json!({
        "publicKey": {
            "challenge": URL_SAFE_NO_PAD.encode(challenge),
            "timeout": timeout,
            "rpId": rp_id,
            "allowCredentials": allowed,
            "userVerification": "required",
        }
    }))?;
    request_options(rcr)
}

/// What an assertion is for, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Signing in.
    SignIn,
    /// Stepping up an existing session.
    StepUp,
    /// The assertion a token request carries (`super::proof`). Its success is recorded in the
    /// `token.issue` entry it leads to, not in an entry of its own; refusals are audited as
    /// `auth.token_assertion`.
    Token,
}

impl Purpose {
    /// The audit action of an assertion for this purpose.
    pub fn action(self) -> &'static str {
        match self {
            Self::SignIn => "auth.sign_in",
            Self::StepUp => "auth.step_up",
            Self::Token => "auth.token_assertion",
        }
    }
}

/// Who an assertion claims to be, and what for.
#[derive(Debug, Clone, Copy)]
pub struct Claimant {
    /// The municipality.
    pub tenant: Tenant,
    /// The user the ceremony was started for.
    pub user: Uuid,
    /// Sign-in or step-up.
    pub purpose: Purpose,
}

/// What an assertion must answer: the state of a stored ceremony, or a challenge the caller
/// checked itself (a stateless token challenge, `super::proof`), over the credential the assertion
/// names.
#[derive(Clone, Copy)]
pub enum Expected<'a> {
    /// A ceremony taken from the store.
    Ceremony(&'a Authenticating),
    /// These challenge bytes.
    Challenge(&'a [u8]),
}

/// Why an assertion's JSON is refused before any cryptography: WebAuthn §7.2 steps webauthn-rs
/// leaves to the relying party.
fn assertion_format_refusal(user: Uuid, response: &PublicKeyCredential) -> Option<&'static str> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if response.type_ != "public-key" {
        return Some("credential_type");
    }
    if response.id != URL_SAFE_NO_PAD.encode(response.raw_id.as_slice()) {
        return Some("credential_id_mismatch");
    }
    // §7.2 step 6: a user handle, when the authenticator returns one, must be the user the
    // ceremony is for (webauthn-rs's user id is the account's id).
    match response.get_user_unique_id() {
        Some(handle) if handle != user.as_bytes() => Some("user_handle_mismatch"),
        _ => None,
    }
}

/// Verifies an assertion of `user` against the ceremony state, inside `tx`. On success the credential's
/// counter is stored and its row id returned. Every outcome is audited; a counter that did not move
/// forward suspends the credential, ends the sessions it opened and tells the admins. The caller
/// commits `tx` in every case (the audit entries and the suspension must stand even though the
/// sign-in fails) and counts failures against the client (`ratelimit`).
pub async fn verify_assertion(
    tx: &impl GenericClient,
    rp: &Webauthn,
    claimant: Claimant,
    expected: Expected<'_>,
    response: &PublicKeyCredential,
    now: DateTime<Utc>,
) -> Result<Uuid, AuthError> {
    let Claimant {
        tenant,
        user,
        purpose,
    } = claimant;
    let deny = |reason: &'static str, credential: Option<Uuid>| {
        let mut event = Event::new(purpose.action(), Outcome::Deny)
            .actor(user)
            .details(serde_json::json!({ "reason": reason }));
        if let Some(id) = credential {
            event = event.subject("credential", id);
        }
        event
    };
    if let Some(reason) = assertion_format_refusal(user, response) {
        audit::record(tx, tenant, &deny(reason, None), now).await?;
        return Err(AuthError::AuthenticationFailed);
    }
    let select = tx
        .prepare_cached(
            "SELECT id, kind, credential, status, sign_count FROM webauthn_credentials
             WHERE municipality_id = $1 AND user_id = $2 AND credential_id = $3 FOR UPDATE",
        )
        .await
        .map_err(StoreError::from)?;
    let row = tx
        .query_opt(&select, &[&tenant.id(), &user, &response.raw_id.as_slice()])
        .await
        .map_err(StoreError::from)?;
    let Some(row) = row else {
        audit::record(tx, tenant, &deny("unknown_credential", None), now).await?;
        return Err(AuthError::AuthenticationFailed);
    };
    let stored = stored_from_row(&row)?;
    if stored.suspended {
        audit::record(
            tx,
            tenant,
            &deny("credential_suspended", Some(stored.id)),
            now,
        )
        .await?;
        return Err(AuthError::AuthenticationFailed);
    }
    let over_challenge;
    let authenticating = match expected {
        Expected::Ceremony(state) => state,
        Expected::Challenge(challenge) => {
            match start_authentication_over(
                rp,
                stored.kind,
                std::slice::from_ref(&stored),
                challenge,
            )? {
                Some((_, state)) => {
                    over_challenge = state;
                    &over_challenge
                }
                None => return Err(AuthError::AuthenticationFailed),
            }
        }
    };
    let result = match (authenticating, stored.kind) {
        (Authenticating::SecurityKey(state), CredentialKind::SecurityKey) => {
            rp.finish_attested_passkey_authentication(response, state)
        }
        (Authenticating::Passkey(state), CredentialKind::Passkey) => {
            rp.finish_passkey_authentication(response, state)
        }
        _ => Err(WebauthnError::CredentialNotFound),
    };
    // webauthn-rs compares the counter with the copy in the ceremony state; compare with the stored
    // one too, which may have moved on since the ceremony started.
    let regressed = |r: &AuthenticationResult| {
        let counter = i64::from(r.counter());
        (counter > 0 || stored.sign_count > 0) && counter <= stored.sign_count
    };
    let result = match result {
        Ok(r) if regressed(&r) => Err(WebauthnError::CredentialPossibleCompromise),
        other => other,
    };
    match result {
        Ok(r) => {
            if stored.kind == CredentialKind::SecurityKey
                && (r.backup_eligible() || !r.user_verified())
            {
                audit::record(
                    tx,
                    tenant,
                    &deny("security_key_properties", Some(stored.id)),
                    now,
                )
                .await?;
                return Err(AuthError::AuthenticationFailed);
            }
            let mut credential = stored.credential.clone();
            update_counter(&mut credential, stored.kind, &r);
            let update = tx
                .prepare_cached(
                    "UPDATE webauthn_credentials SET credential = $2, sign_count = $3, last_used_at = $4 WHERE id = $1",
                )
                .await
                .map_err(StoreError::from)?;
            tx.execute(
                &update,
                &[
                    &stored.id,
                    &serde_json::to_value(&credential)?,
                    &i64::from(r.counter()),
                    &now,
                ],
            )
            .await
            .map_err(StoreError::from)?;
            let event = Event::new(purpose.action(), Outcome::Allow)
                .actor(user)
                .subject("credential", stored.id)
                .details(serde_json::json!({ "kind": stored.kind.as_str() }));
            if purpose != Purpose::Token {
                audit::record(tx, tenant, &event, now).await?;
            }
            Ok(stored.id)
        }
        Err(WebauthnError::CredentialPossibleCompromise) => {
            suspend(tx, tenant, user, stored.id, now).await?;
            audit::record(
                tx,
                tenant,
                &deny("counter_regression", Some(stored.id)),
                now,
            )
            .await?;
            Err(AuthError::AuthenticationFailed)
        }
        Err(e) => {
            tracing::info!(error = %e, "assertion refused");
            audit::record(tx, tenant, &deny("assertion_refused", Some(stored.id)), now).await?;
            Err(AuthError::AuthenticationFailed)
        }
    }
}

fn update_counter(
    credential: &mut Credential,
    kind: CredentialKind,
    result: &AuthenticationResult,
) {
    match kind {
        CredentialKind::SecurityKey => {
            let mut key: AttestedPasskey = credential.clone().into();
            key.update_credential(result);
            *credential = key.into();
        }
        CredentialKind::Passkey => {
            let mut key: Passkey = credential.clone().into();
            key.update_credential(result);
            *credential = key.into();
        }
    }
}

/// Suspends a credential whose counter went backwards (a sign of a cloned key): the sessions it
/// opened or last stepped up end (whoever holds the clone may have opened them), audit entry
/// `auth.credential_suspended` and a mail to every active municipal admin.
pub async fn suspend(
    tx: &impl GenericClient,
    tenant: Tenant,
    user: Uuid,
    credential: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    tx.execute(
        "UPDATE webauthn_credentials SET status = 'suspended', suspended_at = $3
         WHERE municipality_id = $1 AND id = $2 AND status = 'active'",
        &[&tenant.id(), &credential, &now],
    )
    .await
    .map_err(StoreError::from)?;
    let sessions_ended = session::end_opened_with(tx, tenant, credential, now).await?;
    let event = Event::new("auth.credential_suspended", Outcome::Info)
        .actor(user)
        .subject("credential", credential)
        .details(serde_json::json!({
            "reason": "counter_regression",
            "sessions_ended": sessions_ended,
        }));
    audit::record(tx, tenant, &event, now).await?;
    let holder = tx
        .query_opt(
            "SELECT display_name FROM users WHERE municipality_id = $1 AND id = $2",
            &[&tenant.id(), &user],
        )
        .await
        .map_err(StoreError::from)?
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default();
    let admins = tx
        .query(
            "SELECT u.id, u.email FROM users u JOIN user_roles r ON r.user_id = u.id
             WHERE u.municipality_id = $1 AND r.role = 'municipal_admin' AND u.status = 'active'",
            &[&tenant.id()],
        )
        .await
        .map_err(StoreError::from)?;
    for admin in admins {
        let admin_id: Uuid = admin.get(0);
        let Ok(to) = Email::parse(admin.get::<_, &str>(1)) else {
            continue;
        };
        let text = format!(
            "A security key of {holder} (user {user}) was suspended at {now}: its signature counter went \
             backwards, which can mean the key was cloned. The key can no longer sign in. Check with the \
             holder and have them enrol a new key.\n\nCredential: {credential}"
        );
        let mail = Mail {
            dedupe_key: format!("credential_suspended:{credential}:{admin_id}"),
            kind: "auth.credential_suspended",
            to,
            subject: "firstkey: a security key was suspended".to_owned(),
            html: format!("<p>{}</p>", notify::html_escape(&text)),
            text,
        };
        notify::enqueue(tx, tenant, &mail, now).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ COSE

/// The credential public key as a COSE_Key (RFC 9052 §7), for the `public_key_cose` column.
pub fn cose_key_bytes(key: &COSEKey) -> Vec<u8> {
    let alg = key.type_ as i64;
    let mut out = Vec::with_capacity(80);
    match &key.key {
        COSEKeyType::EC_EC2(ec) => {
            cbor_head(&mut out, 5, 5);
            cbor_int(&mut out, 1);
            cbor_int(&mut out, 2);
            cbor_int(&mut out, 3);
            cbor_int(&mut out, alg);
            cbor_int(&mut out, -1);
            cbor_int(&mut out, ec.curve.clone() as i64);
            cbor_int(&mut out, -2);
            cbor_bytes(&mut out, &ec.x);
            cbor_int(&mut out, -3);
            cbor_bytes(&mut out, &ec.y);
        }
        COSEKeyType::EC_OKP(okp) => {
            cbor_head(&mut out, 5, 4);
            cbor_int(&mut out, 1);
            cbor_int(&mut out, 1);
            cbor_int(&mut out, 3);
            cbor_int(&mut out, alg);
            cbor_int(&mut out, -1);
            cbor_int(&mut out, okp.curve.clone() as i64);
            cbor_int(&mut out, -2);
            cbor_bytes(&mut out, &okp.x);
        }
        COSEKeyType::RSA(rsa) => {
            cbor_head(&mut out, 5, 4);
            cbor_int(&mut out, 1);
            cbor_int(&mut out, 3);
            cbor_int(&mut out, 3);
            cbor_int(&mut out, alg);
            cbor_int(&mut out, -1);
            cbor_bytes(&mut out, &rsa.n);
            cbor_int(&mut out, -2);
            cbor_bytes(&mut out, &rsa.e);
        }
    }
    out
}

fn cbor_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | u8::try_from(value).unwrap_or(0)),
        24..=0xff => {
            out.push(major | 24);
            out.push(u8::try_from(value).unwrap_or(u8::MAX));
        }
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&u16::try_from(value).unwrap_or(u16::MAX).to_be_bytes());
        }
        _ => {
            out.push(major | 26);
            out.extend_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
}

fn cbor_int(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        cbor_head(out, 0, value.unsigned_abs());
    } else {
        cbor_head(out, 1, value.unsigned_abs().saturating_sub(1));
    }
}

fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    cbor_head(out, 2, u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    out.extend_from_slice(bytes);
}

/// A base64url (unpadded) byte string, as webauthn-rs reads the credential's binary fields.
pub(crate) fn base64url(description: &str) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .pattern(Some("^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$"))
        .build()
}

/// The JSON of a WebAuthn credential (`PublicKeyCredential.toJSON()`), with `response` as given.
pub(crate) fn credential_schema(
    description: &str,
    response: utoipa::openapi::schema::Object,
) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property("id", base64url("The credential id"))
        .property(
            "rawId",
            base64url("The credential id, the same bytes as `id`"),
        )
        .property("response", response)
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["public-key"])),
        )
        .property(
            "extensions",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("Client extension results")),
        )
        .required("id")
        .required("rawId")
        .required("response")
        .required("type")
        .build()
}

/// The OpenAPI schema of a WebAuthn assertion as the JSON bodies carry it.
pub(crate) fn assertion_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let response = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("authenticatorData", base64url("Authenticator data"))
        .property("clientDataJSON", base64url("The signed client data"))
        .property("signature", base64url("The assertion signature"))
        .property(
            "userHandle",
            base64url("The user handle, if the authenticator gave one"),
        )
        .required("authenticatorData")
        .required("clientDataJSON")
        .required("signature")
        .build();
    credential_schema(
        "The `PublicKeyCredential` from `navigator.credentials.get()`, as JSON.",
        response,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_list_parses() {
        let list = strict_list().unwrap();
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn cbor_integers() {
        let mut out = Vec::new();
        cbor_int(&mut out, -7);
        cbor_int(&mut out, 1);
        cbor_int(&mut out, -257);
        assert_eq!(out, vec![0x26, 0x01, 0x39, 0x01, 0x00]);
    }
}

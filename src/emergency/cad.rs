//! The CAD (computer-aided dispatch) integration: machine calls authenticated per request with an
//! HMAC, made idempotent with an `Idempotency-Key`.
//!
//! **Credentials.** A municipality has any number of API credentials (`api_credentials`): a public key
//! id and a secret shown once at creation. The secret is stored sealed under the key-encryption key
//! ([`crate::crypto::seal`], bound to the key id), as `wrapped data key ‖ ciphertext`.
//!
//! **Signature.** Every request carries `X-Firstkey-Key-Id`, `X-Firstkey-Timestamp` (Unix seconds,
//! within ±5 minutes of the server's clock), `Idempotency-Key` and `X-Firstkey-Signature`: lower-case
//! hex of HMAC-SHA256, keyed with the secret's text, over
//! `METHOD "\n" PATH "\n" TIMESTAMP "\n" IDEMPOTENCY-KEY "\n" hex(SHA-256(body))`
//! (PATH with its query, as sent). Binding the idempotency key stops a captured request from being
//! replayed under a fresh key. Verification is constant-time ([`ring::hmac::verify`]); any failure is
//! the same "unauthenticated".
//!
//! **Idempotency.** The first call with a key claims it (`idempotency_keys`) in the transaction that
//! does the work and stores the response there; a retry with the same key and the same request gets
//! the stored response and changes nothing; the same key with another request is a conflict. A call
//! that fails stores nothing, so its retry runs again.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use uuid::Uuid;

use super::EmergencyError;
use super::grants::{self, NewGrant, ViaCad};
use super::incidents::{self, NewIncident, Origin};
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::crypto::{self, Kek, Sealed};
use crate::domain::Role;
use crate::policy::PolicyEngine;
use crate::store::{StoreError, Tenant};

/// Header naming the credential.
pub const KEY_ID_HEADER: &str = "x-firstkey-key-id";
/// Header with the request time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-firstkey-timestamp";
/// Header with the signature, hex.
pub const SIGNATURE_HEADER: &str = "x-firstkey-signature";
/// Header with the idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Largest accepted difference between the request's timestamp and the server's clock.
pub const MAX_SKEW: Duration = Duration::minutes(5);

/// Length of the sealed data key at the front of `wrapped_secret` (nonce ‖ 32-byte key ‖ tag).
const WRAPPED_KEY_LEN: usize = 12 + 32 + 16;

/// A new credential; the secret is shown once and never stored in clear.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewCredential {
    /// Row id.
    pub id: Uuid,
    /// The key id to send in `X-Firstkey-Key-Id`.
    pub key_id: String,
    /// The HMAC secret (its text is the HMAC key). Store it in the CAD system; it is not shown again.
    pub secret: String,
}

fn aad(key_id: &str) -> Vec<u8> {
    format!("firstkey-cad-credential:{key_id}").into_bytes()
}

/// Creates an API credential for the municipality (audited; the secret is not).
pub async fn create_credential(
    tx: &impl GenericClient,
    kek: &Kek,
    tenant: Tenant,
    actor: Option<Uuid>,
    name: &str,
    now: DateTime<Utc>,
) -> Result<NewCredential, EmergencyError> {
    let name = crate::domain::Text::parse("name", name, 200)
        .map_err(|e| EmergencyError::Invalid(e.to_string()))?;
    let name = name.as_str();
    let rng = SystemRandom::new();
    let mut id_bytes = [0u8; 8];
    let mut secret_bytes = [0u8; 32];
    rng.fill(&mut id_bytes)
        .and_then(|()| rng.fill(&mut secret_bytes))
        .map_err(|_| super::keys::KeyError::Random)?;
    let key_id = format!("cad_{}", hex::encode(id_bytes));
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let sealed = crypto::seal(kek, &aad(&key_id), secret.as_bytes())
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    if sealed.wrapped_key.len() != WRAPPED_KEY_LEN {
        return Err(StoreError::Conflict("unexpected wrapped key length".to_owned()).into());
    }
    let mut stored = sealed.wrapped_key;
    stored.extend_from_slice(&sealed.ciphertext);
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO api_credentials (id, municipality_id, key_id, name, wrapped_secret, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &tenant.id(), &key_id, &name, &stored, &now],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let mut event = Event::new("cad.credential_create", Outcome::Info)
        .details(serde_json::json!({ "key_id": key_id, "name": name }));
    event.actor = actor;
    audit::record(tx, tenant, &event, now).await?;
    Ok(NewCredential { id, key_id, secret })
}

/// A CAD request as received: the signed headers, what they sign, and the raw body.
#[derive(Debug, Clone)]
pub struct CadCall<'a> {
    /// `X-Firstkey-Key-Id`.
    pub key_id: &'a str,
    /// `X-Firstkey-Timestamp`.
    pub timestamp: &'a str,
    /// `X-Firstkey-Signature`.
    pub signature: &'a str,
    /// `Idempotency-Key`.
    pub idempotency_key: &'a str,
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Path and query, as sent.
    pub path: &'a str,
    /// The raw body.
    pub body: &'a [u8],
}

/// What a CAD call asks for.
#[derive(Debug, Clone)]
pub enum CadAction {
    /// Open an incident (body: [`NewIncident`]).
    OpenIncident,
    /// Close the incident with this CAD number.
    CloseIncident(String),
    /// Grant entry for the incident with this CAD number (body: [`CadGrant`]), in the name of the
    /// dispatcher the body names.
    CreateGrant(String),
}

/// Body of a CAD grant: the grant a dispatcher would ask for, and the dispatcher it is made for.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CadGrant {
    /// The dispatcher of the municipality on whose behalf CAD grants (an active account with the
    /// dispatcher role); the grant is theirs, as if they had made it, and names this credential.
    pub dispatcher: Uuid,
    /// The property to enter.
    pub property: Uuid,
    /// The responders allowed in; give these or `unit`, not both.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub responders: Vec<Uuid>,
    /// A unit, e.g. "Engine 7": its active responders at the time of the grant.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub unit: Option<String>,
    /// How long the grant lasts, in minutes (1 to 1440, and at most the plan's maximum).
    #[schema(minimum = 1, maximum = 1440)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub minutes: u32,
    /// Why entry is needed, 1 to 2000 characters (shown to the homeowner).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub justification: String,
}

/// The response to send: status and JSON body (the same on a retry).
#[derive(Debug, Clone, PartialEq)]
pub struct CadResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
    /// Whether this is the stored response of an earlier call.
    pub replayed: bool,
}

/// The bytes a CAD system signs.
pub fn string_to_sign(
    method: &str,
    path: &str,
    timestamp: &str,
    idempotency_key: &str,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = hex::encode(digest(&SHA256, body));
    format!("{method}\n{path}\n{timestamp}\n{idempotency_key}\n{body_hash}").into_bytes()
}

/// Signs a request as a CAD system does (for clients, tests and the demo).
pub fn sign(secret: &str, message: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(hmac::sign(&key, message))
}

/// Authenticates the call: fresh timestamp, live credential, valid HMAC. Returns the credential's
/// municipality and key id. Every failure is the same [`EmergencyError::Unauthenticated`].
pub async fn authenticate(
    client: &impl GenericClient,
    kek: &Kek,
    call: &CadCall<'_>,
    now: DateTime<Utc>,
) -> Result<(Tenant, String), EmergencyError> {
    let unauthenticated = || EmergencyError::Unauthenticated;
    let at: i64 = call.timestamp.parse().map_err(|_| unauthenticated())?;
    let at = DateTime::from_timestamp(at, 0).ok_or_else(unauthenticated)?;
    if (now - at).abs() > MAX_SKEW {
        return Err(unauthenticated());
    }
    let signature = hex::decode(call.signature).map_err(|_| unauthenticated())?;
    let row = client
        .query_opt(
            "SELECT municipality_id, wrapped_secret FROM api_credentials WHERE key_id = $1 AND revoked_at IS NULL",
            &[&call.key_id],
        )
        .await?
        .ok_or_else(unauthenticated)?;
    let stored: Vec<u8> = row.get(1);
    let (wrapped_key, ciphertext) = stored
        .split_at_checked(WRAPPED_KEY_LEN)
        .ok_or_else(unauthenticated)?;
    let secret = crypto::open(
        kek,
        &aad(call.key_id),
        &Sealed {
            ciphertext: ciphertext.to_vec(),
            wrapped_key: wrapped_key.to_vec(),
        },
    )
    .map_err(|_| unauthenticated())?;
    let message = string_to_sign(
        call.method,
        call.path,
        call.timestamp,
        call.idempotency_key,
        call.body,
    );
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &secret),
        &message,
        &signature,
    )
    .map_err(|_| unauthenticated())?;
    Ok((Tenant::assume(row.get(0)), call.key_id.to_owned()))
}

/// SHA-256 identifying a request for idempotency: method, path and body.
pub(crate) fn request_hash(call: &CadCall<'_>) -> Vec<u8> {
    let mut input = format!("{}\n{}\n", call.method, call.path).into_bytes();
    input.extend_from_slice(call.body);
    digest(&SHA256, &input).as_ref().to_vec()
}

pub(crate) fn check_idempotency_key(key: &str) -> Result<(), EmergencyError> {
    let ok = !key.is_empty() && key.len() <= 200 && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(EmergencyError::Invalid(
            "Idempotency-Key: 1 to 200 visible ASCII characters".to_owned(),
        ))
    }
}

/// Runs an authenticated CAD call once per idempotency key; see the module documentation.
pub async fn handle(
    client: &mut deadpool_postgres::Object,
    kek: &Kek,
    engine: &PolicyEngine,
    call: &CadCall<'_>,
    action: &CadAction,
    origin: &crate::settings::PublicOrigin,
    now: DateTime<Utc>,
) -> Result<CadResponse, EmergencyError> {
    let (tenant, key_id) = authenticate(&*client, kek, call, now).await?;
    check_idempotency_key(call.idempotency_key)?;
    let hash = request_hash(call);
    if let CadAction::CreateGrant(cad_number) = action {
        return handle_grant(
            client,
            (engine, kek),
            call,
            tenant,
            key_id,
            cad_number,
            &hash,
            origin,
            now,
        )
        .await;
    }
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let claimed = tx
        .execute(
            "INSERT INTO idempotency_keys (municipality_id, key, request_hash, response_status, response_body, created_at)
             VALUES ($1, $2, $3, 0, '{}'::jsonb, $4) ON CONFLICT (municipality_id, key) DO NOTHING",
            &[&tenant.id(), &call.idempotency_key, &hash, &now],
        )
        .await?;
    if claimed != 1 {
        let row = tx
            .query_one(
                "SELECT request_hash, response_status, response_body FROM idempotency_keys
                 WHERE municipality_id = $1 AND key = $2",
                &[&tenant.id(), &call.idempotency_key],
            )
            .await?;
        let stored_hash: Vec<u8> = row.get(0);
        if stored_hash != hash {
            return Err(EmergencyError::Conflict(
                "this Idempotency-Key was used for a different request".to_owned(),
            ));
        }
        let status: i16 = row.get(1);
        return Ok(CadResponse {
            status: u16::try_from(status).unwrap_or(200),
            body: row.get(2),
            replayed: true,
        });
    }
    let origin = Origin::Cad(key_id);
    let (status, incident): (i16, incidents::Incident) = match action {
        CadAction::OpenIncident => {
            let input: NewIncident = serde_json::from_slice(call.body)
                .map_err(|e| EmergencyError::Invalid(format!("body: {e}")))?;
            let input = input.parse()?;
            (
                201,
                incidents::open(&tx, tenant, &origin, &input, now).await?,
            )
        }
        CadAction::CloseIncident(cad_number) => {
            let cad_number = incidents::parse_cad_number(cad_number)?;
            let incident = incidents::by_cad_number(&tx, tenant, &cad_number).await?;
            (
                200,
                incidents::close(&tx, tenant, &origin, incident.id, now).await?,
            )
        }
        CadAction::CreateGrant(_) => unreachable_grant()?,
    };
    let body = serde_json::to_value(&incident)
        .map_err(|e| StoreError::Conflict(format!("response: {e}")))?;
    tx.execute(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4
         WHERE municipality_id = $1 AND key = $2",
        &[&tenant.id(), &call.idempotency_key, &status, &body],
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(CadResponse {
        status: u16::try_from(status).unwrap_or(200),
        body,
        replayed: false,
    })
}

/// Grants take their own path ([`handle_grant`]); reaching the incident path with one is a bug.
fn unreachable_grant() -> Result<(i16, incidents::Incident), EmergencyError> {
    Err(StoreError::Conflict("CAD grant on the incident path".to_owned()).into())
}

/// The dispatcher a CAD grant names, as an actor: an active account of the tenant with the
/// dispatcher role. The signed, fresh (±[`MAX_SKEW`]) request stands for the step-up a person
/// gives: `stepped_up_at` is the request's time. Anyone else is a 400 naming the field.
async fn dispatcher_actor(
    client: &impl GenericClient,
    tenant: Tenant,
    dispatcher: Uuid,
    now: DateTime<Utc>,
) -> Result<Actor, EmergencyError> {
    let refused = || {
        EmergencyError::Invalid(
            "dispatcher: must be an active dispatcher of the municipality".to_owned(),
        )
    };
    let row = client
        .query_opt(
            "SELECT u.status, u.agency_id, ARRAY(SELECT role FROM user_roles r WHERE r.user_id = u.id)
             FROM users u WHERE u.municipality_id = $1 AND u.id = $2",
            &[&tenant.id(), &dispatcher],
        )
        .await?
        .ok_or_else(refused)?;
    let status: String = row.get(0);
    let roles: Vec<String> = row.get(2);
    let roles: Vec<Role> = roles.iter().filter_map(|r| Role::parse(r).ok()).collect();
    if status != "active" || !roles.contains(&Role::Dispatcher) {
        return Err(refused());
    }
    Ok(Actor {
        tenant,
        user_id: dispatcher,
        roles,
        agency_id: row.get(1),
        session_id: Uuid::nil(),
        stepped_up_at: Some(now),
        step_up_credential: None,
    })
}

/// A CAD grant, once per idempotency key. `grants::create_as` runs its own transactions (a policy
/// denial is audited and committed even though the call fails), so the key is claimed first, in a
/// transaction of its own: a concurrent call with the same key finds the claim and is told the
/// first is in progress (409); a failed call releases the claim, so its retry runs again.
#[allow(clippy::too_many_arguments)]
async fn handle_grant(
    client: &mut deadpool_postgres::Object,
    (engine, kek): (&PolicyEngine, &Kek),
    call: &CadCall<'_>,
    tenant: Tenant,
    key_id: String,
    cad_number: &str,
    hash: &[u8],
    origin: &crate::settings::PublicOrigin,
    now: DateTime<Utc>,
) -> Result<CadResponse, EmergencyError> {
    let claimed = client
        .execute(
            "INSERT INTO idempotency_keys (municipality_id, key, request_hash, response_status, response_body, created_at)
             VALUES ($1, $2, $3, 0, '{}'::jsonb, $4) ON CONFLICT (municipality_id, key) DO NOTHING",
            &[&tenant.id(), &call.idempotency_key, &hash, &now],
        )
        .await?;
    if claimed != 1 {
        let row = client
            .query_one(
                "SELECT request_hash, response_status, response_body FROM idempotency_keys
                 WHERE municipality_id = $1 AND key = $2",
                &[&tenant.id(), &call.idempotency_key],
            )
            .await?;
        let stored_hash: Vec<u8> = row.get(0);
        if stored_hash != hash {
            return Err(EmergencyError::Conflict(
                "this Idempotency-Key was used for a different request".to_owned(),
            ));
        }
        let status: i16 = row.get(1);
        if status == 0 {
            return Err(EmergencyError::Conflict(
                "a call with this Idempotency-Key is still in progress".to_owned(),
            ));
        }
        return Ok(CadResponse {
            status: u16::try_from(status).unwrap_or(200),
            body: row.get(2),
            replayed: true,
        });
    }
    let outcome = grant_for_cad(
        client, engine, kek, call, tenant, key_id, cad_number, origin, now,
    )
    .await;
    let body = match outcome.and_then(|grant| {
        serde_json::to_value(&grant)
            .map_err(|e| StoreError::Conflict(format!("response: {e}")).into())
    }) {
        Ok(body) => body,
        Err(e) => {
            client
                .execute(
                    "DELETE FROM idempotency_keys WHERE municipality_id = $1 AND key = $2 AND response_status = 0",
                    &[&tenant.id(), &call.idempotency_key],
                )
                .await?;
            return Err(e);
        }
    };
    client
        .execute(
            "UPDATE idempotency_keys SET response_status = 201, response_body = $3
             WHERE municipality_id = $1 AND key = $2",
            &[&tenant.id(), &call.idempotency_key, &body],
        )
        .await?;
    Ok(CadResponse {
        status: 201,
        body,
        replayed: false,
    })
}

#[allow(clippy::too_many_arguments)]
async fn grant_for_cad(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    kek: &Kek,
    call: &CadCall<'_>,
    tenant: Tenant,
    key_id: String,
    cad_number: &str,
    origin: &crate::settings::PublicOrigin,
    now: DateTime<Utc>,
) -> Result<grants::Grant, EmergencyError> {
    let body: CadGrant = serde_json::from_slice(call.body)
        .map_err(|e| EmergencyError::Invalid(format!("body: {e}")))?;
    let input = NewGrant {
        property: body.property,
        responders: body.responders,
        unit: body.unit,
        minutes: body.minutes,
        justification: body.justification,
    }
    .parse()?;
    let cad_number = incidents::parse_cad_number(cad_number)?;
    let incident = incidents::by_cad_number(&*client, tenant, &cad_number).await?;
    let actor = dispatcher_actor(&*client, tenant, body.dispatcher, now).await?;
    let credential_id: Uuid = client
        .query_one(
            "SELECT id FROM api_credentials WHERE municipality_id = $1 AND key_id = $2",
            &[&tenant.id(), &key_id],
        )
        .await?
        .get(0);
    let via = ViaCad {
        credential_id,
        key_id,
    };
    grants::create_as(
        client,
        engine,
        kek,
        &actor,
        incident.id,
        &input,
        Some(&via),
        origin,
        now,
    )
    .await
}

//! Override tokens: minted for a responder, for one lock, under a live grant that names them.
//!
//! The responder proves freshness with a WebAuthn assertion: either the one the token request
//! carries itself, over a stateless challenge for this session, grant and lock
//! (`GET /api/v1/tokens/challenge`, `auth::proof`: one HTTP request and one transaction per token),
//! or the session's step-up from the last few minutes (which records the credential used). The
//! token's `cnf` is that security key's P-256 public key, so only the hand holding that key can use
//! the token at the door. The token is signed with the municipality's newest non-retired issuer
//! key, expires at the earlier of the grant's end and now + the token lifetime, opens once, and
//! names the lock as its audience.
//!
//! The assertion's check and the challenge's single use, recording (`issued_tokens`), the audit
//! entry, the lock's inbox entry and the homeowner's mail commit in one transaction with the token:
//! no token exists that the audit log does not know. A responder who is not named in a live grant
//! of an open incident, or asks for a lock of another property, learns nothing (not found); one
//! without a fresh assertion is told to step up.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use firstkey_token::{Claims, ConfirmationKey, GrantId, LockId, Scope, TokenId};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::PublicKeyCredential;

use super::keys;
use super::{EmergencyError, Notice, notify_property, unix_seconds};
use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::auth::error::AuthError;
use crate::auth::proof::{self, Bound, Proving};
use crate::channel::inbox::{self, InboxMessage};
use crate::domain::Role;
use crate::error::CoreError;
use crate::policy::{AuthzRequest, PolicyEngine, TokenContext};
use crate::store::StoreError;

/// Body of a token request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The grant the responder acts under.
    pub grant: Uuid,
    /// The lock to open (a lock of the grant's property).
    pub lock: Uuid,
    /// The assertion (`navigator.credentials.get()` over the options of
    /// `GET /api/v1/tokens/challenge` for this grant and lock) that proves the request fresh: the
    /// token is then issued in this one request, bound to the key that signed it. Without it the
    /// session needs a fresh step-up.
    #[serde(default)]
    #[schema(schema_with = crate::auth::webauthn::assertion_schema)]
    pub assertion: Option<PublicKeyCredential>,
}

/// A minted token, as handed to the responder.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedToken {
    /// The token (COSE_Sign1 bytes), base64url without padding. Secret: present it only at the door.
    pub token: String,
    /// The token id (`cti`), hex.
    pub token_id: String,
    /// The lock it opens.
    pub lock_id: Uuid,
    /// The grant it was minted under.
    pub grant_id: Uuid,
    /// The issuer key id that signed it.
    pub kid: String,
    /// Not valid before.
    pub not_before: DateTime<Utc>,
    /// Not valid from this instant.
    pub expires_at: DateTime<Utc>,
    /// How many times it opens the lock.
    pub max_uses: u32,
    /// What to know about the lock before relying on it ("battery critical …", "offline for
    /// 3 days …"); empty when all is well.
    pub lock_warnings: Vec<String>,
}

/// How tokens are minted: where the issuer keys are and how long a token lives at most.
#[derive(Debug, Clone, Copy)]
pub struct Minting<'a> {
    /// The key directory (`settings.key_dir`).
    pub key_dir: &'a Path,
    /// Longest token lifetime.
    pub lifetime: Duration,
}

fn denied(e: CoreError) -> EmergencyError {
    match e {
        CoreError::NotFound => EmergencyError::NotFound,
        CoreError::StepUpRequired => EmergencyError::StepUpRequired,
        other => EmergencyError::Denied(other),
    }
}

/// Why a token request's own assertion was refused, as the callers answer it: a bad challenge is
/// a 400 (fetch a new one), a refused assertion a 401, as a step-up's finish answers.
pub(crate) fn refused(e: AuthError) -> EmergencyError {
    EmergencyError::Denied(CoreError::from(e))
}

/// Mints a token for `actor`; see the module documentation. Everything runs in one transaction:
/// the request's own assertion when it carries one (`proof::verify_in`: the challenge's use is
/// recorded, the counter moved), the grant re-read under a share lock, the policy, and the token's
/// record, audit entry, inbox entry and mail. A refusal commits what it audited and nothing else.
#[tracing::instrument(name = "token.issue", skip_all)]
pub async fn issue(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    minting: Minting<'_>,
    proving: Proving<'_>,
    actor: &Actor,
    request: &TokenRequest,
    now: DateTime<Utc>,
) -> Result<IssuedToken, EmergencyError> {
    if !actor.has(Role::Responder) {
        return Err(EmergencyError::NotFound);
    }
    let tenant = actor.tenant;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let proven = match &request.assertion {
        Some(assertion) => {
            let bound = Bound::Grant {
                grant: request.grant,
                lock: request.lock,
            };
            match proof::verify_in(&tx, proving, actor, bound, assertion, now).await {
                Ok(credential) => Some(credential),
                Err(e) => {
                    tx.commit().await.map_err(StoreError::from)?;
                    return Err(refused(e));
                }
            }
        }
        None => None,
    };
    // The grant, its incident, the lock and the caller as the policy sees them, in one statement
    // and under a share lock on the grant: a revocation or incident close that commits first wins,
    // and one that comes later waits for this token and then revokes it.
    let context = tx
        .prepare_cached(
            "SELECT g.property_id, g.incident_id, g.ends_at, i.cad_number, i.kind,
                    g.status = 'live' AND g.starts_at <= $4 AND g.ends_at > $4 AND i.closed_at IS NULL
                      AND EXISTS (SELECT 1 FROM grant_responders r
                                  WHERE r.grant_id = g.id AND r.responder_id = $3),
                    l.name, u.status, a.kind, a.id
             FROM grants g
             JOIN incidents i ON i.id = g.incident_id
             JOIN users u ON u.municipality_id = g.municipality_id AND u.id = $3
             LEFT JOIN agencies a ON a.id = u.agency_id
             LEFT JOIN locks l ON l.municipality_id = g.municipality_id AND l.id = $5
                              AND l.property_id = g.property_id AND l.pairing_state = 'paired'
             WHERE g.municipality_id = $1 AND g.id = $2
             FOR SHARE OF g",
        )
        .await?;
    let row = tx
        .query_opt(
            &context,
            &[
                &tenant.id(),
                &request.grant,
                &actor.user_id,
                &now,
                &request.lock,
            ],
        )
        .await?;
    let Some(row) = row else {
        tx.commit().await.map_err(StoreError::from)?;
        return Err(EmergencyError::NotFound);
    };
    let property: Uuid = row.get(0);
    let incident_id: Uuid = row.get(1);
    let grant_ends: DateTime<Utc> = row.get(2);
    let cad_number: String = row.get(3);
    let incident_kind: String = row.get(4);
    let lock_name: Option<String> = row.get(6);
    // Someone else's grant, a lock of another property, an ended grant or a closed incident: the
    // policy sees "not named in a live grant", denies (audited) and the caller learns nothing.
    let live = row.get::<_, bool>(5) && lock_name.is_some();
    let principal = access::principal_of(actor, row.get(7), row.get(8), row.get(9));
    let ctx = access::property(&tx, tenant, property).await?;
    let fresh = proven.is_some() || actor.stepped_up(now);
    let authorized =
        access::authorize_in(&tx, engine, actor, Some(property), fresh, now, |fresh| {
            AuthzRequest::request_token(
                &principal,
                &ctx.attrs,
                TokenContext {
                    step_up_fresh: fresh,
                    named_in_live_grant: live,
                },
            )
        })
        .await;
    let (decision, lock_name, credential) =
        match (authorized, lock_name, proven.or(actor.step_up_credential)) {
            (Ok(decision), Some(name), Some(credential)) => (decision, name, credential),
            (authorized, _, _) => {
                tx.commit().await.map_err(StoreError::from)?;
                return Err(match authorized {
                    Err(e) => denied(e),
                    Ok(_) => EmergencyError::StepUpRequired,
                });
            }
        };
    let confirmation = confirmation_key(&tx, actor, credential, &["security_key"]).await?;
    let signer = Signer::load(&tx, tenant, request.lock, minting.key_dir, now).await?;
    let minted = mint_recorded(
        &tx,
        &signer,
        &Mint {
            tenant,
            holder: Holder::Grant {
                grant: request.grant,
                incident: incident_id,
                cad_number: &cad_number,
            },
            subject: actor.user_id,
            property,
            lock: request.lock,
            credential,
            confirmation: Some(confirmation),
            scope: Scope::Open,
            expires_at: grant_ends.min(now + minting.lifetime),
            policy_set_hash: decision.policy_set_hash,
            policies: &decision.determining_policies,
            proven_in_request: proven.is_some(),
        },
        now,
    )
    .await?;
    let text = format!(
        "An entry token for your lock \"{lock_name}\" at {} was issued to a responder for incident {} \
         ({}). It is valid until {} and opens the door once.",
        ctx.property.address,
        cad_number,
        incident_kind,
        minted.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    notify_property(
        &tx,
        tenant,
        property,
        &Notice {
            kind: "token.issued",
            event: hex::encode(minted.cti),
            subject: "firstkey: an entry token for your home was issued",
            text: &text,
        },
        now,
    )
    .await?;
    let lock_warnings = crate::health::of_lock(&tx, actor.tenant, request.lock, now)
        .await?
        .warnings;
    tx.commit().await.map_err(StoreError::from)?;
    crate::metrics::count(|m| m.tokens_issued.inc());
    Ok(IssuedToken {
        token: minted.token_text(),
        token_id: hex::encode(minted.cti),
        lock_id: request.lock,
        grant_id: request.grant,
        kid: minted.kid,
        not_before: minted.not_before,
        expires_at: minted.expires_at,
        max_uses: 1,
        lock_warnings,
    })
}

/// The issuer key and name a token is signed with, loaded before the minting transaction.
pub(crate) struct Signer {
    key: keys::SigningKey,
    kid: firstkey_token::KeyId,
    issuer: String,
}

impl Signer {
    /// The municipality's newest usable issuer key and the `iss` claim for a token for `lock`:
    /// the municipality's short issuer id if the lock's trust bundle names it (the lock reported
    /// a bundle at or after the first one naming it, or every bundle of the municipality named
    /// it), else its slug — which the bundle that renamed the issuer still accepts, so a lock
    /// that updated but has not reported yet opens either way (V26, `firstkey_token::bundle`).
    pub(crate) async fn load(
        client: &impl GenericClient,
        tenant: crate::store::Tenant,
        lock: Uuid,
        key_dir: &Path,
        now: DateTime<Utc>,
    ) -> Result<Self, EmergencyError> {
        let key = keys::current_signing_key(client, tenant, key_dir, now).await?;
        let kid = key.key_id()?;
        let issuer = client
            .prepare_cached(
                "SELECT CASE WHEN m.issuer_id_since = 1 OR l.trust_bundle_version >= m.issuer_id_since
                             THEN m.issuer_id ELSE m.slug END
                 FROM municipalities m LEFT JOIN locks l ON l.id = $2 AND l.municipality_id = m.id
                 WHERE m.id = $1",
            )
            .await?;
        let issuer: String = client
            .query_one(&issuer, &[&tenant.id(), &lock])
            .await?
            .get(0);
        Ok(Self { key, kid, issuer })
    }
}

/// Under what a token is minted.
pub(crate) enum Holder<'a> {
    /// A responder's token under a live grant of an incident.
    Grant {
        /// The grant.
        grant: Uuid,
        /// Its incident.
        incident: Uuid,
        /// The incident's CAD number (the `incident` claim).
        cad_number: &'a str,
    },
    /// A trusted party's standing access (the `grant` claim carries the trusted party's id, the
    /// `incident` claim the word `trusted`).
    Trusted {
        /// The trusted party.
        party: Uuid,
    },
    /// The homeowner's remote unlock (`remote_open` scope, no `cnf`): delivered as a
    /// `RemoteOpen` inbox entry, never handed to anyone. The `grant` claim carries the property id,
    /// the `incident` claim the word `remote`.
    Remote {
        /// Seconds the lock holds the door open.
        hold_secs: u32,
    },
}

impl Holder<'_> {
    /// The kind of holder, for spans: `grant`, `trusted` or `remote`.
    fn label(&self) -> &'static str {
        match self {
            Self::Grant { .. } => "grant",
            Self::Trusted { .. } => "trusted",
            Self::Remote { .. } => "remote",
        }
    }
}

/// Everything a token and its records need; see [`mint_recorded`].
pub(crate) struct Mint<'a> {
    pub tenant: crate::store::Tenant,
    pub holder: Holder<'a>,
    /// The user the token is issued to (`sub`).
    pub subject: Uuid,
    pub property: Uuid,
    pub lock: Uuid,
    /// The credential whose key is `confirmation` (the step-up credential for a remote open).
    pub credential: Uuid,
    /// The `cnf` key; none only for a remote open.
    pub confirmation: Option<ConfirmationKey>,
    pub scope: Scope,
    /// Not valid from this instant (whole seconds are kept).
    pub expires_at: DateTime<Utc>,
    pub policy_set_hash: [u8; 32],
    pub policies: &'a [String],
    /// Whether the freshness came from an assertion the request itself carried (`proof`), not
    /// from the session's step-up.
    pub proven_in_request: bool,
}

/// A token minted and recorded.
pub(crate) struct Minted {
    pub bytes: Vec<u8>,
    /// The lock inbox entry that carries it.
    pub inbox_seq: i64,
    pub cti: [u8; 16],
    pub kid: String,
    pub not_before: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Minted {
    /// The token as handed out: base64url without padding.
    pub(crate) fn token_text(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.bytes)
    }
}

/// Mints a single-use token for one lock, bound to `confirmation`, and inside `tx` records it
/// (`issued_tokens`), audits it (`token.issue`) and queues it for the lock: the one path every
/// token takes, whoever it is for. Its span names only the kind of holder (a closed set).
#[tracing::instrument(name = "token.mint", skip_all, fields(holder = mint.holder.label()))]
pub(crate) async fn mint_recorded(
    tx: &impl GenericClient,
    signer: &Signer,
    mint: &Mint<'_>,
    now: DateTime<Utc>,
) -> Result<Minted, EmergencyError> {
    let mut cti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut cti)
        .map_err(|_| keys::KeyError::Random)?;
    let remote = matches!(mint.holder, Holder::Remote { .. });
    let (grant_claim, incident_claim, grant_id, party_id, incident_id) = match &mint.holder {
        Holder::Grant {
            grant,
            incident,
            cad_number,
        } => (
            *grant,
            (*cad_number).to_owned(),
            Some(*grant),
            None,
            Some(*incident),
        ),
        Holder::Trusted { party } => (*party, "trusted".to_owned(), None, Some(*party), None),
        Holder::Remote { .. } => (mint.property, "remote".to_owned(), None, None, None),
    };
    let claims = Claims {
        issuer: signer.issuer.clone(),
        subject: mint.subject.to_string(),
        audience: LockId::parse(&mint.lock.to_string())
            .ok_or_else(|| EmergencyError::Invalid("lock id is not a token audience".to_owned()))?,
        expires_at: unix_seconds(mint.expires_at),
        not_before: unix_seconds(now),
        issued_at: unix_seconds(now),
        token_id: TokenId(cti),
        scope: mint.scope,
        incident: incident_claim,
        grant: GrantId(*grant_claim.as_bytes()),
        max_uses: 1,
        confirmation: mint.confirmation,
    };
    let bytes = firstkey_token::mint(&claims, &signer.kid, &signer.key.pair)
        .map_err(EmergencyError::Mint)?;
    let hash = firstkey_token::token_hash(&bytes);
    // The stored window is the token's own (whole seconds), so the records match what the lock sees.
    let not_before = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    let expires_at =
        DateTime::from_timestamp(mint.expires_at.timestamp(), 0).unwrap_or(mint.expires_at);
    // Prepared once per connection: every token takes this path.
    let insert = tx
        .prepare_cached(
            "INSERT INTO issued_tokens (cti, municipality_id, grant_id, trusted_party_id, remote_open, lock_id,
                 responder_id, credential_id, kid, token_hash, issued_at, not_before, expires_at)
             VALUES ($1, $2, $3, $4, $13, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &cti.to_vec(),
            &mint.tenant.id(),
            &grant_id,
            &party_id,
            &mint.lock,
            &mint.subject,
            &mint.credential,
            &signer.key.kid,
            &hash.as_bytes().to_vec(),
            &now,
            &not_before,
            &expires_at,
            &remote,
        ],
    )
    .await
    .map_err(crate::store::conflict_or_query)?;
    let mut event = Event::new("token.issue", Outcome::Allow)
        .actor(mint.subject)
        .subject("token", Uuid::from_bytes(cti))
        .property(mint.property)
        .policy(mint.policy_set_hash)
        .details(serde_json::json!({
            "grant": grant_id,
            "trusted_party": party_id,
            "scope": mint.scope.as_str(),
            "lock": mint.lock,
            "kid": signer.key.kid,
            "token_hash": hex::encode(hash.as_bytes()),
            "expires_at": expires_at.to_rfc3339(),
            "credential": mint.credential,
            "assertion": if mint.proven_in_request { "in_request" } else { "step_up" },
            "policies": mint.policies,
        }));
    if let Some(incident) = incident_id {
        event = event.incident(incident);
    }
    audit::record(tx, mint.tenant, &event, now).await?;
    let message = match mint.holder {
        Holder::Remote { hold_secs } => InboxMessage::RemoteOpen {
            token: bytes.clone(),
            hold_secs,
        },
        Holder::Grant { .. } | Holder::Trusted { .. } => InboxMessage::Token(bytes.clone()),
    };
    let inbox_seq = inbox::push(tx, mint.tenant, mint.lock, &message, now).await?;
    Ok(Minted {
        inbox_seq,
        bytes,
        cti,
        kid: signer.key.kid.clone(),
        not_before,
        expires_at,
    })
}

/// The `cnf` key: the P-256 public key of the credential (of one of `kinds`) the session's step-up used. A
/// suspended or foreign credential means no fresh assertion; a key of another algorithm cannot be
/// proven at the door.
pub(crate) async fn confirmation_key(
    client: &impl GenericClient,
    actor: &Actor,
    credential: Uuid,
    kinds: &[&str],
) -> Result<ConfirmationKey, EmergencyError> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    let query = client
        .prepare_cached(
            "SELECT public_key_cose FROM webauthn_credentials
             WHERE municipality_id = $1 AND id = $2 AND user_id = $3 AND status = 'active'
               AND kind = ANY($4)",
        )
        .await?;
    let cose: Vec<u8> = client
        .query_opt(
            &query,
            &[&actor.tenant.id(), &credential, &actor.user_id, &kinds],
        )
        .await?
        .ok_or(EmergencyError::StepUpRequired)?
        .get(0);
    p256_from_cose(&cose).ok_or_else(|| {
        EmergencyError::Conflict(
            "this security key does not use P-256 (ES256), which locks verify; enrol another key"
                .to_owned(),
        )
    })
}

/// An EC2 P-256 COSE_Key (RFC 9052 §7: `{1: 2, -1: 1, -2: x, -3: y, …}`) as a confirmation key.
pub fn p256_from_cose(bytes: &[u8]) -> Option<ConfirmationKey> {
    let mut reader = Cbor { bytes, pos: 0 };
    let (major, entries) = reader.head()?;
    if major != 5 || entries > 16 {
        return None;
    }
    let (mut kty, mut crv, mut x, mut y) = (None, None, None, None);
    for _ in 0..entries {
        let label = reader.int()?;
        match reader.peek_major()? {
            0 | 1 => {
                let value = reader.int()?;
                match label {
                    1 => kty = Some(value),
                    -1 => crv = Some(value),
                    _ => {}
                }
            }
            2 => {
                let value = reader.bytes()?;
                match label {
                    -2 => x = Some(value),
                    -3 => y = Some(value),
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    if reader.pos != bytes.len() || kty != Some(2) || crv != Some(1) {
        return None;
    }
    let (x, y): (&[u8], &[u8]) = (x?, y?);
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    ConfirmationKey::p256_from_sec1(&point)
}

/// Just enough CBOR to read a COSE_Key of integers and byte strings.
struct Cbor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cbor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn peek_major(&self) -> Option<u8> {
        self.bytes.get(self.pos).map(|b| b >> 5)
    }

    fn head(&mut self) -> Option<(u8, u64)> {
        let first = *self.take(1)?.first()?;
        let value = match first & 0x1f {
            n @ 0..=23 => u64::from(n),
            24 => u64::from(*self.take(1)?.first()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        Some((first >> 5, value))
    }

    fn int(&mut self) -> Option<i64> {
        match self.head()? {
            (0, n) => i64::try_from(n).ok(),
            (1, n) => i64::try_from(n).ok().map(|n| -1 - n),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        match self.head()? {
            (2, n) => self.take(usize::try_from(n).ok()?),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cose(x: &[u8], y: &[u8]) -> Vec<u8> {
        let mut out = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        out.extend_from_slice(x);
        out.extend_from_slice(&[0x22, 0x58, 0x20]);
        out.extend_from_slice(y);
        out
    }

    #[test]
    fn reads_p256_cose_keys_only() {
        let key = p256_from_cose(&cose(&[1; 32], &[2; 32])).unwrap();
        let ConfirmationKey::P256(point) = key else {
            panic!("P-256 expected")
        };
        assert_eq!(point[0], 4);
        assert_eq!(&point[1..33], &[1; 32]);
        assert_eq!(&point[33..], &[2; 32]);
        assert!(p256_from_cose(&[]).is_none());
        assert!(p256_from_cose(&[0x00]).is_none());
        let mut trailing = cose(&[1; 32], &[2; 32]);
        trailing.push(0);
        assert!(p256_from_cose(&trailing).is_none());
        let short = cose(&[1; 32], &[2; 32]);
        assert!(p256_from_cose(&short[..short.len() - 1]).is_none());
        // An OKP (Ed25519) key.
        let mut okp = vec![0xa4, 0x01, 0x01, 0x03, 0x27, 0x20, 0x06, 0x21, 0x58, 0x20];
        okp.extend_from_slice(&[3; 32]);
        assert!(p256_from_cose(&okp).is_none());
    }
}

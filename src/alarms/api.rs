//! The monitoring API: a provider reports an alarm for one of its accounts. Authenticated and made
//! idempotent exactly as the CAD API is ([`crate::emergency::cad`]): the same credentials, the same
//! signed string, the same `idempotency_keys` (a retry with the key gets the first answer and
//! changes nothing; the key with another body is a conflict; a failed call stores nothing).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Alarm, AlarmKind, Source};
use crate::crypto::Kek;
use crate::emergency::EmergencyError;
use crate::emergency::cad::{self, CadCall, CadResponse};
use crate::policy::PolicyEngine;
use crate::store::StoreError;

/// Body of `POST /api/v1/monitoring/alarms`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitoringAlarm {
    /// The homeowner's account at the provider (linked to a property by the homeowner).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub account: String,
    /// What went off.
    pub kind: AlarmKind,
    /// The monitoring centre's operator verified the alarm (call-back, video, a second sensor).
    #[serde(default)]
    pub confirmed: bool,
    /// The detector's name, 1 to 100 characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub detector: Option<String>,
}

/// Handles one signed monitoring call: authenticate, claim the idempotency key, act, store the
/// answer, all in one transaction.
pub async fn handle(
    client: &mut deadpool_postgres::Object,
    kek: &Kek,
    engine: &PolicyEngine,
    call: &CadCall<'_>,
    now: DateTime<Utc>,
) -> Result<CadResponse, EmergencyError> {
    let (tenant, key_id) = cad::authenticate(&*client, kek, call, now).await?;
    cad::check_idempotency_key(call.idempotency_key)?;
    let hash = cad::request_hash(call);
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
    let input: MonitoringAlarm = serde_json::from_slice(call.body)
        .map_err(|e| EmergencyError::Invalid(format!("body: {e}")))?;
    let account = crate::domain::Text::parse("account", &input.account, 100)
        .map_err(|e| EmergencyError::Invalid(e.to_string()))?;
    let property = tx
        .query_opt(
            "SELECT property_id FROM monitoring_accounts WHERE municipality_id = $1 AND key_id = $2 AND account = $3",
            &[&tenant.id(), &key_id, &account.as_str()],
        )
        .await?
        .ok_or(EmergencyError::NotFound)?
        .get(0);
    let alarm = Alarm {
        property,
        kind: input.kind,
        source: Source::Monitoring {
            key_id,
            confirmed: input.confirmed,
        },
        // The Idempotency-Key already makes a provider's retry one alarm.
        source_id: None,
        detector: input.detector,
    };
    let outcome = super::raise(&tx, engine, tenant, &alarm, now).await?;
    let status: i16 = 202;
    let body = serde_json::to_value(&outcome)
        .map_err(|e| StoreError::Conflict(format!("response: {e}")))?;
    tx.execute(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4
         WHERE municipality_id = $1 AND key = $2",
        &[&tenant.id(), &call.idempotency_key, &status, &body],
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(CadResponse {
        status: 202,
        body,
        replayed: false,
    })
}

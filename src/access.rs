//! Authorization glue: turns an [`Actor`] and a property into the policy engine's typed attributes,
//! asks the engine, audits every denial, and maps a denial to what the caller may learn.
//!
//! A denied caller gets 404, exactly as for a property that does not exist, so ids leak nothing —
//! unless the caller would be allowed with a fresh step-up, in which case it is told to step up
//! (it already may know the resource exists).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::domain::AgencyKind;
use crate::error::CoreError;
use crate::plans::AgencyRules;
use crate::policy::{AgencyRule, PlanAttrs, PrincipalAttrs, PropertyAttrs};
use crate::policy::{AuthzDecision, AuthzRequest, PolicyEngine};
use crate::store::properties::{self, Property, StoredPlan};
use crate::store::{StoreError, Tenant};

/// The actor as the policy sees it, read from the database (status and agency kind are current).
pub async fn principal(
    client: &impl GenericClient,
    actor: &Actor,
) -> Result<PrincipalAttrs, StoreError> {
    let row = client
        .query_opt(
            "SELECT u.status, a.kind, a.id FROM users u LEFT JOIN agencies a ON a.id = u.agency_id
             WHERE u.municipality_id = $1 AND u.id = $2",
            &[&actor.tenant.id(), &actor.user_id],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(principal_of(actor, row.get(0), row.get(1), row.get(2)))
}

/// The actor as the policy sees it, from the user's `status` and agency (`kind`, `id`) as read
/// by [`principal`] or by a caller's own query that reads them along with other rows.
pub fn principal_of(
    actor: &Actor,
    status: &str,
    agency_kind: Option<&str>,
    agency: Option<Uuid>,
) -> PrincipalAttrs {
    PrincipalAttrs {
        id: actor.user_id,
        municipality: actor.tenant.id(),
        roles: actor.roles.clone(),
        agency_kind: agency_kind.and_then(|k| AgencyKind::parse(k).ok()),
        agency,
        active: status == "active",
    }
}

fn rule(r: &crate::plans::AgencyRule) -> AgencyRule {
    AgencyRule {
        allowed: r.allowed,
        incident_types: r.incident_types.iter().cloned().collect(),
        second_approval: r.second_approval,
    }
}

/// The plan's choices as entity attributes.
pub fn plan_attrs(agencies: &AgencyRules, max_grant_minutes: i32) -> PlanAttrs {
    PlanAttrs {
        fire: rule(&agencies.fire),
        ems: rule(&agencies.ems),
        police: rule(&agencies.police),
        max_grant_minutes: u32::try_from(max_grant_minutes).unwrap_or(0),
    }
}

/// A property of the tenant with its current plan (if any) and its policy attributes.
pub struct PropertyContext {
    /// The property.
    pub property: Property,
    /// Its newest plan version.
    pub plan: Option<StoredPlan>,
    /// What the policy sees.
    pub attrs: PropertyAttrs,
}

/// Loads a property of the tenant; another tenant's property is `NotFound`.
pub async fn property(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<PropertyContext, StoreError> {
    let property = properties::property(client, tenant, id).await?;
    let plan = match properties::current_plan(client, tenant, id).await {
        Ok(p) => Some(p),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e),
    };
    let attrs = PropertyAttrs {
        id: property.id,
        municipality: tenant.id(),
        owner: property.owner_id,
        plan: plan
            .as_ref()
            .map(|p| plan_attrs(&p.agencies, p.max_grant_minutes))
            .unwrap_or_else(PlanAttrs::closed),
    };
    Ok(PropertyContext {
        property,
        plan,
        attrs,
    })
}

/// Asks the engine. `build(step_up_fresh)` makes the request; it is built with the session's real
/// step-up state, and on a denial once more as if stepped up, to tell "step up first" from "no".
/// Denials are audited (committed at once, whatever the caller does next).
pub async fn authorize(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    property: Option<Uuid>,
    now: DateTime<Utc>,
    build: impl Fn(bool) -> AuthzRequest,
) -> Result<AuthzDecision, CoreError> {
    match judge(engine, actor, property, actor.stepped_up(now), build) {
        Ok(decision) => Ok(decision),
        Err(denial) => {
            let (event, answer) = *denial;
            let tx = client.transaction().await.map_err(StoreError::from)?;
            audit::record(&tx, actor.tenant, &event, now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            Err(answer)
        }
    }
}

/// [`authorize`] inside the caller's transaction `tx`, with the freshness the caller established
/// (an assertion the request itself carried, or the session's step-up). A denial is audited in
/// `tx`; the caller commits `tx` before answering with the error, so the entry stands.
pub async fn authorize_in(
    tx: &impl GenericClient,
    engine: &PolicyEngine,
    actor: &Actor,
    property: Option<Uuid>,
    fresh: bool,
    now: DateTime<Utc>,
    build: impl Fn(bool) -> AuthzRequest,
) -> Result<AuthzDecision, CoreError> {
    match judge(engine, actor, property, fresh, build) {
        Ok(decision) => Ok(decision),
        Err(denial) => {
            let (event, answer) = *denial;
            audit::record(tx, actor.tenant, &event, now).await?;
            Err(answer)
        }
    }
}

/// The engine's decision, or the audit entry of the denial and what the caller may learn.
fn judge(
    engine: &PolicyEngine,
    actor: &Actor,
    property: Option<Uuid>,
    fresh: bool,
    build: impl Fn(bool) -> AuthzRequest,
) -> Result<AuthzDecision, Box<(Event, CoreError)>> {
    let request = build(fresh);
    let decision = engine.decide(&request);
    if decision.allowed {
        return Ok(decision);
    }
    let would_with_step_up = !fresh && engine.decide(&build(true)).allowed;
    let mut event = Event::new("policy.deny", Outcome::Deny)
        .actor(actor.user_id)
        .policy(decision.policy_set_hash)
        .details(serde_json::json!({
            "action": request.action().as_str(),
            "policies": decision.determining_policies,
            "step_up_required": would_with_step_up,
        }));
    if let Some(p) = property {
        // Only reference the property when it is the caller's tenant's (it was loaded in scope).
        event = event.property(p);
    }
    let answer = if would_with_step_up {
        CoreError::StepUpRequired
    } else {
        CoreError::NotFound
    };
    Err(Box::new((event, answer)))
}

/// Whether the actor is named in a live grant for the property.
pub async fn named_in_live_grant(
    client: &impl GenericClient,
    actor: &Actor,
    property: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    // Several live grants may name the responder for one property: any one is enough.
    crate::store::exists(
        client,
        "SELECT 1 FROM grants g JOIN grant_responders r ON r.grant_id = g.id
         WHERE g.municipality_id = $1 AND g.property_id = $2 AND r.responder_id = $3
           AND g.status = 'live' AND g.starts_at <= $4 AND g.ends_at > $4",
        &[&actor.tenant.id(), &property, &actor.user_id, &now],
    )
    .await
}

/// The agencies with an open incident of the tenant tied to the property: by a grant for it that is
/// live or awaiting approval, or by an explicit incident↔property link. An incident whose address
/// merely matches is no tie (anyone may type an address).
pub async fn incident_agencies_here(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
) -> Result<std::collections::BTreeSet<Uuid>, StoreError> {
    Ok(client
        .query(
            "SELECT DISTINCT i.agency_id FROM incidents i
             WHERE i.municipality_id = $1 AND i.closed_at IS NULL
               AND (EXISTS (SELECT 1 FROM grants g
                            WHERE g.municipality_id = i.municipality_id AND g.incident_id = i.id
                              AND g.property_id = $2 AND g.status IN ('live', 'awaiting_approval', 'awaiting_consent'))
                    OR EXISTS (SELECT 1 FROM incident_properties l
                               WHERE l.municipality_id = i.municipality_id AND l.incident_id = i.id
                                 AND l.property_id = $2))",
            &[&tenant.id(), &property],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

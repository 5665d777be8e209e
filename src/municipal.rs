//! Municipal administration, the core both faces call (`http::admin` for JSON, `web::admin` for
//! pages, `cli` for `firstkey admin agency …`): agencies (create, rename, retire), units of an
//! agency and their members, the staff accounts (list with filters, disable, enable), pending
//! invitations (list, revoke), CAD credentials (list, revoke; creating is `emergency::cad`), and the
//! read-only views of issuer keys, trust bundles and the locks' bundle versions.
//!
//! Every question "may this person see or change the administration" is the policy set's
//! (`view_administration`, `administer` on the municipality; see `policies/admin.cedar`), asked
//! through [`crate::access::authorize`], which audits each denial. Every change is audited in the
//! transaction that makes it. A unit's members are the responders of its agency whose `users.unit`
//! names it, so a grant to a unit (`emergency::grants`) resolves exactly these members.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::access;
use crate::audit::{self, Event, Outcome};
use crate::auth::Actor;
use crate::domain::{AgencyKind, Role, Text};
use crate::error::CoreError;
use crate::policy::{AuthzRequest, MunicipalityAttrs, PolicyEngine, StepUpContext};
use crate::store::{StoreError, Tenant};

/// Most rows any administration list returns.
pub const MAX_ROWS: i64 = 500;

/// Why an administration request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The thing does not exist in the caller's municipality, or the caller may not know.
    #[error("not found")]
    NotFound,
    /// The change needs a fresh WebAuthn assertion.
    #[error("step-up required")]
    StepUpRequired,
    /// Bad input; the text names the field and is safe to show.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The change conflicts with the current state; the text is safe to show.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The policy check failed otherwise (already classified for the caller).
    #[error("access check failed")]
    Access(#[source] CoreError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

impl From<crate::domain::ParseError> for AdminError {
    fn from(e: crate::domain::ParseError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// What the caller wants to do with the administration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Read it (`view_administration`).
    View,
    /// Change it (`administer`, needs a fresh step-up).
    Change,
}

/// Asks the policy whether `actor` may view or change their municipality's administration. A
/// refusal is audited; a caller who would be allowed after a step-up is told so, anyone else gets
/// "not found".
pub async fn authorize(
    client: &mut deadpool_postgres::Object,
    engine: &PolicyEngine,
    actor: &Actor,
    intent: Intent,
    now: DateTime<Utc>,
) -> Result<(), AdminError> {
    let principal = access::principal(&*client, actor).await?;
    let town = MunicipalityAttrs {
        municipality: actor.tenant.id(),
    };
    access::authorize(client, engine, actor, None, now, |fresh| {
        let ctx = StepUpContext {
            step_up_fresh: fresh,
        };
        match intent {
            Intent::View => AuthzRequest::view_administration(&principal, town, ctx),
            Intent::Change => AuthzRequest::administer(&principal, town, ctx),
        }
    })
    .await
    .map(drop)
    .map_err(|e| match e {
        CoreError::NotFound => AdminError::NotFound,
        CoreError::StepUpRequired => AdminError::StepUpRequired,
        other => AdminError::Access(other),
    })
}

// ---------------------------------------------------------------------------------------------
// Agencies.

/// An agency with its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AgencyView {
    /// Identifier.
    pub id: Uuid,
    /// `fire`, `ems`, `police` or `other`.
    pub kind: String,
    /// Name, e.g. "Springfield Fire Department".
    pub name: String,
    /// When it was retired (no new invitations or units).
    pub retired_at: Option<DateTime<Utc>>,
    /// Its units.
    pub units: i64,
    /// Accounts in it (any status).
    pub members: i64,
}

/// Body of an agency creation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgency {
    /// `fire`, `ems`, `police` or `other`.
    #[schema(pattern = "^(fire|ems|police|other)$")]
    pub kind: String,
    /// Name, 1 to 200 characters (not only white space), unique in the municipality.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
}

/// Body of a rename.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewName {
    /// The new name, 1 to 200 characters (not only white space).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
}

/// The municipality's agencies by name.
pub async fn agencies(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<AgencyView>, AdminError> {
    let rows = client
        .query(
            "SELECT a.id, a.kind, a.name, a.retired_at,
                    (SELECT count(*) FROM units u WHERE u.municipality_id = a.municipality_id AND u.agency_id = a.id),
                    (SELECT count(*) FROM users s WHERE s.municipality_id = a.municipality_id AND s.agency_id = a.id)
             FROM agencies a WHERE a.municipality_id = $1 ORDER BY a.name LIMIT $2",
            &[&tenant.id(), &MAX_ROWS],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AgencyView {
            id: r.get(0),
            kind: r.get(1),
            name: r.get(2),
            retired_at: r.get(3),
            units: r.get(4),
            members: r.get(5),
        })
        .collect())
}

async fn agency(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<AgencyView, AdminError> {
    agencies(client, tenant)
        .await?
        .into_iter()
        .find(|a| a.id == id)
        .ok_or(AdminError::NotFound)
}

fn unique_name(e: tokio_postgres::Error, what: &str) -> AdminError {
    match crate::store::conflict_or_query(e) {
        StoreError::Conflict(_) => AdminError::Conflict(format!("{what} of that name exists")),
        other => other.into(),
    }
}

/// Creates an agency (audited). `actor` is `None` for operator commands.
pub async fn create_agency(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Option<Uuid>,
    new: &NewAgency,
    now: DateTime<Utc>,
) -> Result<AgencyView, AdminError> {
    let kind = AgencyKind::parse(&new.kind)?;
    let name = Text::parse("name", &new.name, 200)?;
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO agencies (id, municipality_id, kind, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &tenant.id(), &kind.as_str(), &name.as_str(), &now],
    )
    .await
    .map_err(|e| unique_name(e, "an agency"))?;
    let mut event = Event::new("agency.create", Outcome::Info)
        .subject("agency", id)
        .details(serde_json::json!({ "kind": kind.as_str(), "name": name.as_str() }));
    event.actor = actor;
    audit::record(tx, tenant, &event, now).await?;
    agency(tx, tenant, id).await
}

/// Renames an agency (audited, with the old and new names).
pub async fn rename_agency(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Option<Uuid>,
    id: Uuid,
    new_name: &str,
    now: DateTime<Utc>,
) -> Result<AgencyView, AdminError> {
    let name = Text::parse("name", new_name, 200)?;
    let before = agency(tx, tenant, id).await?;
    tx.execute(
        "UPDATE agencies SET name = $3 WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &id, &name.as_str()],
    )
    .await
    .map_err(|e| unique_name(e, "an agency"))?;
    let mut event = Event::new("agency.rename", Outcome::Info)
        .subject("agency", id)
        .details(serde_json::json!({ "from": before.name, "to": name.as_str() }));
    event.actor = actor;
    audit::record(tx, tenant, &event, now).await?;
    agency(tx, tenant, id).await
}

/// Retires an agency (audited): it takes no new invitations or units; its people and history stay.
pub async fn retire_agency(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Option<Uuid>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<AgencyView, AdminError> {
    let before = agency(tx, tenant, id).await?;
    if before.retired_at.is_some() {
        return Err(AdminError::Conflict(
            "the agency is already retired".to_owned(),
        ));
    }
    tx.execute(
        "UPDATE agencies SET retired_at = $3 WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &id, &now],
    )
    .await?;
    let mut event = Event::new("agency.retire", Outcome::Info)
        .subject("agency", id)
        .details(serde_json::json!({ "name": before.name }));
    event.actor = actor;
    audit::record(tx, tenant, &event, now).await?;
    agency(tx, tenant, id).await
}

/// Refuses an agency of the tenant that is unknown or retired (for new invitations and units).
pub async fn require_open_agency(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<AgencyView, AdminError> {
    let found = agency(client, tenant, id).await.map_err(|e| match e {
        AdminError::NotFound => AdminError::Invalid("agency: no such agency".to_owned()),
        other => other,
    })?;
    if found.retired_at.is_some() {
        return Err(AdminError::Invalid(
            "agency: the agency is retired".to_owned(),
        ));
    }
    Ok(found)
}

/// The municipality's zone as stored (UTC if the stored name is unknown to this build).
pub async fn zone_of(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<chrono_tz::Tz, StoreError> {
    let name: Option<String> = client
        .query_opt(
            "SELECT time_zone FROM municipalities WHERE id = $1",
            &[&tenant.id()],
        )
        .await?
        .map(|r| r.get(0));
    Ok(name
        .and_then(|n| n.parse().ok())
        .unwrap_or(chrono_tz::Tz::UTC))
}

/// Checks an IANA zone name (`Europe/Amsterdam`, `America/New_York`, `UTC`).
pub fn parse_zone(text: &str) -> Result<chrono_tz::Tz, String> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return Err("time_zone: an IANA zone name such as Europe/Amsterdam".to_owned());
    }
    text.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("time_zone: {text:?} is not an IANA zone name (e.g. Europe/Amsterdam)")
    })
}

/// The municipality's time zone (IANA name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeZone {
    /// An IANA zone name, e.g. `Europe/Amsterdam`; pages show and read times in it.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_+/-]+$")]
    pub time_zone: String,
}

/// The municipality's time zone.
pub async fn time_zone(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<TimeZone, AdminError> {
    Ok(TimeZone {
        time_zone: zone_of(client, tenant).await?.name().to_owned(),
    })
}

/// Sets the municipality's time zone (audited; an unknown zone name is invalid and changes
/// nothing). Setting the zone it already has changes nothing.
pub async fn set_time_zone(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Option<Uuid>,
    zone: &str,
    now: DateTime<Utc>,
) -> Result<TimeZone, AdminError> {
    let tz = parse_zone(zone).map_err(AdminError::Invalid)?;
    let before = zone_of(tx, tenant).await?;
    if before != tz {
        tx.execute(
            "UPDATE municipalities SET time_zone = $2 WHERE id = $1",
            &[&tenant.id(), &tz.name()],
        )
        .await?;
        let mut event = Event::new("municipality.time_zone", Outcome::Info)
            .details(serde_json::json!({ "from": before.name(), "to": tz.name() }));
        event.actor = actor;
        audit::record(tx, tenant, &event, now).await?;
    }
    Ok(TimeZone {
        time_zone: tz.name().to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Units and their members.

/// A member of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Member {
    /// The account.
    pub id: Uuid,
    /// Display name.
    pub display_name: String,
    /// `pending`, `active` or `disabled`.
    pub status: String,
}

/// A unit of an agency, e.g. "Engine 7".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UnitView {
    /// Identifier.
    pub id: Uuid,
    /// Its agency.
    pub agency_id: Uuid,
    /// The agency's name.
    pub agency_name: String,
    /// The unit's name, unique in the municipality (what a grant to a unit names).
    pub name: String,
    /// Its members: the agency's responders whose unit this is.
    pub members: Vec<Member>,
}

/// Body of a unit creation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUnit {
    /// The agency (not retired).
    pub agency: Uuid,
    /// Name, 1 to 100 characters (not only white space), unique in the municipality.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
}

/// Body of a unit rename.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitName {
    /// The new name, 1 to 100 characters (not only white space), unique in the municipality.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    pub name: String,
}

/// Body of a member addition.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// A responder of the unit's agency.
    pub user: Uuid,
}

/// The municipality's units by name, with their members.
pub async fn units(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<UnitView>, AdminError> {
    let rows = client
        .query(
            "SELECT u.id, u.agency_id, a.name, u.name,
                    ARRAY(SELECT s.id FROM users s WHERE s.municipality_id = u.municipality_id
                          AND s.agency_id = u.agency_id AND s.unit = u.name ORDER BY s.display_name, s.id),
                    ARRAY(SELECT s.display_name FROM users s WHERE s.municipality_id = u.municipality_id
                          AND s.agency_id = u.agency_id AND s.unit = u.name ORDER BY s.display_name, s.id),
                    ARRAY(SELECT s.status FROM users s WHERE s.municipality_id = u.municipality_id
                          AND s.agency_id = u.agency_id AND s.unit = u.name ORDER BY s.display_name, s.id)
             FROM units u JOIN agencies a ON a.municipality_id = u.municipality_id AND a.id = u.agency_id
             WHERE u.municipality_id = $1 AND u.retired_at IS NULL ORDER BY u.name LIMIT $2",
            &[&tenant.id(), &MAX_ROWS],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ids: Vec<Uuid> = r.get(4);
            let names: Vec<String> = r.get(5);
            let statuses: Vec<String> = r.get(6);
            UnitView {
                id: r.get(0),
                agency_id: r.get(1),
                agency_name: r.get(2),
                name: r.get(3),
                members: ids
                    .into_iter()
                    .zip(names)
                    .zip(statuses)
                    .map(|((id, display_name), status)| Member {
                        id,
                        display_name,
                        status,
                    })
                    .collect(),
            }
        })
        .collect())
}

async fn unit(
    client: &impl GenericClient,
    tenant: Tenant,
    id: Uuid,
) -> Result<UnitView, AdminError> {
    units(client, tenant)
        .await?
        .into_iter()
        .find(|u| u.id == id)
        .ok_or(AdminError::NotFound)
}

/// Creates a unit of an agency that is not retired (audited).
pub async fn create_unit(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    new: &NewUnit,
    now: DateTime<Utc>,
) -> Result<UnitView, AdminError> {
    let name = Text::parse("name", &new.name, 100)?;
    require_open_agency(tx, tenant, new.agency).await?;
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO units (id, municipality_id, agency_id, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &tenant.id(), &new.agency, &name.as_str(), &now],
    )
    .await
    .map_err(|e| unique_name(e, "a unit"))?;
    audit::record(
        tx,
        tenant,
        &Event::new("unit.create", Outcome::Info)
            .actor(actor)
            .subject("unit", id)
            .details(serde_json::json!({ "agency": new.agency, "name": name.as_str() })),
        now,
    )
    .await?;
    unit(tx, tenant, id).await
}

/// Renames a unit (audited); its members move with it (`users.unit` follows in the same
/// transaction, so a grant to the unit names the same people). Names stay unique in the
/// municipality, retired units' names included.
pub async fn rename_unit(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    unit_id: Uuid,
    name: &str,
    now: DateTime<Utc>,
) -> Result<UnitView, AdminError> {
    let name = Text::parse("name", name, 100)?;
    let before = unit(tx, tenant, unit_id).await?;
    if before.name == name.as_str() {
        return Ok(before);
    }
    tx.execute(
        "UPDATE units SET name = $3 WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &unit_id, &name.as_str()],
    )
    .await
    .map_err(|e| unique_name(e, "a unit"))?;
    tx.execute(
        "UPDATE users SET unit = $4 WHERE municipality_id = $1 AND agency_id = $2 AND unit = $3",
        &[
            &tenant.id(),
            &before.agency_id,
            &before.name,
            &name.as_str(),
        ],
    )
    .await?;
    audit::record(
        tx,
        tenant,
        &Event::new("unit.rename", Outcome::Info)
            .actor(actor)
            .subject("unit", unit_id)
            .details(serde_json::json!({ "from": before.name, "to": name.as_str() })),
        now,
    )
    .await?;
    unit(tx, tenant, unit_id).await
}

/// Retires a unit (audited): its members leave it (their `users.unit` is cleared, so a grant to
/// the unit finds nobody), it is no longer listed, and its name stays taken (history names it).
/// Grants already made to its members are not changed.
pub async fn retire_unit(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    unit_id: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, AdminError> {
    let before = unit(tx, tenant, unit_id).await?;
    tx.execute(
        "UPDATE units SET retired_at = $3 WHERE municipality_id = $1 AND id = $2 AND retired_at IS NULL",
        &[&tenant.id(), &unit_id, &now],
    )
    .await?;
    let members = tx
        .execute(
            "UPDATE users SET unit = NULL WHERE municipality_id = $1 AND agency_id = $2 AND unit = $3",
            &[&tenant.id(), &before.agency_id, &before.name],
        )
        .await?;
    audit::record(
        tx,
        tenant,
        &Event::new("unit.retire", Outcome::Info)
            .actor(actor)
            .subject("unit", unit_id)
            .details(serde_json::json!({ "name": before.name, "members": members })),
        now,
    )
    .await?;
    Ok(usize::try_from(members).unwrap_or(usize::MAX))
}

/// Makes a responder of the unit's agency a member of the unit (their unit until changed; a
/// responder is in one unit at a time). Audited.
pub async fn add_member(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    unit_id: Uuid,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<UnitView, AdminError> {
    let found = unit(tx, tenant, unit_id).await?;
    let row = tx
        .query_opt(
            "SELECT s.agency_id, s.unit, s.status,
                    EXISTS (SELECT 1 FROM user_roles r WHERE r.user_id = s.id AND r.role = 'responder')
             FROM users s WHERE s.municipality_id = $1 AND s.id = $2 FOR UPDATE",
            &[&tenant.id(), &user],
        )
        .await?
        .ok_or_else(|| AdminError::Invalid("user: no such account".to_owned()))?;
    let agency: Option<Uuid> = row.get(0);
    let previous: Option<String> = row.get(1);
    let status: String = row.get(2);
    let responder: bool = row.get(3);
    if !responder || agency != Some(found.agency_id) {
        return Err(AdminError::Invalid(format!(
            "user: must be a responder of {}",
            found.agency_name
        )));
    }
    if status == "disabled" {
        return Err(AdminError::Invalid(
            "user: the account is disabled".to_owned(),
        ));
    }
    if previous.as_deref() == Some(found.name.as_str()) {
        return Ok(found);
    }
    tx.execute(
        "UPDATE users SET unit = $3 WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &user, &found.name],
    )
    .await?;
    audit::record(
        tx,
        tenant,
        &Event::new("unit.member_add", Outcome::Info)
            .actor(actor)
            .subject("user", user)
            .details(serde_json::json!({ "unit": unit_id, "previous_unit": previous })),
        now,
    )
    .await?;
    unit(tx, tenant, unit_id).await
}

/// Takes a member out of a unit (audited); not a member is "not found".
pub async fn remove_member(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    unit_id: Uuid,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<UnitView, AdminError> {
    let found = unit(tx, tenant, unit_id).await?;
    let changed = tx
        .execute(
            "UPDATE users SET unit = NULL
             WHERE municipality_id = $1 AND id = $2 AND agency_id = $3 AND unit = $4",
            &[&tenant.id(), &user, &found.agency_id, &found.name],
        )
        .await?;
    if changed != 1 {
        return Err(AdminError::NotFound);
    }
    audit::record(
        tx,
        tenant,
        &Event::new("unit.member_remove", Outcome::Info)
            .actor(actor)
            .subject("user", user)
            .details(serde_json::json!({ "unit": unit_id })),
        now,
    )
    .await?;
    unit(tx, tenant, unit_id).await
}

// ---------------------------------------------------------------------------------------------
// Accounts.

/// Filters of the account list (each optional).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
pub struct UserFilter {
    /// Only accounts with this role.
    pub role: Option<String>,
    /// Only accounts of this agency.
    pub agency: Option<Uuid>,
    /// Only accounts with this status: `pending`, `active` or `disabled`.
    pub status: Option<String>,
}

/// An account as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UserView {
    /// Identifier.
    pub id: Uuid,
    /// E-mail address.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// `pending`, `active` or `disabled`.
    pub status: String,
    /// Roles held.
    pub roles: Vec<String>,
    /// Agency.
    pub agency_id: Option<Uuid>,
    /// The agency's name.
    pub agency_name: Option<String>,
    /// Unit (responders).
    pub unit: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// The municipality's accounts, filtered, by name (at most [`MAX_ROWS`]).
pub async fn users(
    client: &impl GenericClient,
    tenant: Tenant,
    filter: &UserFilter,
) -> Result<Vec<UserView>, AdminError> {
    let role = match filter.role.as_deref().filter(|s| !s.is_empty()) {
        Some(r) => Some(Role::parse(r)?.as_str()),
        None => None,
    };
    let status = match filter.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s @ ("pending" | "active" | "disabled")) => Some(s),
        Some(_) => {
            return Err(AdminError::Invalid(
                "status: pending, active or disabled".to_owned(),
            ));
        }
        None => None,
    };
    let rows = client
        .query(
            "SELECT u.id, u.email, u.display_name, u.status,
                    ARRAY(SELECT r.role FROM user_roles r WHERE r.user_id = u.id ORDER BY r.role),
                    u.agency_id, a.name, u.unit, u.created_at
             FROM users u LEFT JOIN agencies a ON a.municipality_id = u.municipality_id AND a.id = u.agency_id
             WHERE u.municipality_id = $1
               AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM user_roles r WHERE r.user_id = u.id AND r.role = $2))
               AND ($3::uuid IS NULL OR u.agency_id = $3)
               AND ($4::text IS NULL OR u.status = $4)
             ORDER BY u.display_name, u.id LIMIT $5",
            &[&tenant.id(), &role, &filter.agency, &status, &MAX_ROWS],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UserView {
            id: r.get(0),
            email: r.get(1),
            display_name: r.get(2),
            status: r.get(3),
            roles: r.get(4),
            agency_id: r.get(5),
            agency_name: r.get(6),
            unit: r.get(7),
            created_at: r.get(8),
        })
        .collect())
}

/// Enables a disabled account again (audited). It signs in with its keys as before; its ended
/// sessions, revoked invitations, grants and tokens stay ended.
pub async fn enable(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    target: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AdminError> {
    let row = tx
        .query_opt(
            "SELECT status FROM users WHERE municipality_id = $1 AND id = $2 FOR UPDATE",
            &[&tenant.id(), &target],
        )
        .await?
        .ok_or(AdminError::NotFound)?;
    let status: String = row.get(0);
    if status != "disabled" {
        return Err(AdminError::Conflict(
            "the account is not disabled".to_owned(),
        ));
    }
    tx.execute(
        "UPDATE users SET status = 'active', disabled_at = NULL WHERE municipality_id = $1 AND id = $2",
        &[&tenant.id(), &target],
    )
    .await?;
    // A trusted party's keypad slots come back (the rotation loop mails it new codes).
    crate::codes::standing::sync_parties_of_account(tx, tenant, target, now).await?;
    audit::record(
        tx,
        tenant,
        &Event::new("account.enabled", Outcome::Info)
            .actor(actor)
            .subject("user", target),
        now,
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Invitations.

/// An invitation not yet used, revoked or expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PendingInvitation {
    /// Identifier.
    pub id: Uuid,
    /// Invitee's address.
    pub email: String,
    /// Role granted on acceptance.
    pub role: String,
    /// Agency.
    pub agency_id: Option<Uuid>,
    /// The agency's name.
    pub agency_name: Option<String>,
    /// Display name of the admin who invited.
    pub invited_by: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// The link stops working then.
    pub expires_at: DateTime<Utc>,
}

/// The municipality's pending invitations, newest first.
pub async fn pending_invitations(
    client: &impl GenericClient,
    tenant: Tenant,
    now: DateTime<Utc>,
) -> Result<Vec<PendingInvitation>, AdminError> {
    let rows = client
        .query(
            "SELECT i.id, i.email, i.role, i.agency_id, a.name, u.display_name, i.created_at, i.expires_at
             FROM invitations i
             JOIN users u ON u.municipality_id = i.municipality_id AND u.id = i.created_by
             LEFT JOIN agencies a ON a.municipality_id = i.municipality_id AND a.id = i.agency_id
             WHERE i.municipality_id = $1 AND i.used_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > $2
             ORDER BY i.created_at DESC, i.id LIMIT $3",
            &[&tenant.id(), &now, &MAX_ROWS],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PendingInvitation {
            id: r.get(0),
            email: r.get(1),
            role: r.get(2),
            agency_id: r.get(3),
            agency_name: r.get(4),
            invited_by: r.get(5),
            created_at: r.get(6),
            expires_at: r.get(7),
        })
        .collect())
}

/// Revokes a pending invitation: its link stops working (audited).
pub async fn revoke_invitation(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AdminError> {
    let changed = tx
        .execute(
            "UPDATE invitations SET revoked_at = $3
             WHERE municipality_id = $1 AND id = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $3",
            &[&tenant.id(), &id, &now],
        )
        .await?;
    if changed != 1 {
        return Err(AdminError::NotFound);
    }
    audit::record(
        tx,
        tenant,
        &Event::new("account.invitation_revoked", Outcome::Info)
            .actor(actor)
            .subject("invitation", id),
        now,
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CAD credentials.

/// A CAD credential (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CredentialView {
    /// Row id.
    pub id: Uuid,
    /// The key id CAD sends.
    pub key_id: String,
    /// What it is for.
    pub name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Revoked (its calls are refused).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The municipality's CAD credentials, newest first.
pub async fn credentials(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<Vec<CredentialView>, AdminError> {
    let rows = client
        .query(
            "SELECT id, key_id, name, created_at, revoked_at FROM api_credentials
             WHERE municipality_id = $1 ORDER BY created_at DESC, id LIMIT $2",
            &[&tenant.id(), &MAX_ROWS],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| CredentialView {
            id: r.get(0),
            key_id: r.get(1),
            name: r.get(2),
            created_at: r.get(3),
            revoked_at: r.get(4),
        })
        .collect())
}

/// Revokes a CAD credential: every later call signed with it is refused (audited).
pub async fn revoke_credential(
    tx: &impl GenericClient,
    tenant: Tenant,
    actor: Uuid,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AdminError> {
    let row = tx
        .query_opt(
            "UPDATE api_credentials SET revoked_at = $3
             WHERE municipality_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING key_id",
            &[&tenant.id(), &id, &now],
        )
        .await?
        .ok_or(AdminError::NotFound)?;
    let key_id: String = row.get(0);
    audit::record(
        tx,
        tenant,
        &Event::new("cad.credential_revoke", Outcome::Info)
            .actor(actor)
            .subject("api_credential", id)
            .details(serde_json::json!({ "key_id": key_id })),
        now,
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Keys, trust bundles, locks.

/// An issuer signing key (public facts only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct IssuerKey {
    /// Key id.
    pub kid: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Retired (no longer signs).
    pub retired_at: Option<DateTime<Utc>>,
}

/// A trust bundle version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BundleVersion {
    /// Version number.
    pub version: i64,
    /// Signed.
    pub created_at: DateTime<Utc>,
}

/// A lock and the bundle version it last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LockBundle {
    /// Lock id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The property's address.
    pub address: String,
    /// `unpaired`, `paired` or `retired`.
    pub pairing_state: String,
    /// The trust bundle version the lock reported in its last session (none yet: never connected).
    pub bundle_version: Option<i64>,
    /// Paired and on an older version than the newest (or none).
    pub behind: bool,
    /// Last contact.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Issuer keys, trust bundle versions and each lock's bundle version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct KeysOverview {
    /// Issuer keys, newest first.
    pub issuer_keys: Vec<IssuerKey>,
    /// Bundle versions, newest first.
    pub bundles: Vec<BundleVersion>,
    /// Locks, those behind first (at most 500).
    pub locks: Vec<LockBundle>,
}

/// What the municipality's locks trust, and which are behind.
pub async fn keys_overview(
    client: &impl GenericClient,
    tenant: Tenant,
) -> Result<KeysOverview, AdminError> {
    let issuer_keys = client
        .query(
            "SELECT kid, created_at, retired_at FROM signing_keys WHERE municipality_id = $1
             ORDER BY created_at DESC LIMIT $2",
            &[&tenant.id(), &MAX_ROWS],
        )
        .await?
        .iter()
        .map(|r| IssuerKey {
            kid: r.get(0),
            created_at: r.get(1),
            retired_at: r.get(2),
        })
        .collect();
    let bundles: Vec<BundleVersion> = client
        .query(
            "SELECT version, created_at FROM trust_bundles WHERE municipality_id = $1
             ORDER BY version DESC LIMIT $2",
            &[&tenant.id(), &MAX_ROWS],
        )
        .await?
        .iter()
        .map(|r| BundleVersion {
            version: r.get(0),
            created_at: r.get(1),
        })
        .collect();
    let newest = bundles.first().map(|b| b.version);
    let mut locks: Vec<LockBundle> = client
        .query(
            "SELECT l.id, l.name, p.address, l.pairing_state, l.trust_bundle_version, l.last_seen_at
             FROM locks l JOIN properties p ON p.municipality_id = l.municipality_id AND p.id = l.property_id
             WHERE l.municipality_id = $1 ORDER BY p.address, l.name LIMIT $2",
            &[&tenant.id(), &MAX_ROWS],
        )
        .await?
        .iter()
        .map(|r| {
            let state: String = r.get(3);
            let version: Option<i64> = r.get(4);
            LockBundle {
                id: r.get(0),
                name: r.get(1),
                address: r.get(2),
                behind: state == "paired" && newest.is_some() && version < newest,
                pairing_state: state,
                bundle_version: version,
                last_seen_at: r.get(5),
            }
        })
        .collect();
    locks.sort_by_key(|l| !l.behind);
    Ok(KeysOverview {
        issuer_keys,
        bundles,
        locks,
    })
}

/// The policy set in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicySetView {
    /// Hex SHA-256 of the set (recorded with every decision).
    pub hash: String,
    /// Its files: name and hex SHA-256.
    pub files: Vec<PolicyFile>,
    /// The `@id`s of its policies.
    pub policies: Vec<String>,
}

/// A file of the policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyFile {
    /// File name.
    pub name: String,
    /// Hex SHA-256 of its text.
    pub sha256: String,
}

/// The policy set this server decides with.
pub fn policy_set(engine: &PolicyEngine) -> PolicySetView {
    PolicySetView {
        hash: hex::encode(engine.policy_set_hash()),
        files: engine
            .files()
            .iter()
            .map(|(name, sha256)| PolicyFile {
                name: name.clone(),
                sha256: sha256.clone(),
            })
            .collect(),
        policies: engine.policy_ids().map(str::to_owned).collect(),
    }
}

//! HTTP surface of each municipality's transparency log (docs/audit-log.md).
//!
//! Public by design, as in every transparency log, because they hold only hashes and signatures:
//! the checkpoint (`/log/<m>/checkpoint`, C2SP tlog-checkpoint), the hash tiles
//! (`/log/<m>/tile/<L>/<N>[.p/<W>]`, C2SP tlog-tiles), proofs and the log's public keys. Entries hold
//! pseudonymous personal data (who acted, which home), so entry bundles and exports follow the
//! audit-reading policy (`policies/audit.cedar`): auditors the whole log, homeowners their own
//! property's entries, both with step-up. Witnesses post cosignatures here; they authenticate by
//! their signature, checked against the witnesses the municipality registered.

use actix_web::{HttpResponse, get, post, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::access;
use crate::audit::log::{self as auditlog, LogError};
use crate::audit::tree::{self, TILE_WIDTH, TreeError};
use crate::audit::verify::{Export, ExportEntry};
use crate::auth::Actor;
use crate::domain::Slug;
use crate::policy::{AuditLogAttrs, AuthzRequest, StepUpContext};
use crate::store::{StoreError, Tenant};

/// OpenAPI description of these endpoints.
#[derive(OpenApi)]
#[openapi(
    paths(checkpoint_note, checkpoint_json, log_keys, inclusion, consistency, tile, post_cosignature, export),
    components(schemas(CheckpointView, WitnessView, LogKeys, InclusionProof, ConsistencyProof, Export, ExportEntry)),
    tags((name = "log", description = "The audit log as a transparency log: checkpoints, proofs, tiles, witnesses"))
)]
pub struct LogApi;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(checkpoint_note)
        .service(checkpoint_json)
        .service(log_keys)
        .service(inclusion)
        .service(consistency)
        .service(tile)
        .service(post_cosignature)
        .service(export);
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Store(e) => e.into(),
            LogError::Tree(e) => e.into(),
            LogError::Note(e) => Self::BadRequest(e.to_string()),
            LogError::Refused(r) => Self::Conflict(r),
            LogError::Key(e) => Self::Internal(e.into()),
        }
    }
}

impl From<TreeError> for ApiError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Range(e) => Self::BadRequest(e.to_string()),
            TreeError::Store(e) => e.into(),
            TreeError::Missing => Self::Internal(e.into()),
        }
    }
}

/// The municipality a public log URL names; 404 when there is none.
async fn tenant_of(
    client: &impl deadpool_postgres::GenericClient,
    slug: &str,
) -> Result<Tenant, ApiError> {
    let slug = Slug::parse(slug).map_err(|_| ApiError::NotFound)?;
    match crate::store::tenancy::municipality_by_slug(client, &slug).await {
        Ok((tenant, _)) => Ok(tenant),
        Err(StoreError::NotFound) => Err(ApiError::NotFound),
        Err(e) => Err(e.into()),
    }
}

/// A signed checkpoint and who witnessed it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    /// The log's origin line.
    pub origin: String,
    /// Tree size.
    pub tree_size: u64,
    /// Base64 root hash.
    pub root_hash: String,
    /// The C2SP signed note: body, the log's signatures, then the witnesses' cosignatures.
    pub note: String,
    /// When the log signed it.
    pub signed_at: chrono::DateTime<chrono::Utc>,
    /// Witnesses that cosigned it.
    pub witnesses: Vec<WitnessView>,
}

/// One cosignature.
#[derive(Debug, Serialize, ToSchema)]
pub struct WitnessView {
    /// The witness's key name.
    pub name: String,
    /// The time in its cosignature.
    pub cosigned_at: chrono::DateTime<chrono::Utc>,
}

/// The newest checkpoint as the C2SP signed note (`text/plain`), with the stored cosignatures.
#[utoipa::path(get, path = "/log/{municipality}/checkpoint", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug")),
    responses((status = 200, description = "C2SP checkpoint note", content_type = "text/plain", body = String),
              (status = 404, description = "No such log or no checkpoint yet")))]
#[get("/log/{municipality}/checkpoint")]
pub async fn checkpoint_note(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &path).await?;
    let cp = auditlog::checkpoint(&client, tenant, None)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache, max-age=2"))
        .body(cp.note))
}

/// Query of a checkpoint: the newest, or the one of a size.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CheckpointQuery {
    /// Tree size of the checkpoint wanted; the newest when absent.
    pub tree_size: Option<u64>,
}

/// A checkpoint with its parts and witnesses, as JSON.
#[utoipa::path(get, path = "/api/v1/log/{municipality}/checkpoint", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug"), CheckpointQuery),
    responses((status = 200, body = CheckpointView), (status = 404)))]
#[get("/api/v1/log/{municipality}/checkpoint")]
pub async fn checkpoint_json(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<CheckpointQuery>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &path).await?;
    let origin = auditlog::origin(&client, tenant)
        .await?
        .ok_or(ApiError::NotFound)?;
    let cp = auditlog::checkpoint(&client, tenant, query.tree_size)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(CheckpointView {
        origin,
        tree_size: cp.size,
        root_hash: STANDARD.encode(cp.root),
        note: cp.note,
        signed_at: cp.signed_at,
        witnesses: cp
            .witnesses
            .into_iter()
            .map(|(name, cosigned_at)| WitnessView { name, cosigned_at })
            .collect(),
    }))
}

/// The log's public keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogKeys {
    /// The origin (and key name).
    pub origin: String,
    /// Verifier keys (`<name>+<hash>+<base64(0x01 ‖ key)>`) of the keys that sign checkpoints now.
    /// Auditors should obtain the key out of band too, and compare.
    pub keys: Vec<String>,
}

/// The log's current verifier keys.
#[utoipa::path(get, path = "/api/v1/log/{municipality}/keys", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug")),
    responses((status = 200, body = LogKeys), (status = 404)))]
#[get("/api/v1/log/{municipality}/keys")]
pub async fn log_keys(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &path).await?;
    let origin = auditlog::origin(&client, tenant)
        .await?
        .ok_or(ApiError::NotFound)?;
    let keys = auditlog::verifier_keys(&client, tenant, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(LogKeys {
        origin,
        keys: keys.iter().map(ToString::to_string).collect(),
    }))
}

/// Query of an inclusion proof.
#[derive(Debug, Deserialize, IntoParams)]
pub struct InclusionQuery {
    /// Leaf index (the entry's `seq`).
    pub index: u64,
    /// Tree size, from a signed checkpoint.
    pub tree_size: u64,
}

/// An inclusion proof (RFC 9162 §2.1.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionProof {
    /// Leaf index.
    pub leaf_index: u64,
    /// Tree size.
    pub tree_size: u64,
    /// Base64 hashes, deepest first.
    pub proof: Vec<String>,
}

/// The inclusion proof of a leaf in the tree of a size (hashes only, public).
#[utoipa::path(get, path = "/api/v1/log/{municipality}/proof/inclusion", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug"), InclusionQuery),
    responses((status = 200, body = InclusionProof), (status = 400), (status = 404)))]
#[get("/api/v1/log/{municipality}/proof/inclusion")]
pub async fn inclusion(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<InclusionQuery>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &path).await?;
    let proof = tree::inclusion_proof(&client, tenant, query.index, query.tree_size).await?;
    Ok(HttpResponse::Ok().json(InclusionProof {
        leaf_index: query.index,
        tree_size: query.tree_size,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
    }))
}

/// Query of a consistency proof.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ConsistencyQuery {
    /// The older tree size.
    pub first: u64,
    /// The newer tree size.
    pub second: u64,
}

/// A consistency proof (RFC 9162 §2.1.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyProof {
    /// Older size.
    pub first: u64,
    /// Newer size.
    pub second: u64,
    /// Base64 hashes.
    pub proof: Vec<String>,
}

/// The consistency proof between two tree sizes (hashes only, public).
#[utoipa::path(get, path = "/api/v1/log/{municipality}/proof/consistency", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug"), ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof), (status = 400), (status = 404)))]
#[get("/api/v1/log/{municipality}/proof/consistency")]
pub async fn consistency(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ConsistencyQuery>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &path).await?;
    let proof = tree::consistency_proof(&client, tenant, query.first, query.second).await?;
    Ok(HttpResponse::Ok().json(ConsistencyProof {
        first: query.first,
        second: query.second,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
    }))
}

/// A parsed tlog-tiles path below `tile/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilePath {
    /// A hash tile: level, index, width (256 when full).
    Hashes(u8, u64, u64),
    /// An entry bundle: index, width.
    Entries(u64, u64),
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Parses `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]` (N as `x001/x234/067`).
pub fn parse_tile_path(tail: &str) -> Option<TilePath> {
    let (kind, rest) = tail.split_once('/')?;
    let (index_part, width) = match rest.split_once(".p/") {
        Some((index, w)) => {
            let w = decimal(w)?;
            if !(1..TILE_WIDTH).contains(&w) {
                return None;
            }
            (index, w)
        }
        None => (rest, TILE_WIDTH),
    };
    let elements: Vec<&str> = index_part.split('/').collect();
    let (last, init) = elements.split_last()?;
    let mut index: u64 = 0;
    for (i, e) in init
        .iter()
        .map(|e| e.strip_prefix('x'))
        .chain([Some(*last)])
        .enumerate()
    {
        let e = e?;
        if e.len() != 3 || !e.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let _ = i;
        index = index
            .checked_mul(1000)?
            .checked_add(e.parse::<u64>().ok()?)?;
    }
    if kind == "entries" {
        return Some(TilePath::Entries(index, width));
    }
    let level = u8::try_from(decimal(kind)?).ok()?;
    (level <= 63).then_some(TilePath::Hashes(level, index, width))
}

/// A C2SP tlog-tiles resource: a hash tile (public) or an entry bundle (audit readers only).
#[utoipa::path(get, path = "/log/{municipality}/tile/{tile}", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug"),
           ("tile" = String, Path, description = "`<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, N as `x001/x234/067`")),
    responses((status = 200, description = "Tile bytes", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401), (status = 404)))]
#[get("/log/{municipality}/tile/{tile:.*}")]
pub async fn tile(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    actor: Option<Actor>,
) -> Result<HttpResponse, ApiError> {
    let (slug, tail) = path.into_inner();
    let parsed = parse_tile_path(&tail).ok_or(ApiError::NotFound)?;
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &slug).await?;
    let bytes = match parsed {
        TilePath::Hashes(level, index, width) => tree::tile(&client, tenant, level, index, width)
            .await?
            .ok_or(ApiError::NotFound)?,
        TilePath::Entries(index, width) => {
            let actor = actor.ok_or(ApiError::Unauthenticated)?;
            if actor.tenant != tenant {
                return Err(ApiError::NotFound);
            }
            authorize_log_read(&state, &mut client, &actor).await?;
            let start = index.checked_mul(TILE_WIDTH).ok_or(ApiError::NotFound)?;
            let end = start.checked_add(width).ok_or(ApiError::NotFound)?;
            if end > tree::size(&client, tenant).await? {
                return Err(ApiError::NotFound);
            }
            let mut out = Vec::new();
            for (_, data) in crate::audit::leaf_data(&client, tenant, start, end, None).await? {
                let len = u16::try_from(data.len()).map_err(|_| {
                    ApiError::Internal(anyhow::anyhow!("an entry exceeds 65535 bytes"))
                })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&data);
            }
            out
        }
    };
    let cache = if matches!(
        parsed,
        TilePath::Hashes(_, _, TILE_WIDTH) | TilePath::Entries(_, TILE_WIDTH)
    ) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=60"
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/octet-stream")
        .insert_header(("Cache-Control", cache));
    if matches!(parsed, TilePath::Entries(..)) {
        response.insert_header(("Cache-Control", "private, no-store"));
    }
    Ok(response.body(bytes))
}

/// Auditors may read the whole log (policy `read_audit`, with step-up). A refusal is audited.
async fn authorize_log_read(
    state: &AppState,
    client: &mut deadpool_postgres::Object,
    actor: &Actor,
) -> Result<(), ApiError> {
    let principal = access::principal(&*client, actor).await?;
    let log = AuditLogAttrs {
        municipality: actor.tenant.id(),
    };
    access::authorize(
        client,
        &state.policy,
        actor,
        None,
        state.clock.now(),
        |fresh| {
            AuthzRequest::read_audit_log(
                &principal,
                log,
                StepUpContext {
                    step_up_fresh: fresh,
                },
            )
        },
    )
    .await?;
    Ok(())
}

/// Accepted cosignatures.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Names of the witnesses whose cosignature was stored.
    pub accepted: Vec<String>,
}

/// A witness posts its cosignature: the checkpoint body as the log signed it, a blank line and the
/// witness's `cosignature/v1` line(s). Only cosignatures by registered witnesses over a checkpoint
/// this log signed are stored.
#[utoipa::path(post, path = "/log/{municipality}/cosignature", tag = "log",
    params(("municipality" = String, Path, description = "Municipality slug")),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = Accepted), (status = 400), (status = 404), (status = 409)))]
#[post("/log/{municipality}/cosignature")]
pub async fn post_cosignature(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if body.len() > 64 * 1024 {
        return Err(ApiError::BadRequest("note too large".to_owned()));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the note is not UTF-8".to_owned()))?;
    let client = state.pool.get().await.map_err(StoreError::from)?;
    let tenant = tenant_of(&client, &path).await?;
    let accepted = auditlog::add_cosignatures(&client, tenant, text, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(Accepted { accepted }))
}

/// Query of an export.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// Only the entries about this property, each with its inclusion proof (homeowners must give
    /// their own property); the whole log when absent (auditors).
    pub property: Option<Uuid>,
}

/// An export of the caller's municipality's log against its newest checkpoint, for
/// `firstkey audit verify`. Same authorization as reading the log.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "log", params(ExportQuery),
    responses((status = 200, body = Export), (status = 401), (status = 404)))]
#[get("/api/v1/audit/export")]
pub async fn export(
    state: web::Data<AppState>,
    actor: Actor,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut client = state.pool.get().await.map_err(StoreError::from)?;
    match query.property {
        None => authorize_log_read(&state, &mut client, &actor).await?,
        Some(property) => {
            let principal = access::principal(&client, &actor).await?;
            let ctx = access::property(&client, actor.tenant, property).await?;
            access::authorize(
                &mut client,
                &state.policy,
                &actor,
                Some(property),
                state.clock.now(),
                |fresh| {
                    AuthzRequest::read_property_audit(
                        &principal,
                        &ctx.attrs,
                        StepUpContext {
                            step_up_fresh: fresh,
                        },
                    )
                },
            )
            .await?;
        }
    }
    let export = auditlog::export(&client, actor.tenant, query.property)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(export))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_parse_as_tlog_tiles_specifies() {
        assert_eq!(
            parse_tile_path("0/x001/x234/067"),
            Some(TilePath::Hashes(0, 1_234_067, 256))
        );
        assert_eq!(
            parse_tile_path("2/000.p/17"),
            Some(TilePath::Hashes(2, 0, 17))
        );
        assert_eq!(
            parse_tile_path("entries/x001/002.p/255"),
            Some(TilePath::Entries(1002, 255))
        );
        for bad in [
            "0/1",
            "0/0001",
            "00/000",
            "0/001/002",
            "0/x001",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/07",
            "64/000",
            "entries/x01/000",
            "0/000/",
        ] {
            assert_eq!(parse_tile_path(bad), None, "{bad}");
        }
    }
}

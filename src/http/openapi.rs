//! The OpenAPI 3.1 document, generated from the handlers' annotations. The checked-in copy at
//! `docs/openapi.json` is compared with this in the test suite; refresh it with
//! `firstkey openapi > docs/openapi.json`.
//!
//! The handlers' annotations say what is particular to each operation (its body, its success
//! answer, the refusals worth a sentence of their own). [`StandardResponses`] then adds, in one
//! pass over every operation, what follows from the server's shared machinery, so no handler can
//! forget it: the security an operation needs ([`security_of`]), and the problem answers the
//! extractors, the session check, the Origin check, the policy and the database give
//! ([`ApiError`](super::error::ApiError), always `application/problem+json` with the one
//! [`Problem`] schema).

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    ArrayItems, KnownFormat, Object, OneOf, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{Content, HttpMethod, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::error::{PROBLEM_JSON, Problem};
use super::health::{self, ReadinessReport};
use crate::auth::session;
use crate::emergency::cad;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "firstkey",
        description = "Emergency access for first responders: access plans, grants, override tokens and a verifiable audit log.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(health::healthz, health::readyz, health::metrics),
    components(schemas(Problem, ReadinessReport)),
    tags((name = "operations", description = "Health, readiness and metrics"))
)]
pub struct ApiDoc;

/// The document, with the crate version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::auth::AuthApi::openapi());
    doc.merge(super::properties::PropertiesApi::openapi());
    doc.merge(super::dispatch::DispatchApi::openapi());
    doc.merge(super::tokens::TokensApi::openapi());
    doc.merge(super::log::LogApi::openapi());
    doc.merge(super::keys::KeysApi::openapi());
    doc.merge(super::privacy::PrivacyApi::openapi());
    doc.merge(super::admin::AdminApi::openapi());
    doc.merge(super::trusted::TrustedApi::openapi());
    doc.merge(super::consent::ConsentApi::openapi());
    doc.merge(super::codes::CodesApi::openapi());
    doc.merge(super::alarms::AlarmsApi::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    StandardResponses.modify(&mut doc);
    doc
}

/// The document as pretty JSON with a trailing newline, exactly as checked in.
pub fn document_json() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&document()).map(|mut s| {
        s.push('\n');
        s
    })
}

/// The methods the document lists for the resource at `path` (e.g. `GET, PUT`), or `None` when
/// no documented path matches. Every route is documented (the drift test and schemathesis see to
/// that), so this is also what the router answers.
pub fn allowed_methods(path: &str) -> Option<String> {
    static RESOURCES: std::sync::LazyLock<Vec<(String, Vec<&'static str>)>> =
        std::sync::LazyLock::new(|| {
            document()
                .paths
                .paths
                .iter()
                .map(|(template, item)| {
                    let methods = [
                        ("GET", item.get.is_some()),
                        ("PUT", item.put.is_some()),
                        ("POST", item.post.is_some()),
                        ("DELETE", item.delete.is_some()),
                        ("PATCH", item.patch.is_some()),
                    ];
                    let listed = methods
                        .iter()
                        .filter(|(_, listed)| *listed)
                        .map(|(method, _)| *method)
                        .collect();
                    (template.clone(), listed)
                })
                .collect()
        });
    // As OpenAPI matches: a concrete path (`/api/v1/me/keys/finish`) before its templated
    // counterparts (`/api/v1/me/keys/{id}`).
    if let Some((_, methods)) = RESOURCES.iter().find(|(template, _)| template == path) {
        return (!methods.is_empty()).then(|| methods.join(", "));
    }
    let mut allowed: Vec<&str> = Vec::new();
    for (template, methods) in RESOURCES.iter() {
        if template_matches(template, path) {
            for method in methods {
                if !allowed.contains(method) {
                    allowed.push(method);
                }
            }
        }
    }
    (!allowed.is_empty()).then(|| allowed.join(", "))
}

/// Whether `path` is an instance of the path `template` (`{name}` stands for one non-empty segment).
fn template_matches(template: &str, path: &str) -> bool {
    let mut expected = template.split('/');
    let mut actual = path.split('/');
    loop {
        match (expected.next(), actual.next()) {
            (None, None) => return true,
            (Some(e), Some(a)) if e.starts_with('{') && e.ends_with('}') && !a.is_empty() => {}
            (Some(e), Some(a)) if e == a => {}
            _ => return false,
        }
    }
}

/// What an operation needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Anyone may call it (health, sign-in, sign-up, the mailed links' ceremonies).
    Public,
    /// The session cookie of a signed-in user ([`session::COOKIE`]).
    Session,
    /// A CAD system's HMAC signature headers (see [`cad`]).
    CadSignature,
}

/// Operations anyone may call; every other operation under `/api/` needs a session, except the
/// CAD integration, which signs each request instead ([`super::MACHINE_PATHS`]).
const PUBLIC_OPERATIONS: &[&str] = &[
    "healthz",
    "readyz",
    "metrics",
    "sign_in_start",
    "sign_in_finish",
    "invitation_accept_start",
    "invitation_accept_finish",
    "sign_up",
    "verify_start",
    "verify_finish",
];

/// The security of the operation `operation_id` at `path`.
pub fn security_of(path: &str, operation_id: &str) -> Security {
    if path.starts_with("/api/v1/cad/") || path.starts_with("/api/v1/monitoring/") {
        Security::CadSignature
    } else if PUBLIC_OPERATIONS.contains(&operation_id)
        || !path.starts_with("/api/")
        // The transparency log's checkpoints, keys and proofs hold hashes only: public by design.
        || path.starts_with("/api/v1/log/")
    {
        Security::Public
    } else {
        Security::Session
    }
}

/// Security scheme names in `components.securitySchemes`.
const SESSION_SCHEME: &str = "session";
const CAD_SCHEMES: [(&str, &str, &str); 3] = [
    (
        "cad_key_id",
        cad::KEY_ID_HEADER,
        "The CAD credential's key id (from `POST /api/v1/admin/cad-credentials`).",
    ),
    (
        "cad_timestamp",
        cad::TIMESTAMP_HEADER,
        "When the request was signed (RFC 3339); requests outside the allowed skew are refused.",
    ),
    (
        "cad_signature",
        cad::SIGNATURE_HEADER,
        "HMAC-SHA256 with the credential's secret over method, path, timestamp, idempotency key and \
         the body's hash (see the `cad` module documentation).",
    ),
];

/// The shared problem answers, by status: component name and description.
const PROBLEMS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "The request is not valid; `detail` names the bad input",
    ),
    (
        401,
        "Unauthenticated",
        "Not signed in (no or an ended session, or a refused signature), or this action needs a \
         fresh step-up first",
    ),
    (
        403,
        "Forbidden",
        "Not allowed: the role or policy refuses it, or a state-changing request did not come \
         from the server's own origin (`Origin`, or `Sec-Fetch-Site: same-origin`)",
    ),
    (
        404,
        "NotFound",
        "No such resource, or the caller may not know that it exists",
    ),
    (
        409,
        "Conflict",
        "The request conflicts with the current state",
    ),
    (
        429,
        "TooManyRequests",
        "Too many attempts; retry after `Retry-After` seconds",
    ),
    (
        503,
        "Unavailable",
        "A dependency (the database) is unavailable; retrying later may succeed",
    ),
];

/// The post-processing pass described in the module documentation.
pub struct StandardResponses;

impl Modify for StandardResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.servers =
            Some(vec![Server::builder()
            .url("/")
            .description(Some(
                "The server's `public_origin` (the document is served at `/api/openapi.json`)",
            ))
            .build()]);
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SESSION_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                session::COOKIE,
                "The session a WebAuthn sign-in or enrolment set (`Secure`, `HttpOnly`, \
                 `SameSite=Strict`). State-changing requests must also carry the server's own \
                 `Origin`.",
            ))),
        );
        for (name, header, description) in CAD_SCHEMES {
            components.add_security_scheme(
                name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    header,
                    description,
                ))),
            );
        }
        for &(status, name, description) in PROBLEMS {
            components.responses.insert(
                name.to_owned(),
                RefOr::T(problem_response(status, description)),
            );
        }
        for schema in components.schemas.values_mut() {
            assert_uuid_format(schema);
        }
        if let Some(grant) = components.schemas.get_mut("NewGrant") {
            either_responders_or_unit(grant);
        }
        if let Some(grant) = components.schemas.get_mut("CadGrant") {
            either_responders_or_unit(grant);
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, operation) in [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Delete, &mut item.delete),
                (HttpMethod::Patch, &mut item.patch),
            ] {
                if let Some(operation) = operation {
                    complete_operation(path, method, operation);
                }
            }
        }
    }
}

/// The canonical text form of a UUID, as a pattern.
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// `format` is only an annotation in JSON Schema 2020-12 (clients and validators may ignore it:
/// schemathesis sent `""` for an optional `format: uuid`), while the server refuses anything but a
/// UUID; a pattern makes that part of the schema.
fn assert_uuid_format(schema: &mut RefOr<Schema>) {
    let RefOr::T(schema) = schema else { return };
    match schema {
        Schema::Object(object) => {
            if matches!(
                object.format,
                Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))
            ) && object.pattern.is_none()
            {
                object.pattern = Some(UUID_PATTERN.to_owned());
            }
            object.properties.values_mut().for_each(assert_uuid_format);
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                assert_uuid_format(items);
            }
        }
        Schema::OneOf(one) => one.items.iter_mut().for_each(assert_uuid_format),
        Schema::AllOf(all) => all.items.iter_mut().for_each(assert_uuid_format),
        Schema::AnyOf(any) => any.items.iter_mut().for_each(assert_uuid_format),
        _ => {}
    }
}

/// A grant names responders or a unit, not both and not neither ([`NewGrant::parse`]), a rule
/// across two fields the derive cannot state: the schema becomes `oneOf` the two closed shapes,
/// each built from the derived object so they cannot drift from it.
///
/// [`NewGrant::parse`]: crate::emergency::grants::NewGrant::parse
fn either_responders_or_unit(schema: &mut RefOr<Schema>) {
    let RefOr::T(Schema::Object(object)) = schema else {
        return;
    };
    let mut by_responders = object.clone();
    if let Some(RefOr::T(Schema::Array(list))) = by_responders.properties.get_mut("responders") {
        list.min_items = Some(1);
    }
    by_responders
        .properties
        .insert("unit".to_owned(), Object::with_type(Type::Null).into());
    by_responders.required.push("responders".to_owned());
    by_responders.description = Some("Naming responders".to_owned());
    let mut by_unit = object.clone();
    if let Some(RefOr::T(Schema::Array(list))) = by_unit.properties.get_mut("responders") {
        list.max_items = Some(0);
    }
    if let Some(RefOr::T(Schema::Object(unit))) = by_unit.properties.get_mut("unit") {
        unit.schema_type = SchemaType::Type(Type::String);
    }
    by_unit.required.push("unit".to_owned());
    by_unit.description = Some("Naming a unit".to_owned());
    let description = object.description.clone();
    let mut one_of = OneOf::new();
    one_of.items = vec![by_responders.into(), by_unit.into()];
    one_of.description = description;
    *schema = RefOr::T(Schema::OneOf(one_of));
}

/// A problem response with `description`; 429 carries `Retry-After`.
fn problem_response(status: u16, description: &str) -> Response {
    let mut builder = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    if status == 429 {
        builder = builder.header(
            "Retry-After",
            utoipa::openapi::header::HeaderBuilder::new()
                .schema(Object::with_type(Type::Integer))
                .description(Some("Seconds until a retry may succeed"))
                .build(),
        );
    }
    builder.build()
}

/// Sets the operation's security and completes its responses.
fn complete_operation(path: &str, method: HttpMethod, operation: &mut Operation) {
    let id = operation.operation_id.clone().unwrap_or_default();
    let security = security_of(path, &id);
    operation.security = match security {
        Security::Public => None,
        Security::Session => Some(vec![SecurityRequirement::new(
            SESSION_SCHEME,
            Vec::<String>::new(),
        )]),
        Security::CadSignature => {
            let mut requirement = SecurityRequirement::default();
            for (name, _, _) in CAD_SCHEMES {
                requirement = requirement.add(name, Vec::<String>::new());
            }
            Some(vec![requirement])
        }
    };
    for parameter in operation.parameters.iter_mut().flatten() {
        if let Some(schema) = &mut parameter.schema {
            assert_uuid_format(schema);
        }
    }
    let api = path.starts_with("/api/");
    let params = operation.parameters.as_deref().unwrap_or_default();
    let has_path_params = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let has_input = operation.request_body.is_some() || !params.is_empty();
    let state_changing = !matches!(method, HttpMethod::Get);
    let mut standard = Vec::new();
    if has_input {
        standard.push(400);
    }
    if security != Security::Public {
        standard.push(401);
    }
    if security == Security::Session || (state_changing && security != Security::CadSignature) {
        standard.push(403);
    }
    if has_path_params {
        standard.push(404);
    }
    if api {
        standard.push(503);
    }
    let responses = &mut operation.responses.responses;
    for status in standard {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(Response::new(String::new())));
    }
    for (status, response) in responses.iter_mut() {
        let code: u16 = status.parse().unwrap_or_default();
        let RefOr::T(answer) = response else { continue };
        if code < 400 {
            if answer.description.is_empty() {
                answer.description = reason(code).to_owned();
            }
            continue;
        }
        if !is_problem(answer) {
            continue;
        }
        let shared = PROBLEMS.iter().find(|(s, _, _)| *s == code);
        *response = match shared {
            Some((_, name, _)) if answer.description.is_empty() => {
                RefOr::Ref(Ref::from_response_name(*name))
            }
            _ => RefOr::T(problem_response(code, &answer.description)),
        };
    }
}

/// Whether an error response is (or should be) a problem document: no body declared yet, or the
/// [`Problem`] schema under any media type.
fn is_problem(response: &Response) -> bool {
    response.content.is_empty()
        || response.content.values().all(|c| {
            matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == "#/components/schemas/Problem")
        })
}

/// A description for an undescribed success answer.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No content",
        _ => "Success",
    }
}

//! The home's history (homeowner): every audit entry about one property — grants, tokens, door
//! decisions, reveals of the plan's notes, changes to the home — in words, newest first, 25 a page,
//! with times in the municipality's zone (named). Reading it is the policy's `read_audit` on the property (its owner,
//! with a fresh step-up: the entries name responders), asked inline when stale. The page also
//! offers the entries with their inclusion proofs (the JSON export `firstkey audit verify` checks)
//! and the erasure of the home's personal details in the log.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::WebError;
use super::page::{self, Chrome, SignedIn};
use crate::audit::personal::{self, Personal};
use crate::audit::{self, Entry};
use crate::auth::Actor;
use crate::domain::Role;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::StoreError;
use crate::store::properties::{self as store, Property};

/// Entries on one page.
const PAGE: i64 = 25;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/homes/{id}/history", web::get().to(history))
        .route("/homes/{id}/history/erase", web::post().to(erase));
}

/// One line of the history.
struct Line {
    seq: i64,
    when: String,
    words: String,
    outcome: &'static str,
}

#[derive(Template)]
#[template(path = "history.html")]
struct History {
    chrome: Chrome,
    property: Property,
    lines: Vec<Line>,
    older: Option<i64>,
    newest: bool,
    step_up: bool,
    erased: Option<u64>,
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// Entries before this position (the next page); the newest when absent.
    before: Option<i64>,
    /// Set after an erasure: how many keys went.
    erased: Option<u64>,
}

/// What the words need beyond the entries: names of people, locks and incidents.
#[derive(Default)]
struct Names {
    people: HashMap<Uuid, String>,
    locks: HashMap<Uuid, String>,
    incidents: HashMap<Uuid, String>,
    /// A token (hex id) → who it was issued to (their unit, else their name).
    token_holders: HashMap<String, String>,
    /// Trusted parties by id → the homeowner's name for them.
    trusted: HashMap<Uuid, String>,
    personal: HashMap<i64, Personal>,
}

fn uuid_in(details: &serde_json::Value, key: &str) -> Option<Uuid> {
    details
        .get(key)
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
}

async fn names(
    state: &AppState,
    client: &deadpool_postgres::Object,
    tenant: crate::store::Tenant,
    entries: &[Entry],
) -> Result<Names, StoreError> {
    let t = tenant.id();
    let mut people: Vec<Uuid> = Vec::new();
    let mut locks: Vec<Uuid> = Vec::new();
    let mut incidents: Vec<Uuid> = Vec::new();
    let mut ctis: Vec<Vec<u8>> = Vec::new();
    let mut with_personal: Vec<i64> = Vec::new();
    let mut trusted: Vec<Uuid> = Vec::new();
    for e in entries {
        trusted.extend(uuid_in(&e.details, "trusted_party"));
        people.extend(e.actor);
        incidents.extend(e.incident);
        if e.subject_kind.as_deref() == Some("lock") {
            locks.extend(e.subject_id);
        }
        locks.extend(uuid_in(&e.details, "lock"));
        if let Some(cti) = e.details.get("cti").and_then(|c| c.as_str())
            && let Ok(bytes) = hex::decode(cti)
        {
            ctis.push(bytes);
        }
        if e.data_key.is_some() {
            with_personal.push(e.seq);
        }
    }
    let mut out = Names::default();
    for r in client
        .query(
            "SELECT id, coalesce(unit, display_name) FROM users WHERE municipality_id = $1 AND id = ANY($2)",
            &[&t, &people],
        )
        .await?
    {
        out.people.insert(r.get(0), r.get(1));
    }
    for r in client
        .query(
            "SELECT id, name FROM locks WHERE municipality_id = $1 AND id = ANY($2)",
            &[&t, &locks],
        )
        .await?
    {
        out.locks.insert(r.get(0), r.get(1));
    }
    for r in client
        .query(
            "SELECT id, cad_number FROM incidents WHERE municipality_id = $1 AND id = ANY($2)",
            &[&t, &incidents],
        )
        .await?
    {
        out.incidents.insert(r.get(0), r.get(1));
    }
    for r in client
        .query(
            "SELECT encode(t.cti, 'hex'), coalesce(u.unit, g.unit, u.display_name)
             FROM issued_tokens t JOIN grants g ON g.id = t.grant_id JOIN users u ON u.id = t.responder_id
             WHERE t.municipality_id = $1 AND t.cti = ANY($2)",
            &[&t, &ctis],
        )
        .await?
    {
        out.token_holders.insert(r.get(0), r.get(1));
    }
    for r in client
        .query(
            "SELECT id, label FROM trusted_parties WHERE municipality_id = $1 AND id = ANY($2)",
            &[&t, &trusted],
        )
        .await?
    {
        out.trusted.insert(r.get(0), r.get(1));
    }
    out.personal = personal::open_many(client, tenant, &with_personal, &state.kek).await?;
    Ok(out)
}

/// An entry in words. Unknown actions read as their name, so nothing is ever left out.
fn words(e: &Entry, n: &Names) -> String {
    let person = |id: Option<Uuid>| {
        id.and_then(|i| n.people.get(&i).cloned())
            .unwrap_or_else(|| "someone".to_owned())
    };
    let actor = person(e.actor);
    let lock = e
        .subject_id
        .filter(|_| e.subject_kind.as_deref() == Some("lock"))
        .or_else(|| uuid_in(&e.details, "lock"))
        .and_then(|l| n.locks.get(&l).cloned())
        .unwrap_or_else(|| "A lock".to_owned());
    let incident = e
        .incident
        .and_then(|i| n.incidents.get(&i).cloned())
        .map_or_else(String::new, |cad| format!(" for incident {cad}"));
    let detail = |key: &str| {
        e.details
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let allowed = e.outcome == "allow";
    // Free text in the entry's personal details, quoted, or a word that it was erased.
    let said = |key: &str, what: &str| match n.personal.get(&e.seq) {
        Some(Personal::Readable(v)) => v
            .get(key)
            .and_then(|t| t.as_str())
            .map_or_else(String::new, |t| format!(": \u{201c}{t}\u{201d}")),
        Some(Personal::Erased) => format!(" ({what} was erased)"),
        _ => String::new(),
    };
    match e.action.as_str() {
        "property.create" => match n.personal.get(&e.seq) {
            Some(Personal::Readable(v)) => format!(
                "Home registered: {}",
                v.get("address").and_then(|a| a.as_str()).unwrap_or("")
            ),
            Some(Personal::Erased) => {
                "Home registered (the address in this record was erased)".to_owned()
            }
            _ => "Home registered".to_owned(),
        },
        "lock.register" => format!("{lock} added by {actor}"),
        "lock.pair" if allowed => format!("{lock} paired"),
        "lock.pair" => format!("{lock}: a pairing attempt failed"),
        "lock.pairing_reset" => format!("{lock}: pairing started again by {actor}"),
        "plan.update" => format!("Access plan version {} saved by {actor}", detail("version")),
        "plan.reveal_notes" => format!(
            "Your notes for responders were shown to {actor}{incident}{}",
            said("reason", "the reason given")
        ),
        "grant.create" if detail("status") == "awaiting_consent" => format!(
            "{actor} asked for entry{incident}; you were asked to approve or refuse{}",
            said("justification", "the reason given")
        ),
        "consent.approve" => format!("You approved entry{incident}"),
        "consent.refuse" => format!("You refused entry{incident}"),
        "consent.timeout" => format!(
            "You did not answer in time about entry{incident}; your plan's fallback applied"
        ),
        "consent.deny" => format!(
            "An answer about entry{incident} was refused ({})",
            detail("reason")
        ),
        "grant.create" if detail("status") == "awaiting_approval" => format!(
            "{actor} asked for entry{incident}; a second dispatcher must approve{}",
            said("justification", "the reason given")
        ),
        "grant.create" => {
            let to = e
                .details
                .get("unit")
                .and_then(|u| u.as_str())
                .map_or_else(String::new, |u| format!(" to {u}"));
            format!(
                "Entry granted{to}{incident} by {actor}{}",
                said("justification", "the reason given")
            )
        }
        "trusted.invite" => format!(
            "{actor} invited a trusted party{}",
            said("label", "their name")
        ),
        "grant.approve" => format!("{actor} approved entry{incident}"),
        "grant.revoke" => format!("Entry{incident} ended"),
        "token.issue" => format!("A door token for {lock} was issued to {actor}{incident}"),
        "keypad_code.issue" => match uuid_in(&e.details, "trusted_party") {
            Some(p) => format!(
                "A keypad code for {lock} was mailed to {} (your trusted party), valid until {}",
                n.trusted.get(&p).map_or("a trusted party", String::as_str),
                detail("not_after")
            ),
            None => format!("A one-time keypad code for {lock} was issued{incident} by {actor}"),
        },
        "lock.receipt" if e.details.get("keypad_kind").is_some() => {
            let whose = match uuid_in(&e.details, "trusted_party") {
                Some(p) => format!(
                    "the keypad code of {}",
                    n.trusted.get(&p).map_or("a trusted party", String::as_str)
                ),
                None => format!("the one-time keypad code{incident}"),
            };
            if allowed {
                format!("{lock} opened with {whose}")
            } else {
                format!(
                    "{lock} stayed locked: {whose} was refused ({})",
                    detail("reason").replace('_', " ")
                )
            }
        }
        "lock.receipt" => {
            let by = e
                .details
                .get("cti")
                .and_then(|c| c.as_str())
                .and_then(|c| n.token_holders.get(c))
                .cloned();
            if allowed {
                let by = by.map_or_else(String::new, |who| format!(" by {who}"));
                format!("{lock} opened{by}{incident}")
            } else {
                let of = by.map_or_else(String::new, |who| format!(" of {who}"));
                format!(
                    "{lock} stayed locked: a token{of}{incident} was refused ({})",
                    detail("reason").replace('_', " ")
                )
            }
        }
        "lock.receipt_rejected" => format!("{lock} sent a record firstkey could not verify"),
        "incident.link_property" => format!("Your home was linked{incident} by {actor}"),
        "policy.deny" => format!(
            "A request by {actor} was refused by the policy ({})",
            detail("action").replace('_', " ")
        ),
        "audit.erase" => format!(
            "Personal details in this history were erased ({})",
            match detail("reason").as_str() {
                "retention" => "the plan's retention period ran out",
                "account_deleted" => "the owner's account was deleted",
                _ => "you asked for it",
            }
        ),
        other => format!("{other} ({})", e.outcome),
    }
}

fn at(t: DateTime<Utc>) -> String {
    super::zone::when(t)
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, WebError> {
    Ok(state.pool.get().await.map_err(StoreError::from)?)
}

async fn history(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, WebError> {
    if !actor.has(Role::Homeowner) {
        return Err(WebError::not_found());
    }
    let mut client = connection(&state).await?;
    let property = own(&client, &actor, *id).await?;
    match crate::http::privacy::authorize_read(&state, &mut client, &actor, Some(property.id)).await
    {
        Ok(()) => {}
        Err(ApiError::StepUpRequired) => {
            return page::render(
                StatusCode::UNAUTHORIZED,
                &History {
                    chrome: Chrome::of(&client, &actor).await?,
                    property,
                    lines: Vec::new(),
                    older: None,
                    newest: true,
                    step_up: true,
                    erased: None,
                },
            );
        }
        Err(e) => return Err(e.into()),
    }
    let mut entries = audit::entries_before(
        &client,
        actor.tenant,
        property.id,
        query.before.unwrap_or(i64::MAX),
        PAGE + 1,
    )
    .await?;
    let older = if i64::try_from(entries.len()).unwrap_or(0) > PAGE {
        entries.truncate(usize::try_from(PAGE).unwrap_or(25));
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    let n = names(&state, &client, actor.tenant, &entries).await?;
    let lines = entries
        .iter()
        .map(|e| Line {
            seq: e.seq,
            when: at(e.recorded_at),
            words: words(e, &n),
            outcome: match e.outcome.as_str() {
                "allow" => "allowed",
                "deny" => "refused",
                _ => "",
            },
        })
        .collect();
    page::ok(&History {
        chrome: Chrome::of(&client, &actor).await?,
        property,
        lines,
        older,
        newest: query.before.is_none(),
        step_up: false,
        erased: query.erased,
    })
}

/// The viewer's own property (anyone else's is "not found").
async fn own(
    client: &deadpool_postgres::Object,
    actor: &Actor,
    id: Uuid,
) -> Result<Property, WebError> {
    let property = store::property(client, actor.tenant, id).await?;
    if property.owner_id != actor.user_id {
        return Err(WebError::not_found());
    }
    Ok(property)
}

async fn erase(
    state: web::Data<AppState>,
    SignedIn(actor): SignedIn,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, WebError> {
    if !actor.has(Role::Homeowner) {
        return Err(WebError::not_found());
    }
    let mut client = connection(&state).await?;
    let property = own(&client, &actor, *id).await?;
    let now = state.clock.now();
    let erased = crate::http::privacy::erase(&state, &mut client, &actor, property.id, now).await?;
    Ok(page::see_other(&format!(
        "/homes/{}/history?erased={erased}",
        property.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, outcome: &str, details: serde_json::Value) -> Entry {
        Entry {
            seq: 7,
            recorded_at: DateTime::UNIX_EPOCH,
            actor: None,
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            subject_kind: None,
            subject_id: None,
            property: None,
            incident: None,
            policy_set_hash: None,
            details,
            leaf_hash: String::new(),
            chain_hash: String::new(),
            personal: None,
            data_key: None,
        }
    }

    #[test]
    fn an_opening_reads_as_the_mail_says_it() {
        let lock = Uuid::new_v4();
        let incident = Uuid::new_v4();
        let mut e = entry(
            "lock.receipt",
            "allow",
            serde_json::json!({ "cti": "ab01" }),
        );
        e.subject_kind = Some("lock".to_owned());
        e.subject_id = Some(lock);
        e.incident = Some(incident);
        let mut n = Names::default();
        n.locks.insert(lock, "Front door".to_owned());
        n.incidents.insert(incident, "26-1309c".to_owned());
        n.token_holders
            .insert("ab01".to_owned(), "Engine 7".to_owned());
        assert_eq!(
            words(&e, &n),
            "Front door opened by Engine 7 for incident 26-1309c"
        );
        e.outcome = "deny".to_owned();
        e.details = serde_json::json!({ "cti": "ab01", "reason": "replayed" });
        assert_eq!(
            words(&e, &n),
            "Front door stayed locked: a token of Engine 7 for incident 26-1309c was refused (replayed)"
        );
    }

    #[test]
    fn a_grant_reads_with_its_reason_until_it_is_erased() {
        let mut n = Names::default();
        let e = entry(
            "grant.create",
            "allow",
            serde_json::json!({ "status": "live" }),
        );
        n.personal.insert(
            7,
            Personal::Readable(serde_json::json!({ "justification": "Smoke seen" })),
        );
        assert_eq!(
            words(&e, &n),
            "Entry granted by someone: \u{201c}Smoke seen\u{201d}"
        );
        n.personal.insert(7, Personal::Erased);
        assert_eq!(
            words(&e, &n),
            "Entry granted by someone (the reason given was erased)"
        );
    }

    #[test]
    fn keypad_entries_name_who_was_given_the_code() {
        let lock = Uuid::new_v4();
        let party = Uuid::new_v4();
        let mut n = Names::default();
        n.locks.insert(lock, "Front door".to_owned());
        n.trusted.insert(party, "Sam at no. 12".to_owned());
        let mut e = entry(
            "lock.receipt",
            "allow",
            serde_json::json!({ "keypad_kind": "standing", "trusted_party": party, "reason": "keypad_ok" }),
        );
        e.subject_kind = Some("lock".to_owned());
        e.subject_id = Some(lock);
        assert_eq!(
            words(&e, &n),
            "Front door opened with the keypad code of Sam at no. 12"
        );
        e.outcome = "deny".to_owned();
        e.details["reason"] = serde_json::json!("keypad_revoked");
        assert_eq!(
            words(&e, &n),
            "Front door stayed locked: the keypad code of Sam at no. 12 was refused (keypad revoked)"
        );
        let e = entry(
            "keypad_code.issue",
            "allow",
            serde_json::json!({ "kind": "standing", "trusted_party": party, "lock": lock,
                                "not_after": "2026-12-09T00:00:00+00:00" }),
        );
        assert_eq!(
            words(&e, &n),
            "A keypad code for Front door was mailed to Sam at no. 12 (your trusted party), valid until 2026-12-09T00:00:00+00:00"
        );
    }

    #[test]
    fn erased_and_unknown_entries_still_read() {
        let mut n = Names::default();
        n.personal.insert(7, Personal::Erased);
        let e = entry("property.create", "info", serde_json::json!({}));
        assert!(words(&e, &n).contains("erased"));
        let e = entry("something.new", "info", serde_json::json!({}));
        assert_eq!(words(&e, &n), "something.new (info)");
    }
}

//! One request per token (issue 14 §1): the token request carries its own WebAuthn assertion over a
//! challenge the server handed out without storing it (`GET /api/v1/tokens/challenge`), and the
//! check, the challenge's single use and the token's records commit in one transaction. The
//! responders and trusted parties here enrol real software security keys through the invitation
//! ceremony and sign real assertions; their sessions' step-ups are cleared, so only the assertion
//! in the request can make it fresh.
//!
//! Adversarial cases: a forged challenge (bad tag), an expired one (a correct tag the test makes
//! with the server's own key), another session's, one for another lock or grant, a replayed
//! assertion (which must not suspend the key), a wrong origin, and a revoked grant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use firstkey::auth::Actor;
use firstkey::auth::client::AuthKeys;
use firstkey::auth::proof::{self, Bound};
use firstkey::crypto::Kek;
use firstkey::domain::Role;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{RequestChallengeResponse, Url};

use crate::auth_helpers::{TestKey, TestUser, enrol, mailed_secret, session_cookie, sign_in_as_in};
use crate::emergency::{World, grant, open_incident};
use crate::helpers::call;

/// A responder with a real enrolled security key, named in a live fire grant of the world's home;
/// their session's step-up is cleared.
async fn responder(w: &World) -> (TestUser, Uuid) {
    let who = sign_in_as_in(&w.app, w.tenant, Role::Responder, Some(w.fire)).await;
    let grant = grant_naming(w, &who, "25-1").await;
    clear_step_up(w, who.user_id).await;
    (who, grant)
}

async fn grant_naming(w: &World, who: &TestUser, cad: &str) -> Uuid {
    let incident = open_incident(w, cad, "fire", w.fire).await;
    let (status, body) = grant(
        w,
        incident,
        &w.dispatcher,
        json!({ "property": w.property, "responders": [who.user_id], "minutes": 30,
                "justification": "Smoke alarm, occupant not answering" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn clear_step_up(w: &World, user: Uuid) {
    let client = w.app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = NULL WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
}

async fn get(w: &World, cookie: &str, path: &str) -> (u16, Value) {
    let response = w
        .app
        .http
        .get(format!("{}{path}", w.app.address))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn challenge(w: &World, cookie: &str, grant: Uuid, lock: Uuid) -> Value {
    let (status, body) = get(
        w,
        cookie,
        &format!("/api/v1/tokens/challenge?grant={grant}&lock={lock}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["options"].clone()
}

async fn ask(w: &World, cookie: &str, body: Value) -> (u16, Value) {
    let response = crate::auth_helpers::post(&w.app, "/api/v1/tokens", &body, Some(cookie)).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn count(w: &World, sql: &str) -> i64 {
    let client = w.app.pool.get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn tokens_of(w: &World, user: Uuid) -> i64 {
    let client = w.app.pool.get().await.unwrap();
    client
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE responder_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

/// The reasons of the refused in-request assertions, oldest first.
async fn refusals(w: &World, user: Uuid) -> Vec<String> {
    let client = w.app.pool.get().await.unwrap();
    client
        .query(
            "SELECT public_details->>'reason' FROM audit_entries
             WHERE actor_id = $1 AND action = 'auth.token_assertion' AND outcome = 'deny' ORDER BY id",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `options` with the challenge replaced by `challenge`.
fn with_challenge(options: &Value, challenge: &[u8]) -> Value {
    let mut options = options.clone();
    options["publicKey"]["challenge"] = json!(URL_SAFE_NO_PAD.encode(challenge));
    options
}

fn challenge_bytes(options: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(options["publicKey"]["challenge"].as_str().unwrap())
        .unwrap()
}

/// The session behind `cookie` as the server sees it.
async fn actor_of(w: &World, cookie: &str) -> Actor {
    let secret = cookie.split_once('=').unwrap().1;
    let client = w.app.pool.get().await.unwrap();
    firstkey::auth::session::authenticate(&client, secret, Utc::now())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn one_request_with_its_own_assertion_gives_a_token_and_stores_no_challenge() {
    let w = crate::emergency::world().await;
    let (mut who, grant) = responder(&w).await;
    let ceremonies = count(&w, "SELECT count(*) FROM webauthn_ceremonies").await;
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    // Handing out the challenge wrote nothing.
    assert_eq!(
        count(&w, "SELECT count(*) FROM webauthn_ceremonies").await,
        ceremonies
    );
    assert_eq!(
        count(&w, "SELECT count(*) FROM used_token_challenges").await,
        0
    );
    assert_eq!(challenge_bytes(&options).len(), proof::CHALLENGE_LEN);
    // Without an assertion (and without a fresh step-up) no token.
    let (status, _) = ask(&w, &who.cookie, json!({ "grant": grant, "lock": w.lock })).await;
    assert_eq!(status, 401);
    let assertion = who.key.assert(&options);
    let (status, body) = ask(
        &w,
        &who.cookie,
        json!({ "grant": grant, "lock": w.lock, "assertion": assertion }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["lock_id"], json!(w.lock));
    assert_eq!(tokens_of(&w, who.user_id).await, 1);
    // The token, its audit entry (naming the in-request assertion), the lock's inbox entry, the
    // homeowner's mail and the challenge's use: all there.
    let client = w.app.pool.get().await.unwrap();
    let issued = client
        .query_one(
            "SELECT a.public_details->>'assertion', t.credential_id = c.id
             FROM issued_tokens t
             JOIN audit_entries a ON a.action = 'token.issue' AND a.subject_id = encode(t.cti, 'hex')::uuid
             JOIN webauthn_credentials c ON c.user_id = t.responder_id
             WHERE t.responder_id = $1",
            &[&who.user_id],
        )
        .await
        .unwrap();
    assert_eq!(issued.get::<_, String>(0), "in_request");
    assert!(issued.get::<_, bool>(1), "bound to the key that signed");
    assert_eq!(
        count(&w, "SELECT count(*) FROM used_token_challenges").await,
        1
    );
    assert!(
        crate::emergency::mails(&w, "token.issued")
            .await
            .contains(&"owner@a.example".to_owned())
    );
    let inbox: i64 = client
        .query_one(
            "SELECT count(*) FROM lock_inbox WHERE lock_id = $1 AND kind = 'token'",
            &[&w.lock],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inbox, 1);
    // The assertion made this one request fresh, not the session: a request without one is
    // still refused.
    let (status, _) = ask(&w, &who.cookie, json!({ "grant": grant, "lock": w.lock })).await;
    assert_eq!(status, 401);
    // The old flow still works: a step-up, then the request without an assertion.
    who.step_up(&w.app).await;
    let (status, body) = ask(&w, &who.cookie, json!({ "grant": grant, "lock": w.lock })).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_once_used_and_the_key_stays_active() {
    let w = crate::emergency::world().await;
    let (mut who, grant) = responder(&w).await;
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    let body = json!({ "grant": grant, "lock": w.lock, "assertion": who.key.assert(&options) });
    let (first, second) = tokio::join!(
        ask(&w, &who.cookie, body.clone()),
        ask(&w, &who.cookie, body.clone())
    );
    // A double submit: exactly one token.
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 400], "{first:?} {second:?}");
    let (status, _) = ask(&w, &who.cookie, body).await;
    assert_eq!(status, 400);
    assert_eq!(tokens_of(&w, who.user_id).await, 1);
    assert_eq!(
        refusals(&w, who.user_id).await,
        vec!["challenge_replayed", "challenge_replayed"]
    );
    // The replays never reached the counter check: the key is not suspended, and a new challenge
    // gives a new token.
    let client = w.app.pool.get().await.unwrap();
    let status: String = client
        .query_one(
            "SELECT status FROM webauthn_credentials WHERE user_id = $1",
            &[&who.user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    let (status, body) = ask(
        &w,
        &who.cookie,
        json!({ "grant": grant, "lock": w.lock, "assertion": who.key.assert(&options) }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn forged_expired_foreign_and_misdirected_challenges_give_no_token() {
    let w = crate::emergency::world().await;
    let (mut who, grant) = responder(&w).await;
    let second_grant = grant_naming(&w, &who, "25-2").await;
    clear_step_up(&w, who.user_id).await;
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    let refused = |status: u16| assert_eq!(status, 400);

    // Forged: one bit of the tag flipped, then signed by the real key.
    let mut forged = challenge_bytes(&options);
    *forged.last_mut().unwrap() ^= 1;
    let assertion = who.key.assert(&with_challenge(&options, &forged));
    refused(
        ask(
            &w,
            &who.cookie,
            json!({ "grant": grant, "lock": w.lock, "assertion": assertion }),
        )
        .await
        .0,
    );

    // Another lock, another grant: the challenge names the request it may authorise.
    let assertion = who.key.assert(&options);
    refused(
        ask(
            &w,
            &who.cookie,
            json!({ "grant": grant, "lock": w.other_lock, "assertion": assertion.clone() }),
        )
        .await
        .0,
    );
    refused(
        ask(
            &w,
            &who.cookie,
            json!({ "grant": second_grant, "lock": w.lock, "assertion": assertion }),
        )
        .await
        .0,
    );

    // Another session of the same user: signed in again elsewhere, the first session's challenge
    // does not count there.
    let first_session = who.cookie.clone();
    who.sign_in(&w.app).await;
    clear_step_up(&w, who.user_id).await;
    let options = challenge(&w, &first_session, grant, w.lock).await;
    let assertion = who.key.assert(&options);
    refused(
        ask(
            &w,
            &who.cookie,
            json!({ "grant": grant, "lock": w.lock, "assertion": assertion }),
        )
        .await
        .0,
    );

    // Expired: a challenge with a correct tag under the server's own key, issued six minutes ago.
    // The same construction issued now is accepted, so the refusal is the time's alone.
    // The test servers' fixed data key (`helpers::test_settings`).
    let kek = Kek::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
    let keys = AuthKeys::derive(&kek);
    let actor = actor_of(&w, &who.cookie).await;
    let bound = Bound::Grant {
        grant,
        lock: w.lock,
    };
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    let old = proof::challenge(&keys, &actor, bound, Utc::now() - Duration::minutes(6)).unwrap();
    let assertion = who.key.assert(&with_challenge(&options, &old));
    refused(
        ask(
            &w,
            &who.cookie,
            json!({ "grant": grant, "lock": w.lock, "assertion": assertion }),
        )
        .await
        .0,
    );
    assert_eq!(tokens_of(&w, who.user_id).await, 0);
    assert_eq!(
        refusals(&w, who.user_id).await,
        vec![
            "challenge_not_ours",
            "challenge_not_ours",
            "challenge_not_ours",
            "challenge_not_ours",
            "challenge_expired"
        ]
    );
    let fresh = proof::challenge(&keys, &actor, bound, Utc::now()).unwrap();
    let assertion = who.key.assert(&with_challenge(&options, &fresh));
    let (status, body) = ask(
        &w,
        &who.cookie,
        json!({ "grant": grant, "lock": w.lock, "assertion": assertion }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_wrong_origin_or_a_revoked_grant_gives_no_token() {
    let w = crate::emergency::world().await;
    let (mut who, grant) = responder(&w).await;

    // Signed for another origin (a page elsewhere relaying the challenge): refused by the assertion
    // check, audited, no token.
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    let TestKey::Token(key) = &mut who.key else {
        panic!("staff hold security keys")
    };
    let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let phished = key
        .do_authentication(Url::parse("http://localhost:9999").unwrap(), rcr)
        .unwrap();
    let (status, _) = ask(
        &w,
        &who.cookie,
        json!({ "grant": grant, "lock": w.lock, "assertion": phished }),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(refusals(&w, who.user_id).await, vec!["assertion_refused"]);

    // A revoked grant: the assertion is good, the grant is not; the policy refuses (audited) and
    // the caller learns nothing.
    let options = challenge(&w, &who.cookie, grant, w.lock).await;
    let assertion = who.key.assert(&options);
    let (status, body) = call(
        &w.app,
        Method::POST,
        &format!("/api/v1/grants/{grant}/revoke"),
        Some(&w.dispatcher),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let denials = count(
        &w,
        "SELECT count(*) FROM audit_entries WHERE action = 'policy.deny'",
    )
    .await;
    let (status, _) = ask(
        &w,
        &who.cookie,
        json!({ "grant": grant, "lock": w.lock, "assertion": assertion }),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(tokens_of(&w, who.user_id).await, 0);
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM audit_entries WHERE action = 'policy.deny'"
        )
        .await,
        denials + 1
    );
    // A challenge asked for with a malformed query is a 400, for someone without the role a 403.
    let (status, _) = get(
        &w,
        &who.cookie,
        &format!("/api/v1/tokens/challenge?grant={grant}&lock=nope"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(
        &w,
        &w.dispatcher.cookie,
        &format!("/api/v1/tokens/challenge?grant={grant}&lock={}", w.lock),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_trusted_party_gets_a_token_in_one_request_too() {
    let w = crate::trusted::world().await;
    let email = "sam@neighbours.example";
    let (status, party) = crate::trusted::invite(
        &w,
        &w.owner,
        email,
        crate::trusted::terms(&w, crate::trusted::schedule(w.now(), true)),
    )
    .await;
    assert_eq!(status, 201, "{party}");
    let party: Uuid = party["id"].as_str().unwrap().parse().unwrap();
    let secret = mailed_secret(&w.app, email, "account.invitation")
        .await
        .unwrap();
    let (token, pem) = crate::auth_helpers::soft_token(true);
    crate::auth_helpers::trust_ca(&w.app, w.tenant, &pem).await;
    let mut key = TestKey::Token(Box::new(token));
    let finish = enrol(&w.app, "/api/v1/invitations/accept", &secret, &mut key).await;
    assert_eq!(finish.status(), 200);
    let cookie = session_cookie(&finish).unwrap();
    let user: Uuid = finish.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = w.app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = NULL WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let path = format!(
        "/api/v1/tokens/challenge?trusted_party={party}&lock={}",
        w.lock
    );
    let response = w
        .app
        .http
        .get(format!("{}{path}", w.app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let options = response.json::<Value>().await.unwrap()["options"].clone();
    // A responder's grant challenge is not a trusted party's: the binding names the kind.
    let grant_path = format!("/api/v1/tokens/challenge?grant={party}&lock={}", w.lock);
    let response = w
        .app
        .http
        .get(format!("{}{grant_path}", w.app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body = json!({ "trusted_party": party, "lock": w.lock, "assertion": key.assert(&options) });
    let response =
        crate::auth_helpers::post(&w.app, "/api/v1/trusted/tokens", &body, Some(&cookie)).await;
    assert_eq!(response.status(), 201);
    let response =
        crate::auth_helpers::post(&w.app, "/api/v1/trusted/tokens", &body, Some(&cookie)).await;
    assert_eq!(response.status(), 400, "a replay");
    let issued: i64 = client
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE trusted_party_id = $1",
            &[&party],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(issued, 1);
}

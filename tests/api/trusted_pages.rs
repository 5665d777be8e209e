//! The trusted-party pages (issue 11 §1/§3, the portal's part), over HTTP as a browser uses them:
//! session cookies, form posts with `Origin`, 303 redirects. The homeowner invites, pauses,
//! resumes and revokes on a home's page and opens a door remotely; the trusted party sees their
//! accesses on `/trusted` and gets a door pass. Someone else's home, another town, a stale step-up
//! and a post without `Origin` change nothing.

use chrono::{Duration, Timelike};
use firstkey::domain::{Role, Slug};
use firstkey::store::tenancy;
use uuid::Uuid;

use crate::auth_helpers::{TestKey, enrol, mailed_secret, soft_token, trust_ca};
use crate::helpers::{As, ORIGIN, user};
use crate::trusted::{World, schedule, world};

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) async fn page(w: &World, path: &str, who: &As) -> (u16, String) {
    let response = browser()
        .get(format!("{}{path}", w.app.address))
        .header("accept", "text/html")
        .header("cookie", &who.cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A form post; returns the status, the `Location` (for a 303), the `Cache-Control` and the body.
pub(crate) async fn post(
    w: &World,
    path: &str,
    who: &As,
    form: &[(&str, String)],
    origin: bool,
) -> (u16, String, String, String) {
    let mut request = browser()
        .post(format!("{}{path}", w.app.address))
        .header("accept", "text/html")
        .header("cookie", &who.cookie)
        .form(form);
    if origin {
        request = request.header("origin", ORIGIN);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (location, cache) = (header("location"), header("cache-control"));
    (status, location, cache, response.text().await.unwrap())
}

/// The invitation form as the page posts it: today's one-hour slot, one entry a day.
fn invitation(w: &World, email: &str) -> Vec<(&'static str, String)> {
    let slot = schedule(w.now(), true);
    let hour = w.now().hour();
    vec![
        ("email", email.to_owned()),
        ("label", "Sam at no. 12".to_owned()),
        ("lock", w.lock.to_string()),
        ("from", String::new()),
        (
            "until",
            (w.now() + Duration::days(30))
                .format("%Y-%m-%d")
                .to_string(),
        ),
        ("day", slot["days"][0].as_str().unwrap().to_owned()),
        ("hour_from", format!("{hour:02}:00")),
        ("hour_until", format!("{:02}:00", hour + 1)),
        ("uses_per_day", "1".to_owned()),
        ("notify_on_use", "on".to_owned()),
    ]
}

async fn count(w: &World, sql: &str) -> i64 {
    let client = w.app.pool.get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Accepts the mailed invitation with a software security key; a stepped-up session for them.
async fn accept(w: &World, email: &str) -> As {
    let secret = mailed_secret(&w.app, email, "account.invitation")
        .await
        .expect("the invitation was mailed");
    let (token, pem) = soft_token(true);
    trust_ca(&w.app, w.tenant, &pem).await;
    let mut key = TestKey::Token(Box::new(token));
    let finish = enrol(&w.app, "/api/v1/invitations/accept", &secret, &mut key).await;
    assert_eq!(finish.status(), 200);
    let who = user(&w.app, w.tenant, email, None, Role::TrustedParty, true).await;
    w.restep(&who).await;
    who
}

fn party_id(html: &str) -> Uuid {
    let at = html.find("id=\"revoke-").expect("a revoke form") + "id=\"revoke-".len();
    html[at..at + 36].parse().unwrap()
}

#[tokio::test]
async fn a_homeowner_invites_pauses_and_revokes_and_the_neighbour_gets_a_door_pass() {
    let w = world().await;
    // The party's slot is the current hour and a door pass ends with it; the test moves the clock
    // by minutes, so it starts early in an hour (late in one, its pass would expire before the
    // pause that must revoke it).
    let minute = w.now().minute();
    if minute >= 50 {
        w.advance(Duration::minutes(i64::from(65 - minute)));
        w.restep(&w.owner).await;
    }
    let home = format!("/homes/{}/trusted", w.property);
    // The home's page links here; the page lists nobody and offers both forms.
    let (status, html) = page(&w, &format!("/homes/{}", w.property), &w.owner).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!("href=\"{home}\"")), "{html}");
    let (status, html) = page(&w, &home, &w.owner).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("id=\"no-parties\"") && html.contains("id=\"invite-form\""));
    assert!(html.contains("id=\"remote-form\"") && html.contains("Front door"));

    // A stale step-up: asked inline, what was typed is kept, nobody invited.
    let form = invitation(&w, "sam@a.example");
    let (status, _, _, html) = post(&w, &home, &w.owner_plain, &form, true).await;
    assert_eq!(status, 401, "{html}");
    assert!(html.contains("data-resubmit=\"invite-form\""), "{html}");
    assert!(html.contains("value=\"sam@a.example\""), "{html}");
    // Bad input: the page says what, nobody invited.
    let mut bad = form.clone();
    bad[4].1 = "next week".to_owned();
    let (status, _, _, html) = post(&w, &home, &w.owner, &bad, true).await;
    assert_eq!(status, 400);
    assert!(html.contains("Until: a date"), "{html}");
    let mut bad = form.clone();
    bad[1].1 = "Sam\u{0}".to_owned();
    let (status, _, _, _) = post(&w, &home, &w.owner, &bad, true).await;
    assert_eq!(status, 400, "a NUL in the name is refused");
    // Without Origin (a cross-site form): refused.
    let (status, _, _, _) = post(&w, &home, &w.owner, &form, false).await;
    assert_eq!(status, 403);
    assert_eq!(count(&w, "SELECT count(*) FROM trusted_parties").await, 0);

    let (status, location, _, _) = post(&w, &home, &w.owner, &form, true).await;
    assert_eq!(status, 303);
    assert_eq!(location, format!("{home}?invited=1#parties"));
    let (_, html) = page(&w, &format!("{home}?invited=1"), &w.owner).await;
    assert!(html.contains("id=\"invited\"") && html.contains("Sam at no. 12"));
    assert!(html.contains(">invited<"), "{html}");
    let party = party_id(&html);

    // The neighbour accepts; the start page leads to /trusted, which lists the access.
    let sam = accept(&w, "sam@a.example").await;
    let (_, html) = page(&w, "/home", &sam).await;
    assert!(html.contains("id=\"go-trusted\""), "{html}");
    assert!(!html.contains("not in the portal yet"), "{html}");
    let (status, html) = page(&w, "/trusted", &sam).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("12 Elm Street") && html.contains("you may get a door pass"));
    let token_form = vec![
        ("trusted_party", party.to_string()),
        ("lock", w.lock.to_string()),
    ];
    // A stale step-up: asked inline for that lock; no token.
    let sam_plain = As {
        id: sam.id,
        ..user(
            &w.app,
            w.tenant,
            "sam@a.example",
            None,
            Role::TrustedParty,
            false,
        )
        .await
    };
    let (status, _, _, html) = post(&w, "/trusted/tokens", &sam_plain, &token_form, true).await;
    assert_eq!(status, 401);
    assert!(
        html.contains(&format!("data-resubmit=\"token-form-{party}-{}\"", w.lock)),
        "{html}"
    );
    // Another home's lock, or a made-up access: not found.
    let (status, _, _, _) = post(
        &w,
        "/trusted/tokens",
        &sam,
        &[
            ("trusted_party", party.to_string()),
            ("lock", w.other_lock.to_string()),
        ],
        true,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _, _) = post(
        &w,
        "/trusted/tokens",
        &sam,
        &[
            ("trusted_party", Uuid::new_v4().to_string()),
            ("lock", w.lock.to_string()),
        ],
        true,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(count(&w, "SELECT count(*) FROM issued_tokens").await, 0);
    // Inside the terms: the door pass, once, not cached.
    let (status, _, cache, html) = post(&w, "/trusted/tokens", &sam, &token_form, true).await;
    assert_eq!(status, 201, "{html}");
    assert_eq!(cache, "no-store");
    assert!(html.contains("id=\"door-pass\"") && html.contains("Front door"));
    // One entry a day: the second is refused, in words.
    let (status, _, _, html) = post(&w, "/trusted/tokens", &sam, &token_form, true).await;
    assert_eq!(status, 409);
    assert!(html.contains("id=\"refused\""), "{html}");
    assert_eq!(count(&w, "SELECT count(*) FROM issued_tokens").await, 1);

    // Pause (stale step-up first: asked inline, nothing changed), then resume.
    let starts = || async {
        let client = w.app.pool.get().await.unwrap();
        let at: chrono::DateTime<chrono::Utc> = client
            .query_one("SELECT starts_at FROM trusted_parties", &[])
            .await
            .unwrap()
            .get(0);
        at
    };
    let started = starts().await;
    w.advance(Duration::minutes(3));
    w.restep(&w.owner).await;
    let status_path = format!("{home}/{party}/status");
    let paused = [("status", "paused".to_owned())];
    let (status, _, _, html) = post(&w, &status_path, &w.owner_plain, &paused, true).await;
    assert_eq!(status, 401);
    assert!(html.contains(&format!("data-resubmit=\"status-{party}\"")));
    let (status, location, _, _) = post(&w, &status_path, &w.owner, &paused, true).await;
    assert_eq!(
        (status, location.as_str()),
        (303, &*format!("{home}#parties"))
    );
    let (_, html) = page(&w, &home, &w.owner).await;
    assert!(
        html.contains(">paused<") && html.contains("Resume Sam"),
        "{html}"
    );
    let (_, html) = page(&w, "/trusted", &sam).await;
    assert!(html.contains("outside the terms"), "{html}");
    let active = [("status", "active".to_owned())];
    let (status, _, _, _) = post(&w, &status_path, &w.owner, &active, true).await;
    assert_eq!(status, 303);
    let (_, html) = page(&w, &home, &w.owner).await;
    assert!(html.contains("Pause Sam"), "{html}");
    assert_eq!(starts().await, started, "pausing keeps the window");
    // The pause revoked the pass already issued.
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM issued_tokens WHERE status = 'revoked'"
        )
        .await,
        1
    );

    // Revoke: for good; the neighbour holds nothing any more.
    let revoke = format!("{home}/{party}/revoke");
    let (status, _, _, _) = post(&w, &revoke, &w.owner_plain, &[], true).await;
    assert_eq!(status, 401);
    let (status, _, _, _) = post(&w, &revoke, &w.owner, &[], true).await;
    assert_eq!(status, 303);
    let (_, html) = page(&w, &home, &w.owner).await;
    assert!(
        html.contains(">revoked<") && !html.contains("id=\"revoke-"),
        "{html}"
    );
    let (_, html) = page(&w, "/trusted", &sam).await;
    assert!(html.contains("id=\"no-access\""), "{html}");
    let (status, _, _, _) = post(&w, "/trusted/tokens", &sam, &token_form, true).await;
    assert!(status == 404 || status == 409, "{status}");

    // The trusted party's page is not a homeowner's, nor the other way round.
    let (status, _) = page(&w, "/trusted", &w.owner).await;
    assert_eq!(status, 404);
    let (status, _) = page(&w, &home, &sam).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn another_homeowner_or_town_finds_nothing_and_changes_nothing() {
    let w = world().await;
    let home = format!("/homes/{}/trusted", w.property);
    let form = invitation(&w, "sam@a.example");
    let (status, _, _, _) = post(&w, &home, &w.owner, &form, true).await;
    assert_eq!(status, 303);
    let (_, html) = page(&w, &home, &w.owner).await;
    let party = party_id(&html);

    let stranger = user(
        &w.app,
        w.tenant,
        "other@a.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    w.restep(&stranger).await;
    let client = w.app.pool.get().await.unwrap();
    let (town_b, _) =
        tenancy::ensure_municipality(&client, &Slug::parse("town-b").unwrap(), "Town B", w.now())
            .await
            .unwrap();
    drop(client);
    let elsewhere = user(
        &w.app,
        town_b,
        "owner@b.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    w.restep(&elsewhere).await;
    let remote = format!("/homes/{}/remote-open", w.property);
    for who in [&stranger, &elsewhere, &w.dispatcher] {
        let (status, _) = page(&w, &home, who).await;
        assert_eq!(status, 404);
        let (status, _, _, _) = post(&w, &home, who, &invitation(&w, "eve@a.example"), true).await;
        assert_eq!(status, 404);
        let (status, _, _, _) = post(
            &w,
            &format!("{home}/{party}/status"),
            who,
            &[("status", "paused".to_owned())],
            true,
        )
        .await;
        assert_eq!(status, 404);
        let (status, _, _, _) = post(&w, &format!("{home}/{party}/revoke"), who, &[], true).await;
        assert_eq!(status, 404);
        let (status, _, _, _) = post(
            &w,
            &remote,
            who,
            &[("lock", w.lock.to_string()), ("seconds", "10".to_owned())],
            true,
        )
        .await;
        assert_eq!(status, 404);
    }
    let (_, html) = page(&w, &home, &w.owner).await;
    assert!(
        html.contains(">invited<") && html.contains("Revoke Sam"),
        "{html}"
    );
    assert_eq!(count(&w, "SELECT count(*) FROM trusted_parties").await, 1);
    assert_eq!(count(&w, "SELECT count(*) FROM lock_inbox").await, 0);
}

#[tokio::test]
async fn the_remote_unlock_form_says_what_the_lock_answered() {
    let w = world().await;
    let remote = format!("/homes/{}/remote-open", w.property);
    let ten = [("lock", w.lock.to_string()), ("seconds", "10".to_owned())];
    // Stale step-up: asked inline, the lock and seconds kept, nothing queued.
    let (status, _, _, html) = post(&w, &remote, &w.owner_plain, &ten, true).await;
    assert_eq!(status, 401);
    assert!(html.contains("data-resubmit=\"remote-form\""), "{html}");
    for seconds in ["0", "121", "ten"] {
        let (status, _, _, html) = post(
            &w,
            &remote,
            &w.owner,
            &[
                ("lock", w.lock.to_string()),
                ("seconds", seconds.to_owned()),
            ],
            true,
        )
        .await;
        assert_eq!(status, 400, "{seconds}");
        assert!(html.contains("id=\"remote-answer\""), "{html}");
    }
    // A lock of another home of the same owner is not this home's.
    let (status, _, _, _) = post(
        &w,
        &remote,
        &w.owner,
        &[
            ("lock", w.other_lock.to_string()),
            ("seconds", "10".to_owned()),
        ],
        true,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _, _) = post(&w, &remote, &w.owner, &ten, false).await;
    assert_eq!(status, 403, "no Origin");
    assert_eq!(count(&w, "SELECT count(*) FROM lock_inbox").await, 0);
    // No agent is connected: after the bounded wait the page says the lock did not answer.
    let (status, _, _, html) = post(&w, &remote, &w.owner, &ten, true).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("did not answer in time"), "{html}");
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM lock_inbox WHERE kind = 'remote_open'"
        )
        .await,
        1
    );
    // Reloading the answer opens nothing a second time.
    let (status, _) = page(&w, &remote, &w.owner).await;
    assert_eq!(status, 303);
}

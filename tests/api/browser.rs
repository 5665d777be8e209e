//! Browser tests: the portal in real headless Chromium (Debian's `chromium` + `chromedriver`),
//! driven through chromedriver with fantoccini, with a CDP virtual authenticator (ctap2, internal
//! transport, resident keys, user verification) standing in for the person's passkey.
//!
//! Every page visited is screenshotted under `<target>/browser-screenshots/`, checked for console
//! errors and CSP violations (the browser log, fetched after each page), and checked for horizontal
//! overflow at 360 px. Without Chromium the tests print why and pass, unless
//! `FK_TEST_REQUIRE_BROWSER=1` (CI) makes that a failure. Waits are for elements and URLs, never
//! for fixed times.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use firstkey::clock::SystemClock;
use firstkey::domain::Slug;
use firstkey::http::Application;
use firstkey::settings::PublicOrigin;
use firstkey::store::tenancy;
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::prelude::Url;

use crate::auth_helpers::mailed_secret;
use crate::helpers::{TestApp, admin_config, fresh_database, test_settings};

const WAIT: Duration = Duration::from_secs(30);
const WIDTH: u32 = 360;

/// The server, on a port it bound itself, with `public_origin` = `http://localhost:<port>` so the
/// browser's WebAuthn origin matches the relying party.
async fn spawn_for_browser() -> TestApp {
    let db = fresh_database().await;
    let mut config = admin_config();
    config.dbname(&db);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut settings = test_settings(config.clone());
    settings.public_origin = PublicOrigin::parse(&format!("http://localhost:{port}")).unwrap();
    let pool = firstkey::store::pool(config.clone(), settings.db_pool_size).unwrap();
    let app = Application::build_on(listener, settings, pool, Arc::new(SystemClock)).unwrap();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://localhost:{port}"),
        pool: firstkey::store::pool(config, 2).unwrap(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        proxy: None,
        database: db,
    }
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Chromium and chromedriver, or why the test cannot run.
fn browser_binaries() -> Result<(PathBuf, PathBuf), String> {
    let chromium = first_existing(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"])
        .ok_or("chromium is not installed (apt-get install chromium chromium-driver)")?;
    let driver = first_existing(&["/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver"])
        .ok_or("chromedriver is not installed (apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

/// Where screenshots go: `<target>/browser-screenshots/<test>/`.
fn screenshot_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/api-… → <target>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("browser-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A POST to a session endpoint chromedriver adds beside W3C WebDriver (`goog/cdp/execute`,
/// `se/log`).
#[derive(Debug)]
struct SessionPost {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(&self, base: &Url, session: Option<&str>) -> Result<Url, url::ParseError> {
        base.join(&format!(
            "session/{}/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// A headless Chromium session with a virtual authenticator.
struct Browser {
    client: Client,
    driver: Child,
    _scratch: tempfile::TempDir,
    shots: PathBuf,
    taken: usize,
    base: String,
}

impl Browser {
    /// `None` (after saying why) when Chromium is missing and not required.
    async fn start(base: &str, test: &str) -> Option<Self> {
        let (chromium, driver_bin) = match browser_binaries() {
            Ok(found) => found,
            Err(why) => {
                assert!(
                    std::env::var("FK_TEST_REQUIRE_BROWSER").as_deref() != Ok("1"),
                    "FK_TEST_REQUIRE_BROWSER=1 but {why}"
                );
                eprintln!("skipping browser test {test}: {why}");
                return None;
            }
        };
        let scratch = tempfile::tempdir().unwrap();
        let (home, tmp, profile) = (
            scratch.path().join("home"),
            scratch.path().join("tmp"),
            scratch.path().join("profile"),
        );
        for d in [&home, &tmp, &profile] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&driver_bin)
                .arg("--port=0")
                .env("HOME", &home)
                .env("TMPDIR", &tmp)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                // Its own process group, so the browser it starts ends with it (see Drop).
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("chromedriver prints its port").unwrap();
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse::<u16>().unwrap();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={WIDTH},800"),
                ]
            }
        });
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps.as_object().unwrap().clone());
        let client = builder
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver starts a Chromium session");
        let browser = Self {
            client,
            driver,
            _scratch: scratch,
            shots: screenshot_dir(test),
            taken: 0,
            base: base.to_owned(),
        };
        browser
            .cdp("WebAuthn.enable", json!({ "enableUI": false }))
            .await;
        browser
            .cdp(
                "WebAuthn.addVirtualAuthenticator",
                json!({ "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                    "automaticPresenceSimulation": true,
                }}),
            )
            .await;
        // Chromium's windows have a minimum width; the page is laid out as on a 360 px phone.
        browser
            .cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": WIDTH, "height": 780, "deviceScaleFactor": 1, "mobile": true }),
            )
            .await;
        Some(browser)
    }

    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(SessionPost {
                path: "goog/cdp/execute",
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// The browser log since the last call.
    async fn log(&self) -> Vec<Value> {
        let value = self
            .client
            .issue_cmd(SessionPost {
                path: "se/log",
                body: json!({ "type": "browser" }),
            })
            .await
            .unwrap();
        value.as_array().cloned().unwrap_or_default()
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => self.fail(&format!("waiting for {css}: {e}")).await,
        }
    }

    async fn wait_for_path(&self, path_and_query: &str) {
        let url = Url::parse(&format!("{}{path_and_query}", self.base)).unwrap();
        if let Err(e) = self.client.wait().at_most(WAIT).for_url(&url).await {
            self.fail(&format!("waiting for {url}: {e}")).await;
        }
    }

    /// Fails the test with what the browser shows: a screenshot `FAILED.png`, the URL, the page's
    /// text and the browser log.
    async fn fail(&self, why: &str) -> ! {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.shots.join("FAILED.png"), png);
        }
        let url = self.client.current_url().await.map(|u| u.to_string());
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => self.client.source().await.unwrap_or_default(),
        };
        let log = self.log().await;
        panic!("{why}\nat {url:?}\npage: {text}\nlog: {log:#?}");
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_for(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.wait_for(css).await.text().await.unwrap()
    }

    /// Saves a screenshot, fails on console errors or CSP violations (except the `expected`
    /// messages) and on a page wider than the window.
    async fn check(&mut self, name: &str, expected: &[&str]) {
        self.taken += 1;
        let png = self.client.screenshot().await.unwrap();
        let file = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&file, png).unwrap();
        let problems: Vec<String> = self
            .log()
            .await
            .into_iter()
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                let severe = entry["level"].as_str() == Some("SEVERE");
                (severe || message.contains("Content Security Policy"))
                    && !expected.iter().any(|e| message.contains(e))
            })
            .map(|e| e.to_string())
            .collect();
        assert!(
            problems.is_empty(),
            "{name}: console problems: {problems:#?}"
        );
        let fits = self
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth
                    && [...document.querySelectorAll('.table-wrap')].every(e => e.scrollWidth <= e.clientWidth);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "{name}: wider than {WIDTH} px");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share its process group.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.driver.id()))
            .status();
        let _ = self.driver.wait();
    }
}

async fn municipality(app: &TestApp, slug: &str) -> firstkey::store::Tenant {
    let client = app.pool.get().await.unwrap();
    tenancy::ensure_municipality(
        &client,
        &Slug::parse(slug).unwrap(),
        "Springfield",
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .0
}

/// A homeowner signs up in the browser, follows the mailed link and enrols a passkey, registers a
/// home, adds a lock, writes an access plan, edits it after an inline step-up (the typed changes
/// survive), compares the two versions, signs out, signs in again with the passkey, and signs out
/// everywhere.
#[tokio::test]
async fn homeowner_story_in_chromium() {
    let app = spawn_for_browser().await;
    let Some(mut b) = Browser::start(&app.address, "homeowner").await else {
        return;
    };
    municipality(&app, "springfield").await;
    let email = format!("home-{}@example.org", Uuid::new_v4().simple());

    // The harness sees a CSP violation when there is one (so a clean page means clean).
    b.goto("/").await;
    b.wait_for("a[href='/sign-up']").await;
    b.client
        .execute(
            "const s = document.createElement('script'); s.textContent = 'void 0'; document.body.appendChild(s);",
            vec![],
        )
        .await
        .unwrap();
    let seen = b.log().await;
    assert!(
        seen.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("violates the following Content Security Policy directive")),
        "an inline script is reported: {seen:#?}"
    );

    b.goto("/").await;
    b.wait_for("a[href='/sign-up']").await;
    b.check("landing", &[]).await;

    b.click("main a[href='/sign-up']").await;
    b.fill("#municipality", "springfield").await;
    b.fill("#display_name", "Robin Homeowner").await;
    b.fill("#email", &email).await;
    b.check("sign-up", &[]).await;
    b.click("main form button[type=submit]").await;
    assert_eq!(b.text("main h1").await, "Check your mail");
    b.check("sign-up-sent", &[]).await;

    let secret = mailed_secret(&app, &email, "account.verify_email")
        .await
        .expect("the verification mail is in the outbox");
    b.goto(&format!("/accounts/verify#{secret}")).await;
    b.wait_for("form[data-ready='true']").await;
    let shown = b.client.current_url().await.unwrap();
    assert_eq!(shown.fragment(), None, "the secret leaves the address bar");
    b.check("verify", &[]).await;
    b.click("#enrol button[type=submit]").await;
    b.wait_for_path("/home").await;
    assert!(b.text("main h1").await.contains("Robin Homeowner"));
    b.check("start-page", &[]).await;

    b.click("header a[href='/homes']").await;
    b.wait_for("#address").await;
    b.check("homes-empty", &[]).await;
    b.fill("#address", "742 Evergreen Terrace, Springfield")
        .await;
    b.click("main form[action='/homes'] button").await;
    b.wait_for("#lock_id").await;
    assert_eq!(
        b.text("main h1").await,
        "742 Evergreen Terrace, Springfield"
    );
    let home_url = b.client.current_url().await.unwrap();
    let home_path = home_url.path().to_owned();

    // A wrong pairing code: the form comes back with the error and what was typed.
    let lock_id = Uuid::new_v4().to_string();
    b.fill("#lock_id", &lock_id).await;
    b.fill("#lock_name", "Front door").await;
    b.fill("#pairing_code", "nope").await;
    b.click("form[action$='/locks'] button").await;
    assert!(b.text("[role=alert]").await.contains("10 characters"));
    let kept = b.wait_for("#lock_name").await.prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("Front door"));
    b.check("lock-refused", &["status of 400"]).await;
    b.fill("#pairing_code", "ABCDE-FGHJK").await;
    b.click("form[action$='/locks'] button").await;
    b.wait_for("table tbody tr").await;
    let row = b.text("table tbody tr").await;
    assert!(
        row.contains("Front door") && row.contains("waiting for the lock"),
        "{row}"
    );
    assert!(row.contains(&lock_id) && row.contains("never"), "{row}");
    b.check("home-with-lock", &[]).await;

    // Version 1 of the plan (the session is fresh from the enrolment: no step-up asked).
    b.click(&format!("a[href='{home_path}/plan']")).await;
    b.wait_for("#plan-form").await;
    assert!(b.client.find(Locator::Css("#step-up")).await.is_err());
    b.click("#fire_allowed").await;
    b.fill("#fire_types", "fire, medical").await;
    b.fill("#max_grant_minutes", "45").await;
    b.fill("#pets", "Two cats").await;
    b.fill("#contact1_name", "Sam Neighbour").await;
    b.fill("#contact1_email", "sam@example.org").await;
    b.check("plan-new", &[]).await;
    b.click("#save-plan").await;
    b.wait_for_path(&format!("{home_path}?saved=1#plan")).await;
    assert!(b.text("#plan + p").await.contains("Version 1 is in force"));
    b.check("home-plan-v1", &[]).await;

    // The step-up goes stale: the editor asks inline, keeps the edits, and saves after it.
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = now() - interval '10 minutes'",
            &[],
        )
        .await
        .unwrap();
    b.click(&format!("a[href='{home_path}/plan']")).await;
    b.wait_for("#step-up[data-ready='true']").await;
    assert_eq!(
        b.wait_for("#pets")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("Two cats")
    );
    b.fill("#pets", "Two cats and a dog").await;
    b.click("#ems_allowed").await;
    b.click("#ems_second").await;
    b.check("plan-step-up", &[]).await;
    b.click("#step-up button").await;
    b.wait_for_path(&format!("{home_path}?saved=2#plan")).await;
    b.check("home-plan-v2", &[]).await;

    b.click("form[action$='/plan/compare'] button").await;
    b.wait_for("table.compare").await;
    assert_eq!(b.text("main h1").await, "Version 1 and version 2");
    let changed = b.text("tr.changed").await;
    assert!(changed.contains("Ambulance"), "{changed}");
    let all = b.text("table.compare tbody").await;
    assert!(
        all.contains("Two cats and a dog") && all.contains("45 minutes"),
        "{all}"
    );
    b.check("plan-compare", &[]).await;

    // Sign out, and back in with the passkey.
    b.click("header form[action='/sign-out'] button").await;
    b.wait_for_path("/?signed-out").await;
    b.check("signed-out", &[]).await;
    b.click("header a[href='/sign-in']").await;
    b.fill("#municipality", "springfield").await;
    b.fill("#email", &email).await;
    b.wait_for("#sign-in[data-ready='true']").await;
    b.check("sign-in", &[]).await;
    b.click("#sign-in button").await;
    b.wait_for_path("/home").await;
    b.check("signed-in-again", &[]).await;

    // Sign out everywhere: the session is gone, a page asks to sign in and comes back after.
    b.click("form[action='/sign-out-everywhere'] button").await;
    b.wait_for_path("/?signed-out-everywhere").await;
    b.goto(&home_path).await;
    b.wait_for_path(&format!("/sign-in?next={home_path}")).await;
    b.check("sign-in-to-continue", &[]).await;

    b.goto("/no-such-page").await;
    assert_eq!(b.text("main h1").await, "Page not found");
    b.check("not-found", &["status of 404"]).await;

    b.client.clone().close().await.unwrap();
}

/// State-changing form posts pass the same Origin check as the JSON API: a page on another site
/// cannot post a form here with the homeowner's cookie.
#[tokio::test]
async fn form_posts_from_another_origin_are_refused() {
    let app = spawn_for_browser().await;
    let tenant = municipality(&app, "springfield").await;
    let who = crate::helpers::user(
        &app,
        tenant,
        "csrf@example.org",
        None,
        firstkey::domain::Role::Homeowner,
        false,
    )
    .await;
    let post = |origin: Option<String>, site: Option<&'static str>| {
        let mut request = app
            .http
            .post(format!("{}/homes", app.address))
            .header("cookie", &who.cookie)
            .form(&[("address", "1 Forged Street")]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        request.send()
    };
    let forged = post(Some("http://evil.example".to_owned()), Some("cross-site"))
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let no_origin = post(None, Some("cross-site")).await.unwrap();
    assert_eq!(no_origin.status(), 403);
    let client = app.pool.get().await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM properties", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "nothing was created");
    let own = post(Some(app.address.clone()), None).await.unwrap();
    assert_eq!(own.status(), 303);
    assert!(
        own.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/homes/")
    );
}

/// Assets are served under their content hash with a year's caching; pages carry the CSP.
#[tokio::test]
async fn pages_carry_the_csp_and_assets_are_cached_by_hash() {
    let app = spawn_for_browser().await;
    let landing = app.get("/").await;
    assert_eq!(landing.status(), 200);
    let csp = landing.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = landing.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );
    let css = html
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|s| s.ends_with(".css"))
        .expect("a stylesheet link")
        .to_owned();
    assert_eq!(css, firstkey::web::assets::CSS.path);
    let sheet = app.get(&css).await;
    assert_eq!(sheet.status(), 200);
    assert_eq!(
        sheet.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        sheet.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let stale = app.get("/static/portal.0000000000.css").await;
    assert_eq!(stale.status(), 404);
}

/// SHA-256 of the SubjectPublicKeyInfo of Chromium's virtual-authenticator attestation key (the
/// FIDO U2F specification's example key: trust it only in test configurations).
const CHROMIUM_ATTESTATION_SPKI: &str =
    "c98993ec4f77b4997a081a5e5990c7cf6b0ceeb7b27bc7312a3cc351921531a9";

/// A registered home with a plan that lets the fire service in for fires, after a second
/// dispatcher's approval, for at most 30 minutes, with notes for responders.
async fn home_with_plan(app: &TestApp, tenant: firstkey::store::Tenant, address: &str) -> Uuid {
    let now = chrono::Utc::now();
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let owner = firstkey::store::people::ensure_user(
        &tx,
        tenant,
        &firstkey::domain::Email::parse(&format!("owner-{}@example.org", Uuid::new_v4().simple()))
            .unwrap(),
        "Olive Owner",
        None,
        &[firstkey::domain::Role::Homeowner],
        now,
    )
    .await
    .unwrap();
    let property =
        firstkey::store::properties::create_property(&tx, tenant, owner.id, address, now)
            .await
            .unwrap();
    let plan: firstkey::plans::PlanInput = serde_json::from_value(json!({
        "agencies": {
            "fire": { "allowed": true, "incident_types": ["fire"], "second_approval": true },
            "ems": { "allowed": false, "incident_types": [], "second_approval": false },
            "police": { "allowed": false, "incident_types": [], "second_approval": false }
        },
        "max_grant_minutes": 30,
        "notes": { "pets": "A deaf old dog in the kitchen" },
        "contacts": [],
        "notifications": { "homeowner": true, "contacts": false },
        "retention_days": 365
    }))
    .unwrap();
    // The test settings' data key: 32 bytes of 0x2a.
    let kek =
        firstkey::crypto::Kek::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
    let notes = serde_json::to_vec(&plan.notes).unwrap();
    firstkey::store::properties::insert_plan(
        &tx,
        tenant,
        property.id,
        owner.id,
        &plan,
        |id| {
            Ok(Some(
                firstkey::crypto::seal(&kek, id.as_bytes(), &notes).unwrap(),
            ))
        },
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    property.id
}

/// Adds a virtual USB security key (CTAP 2.1, user verification) to the browser's current tab.
async fn security_key(b: &Browser) {
    b.cdp(
        "WebAuthn.addVirtualAuthenticator",
        json!({ "options": {
            "protocol": "ctap2",
            "ctap2Version": "ctap2_1",
            "transport": "usb",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserVerified": true,
            "automaticPresenceSimulation": true,
        }}),
    )
    .await;
}

/// Staff in Chromium, and the dispatcher console. An admin invites a responder and two dispatchers
/// of the fire department (through the library the admin API calls); the municipality trusts
/// Chromium's virtual-authenticator attestation key by its SPKI pin; each follows the mailed link and
/// enrols a security key (a USB virtual authenticator). The first dispatcher opens an incident, finds
/// the home (with its plan summary), reveals the notes with a reason, and grants entry after an
/// inline step-up (the typed form survives); the plan asks for a second approval, so the grant waits.
/// The second dispatcher, in another tab, approves it from the queue and later revokes it; the first
/// dispatcher's console shows "live" and then "ended" without a reload (server-sent events fed by
/// NOTIFY).
#[tokio::test]
async fn dispatcher_console_in_chromium() {
    let app = spawn_for_browser().await;
    let Some(mut b) = Browser::start(&app.address, "dispatcher").await else {
        return;
    };
    let tenant = municipality(&app, "springfield").await;
    let now = chrono::Utc::now();
    let (fire, inviter) = {
        let mut client = app.pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let pin = firstkey::auth::pins::parse_pin(CHROMIUM_ATTESTATION_SPKI).unwrap();
        assert!(
            firstkey::auth::pins::pin_key(
                &tx,
                tenant,
                &pin,
                "Chromium virtual authenticator (tests only)",
                None,
                now
            )
            .await
            .unwrap()
        );
        let fire = tenancy::ensure_agency(
            &tx,
            tenant,
            firstkey::domain::AgencyKind::Fire,
            "Springfield Fire",
            now,
        )
        .await
        .unwrap();
        let admin = firstkey::store::people::ensure_user(
            &tx,
            tenant,
            &firstkey::domain::Email::parse("admin@springfield.example").unwrap(),
            "Ada Admin",
            None,
            &[firstkey::domain::Role::MunicipalAdmin],
            now,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        (fire.id, admin.id)
    };
    let home = home_with_plan(&app, tenant, "12 Elm Street, Springfield").await;
    let invite = |role, email: &'static str, name: &'static str| {
        let app = &app;
        async move {
            let mut client = app.pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            firstkey::auth::accounts::invite(
                &tx,
                tenant,
                inviter,
                &firstkey::auth::accounts::NewInvitation {
                    role,
                    agency_id: Some(fire),
                    email: email.to_owned(),
                    display_name: name.to_owned(),
                },
                &PublicOrigin::parse(&app.address).unwrap(),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            mailed_secret(app, email, "account.invitation")
                .await
                .expect("the invitation is mailed")
        }
    };
    use firstkey::domain::Role;
    let responder = invite(
        Role::Responder,
        "engine7@springfield.example",
        "Riley Responder",
    )
    .await;
    let dana = invite(
        Role::Dispatcher,
        "dana@springfield.example",
        "Dana Dispatcher",
    )
    .await;
    let sam = invite(Role::Dispatcher, "sam@springfield.example", "Sam Second").await;

    // Staff keys are roaming security keys: a USB authenticator beside the harness's platform one.
    security_key(&b).await;

    // The responder and the first dispatcher follow their mail and enrol.
    for (secret, name, shot) in [
        (&responder, "Riley Responder", "responder"),
        (&dana, "Dana Dispatcher", "dispatcher"),
    ] {
        b.goto(&format!("/invitations/accept#{secret}")).await;
        b.wait_for("form[data-ready='true']").await;
        b.check(&format!("enrol-{shot}"), &[]).await;
        b.click("#enrol button[type=submit]").await;
        b.wait_for_path("/home").await;
        assert!(b.text("main h1").await.contains(name));
        b.check(&format!("enrolled-{shot}"), &[]).await;
    }
    {
        // The keys were admitted by the pin, and the enrolments say so in the audit log.
        let client = app.pool.get().await.unwrap();
        let pinned: i64 = client
            .query_one(
                "SELECT count(*) FROM webauthn_credentials WHERE municipality_id = $1
                   AND attestation_ca = 'pinned attestation key ' || $2",
                &[&tenant.id(), &CHROMIUM_ATTESTATION_SPKI],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(pinned, 2);
    }

    // The console: open an incident.
    b.click("header a[href='/dispatch']").await;
    b.wait_for("#incident-form").await;
    b.check("console-empty", &[]).await;
    b.fill("#cad_number", "26-1309c").await;
    b.fill("#kind", "fire").await;
    b.fill("#address", "12 Elm Street").await;
    b.click("#incident-form button").await;
    b.wait_for("#find").await;
    assert_eq!(b.text("main h1").await, "Incident 26-1309c");
    let incident_path = b.client.current_url().await.unwrap().path().to_owned();
    b.check("incident-new", &[]).await;

    // Find the home: its plan summary says a second dispatcher must approve.
    b.fill("#q", "Elm").await;
    b.click("form[role=search] button").await;
    let found = b.text("#found").await;
    assert!(
        found.contains("12 Elm Street") && found.contains("a second dispatcher must approve"),
        "{found}"
    );
    assert!(found.contains("30 minutes"), "{found}");
    b.check("search", &[]).await;
    b.click(&format!("#found a[href$='property={home}#grant']"))
        .await;
    b.wait_for("#grant-form").await;

    // The notes, revealed for a reason (audited with it).
    b.fill("#reason", "Crew asks about animals before forcing entry")
        .await;
    b.click("#reveal-form button").await;
    let notes = b.text("#notes").await;
    assert!(notes.contains("A deaf old dog in the kitchen"), "{notes}");
    b.check("notes-revealed", &[]).await;
    {
        let client = app.pool.get().await.unwrap();
        let reasons: i64 = client
            .query_one(
                "SELECT count(*) FROM audit_entries WHERE municipality_id = $1
                   AND action = 'plan.reveal_notes'",
                &[&tenant.id()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(reasons, 1);
    }

    // The step-up goes stale: granting asks inline and keeps the form.
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE sessions SET stepped_up_at = now() - interval '10 minutes'",
            &[],
        )
        .await
        .unwrap();
    b.click("#grant-form input[name=responders]").await;
    b.fill("#minutes", "20").await;
    b.fill("#justification", "Smoke reported, occupant not answering")
        .await;
    b.click("#grant-form button[type=submit]").await;
    b.wait_for("form[data-resubmit='grant-form'][data-ready='true']")
        .await;
    let kept = b
        .wait_for("#justification")
        .await
        .prop("value")
        .await
        .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("Smoke reported, occupant not answering")
    );
    b.check("grant-step-up", &["status of 401"]).await;
    b.click("form[data-resubmit='grant-form'] button").await;
    let waiting = b
        .wait_for("[data-grant-state][data-state='waiting_for_approval']")
        .await;
    let grant = waiting.attr("data-grant-state").await.unwrap().unwrap();
    assert!(
        b.text(&format!("#grant-{grant}"))
            .await
            .contains("Riley Responder")
    );
    // The page subscribed to the incident's live state.
    b.wait_for("[data-live-events][data-live='connected']")
        .await;
    b.check("grant-waiting", &[]).await;
    let console = b.client.window().await.unwrap();

    // The second dispatcher, in another tab: enrols, approves from the queue.
    let tab = b.client.new_window(true).await.unwrap();
    b.client.switch_to_window(tab.handle.clone()).await.unwrap();
    // Virtual authenticators belong to a tab: the second dispatcher's key is this tab's.
    b.cdp("WebAuthn.enable", json!({ "enableUI": false })).await;
    security_key(&b).await;
    b.goto(&format!("/invitations/accept#{sam}")).await;
    b.wait_for("form[data-ready='true']").await;
    b.click("#enrol button[type=submit]").await;
    b.wait_for_path("/home").await;
    b.goto("/dispatch/approvals").await;
    let queue = b.text("main ul.cards").await;
    assert!(
        queue.contains("26-1309c") && queue.contains("20 minutes"),
        "{queue}"
    );
    b.check("approval-queue", &[]).await;
    b.click(&format!(
        "form[action='/dispatch/grants/{grant}/approve'] button"
    ))
    .await;
    b.wait_for_path("/dispatch/approvals").await;
    assert!(b.text("main").await.contains("Nothing is waiting"));
    b.check("approved", &[]).await;

    // The first dispatcher's console shows it live, without a reload.
    b.client.switch_to_window(console.clone()).await.unwrap();
    b.wait_for(&format!("[data-grant-state='{grant}'][data-state='live']"))
        .await;
    assert_eq!(
        b.text(&format!("[data-grant-state='{grant}']")).await,
        "live"
    );
    b.check("grant-live", &[]).await;
    assert_eq!(
        b.client.current_url().await.unwrap().path(),
        incident_path,
        "no navigation happened"
    );

    // The second dispatcher revokes it; the console shows it ended.
    b.client.switch_to_window(tab.handle.clone()).await.unwrap();
    b.goto(&incident_path).await;
    b.click(&format!(
        "form[action='/dispatch/grants/{grant}/revoke'] button"
    ))
    .await;
    b.wait_for(&format!("[data-grant-state='{grant}'][data-state='ended']"))
        .await;
    b.client.switch_to_window(console).await.unwrap();
    b.wait_for(&format!("[data-grant-state='{grant}'][data-state='ended']"))
        .await;
    b.check("grant-ended", &[]).await;

    // The console lists the incident with its grant.
    b.goto("/dispatch").await;
    let listed = b.text("#incident-list tbody").await;
    assert!(
        listed.contains("26-1309c") && listed.contains("12 Elm Street"),
        "{listed}"
    );
    b.check("console", &[]).await;

    b.client.clone().close().await.unwrap();
}

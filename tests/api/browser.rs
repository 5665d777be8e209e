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
    /// The CDP id of the virtual authenticator.
    authenticator: String,
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
        let mut browser = Self {
            client,
            driver,
            _scratch: scratch,
            shots: screenshot_dir(test),
            taken: 0,
            base: base.to_owned(),
            authenticator: String::new(),
        };
        browser
            .cdp("WebAuthn.enable", json!({ "enableUI": false }))
            .await;
        browser.authenticator = browser.add_authenticator().await;
        // Chromium's windows have a minimum width; the page is laid out as on a 360 px phone.
        browser
            .cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": WIDTH, "height": 780, "deviceScaleFactor": 1, "mobile": true }),
            )
            .await;
        Some(browser)
    }

    /// Adds a virtual platform authenticator (a passkey holder); returns its CDP id.
    async fn add_authenticator(&self) -> String {
        let added = self
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
        added["authenticatorId"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default()
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

// ---------------------------------------------------------------------------------------------
// The responder on a phone: a door pass with the security key, presented at the lock's door panel.

/// A JSON call as a browser on the test server's own origin makes it.
async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.address))
        .header("origin", &app.address)
        .json(&body);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![u8::try_from(n).unwrap()],
        128..=255 => vec![0x81, u8::try_from(n).unwrap()],
        _ => vec![
            0x82,
            u8::try_from(n >> 8).unwrap(),
            u8::try_from(n & 0xff).unwrap(),
        ],
    }
}

/// A SEC1 `ECPrivateKey` (P-256) wrapped as the PKCS#8 document CDP's `WebAuthn.addCredential` takes.
fn pkcs8_from_sec1(sec1: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x02, 0x01, 0x00];
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    inner.extend(hex::decode("301306072a8648ce3d020106082a8648ce3d030107").unwrap());
    inner.push(0x04);
    inner.extend(der_len(sec1.len()));
    inner.extend_from_slice(sec1);
    let mut out = vec![0x30];
    out.extend(der_len(inner.len()));
    out.extend(inner);
    out
}

/// The one credential a software security key holds after one registration: (id, PKCS#8 key).
fn soft_token_credential(
    token: &webauthn_authenticator_rs::softtoken::SoftToken,
) -> (Vec<u8>, Vec<u8>) {
    #[derive(serde::Deserialize)]
    struct Dump {
        tokens: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    }
    let dump: Dump = firstkey_agent::protocol::decode(&token.to_cbor().unwrap()).unwrap();
    assert_eq!(dump.tokens.len(), 1, "one credential registered");
    let (id, sec1) = dump.tokens.into_iter().next().unwrap();
    (id, pkcs8_from_sec1(&sec1))
}

/// Test 4 (the responder's half) and the responder part of test 5 of the portal issue, in a
/// 390×844 phone viewport: the responder, enrolled with a security key, signs in, sees the grant
/// naming them, reveals the home's notes (audited), asks for a door pass (the step-up is asked
/// inline and the request resubmitted), opens the lock agent's door panel, presents, and sees ALLOW;
/// the same pass again: DENY. The lock's receipts, once uploaded, show on the pass's state page.
/// A responder not named in the grant sees no grant, gets "not found" for its page and for a token
/// request, and nothing is minted for them.
#[tokio::test]
async fn responder_gets_a_door_pass_and_the_door_panel_allows_once() {
    use firstkey::emergency::keys;
    use firstkey_agent::state::{self, InitParams, StateDir};
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_rs::prelude::CreationChallengeResponse;

    use crate::auth_helpers::{bootstrap_admin, invitation, soft_token, trust_ca};
    use crate::helpers::user;
    use firstkey::domain::Role;

    let tmp = tempfile::tempdir().unwrap();
    let key_dir = tmp.path().join("keys");
    // The server for the browser (public origin http://localhost:<port>), with issuer keys.
    let app = {
        let db = fresh_database().await;
        let mut config = admin_config();
        config.dbname(&db);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut settings = test_settings(config.clone());
        settings.public_origin = PublicOrigin::parse(&format!("http://localhost:{port}")).unwrap();
        settings.key_dir = key_dir.clone();
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
    };
    let Some(mut b) = Browser::start(&app.address, "responder").await else {
        return;
    };
    let tenant = municipality(&app, "springfield").await;
    let now = chrono::Utc::now();
    let fire = {
        let mut client = app.pool.get().await.unwrap();
        keys::generate(&mut client, tenant, &key_dir, now)
            .await
            .unwrap();
        tenancy::ensure_agency(
            &client,
            tenant,
            firstkey::domain::AgencyKind::Fire,
            "Springfield Fire",
            now,
        )
        .await
        .unwrap()
        .id
    };
    let root_path = tmp.path().join("root.pk8");
    keys::root_generate(&root_path).unwrap();
    let root = keys::load_pair(&root_path).unwrap();
    let root_public: [u8; 32] = ring::signature::KeyPair::public_key(&root)
        .as_ref()
        .try_into()
        .unwrap();
    let bundle = {
        let mut client = app.pool.get().await.unwrap();
        keys::bundle(&mut client, tenant, &root, "localhost", now)
            .await
            .unwrap()
            .bytes
    };

    // A home with a plan and a lock whose agent serves the door panel (offline: no channel).
    let owner = user(
        &app,
        tenant,
        "owner@springfield.test",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    let (status, home) = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/properties",
        Some(&owner.cookie),
        json!({ "address": "742 Evergreen Terrace" }),
    )
    .await;
    assert_eq!(status, 201, "{home}");
    let property: Uuid = home["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = api(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/properties/{property}/plan"),
        Some(&owner.cookie),
        json!({
            "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
            "max_grant_minutes": 60,
            "notes": { "pets": "Two cats", "hazards": "Oxygen in the bedroom" },
            "contacts": [],
            "notifications": { "homeowner": true, "contacts": false },
            "retention_days": 365
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let lock = Uuid::new_v4();
    let agent_dir = StateDir::new(tmp.path().join("agent"));
    let device = state::init(
        &agent_dir,
        &InitParams {
            lock_id: lock.to_string(),
            root_public_key: root_public,
            trust_bundle: Some(bundle),
            server: None,
            server_ca_pem: None,
            hold_ms: 10,
            skew_secs: 60,
        },
    )
    .unwrap()
    .device_public_key;
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key, paired_at, created_at)
             VALUES ($1, $2, $3, 'Front door', 'paired', $4, now(), now())",
            &[&lock, &tenant.id(), &property, &device.to_vec()],
        )
        .await
        .unwrap();
    let agent = firstkey_agent::daemon::start(
        &firstkey_agent::daemon::RunOptions {
            state_dir: agent_dir.clone(),
            tap_socket: None,
            channel_timing: None,
            door_panel: Some("127.0.0.1:0".parse().unwrap()),
        },
        Arc::new(firstkey_agent::clock::SystemClock),
        None,
    )
    .unwrap();
    let panel = format!("http://localhost:{}/", agent.door_panel.unwrap().port());

    // The responder enrols a (software) security key through the invitation API: Chromium's
    // virtual authenticator's attestation is not trusted here, so its credential is moved into
    // Chromium afterwards, private key and all.
    let email = "e7@springfield.test";
    let (mut token, pem) = soft_token(true);
    trust_ca(&app, tenant, &pem).await;
    let (inviter, _) = bootstrap_admin(&app, tenant, "inviter@springfield.test").await;
    let secret = invitation(&app, tenant, inviter, Role::Responder, Some(fire), email).await;
    let (status, start) = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/invitations/accept/start",
        None,
        json!({ "secret": secret }),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let ccr: CreationChallengeResponse = serde_json::from_value(start["options"].clone()).unwrap();
    let registration = token
        .do_registration(Url::parse(&app.address).unwrap(), ccr)
        .unwrap();
    let (status, me) = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/invitations/accept/finish",
        None,
        json!({ "ceremony": start["ceremony"], "credential": registration }),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    let responder: Uuid = me["user_id"].as_str().unwrap().parse().unwrap();
    let (credential_id, pkcs8) = soft_token_credential(&token);
    {
        use base64::Engine;
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // Only the security key: a USB CTAP2 authenticator without resident keys.
        b.cdp("WebAuthn.disable", json!({})).await;
        b.cdp("WebAuthn.enable", json!({ "enableUI": false })).await;
        let added = b
            .cdp(
                "WebAuthn.addVirtualAuthenticator",
                json!({ "options": {
                    "protocol": "ctap2", "transport": "usb", "hasResidentKey": false,
                    "hasUserVerification": true, "isUserVerified": true,
                    "automaticPresenceSimulation": true,
                }}),
            )
            .await;
        let authenticator = added["authenticatorId"].as_str().unwrap().to_owned();
        // CDP's WebAuthn.addCredential refuses these parameters in Chromium 156; the WebDriver
        // extension's endpoint takes the same credential.
        let path: &'static str = Box::leak(
            format!("webauthn/authenticator/{authenticator}/credential").into_boxed_str(),
        );
        b.client
            .issue_cmd(SessionPost {
                path,
                body: json!({
                    "credentialId": b64u.encode(&credential_id), "isResidentCredential": false,
                    "rpId": "localhost", "privateKey": b64u.encode(&pkcs8), "signCount": 1,
                }),
            })
            .await
            .expect("the virtual security key takes the enrolled credential");
    }

    // A fire dispatcher grants the responder entry.
    let dispatcher = user(
        &app,
        tenant,
        "d1@springfield.test",
        Some(fire),
        Role::Dispatcher,
        true,
    )
    .await;
    let (status, incident) = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/incidents",
        Some(&dispatcher.cookie),
        json!({ "cad_number": "26-1309c", "kind": "fire", "address": "742 Evergreen Terrace", "agency": fire }),
    )
    .await;
    assert_eq!(status, 201, "{incident}");
    let (status, grant) = api(
        &app,
        reqwest::Method::POST,
        &format!(
            "/api/v1/incidents/{}/grants",
            incident["id"].as_str().unwrap()
        ),
        Some(&dispatcher.cookie),
        json!({ "property": property, "responders": [responder], "minutes": 30,
                "justification": "Smoke alarm, occupant not answering" }),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["id"].as_str().unwrap().to_owned();

    // On a phone.
    b.cdp(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": true }),
    )
    .await;
    b.goto("/sign-in").await;
    b.fill("#municipality", "springfield").await;
    b.fill("#email", email).await;
    b.wait_for("#sign-in[data-ready='true']").await;
    b.check("sign-in", &[]).await;
    b.click("#sign-in button").await;
    b.wait_for_path("/home").await;
    b.check("start-page", &[]).await;
    b.click("main a[href='/responder']").await;
    b.wait_for("#grants").await;
    let card = b.text("#grants li").await;
    assert!(
        card.contains("742 Evergreen Terrace")
            && card.contains("26-1309c")
            && card.contains("Front door"),
        "{card}"
    );
    b.check("grants", &[]).await;
    b.click(&format!("#grants a[href='/responder/grants/{grant_id}']"))
        .await;
    b.wait_for("#show-plan").await;
    b.check("grant", &[]).await;

    // The notes, on request: shown, and the reading audited under the policy set.
    b.click("#show-plan").await;
    let notes = b.text("#notes").await;
    assert!(
        notes.contains("Two cats") && notes.contains("Oxygen in the bedroom"),
        "{notes}"
    );
    b.check("grant-plan-revealed", &[]).await;
    let reveals: i64 = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE action = 'plan.reveal_notes' AND actor_id = $1
               AND property_id = $2 AND policy_set_hash IS NOT NULL",
            &[&responder, &property],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reveals, 1);

    // The sign-in's assertion has gone stale: the page asks for the key inline, then mints.
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE sessions SET stepped_up_at = now() - interval '10 minutes' WHERE user_id = $1",
            &[&responder],
        )
        .await
        .unwrap();
    // The door pass needs no separate step-up: the request carries its own assertion over a
    // challenge the server does not store (one request per token), even with a stale step-up.
    b.wait_for(&format!("#token-form-{lock}[data-ready='true']"))
        .await;
    b.click(&format!("#token-form-{lock} button")).await;
    let pass = b
        .wait_for("#door-pass")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(pass.contains('.') && pass.len() > 200, "{pass}");
    assert_eq!(b.text("#token-state").await, "issued; waiting for the lock");
    b.check("door-pass", &[]).await;
    let state_path = b
        .wait_for("main a[href^='/responder/tokens/']")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let minted: i64 = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE responder_id = $1 AND lock_id = $2",
            &[&responder, &lock],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(minted, 1);

    // At the door: the lock's own page, on the lock's origin, under the server's RP ID.
    b.client.goto(&panel).await.unwrap();
    b.wait_for("#present[data-ready='true']").await;
    b.check("door-panel", &[]).await;
    b.fill("#door-pass", &pass).await;
    b.click("#present button").await;
    assert_eq!(b.text("#verdict[data-outcome='allow']").await, "ALLOW");
    b.check("door-panel-allow", &[]).await;
    b.fill("#door-pass", &pass).await;
    b.click("#present button").await;
    assert_eq!(b.text("#verdict[data-outcome='deny']").await, "DENY");
    b.check("door-panel-deny", &[]).await;

    // The lock's receipts reach the server (as its channel would upload them) and the pass's page
    // shows what the door did.
    let receipts: Vec<Vec<u8>> = {
        let door = agent.door.lock().unwrap();
        door.store()
            .pending_receipts(0, 64)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    };
    assert_eq!(receipts.len(), 2);
    let identity = firstkey::channel::receipts::LockIdentity {
        id: lock,
        wire_id: lock.to_string(),
        tenant,
        property,
        name: "Front door".to_owned(),
        device_public_key: device,
    };
    assert_eq!(
        firstkey::channel::receipts::store_batch(
            &app.pool,
            &identity,
            &receipts,
            chrono::Utc::now()
        )
        .await
        .unwrap(),
        firstkey::channel::receipts::BatchOutcome::Stored { through: 2 }
    );
    b.goto(&state_path).await;
    b.wait_for("#token-steps").await;
    assert_eq!(b.text("#token-state").await, "used at the door");
    let steps = b.text("#token-steps").await;
    assert!(
        steps.contains("opened") && steps.contains("Refused at the door: 1 time(s)"),
        "{steps}"
    );
    assert!(
        b.client.find(Locator::Css("#door-pass")).await.is_err(),
        "the pass is shown once"
    );
    b.check("door-pass-used", &[]).await;

    // A responder of the same agency whom the grant does not name.
    let other = user(
        &app,
        tenant,
        "e9@springfield.test",
        Some(fire),
        Role::Responder,
        true,
    )
    .await;
    let (name, value) = other.cookie.split_once('=').unwrap();
    b.cdp("Network.enable", json!({})).await;
    b.cdp(
        "Network.deleteCookies",
        json!({ "name": firstkey::auth::session::COOKIE, "url": format!("{}/", app.address) }),
    )
    .await;
    b.cdp(
        "Network.setCookie",
        json!({ "name": name, "value": value, "url": format!("{}/", app.address), "path": "/",
                "secure": true, "httpOnly": true, "sameSite": "Strict" }),
    )
    .await;
    b.goto("/responder").await;
    b.wait_for("#no-grants").await;
    b.check("not-named-grants", &[]).await;
    b.goto(&format!("/responder/grants/{grant_id}")).await;
    assert_eq!(b.text("main h1").await, "Page not found");
    b.check("not-named-grant", &["status of 404"]).await;
    // Even a hand-made form post for the grant's lock is refused, and nothing is minted.
    b.client
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
             const i = document.createElement('input'); i.type = 'hidden'; i.name = 'lock'; i.value = arguments[1];
             f.appendChild(i); document.body.appendChild(f); f.submit();",
            vec![json!(format!("/responder/grants/{grant_id}/tokens")), json!(lock.to_string())],
        )
        .await
        .unwrap();
    b.wait_for_path(&format!("/responder/grants/{grant_id}/tokens"))
        .await;
    assert_eq!(b.text("main h1").await, "Page not found");
    b.check("not-named-token", &["status of 404"]).await;
    let client = app.pool.get().await.unwrap();
    let theirs: i64 = client
        .query_one(
            "SELECT count(*) FROM issued_tokens WHERE responder_id = $1",
            &[&other.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, 0);
    let denied: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_entries WHERE actor_id = $1 AND outcome = 'deny'",
            &[&other.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(denied >= 1, "the refused token request is audited");

    b.client.clone().close().await.unwrap();
    agent.stop().await;
}

/// A homeowner's security keys and a home's history in the browser: name the enrolment passkey,
/// add a second one (on a second authenticator), remove the first (its sessions end, so sign in
/// with the second), see the last one refused, write a plan, print it, read the home's history
/// (a stale step-up asked inline), and erase the history's personal details.
#[tokio::test]
async fn homeowner_keys_and_history_in_chromium() {
    let app = spawn_for_browser().await;
    let Some(mut b) = Browser::start(&app.address, "homeowner-keys-history").await else {
        return;
    };
    municipality(&app, "springfield").await;
    let email = format!("keys-{}@example.org", Uuid::new_v4().simple());

    b.goto("/sign-up").await;
    b.fill("#municipality", "springfield").await;
    b.fill("#display_name", "Kim Keyholder").await;
    b.fill("#email", &email).await;
    b.click("main form button[type=submit]").await;
    assert_eq!(b.text("main h1").await, "Check your mail");
    let secret = mailed_secret(&app, &email, "account.verify_email")
        .await
        .expect("the verification mail is in the outbox");
    b.goto(&format!("/accounts/verify#{secret}")).await;
    b.wait_for("form[data-ready='true']").await;
    b.click("#enrol button[type=submit]").await;
    b.wait_for_path("/home").await;

    // My keys: one, named here.
    b.click("header a[href='/keys']").await;
    b.wait_for("#add-key[data-ready='true']").await;
    assert!(
        b.client.find(Locator::Css("#step-up")).await.is_err(),
        "fresh from enrolment"
    );
    assert_eq!(
        b.client
            .find_all(Locator::Css("#keys > li"))
            .await
            .unwrap()
            .len(),
        1
    );
    b.check("keys-one", &[]).await;
    b.fill("#keys > li input[name=name]", "Phone").await;
    b.click("#keys > li form[action$='/name'] button").await;
    b.wait_for_path("/keys?done=named").await;
    assert!(b.text("#keys > li h2").await.contains("Phone"));

    // A second passkey, on a second authenticator (the first would refuse: it already holds one).
    let first = b.authenticator.clone();
    b.cdp(
        "WebAuthn.removeVirtualAuthenticator",
        json!({ "authenticatorId": first }),
    )
    .await;
    b.authenticator = b.add_authenticator().await;
    b.fill("#new-key-name", "Laptop").await;
    b.click("#add-key button").await;
    b.wait_for_path("/keys?done=added").await;
    let keys = b.text("#keys").await;
    assert!(keys.contains("Phone") && keys.contains("Laptop"), "{keys}");
    b.check("keys-two", &[]).await;

    // Removing the enrolment key ends the sessions it opened, this one included: sign in with the
    // second.
    b.click("#keys > li:first-child form[action$='/remove'] button")
        .await;
    b.wait_for_path("/sign-in?next=/keys%3Fdone%3Dremoved")
        .await;
    b.fill("#municipality", "springfield").await;
    b.fill("#email", &email).await;
    b.wait_for("#sign-in[data-ready='true']").await;
    b.click("#sign-in button").await;
    b.wait_for_path("/keys?done=removed").await;
    let keys = b.text("#keys").await;
    assert!(keys.contains("Laptop") && !keys.contains("Phone"), "{keys}");
    b.check("keys-removed", &[]).await;

    // The last key cannot go.
    b.click("#keys > li form[action$='/remove'] button").await;
    assert!(b.text("#keys-error").await.contains("last key"));
    b.check("keys-last-refused", &["status of 409"]).await;

    // A home with a plan, and its printable sheet.
    b.goto("/homes").await;
    b.fill("#address", "19 Plymouth Street, Springfield").await;
    b.click("main form[action='/homes'] button").await;
    b.wait_for("#lock_id").await;
    let home_path = b.client.current_url().await.unwrap().path().to_owned();
    b.goto(&format!("{home_path}/plan")).await;
    b.wait_for("#plan-form").await;
    let legends = b.text("#contact1 legend").await + &b.text("#contact2 legend").await;
    assert_eq!(legends, "Emergency contact 1Emergency contact 2");
    b.click("#fire_allowed").await;
    b.fill("#pets", "An old dog").await;
    b.fill("#contact1_name", "Alex Sister").await;
    b.fill("#contact1_email", "alex@example.org").await;
    b.check("plan-contacts", &[]).await;
    b.click("#save-plan").await;
    b.wait_for_path(&format!("{home_path}?saved=1#plan")).await;
    b.click("#print-plan").await;
    b.wait_for("body.print-plan").await;
    let sheet = b.text("main").await;
    assert!(
        sheet.contains("An old dog")
            && sheet.contains("Alex Sister")
            && sheet.contains("may enter"),
        "{sheet}"
    );
    b.check("plan-print", &[]).await;
    // On paper: the screen-only line and the links' colour go, the sections stay.
    b.cdp("Emulation.setEmulatedMedia", json!({ "media": "print" }))
        .await;
    let hidden = b
        .client
        .execute(
            "return getComputedStyle(document.querySelector('.screen-only')).display;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(hidden, json!("none"));
    b.check("plan-print-media", &[]).await;
    b.cdp("Emulation.setEmulatedMedia", json!({ "media": "" }))
        .await;

    // The history, after a stale step-up is confirmed inline.
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE sessions SET stepped_up_at = now() - interval '10 minutes'",
            &[],
        )
        .await
        .unwrap();
    b.goto(&home_path).await;
    b.click("#open-history").await;
    b.wait_for("#step-up[data-ready='true']").await;
    b.check("history-step-up", &["status of 401"]).await;
    b.click("#step-up button").await;
    b.wait_for("#history").await;
    let history = b.text("#history").await;
    assert!(
        history.contains("Home registered: 19 Plymouth Street, Springfield")
            && history.contains("Access plan version 1 saved by Kim Keyholder")
            && history.contains("UTC"),
        "{history}"
    );
    b.check("history", &[]).await;

    b.click("#erase").await;
    b.wait_for("#erased").await;
    let history = b.text("#history").await;
    assert!(
        history.contains("the address in this record was erased")
            && history.contains("Personal details in this history were erased"),
        "{history}"
    );
    b.check("history-erased", &[]).await;

    b.client.clone().close().await.unwrap();
}

impl Browser {
    /// Signs the browser in as `who` (a session made by the harness): staff enrol hardware keys
    /// with a trusted attestation, which Chromium's virtual authenticator does not carry.
    async fn sign_in_with_cookie(&self, who: &crate::helpers::As) {
        let (name, value) = who.cookie.split_once('=').unwrap();
        let set = self
            .cdp(
                "Network.setCookie",
                json!({
                    "name": name, "value": value, "url": format!("{}/", self.base),
                    "secure": true, "httpOnly": true, "sameSite": "Strict", "path": "/"
                }),
            )
            .await;
        assert_eq!(set["success"], json!(true), "{set}");
    }
}

/// A municipal admin adds an agency and a unit, invites a dispatcher into the agency (the mailed
/// link opens its enrolment page) and sees the pending invitation; then an auditor filters the
/// log for the agency's creation, opens the entry and downloads the CSV of the filtered view.
#[tokio::test]
async fn admin_and_auditor_in_chromium() {
    use firstkey::domain::Role;
    let app = spawn_for_browser().await;
    let Some(mut b) = Browser::start(&app.address, "admin").await else {
        return;
    };
    let tenant = municipality(&app, "springfield").await;
    let admin = crate::helpers::user(
        &app,
        tenant,
        "chief@springfield.example",
        None,
        Role::MunicipalAdmin,
        true,
    )
    .await;
    b.sign_in_with_cookie(&admin).await;

    b.goto("/home").await;
    b.click("#go-admin").await;
    b.wait_for_path("/admin").await;
    assert_eq!(b.text("main h1").await, "Agencies");
    assert!(b.client.find(Locator::Css("#step-up")).await.is_err());
    b.check("agencies-empty", &[]).await;
    b.fill("#agency_name", "Springfield Fire Department").await;
    b.click("#add-agency button").await;
    b.wait_for_path("/admin?done=agency-added").await;
    let row = b.text("#agencies tbody tr").await;
    assert!(
        row.contains("Springfield Fire Department") && row.contains("fire"),
        "{row}"
    );
    b.check("agency-added", &[]).await;

    b.click("nav.subnav a[href='/admin/units']").await;
    b.fill("#unit_name", "Engine 7").await;
    b.check("units-empty", &[]).await;
    b.click("#add-unit button").await;
    b.wait_for_path("/admin/units?done=unit-added").await;
    assert!(b.text("ul.cards").await.contains("Engine 7"));
    b.check("unit-added", &[]).await;

    b.click("nav.subnav a[href='/admin/people']").await;
    b.fill("#invite_name", "Dana Dispatcher").await;
    b.fill("#invite_email", "dana@springfield.example").await;
    b.wait_for("#invite_role option[value='dispatcher']")
        .await
        .click()
        .await
        .unwrap();
    let agency_option = "#invite_agency option:nth-child(2)";
    assert_eq!(b.text(agency_option).await, "Springfield Fire Department");
    b.click(agency_option).await;
    b.check("invite", &[]).await;
    b.click("#invite-form button").await;
    b.wait_for_path("/admin/people?done=invited").await;
    let pending = b.text("#invitations-table tbody").await;
    assert!(
        pending.contains("dana@springfield.example") && pending.contains("dispatcher"),
        "{pending}"
    );
    b.check("invited", &[]).await;

    b.click("nav.subnav a[href='/admin/cad']").await;
    b.fill("#cad_name", "Primary CAD").await;
    b.click("#create-credential button").await;
    let secret = b.text("#new-secret-value").await;
    assert!(secret.len() >= 40, "{secret}");
    b.check("cad-secret-once", &[]).await;
    b.goto("/admin/cad").await;
    b.wait_for("#credentials").await;
    assert!(b.client.find(Locator::Css("#new-secret")).await.is_err());
    let html = b.client.source().await.unwrap();
    assert!(!html.contains(&secret), "the secret is shown once");
    b.click("nav.subnav a[href='/admin/trust']").await;
    b.wait_for("#policy-hash").await;
    assert!(b.text("#policy-files").await.contains("admin.cedar"));
    b.check("trust", &[]).await;

    // The mailed link opens the invitee's enrolment page.
    let link = mailed_secret(&app, "dana@springfield.example", "account.invitation")
        .await
        .expect("the invitation is in the outbox");
    b.goto(&format!("/invitations/accept#{link}")).await;
    b.wait_for("form[data-ready='true']").await;
    b.check("invitation-page", &[]).await;

    // The auditor.
    let mut b = {
        drop(b);
        let Some(b) = Browser::start(&app.address, "auditor").await else {
            return;
        };
        b
    };
    let auditor = crate::helpers::user(
        &app,
        tenant,
        "audit@springfield.example",
        None,
        Role::Auditor,
        true,
    )
    .await;
    b.sign_in_with_cookie(&auditor).await;
    b.goto("/home").await;
    b.click("#go-audit").await;
    b.wait_for("#chain-status").await;
    assert!(b.text("#chain-status").await.contains("intact"));
    b.check("log", &[]).await;
    // Typed, then Enter (WebDriver's key U+E007) submits the form, as a person would.
    b.fill("#event", "agency.create\u{E007}").await;
    // The answer shows the filter back (the attribute, as the server wrote it).
    b.wait_for("input#event[value='agency.create']").await;
    let rows = b.text("#entries-table tbody").await;
    assert_eq!(
        rows.lines().filter(|l| l.contains("agency.create")).count(),
        1,
        "{rows}"
    );
    assert!(rows.contains("chief@springfield.example"), "{rows}");
    b.check("log-filtered", &[]).await;
    let csv = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('export-csv').href, { credentials: 'same-origin' })
               .then(r => r.text()).then(done, e => done('failed: ' + e));",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap().to_owned();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("seq,recorded_at,actor,action,outcome"),
        "{csv}"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].contains(",agency.create,info,agency,")
            && lines[1].contains(&admin.id.to_string())
            && lines[1].contains("Springfield Fire Department"),
        "{csv}"
    );
    b.click("#entries-table tbody th a").await;
    b.wait_for("#entry").await;
    assert!(b.text("#entry").await.contains("agency.create"));
    b.check("entry", &[]).await;

    b.client.clone().close().await.unwrap();
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
    firstkey::store::properties::insert_plan(
        &tx,
        tenant,
        property.id,
        owner.id,
        &plan,
        |id| firstkey::store::properties::seal_plan(&kek, &plan, id),
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
                firstkey::auth::pins::PinUse::TestOnly,
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

/// The in-browser verifier: a visitor (not signed in) pastes a home's export and the log key on
/// `/verify`; Chromium checks the checkpoint's Ed25519 signature and the inclusion proofs with
/// WebCrypto and says "Verified"; the same export with one entry's bytes changed is refused.
#[tokio::test]
async fn the_verifier_page_checks_an_export_in_chromium() {
    use firstkey::domain::Role;
    use reqwest::Method;
    let app = spawn_for_browser().await;
    let Some(mut b) = Browser::start(&app.address, "verifier").await else {
        return;
    };
    let tenant = municipality(&app, "proofton").await;
    let owner = crate::helpers::user(
        &app,
        tenant,
        "o@proofton.example",
        None,
        Role::Homeowner,
        true,
    )
    .await;
    let (status, home) = api(
        &app,
        Method::POST,
        "/api/v1/properties",
        Some(&owner.cookie),
        json!({ "address": "7 Proof Lane" }),
    )
    .await;
    assert_eq!(status, 201, "{home}");
    let home = home["id"].as_str().unwrap().to_owned();
    for minutes in [30, 31] {
        let (status, body) = api(
            &app,
            Method::PUT,
            &format!("/api/v1/properties/{home}/plan"),
            Some(&owner.cookie),
            json!({
                "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
                "max_grant_minutes": minutes,
                "retention_days": 365
            }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let key = crate::privacy::checkpoint(&app, tenant, "proofton", true)
        .await
        .unwrap()
        .to_string();
    let export = app
        .http
        .get(format!(
            "{}/api/v1/audit/export?property={home}",
            app.address
        ))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut tampered: Value = serde_json::from_str(&export).unwrap();
    let data = tampered["entries"][0]["data"]
        .as_str()
        .unwrap()
        .replace("property.create", "property.remove");
    tampered["entries"][0]["data"] = json!(data);

    b.goto("/verify").await;
    b.wait_for("form[data-verifier][data-ready='true']").await;
    b.check("verifier", &[]).await;
    b.fill("#key", &key).await;
    b.fill("#export", &export).await;
    b.click("#verifier button[type=submit]").await;
    b.wait_for("form[data-state='verified']").await;
    let said = b.text("#result").await;
    assert!(said.starts_with("Verified: 3 entries"), "{said}");
    b.check("verified", &[]).await;

    b.fill("#export", &tampered.to_string()).await;
    b.click("#verifier button[type=submit]").await;
    b.wait_for("form[data-state='failed']").await;
    let said = b.text("#result").await;
    assert!(
        said.contains("NOT verified") && said.contains("entry 0"),
        "{said}"
    );
    b.check("refused", &[]).await;
}

//! schemathesis (from PyPI, the version `deploy/dev/schemathesis-venv` pins) against the document
//! the server serves, signed in as a homeowner with a real passkey enrolment: `--checks all` must
//! find no failure. The run is seeded and bounded (examples per operation, a time budget, and a
//! hard timeout here), so it is repeatable and fits CI.
//!
//! Without schemathesis the test says so and passes, unless `FK_TEST_REQUIRE_SCHEMATHESIS=1`
//! (CI sets it), when a missing schemathesis fails it. `FIRSTKEY_SCHEMATHESIS` names another
//! executable.
//!
//! What is not run, and why (each is a property of the API, not a gap in the document):
//! - `sign-out`, `sign-out-everywhere` and `DELETE /api/v1/me` (account deletion) are left out:
//!   they end the very session the run authenticates with (the last one the account too), and
//!   everything after them would test an anonymous caller.
//! - `positive_data_acceptance` also accepts 400 on the five ceremony finishes and the two token
//!   requests, which finish a WebAuthn assertion when they carry one ([`CEREMONY_FINISHES`]), on
//!   the operations whose bodies name things of the caller's own data or must agree across fields
//!   (trusted parties, monitoring accounts, alarm rules), and on registering locks, whose bounds
//!   (409, 429) a generator's valid bodies reach.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use firstkey::domain::{Role, Slug};
use firstkey::store::tenancy;
use serde_json::json;

use crate::auth_helpers::{ORIGIN, sign_in_as};
use crate::helpers::{TestApp, spawn_app};

/// The pinned version (keep in step with `deploy/dev/schemathesis-venv`).
const VERSION: &str = "4.32.5";
/// Hard limit of one schemathesis run; the run's own budget (`max-time`) is well inside it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The schemathesis executable, or why there is none.
fn executable() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("FIRSTKEY_SCHEMATHESIS") {
        return Ok(path.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-schemathesis/bin/schemathesis");
    if venv.exists() {
        Ok(venv)
    } else {
        Err(format!(
            "{} does not exist; run deploy/dev/schemathesis-venv",
            venv.display()
        ))
    }
}

/// The executable when it is there and is the pinned version; otherwise skip (or fail when CI
/// requires it).
fn executable_or_skip() -> Option<PathBuf> {
    let required = std::env::var("FK_TEST_REQUIRE_SCHEMATHESIS").is_ok_and(|v| v == "1");
    let found = executable().and_then(|path| {
        let output = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let version = String::from_utf8_lossy(&output.stdout).into_owned();
        if version.contains(VERSION) {
            Ok(path)
        } else {
            Err(format!(
                "{} is `{}`, not {VERSION}; run deploy/dev/schemathesis-venv",
                path.display(),
                version.trim()
            ))
        }
    });
    match found {
        Ok(path) => Some(path),
        Err(reason) if required => panic!("FK_TEST_REQUIRE_SCHEMATHESIS=1, but {reason}"),
        Err(reason) => {
            eprintln!("skipped: schemathesis is not available: {reason}");
            None
        }
    }
}

/// Runs schemathesis with `config` (TOML) against the app's served document; returns whether it
/// passed and its output.
async fn run(app: &TestApp, binary: &Path, config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("firstkey-schemathesis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config).unwrap();
    let started = Instant::now();
    let child = tokio::process::Command::new(binary)
        .arg("--config-file")
        .arg(&config_path)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/openapi.json", app.address))
        .args(["--checks", "all", "--report", "junit", "--report-dir"])
        .arg(dir.join("report"))
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("schemathesis starts");
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {RUN_TIMEOUT:?}"))
        .expect("schemathesis runs");
    let text = format!(
        "{}{}\n(schemathesis took {:.0?})",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
    (output.status.success(), text)
}

/// The finish of a WebAuthn ceremony takes a credential signed by an authenticator over the
/// challenge of a ceremony this server started; a generator cannot make one, so every
/// schema-valid body it makes is (rightly) refused with 400, and `positive_data_acceptance`
/// ("a schema-valid request is accepted") cannot hold there: on these five operations, and on the
/// two token requests (whose optional `assertion` is such a credential, over a challenge of
/// `GET /api/v1/tokens/challenge`), it accepts 400 as well (`--checks all` on the command line overrides a plain `enabled = false`). Every
/// other check runs on them, and the API tests run these ceremonies with real software
/// authenticators.
const CEREMONY_FINISHES: &str = r#"
[[operations]]
include-path-regex = "^/api/v1/((auth/sign-in|auth/step-up|accounts/verify|invitations/accept|me/keys)/finish|tokens|trusted/tokens)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"#;

/// The settings every run shares: the seed, the bounds, the homeowner's session and `Origin`.
fn common_config(session: &str) -> String {
    format!(
        r#"
seed = 20261201
max-time = 110
workers = 1
headers = {{ Origin = "{ORIGIN}" }}

[generation]
max-examples = 25
database = "none"

[auth.openapi.session]
api_key = "{session}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure() {
    let Some(binary) = executable_or_skip() else {
        return;
    };
    let app = spawn_app().await;
    let tenant = {
        let client = app.pool.get().await.unwrap();
        tenancy::ensure_municipality(
            &client,
            &Slug::parse("fuzz-town").unwrap(),
            "Fuzz Town",
            Utc::now(),
        )
        .await
        .unwrap()
        .0
    };
    let homeowner = sign_in_as(&app, tenant, Role::Homeowner).await;
    // A property with a plan, so the operations on a property answer with real data.
    let created = homeowner
        .post(
            &app,
            "/api/v1/properties",
            &json!({ "address": "1 Fuzz Lane" }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let property: serde_json::Value = created.json().await.unwrap();
    let property = property["id"].as_str().unwrap().to_owned();
    let plan = app
        .http
        .put(format!("{}/api/v1/properties/{property}/plan", app.address))
        .header("Cookie", &homeowner.cookie)
        .header("Origin", ORIGIN)
        .json(&json!({
            "agencies": { "fire": { "allowed": true, "incident_types": ["fire"] } },
            "max_grant_minutes": 60,
            "notes": { "pets": "a cat" },
            "contacts": [{ "name": "Neighbour", "email": "n@fuzz.test" }],
            "retention_days": 365
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(plan.status(), 201);
    let session = homeowner
        .cookie
        .split_once('=')
        .map(|(_, v)| v.to_owned())
        .unwrap();
    let config = format!(
        r#"{common}
# Bodies a generator cannot make valid from the schema alone, each refused with a 400 naming the
# field: a trusted party's `locks` must be locks of that property (ids the generator cannot know),
# a monitoring account's `key_id` a monitoring credential of the municipality, and an alarm
# rule's `agency`/`minutes` must agree with its `action`. `positive_data_acceptance` accepts 400
# there too; the API tests cover these operations with valid data. Registering locks is bounded
# (10 waiting per home, 20 a day per account: 409 and 429, as documented), which a generator's
# valid bodies reach; those statuses are accepted there.
[[operations]]
include-path-regex = "^/api/v1/properties/\\{{id\\}}/(trusted-parties|monitoring-accounts|alarm-rules|locks$)"
parameters = {{ "path.id" = "{property}" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-path-regex = "^/api/v1/properties/\\{{id\\}}"
parameters = {{ "path.id" = "{property}" }}

[[operations]]
include-path-regex = "^/api/v1/auth/sign-out"
enabled = false

[[operations]]
include-operation-id = "delete_my_account"
enabled = false

# A token challenge names what the token is for: exactly one of `grant` and `trusted_party`
# (both optional in the schema, as query parameters are); with neither or both it is a 400.
[[operations]]
include-path-regex = "^/api/v1/tokens/challenge$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

{ceremonies}
"#,
        ceremonies = CEREMONY_FINISHES,
        common = common_config(&session)
    );
    let (passed, output) = run(&app, &binary, &config).await;
    println!("{output}");
    assert!(passed, "schemathesis found failures:\n{output}");
}

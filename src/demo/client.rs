//! The demo's and the benchmark's client of the JSON API: what a browser does, from Rust — JSON
//! bodies, the `Origin` header, the session cookie, and WebAuthn ceremonies answered by a
//! [`SoftSecurityKey`].

// Indexing a `serde_json::Value` by key yields `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::softkey::SoftSecurityKey;

/// A JSON client of the server's API, as a browser would call it (Origin header, session cookie).
pub struct ApiClient {
    client: reqwest::Client,
    base: String,
    origin: String,
}

impl ApiClient {
    /// A client of the server at `base` (`http://host:port`) whose pages come from `origin`.
    pub fn new(base: &str, origin: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()?,
            base: base.to_owned(),
            origin: origin.to_owned(),
        })
    }

    /// Sends a request; returns status, JSON body (or the text as a string) and any new session
    /// cookie (`name=value`).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        cookie: Option<&str>,
    ) -> anyhow::Result<(u16, Value, Option<String>)> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Origin", &self.origin);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(crate::auth::session::COOKIE) && !v.contains("=;"))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let text = response.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value, cookie))
    }

    /// Like [`Self::send`], but a non-2xx status is an error.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        cookie: Option<&str>,
    ) -> anyhow::Result<(Value, Option<String>)> {
        let (status, value, cookie) = self.send(method.clone(), path, body, cookie).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok((value, cookie))
    }

    /// POSTs JSON; a non-2xx status is an error.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        cookie: Option<&str>,
    ) -> anyhow::Result<Value> {
        Ok(self
            .expect(reqwest::Method::POST, path, Some(body), cookie)
            .await?
            .0)
    }

    /// Runs an enrolment ceremony (`{base}/start` then `{base}/finish`); returns the session cookie.
    pub async fn enrol(
        &self,
        base: &str,
        secret: &str,
        key: &mut SoftSecurityKey,
    ) -> anyhow::Result<String> {
        let start = self
            .post(&format!("{base}/start"), &json!({ "secret": secret }), None)
            .await?;
        let credential = key.register(&start["options"])?;
        let (_, cookie) = self
            .expect(
                reqwest::Method::POST,
                &format!("{base}/finish"),
                Some(&json!({ "ceremony": start["ceremony"], "credential": credential })),
                None,
            )
            .await?;
        cookie.ok_or_else(|| anyhow!("{base}/finish set no session cookie"))
    }

    /// A fresh WebAuthn assertion for the signed-in session (step-up).
    pub async fn step_up(&self, cookie: &str, key: &mut SoftSecurityKey) -> anyhow::Result<()> {
        let start = self
            .post("/api/v1/auth/step-up/start", &json!({}), Some(cookie))
            .await?;
        let credential = key.assert(&start["options"])?;
        self.post(
            "/api/v1/auth/step-up/finish",
            &json!({ "ceremony": start["ceremony"], "credential": credential }),
            Some(cookie),
        )
        .await?;
        Ok(())
    }

    /// A token in one request (issue 14 §1): the challenge for this session and request (a GET
    /// that stores nothing), the key's assertion over it, and the token request carrying it.
    /// `under` is the query naming what the token is issued under (`grant=…` or
    /// `trusted_party=…`), `body` the token request without its assertion, `path` where it goes.
    pub async fn token_in_one_request(
        &self,
        cookie: &str,
        key: &mut SoftSecurityKey,
        path: &str,
        under: &str,
        lock: &str,
        mut body: Value,
    ) -> anyhow::Result<Value> {
        let challenge = self
            .get(
                &format!("/api/v1/tokens/challenge?{under}&lock={lock}"),
                Some(cookie),
            )
            .await?;
        body["assertion"] = key.assert(&challenge["options"])?;
        self.post(path, &body, Some(cookie)).await
    }

    /// A responder's token for `lock` under `grant`, in one request ([`Self::token_in_one_request`]).
    pub async fn request_token(
        &self,
        cookie: &str,
        key: &mut SoftSecurityKey,
        grant: &str,
        lock: &str,
    ) -> anyhow::Result<Value> {
        self.token_in_one_request(
            cookie,
            key,
            "/api/v1/tokens",
            &format!("grant={grant}"),
            lock,
            json!({ "grant": grant, "lock": lock }),
        )
        .await
    }

    /// GETs JSON; a non-2xx status is an error.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> anyhow::Result<Value> {
        Ok(self
            .expect(reqwest::Method::GET, path, None, cookie)
            .await?
            .0)
    }
}

//! Configuration: one typed [`Settings`], loaded from defaults → an optional `firstkey.toml` →
//! `FIRSTKEY_*` environment variables (`FIRSTKEY_DATABASE_URL`, `FIRSTKEY_SMTP_RELAY`, …).
//!
//! `FIRSTKEY_AGENT_*` is the lock agent's namespace (`FIRSTKEY_AGENT_STATE_DIR`, see
//! `firmware-agent/README.md`): the server reads only its own `agent_listen`, `agent_tls_cert` and
//! `agent_tls_key` from it and ignores the rest ([`Settings::ignored_variables`]), so one environment
//! can hold both programs' variables. Every other unknown `FIRSTKEY_*` variable is refused (a typo).
//!
//! Every value is parsed here, once; a bad value fails start-up with an error that names the setting.
//! This module does not open connections or files beyond reading the configuration file.

use std::net::SocketAddr;

use ipnet::IpNet;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Everything the server needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL connection URL. `None` selects the embedded default (see `store::embedded`).
    pub database_url: Option<SecretString>,
    /// Address the HTTP(S) listener binds; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The public origin users reach the server at; it is also the WebAuthn relying party.
    pub public_origin: PublicOrigin,
    /// Certificate chain and private key for HTTPS; plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// SMTP relay for outgoing mail; mail waits in the outbox when absent.
    pub smtp: Option<SmtpSettings>,
    /// Directory holding issuer signing keys (mode 0700, files 0600).
    pub key_dir: PathBuf,
    /// Directory for the private PostgreSQL cluster of the embedded default.
    pub embedded_pg_dir: PathBuf,
    /// Key-encryption key for personal data at rest (base64 of 32 bytes); `None` uses
    /// `<key_dir>/data.kek`, created on first use.
    pub data_key: Option<SecretString>,
    /// Directory with the municipality's own Cedar policy set (`*.cedar`, `schema.cedarschema`);
    /// `None` uses the shipped default set.
    pub policy_dir: Option<PathBuf>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Maximum number of pooled database connections.
    pub db_pool_size: usize,
    /// Longest lifetime of an override token (a grant that ends sooner ends its tokens sooner).
    pub token_lifetime: chrono::Duration,
    /// Address the agent channel's TLS listener binds (`firmware-agent/PROTOCOL.md`).
    pub agent_listen: SocketAddr,
    /// Certificate chain and key of the agent channel; `None` generates a dev CA and server
    /// certificate in `key_dir` and writes the CA to `<key_dir>/agent-ca.pem` for provisioning.
    pub agent_tls: Option<TlsFiles>,
    /// A separate plain-HTTP listener for `/metrics` only; when set, the main listener does not
    /// serve `/metrics` (so it need not be reachable from where users come from).
    pub metrics_listen: Option<SocketAddr>,
    /// Longest time a grown audit log waits for a new signed checkpoint
    /// (`audit_checkpoint_seconds`, default 10; the first checkpoint is signed at once).
    pub audit_checkpoint_interval: std::time::Duration,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` headers are believed; the client
    /// address of a request from any other peer is the peer address (`http::client_address`).
    pub trusted_proxies: Vec<IpNet>,
    /// `FIRSTKEY_AGENT_*` variables that belong to the lock agent and were ignored (for the log).
    pub ignored_variables: Vec<String>,
    /// Most agent-channel connections not yet authenticated, in all.
    pub agent_max_unauthenticated: usize,
    /// Most agent-channel connections not yet authenticated, per peer address.
    pub agent_max_unauthenticated_per_address: usize,
    /// OpenTelemetry trace export over OTLP/HTTP (protobuf); `None` (the default) exports nothing.
    pub otlp: Option<OtlpSettings>,
}

/// Where and how spans are exported (`otlp_*` settings; see `telemetry`).
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's traces URL: `otlp_endpoint` with `/v1/traces` appended (unless it ends so).
    pub traces_url: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of new traces sampled, 0.0 to 1.0; a request that carries a sampled `traceparent`
    /// from a trusted proxy follows its caller's decision.
    pub sample_ratio: f64,
    /// Extra request headers (e.g. a collector's `authorization`), in order; values are secret.
    pub headers: Vec<(String, SecretString)>,
    /// PEM CA certificate(s) trusted for an `https` endpoint besides the public roots.
    pub ca_cert: Option<PathBuf>,
}

/// The origin (scheme, host, optional port) the server is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    url: String,
    host: String,
}

impl PublicOrigin {
    /// Parses an origin such as `https://firstkey.example.org` or `http://localhost:8080`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| "must look like https://host[:port]".to_owned())?;
        if scheme != "https" && scheme != "http" {
            return Err(format!("scheme must be https or http, not {scheme:?}"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(
                "must be an origin only: scheme, host and optional port, no path".to_owned(),
            );
        }
        let host = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                port.parse::<u16>()
                    .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
                host
            }
            _ => rest,
        };
        if host.is_empty() {
            return Err("host is empty".to_owned());
        }
        if scheme == "http" && !matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            return Err("plain http is only allowed for localhost; use https".to_owned());
        }
        Ok(Self {
            url: input.to_owned(),
            host: host.to_owned(),
        })
    }

    /// The origin as written, e.g. `https://firstkey.example.org`.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The host name: the WebAuthn relying-party id.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Paths of the PEM certificate chain and private key for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// How to reach the SMTP relay.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Relay URL in lettre's form, e.g. `smtp://127.0.0.1:2525` or `smtps://user:pass@relay:465`.
    pub relay: SecretString,
    /// Sender address of every mail.
    pub from: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A setting that could not be loaded, naming the setting and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value was present but unusable.
    #[error("setting `{setting}` is invalid: {reason}")]
    Invalid {
        /// The setting's name as written in `firstkey.toml` (environment: `FIRSTKEY_` + upper case).
        setting: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The configuration file or environment could not be read as configuration.
    #[error("configuration could not be read: {0}")]
    Unreadable(String),
}

/// The raw shape of the configuration sources, before parsing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    database_url: Option<String>,
    listen: String,
    public_origin: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    smtp_relay: Option<String>,
    smtp_from: String,
    key_dir: PathBuf,
    embedded_pg_dir: PathBuf,
    data_key: Option<String>,
    policy_dir: Option<PathBuf>,
    log_format: String,
    db_pool_size: usize,
    token_lifetime_minutes: i64,
    agent_listen: String,
    agent_tls_cert: Option<PathBuf>,
    agent_tls_key: Option<PathBuf>,
    metrics_listen: Option<String>,
    audit_checkpoint_seconds: u64,
    trusted_proxies: ProxyList,
    agent_max_unauthenticated: usize,
    agent_max_unauthenticated_per_address: usize,
    otlp_endpoint: Option<String>,
    otlp_headers: Option<String>,
    otlp_service_name: String,
    otlp_sample_ratio: f64,
    otlp_ca_cert: Option<PathBuf>,
}

/// `trusted_proxies` as written: a TOML array, or one comma-separated string (the environment's form).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ProxyList {
    List(Vec<String>),
    Text(String),
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            database_url: None,
            listen: "127.0.0.1:8080".to_owned(),
            public_origin: "http://localhost:8080".to_owned(),
            tls_cert: None,
            tls_key: None,
            smtp_relay: None,
            smtp_from: "firstkey <noreply@localhost>".to_owned(),
            key_dir: PathBuf::from(".firstkey/keys"),
            embedded_pg_dir: PathBuf::from(".firstkey/pg"),
            data_key: None,
            policy_dir: None,
            log_format: "pretty".to_owned(),
            db_pool_size: 16,
            token_lifetime_minutes: 10,
            agent_listen: "127.0.0.1:8443".to_owned(),
            agent_tls_cert: None,
            agent_tls_key: None,
            metrics_listen: None,
            audit_checkpoint_seconds: 10,
            trusted_proxies: ProxyList::List(Vec::new()),
            agent_max_unauthenticated: 1024,
            agent_max_unauthenticated_per_address: 16,
            otlp_endpoint: None,
            otlp_headers: None,
            otlp_service_name: "firstkey".to_owned(),
            otlp_sample_ratio: 1.0,
            otlp_ca_cert: None,
        }
    }
}

/// The server's own settings under the agent's `FIRSTKEY_AGENT_` prefix.
const SERVER_AGENT_SETTINGS: [&str; 5] = [
    "agent_listen",
    "agent_tls_cert",
    "agent_tls_key",
    "agent_max_unauthenticated",
    "agent_max_unauthenticated_per_address",
];

impl Settings {
    /// Loads defaults, then `config_file` if it exists (an explicitly named file must exist), then
    /// `FIRSTKEY_*` variables from `env`.
    pub fn load(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(RawSettings::default()));
        match config_file {
            Some(path) => {
                if !path.is_file() {
                    return Err(SettingsError::Invalid {
                        setting: "--config".to_owned(),
                        reason: format!("{} does not exist or is not a file", path.display()),
                    });
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file("firstkey.toml")),
        }
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut ignored_variables = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("FIRSTKEY_").map(str::to_ascii_lowercase) else {
                continue;
            };
            // Test-only variables share the prefix but are not settings.
            if key.starts_with("test_") {
                continue;
            }
            if key.starts_with("agent_") && !SERVER_AGENT_SETTINGS.contains(&key.as_str()) {
                ignored_variables.push(name);
                continue;
            }
            vars.push((key, value));
        }
        ignored_variables.sort();
        for (key, value) in vars {
            // Parsed as `figment::providers::Env` would: numbers and booleans become typed values.
            let value: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value));
            figment = figment.merge(Serialized::global(&key, value));
        }
        let raw: RawSettings = figment.extract().map_err(|e| {
            let setting = e.path.join(".");
            if setting.is_empty() {
                SettingsError::Unreadable(e.to_string())
            } else {
                SettingsError::Invalid {
                    setting,
                    reason: e.kind.to_string(),
                }
            }
        })?;
        let mut settings = Self::parse(raw)?;
        settings.ignored_variables = ignored_variables;
        Ok(settings)
    }

    /// The name of every setting (as in `firstkey.toml`; environment: `FIRSTKEY_` + upper case),
    /// with its default as TOML (`None` when it has none). Taken from the
    /// raw configuration type itself, so `firstkey.example.toml` can be checked against it.
    pub fn known() -> Vec<(String, Option<String>)> {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(RawSettings::default())
        else {
            return Vec::new();
        };
        map.into_iter()
            .map(|(k, v)| {
                let default = match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(format!("{s:?}")),
                    other => Some(other.to_string()),
                };
                (k, default)
            })
            .collect()
    }

    /// Loads from the process environment.
    pub fn from_process(config_file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load(config_file, std::env::vars())
    }

    fn parse(raw: RawSettings) -> Result<Self, SettingsError> {
        let invalid = |setting: &str, reason: String| SettingsError::Invalid {
            setting: setting.to_owned(),
            reason,
        };
        let database_url = match raw.database_url.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => {
                url.parse::<tokio_postgres::Config>().map_err(|e| {
                    invalid(
                        "database_url",
                        format!("not a PostgreSQL connection string ({e})"),
                    )
                })?;
                Some(SecretString::from(url))
            }
        };
        let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8080", raw.listen),
            )
        })?;
        let public_origin = PublicOrigin::parse(&raw.public_origin)
            .map_err(|reason| invalid("public_origin", reason))?;
        let tls = tls_files("tls_cert", raw.tls_cert, "tls_key", raw.tls_key)?;
        let agent_listen = raw.agent_listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "agent_listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8443",
                    raw.agent_listen
                ),
            )
        })?;
        let agent_tls = tls_files(
            "agent_tls_cert",
            raw.agent_tls_cert,
            "agent_tls_key",
            raw.agent_tls_key,
        )?;
        let metrics_listen = match raw.metrics_listen.filter(|m| !m.trim().is_empty()) {
            None => None,
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics_listen",
                    format!("{addr:?} is not an address like 0.0.0.0:9090"),
                )
            })?),
        };
        let smtp = match raw.smtp_relay.filter(|r| !r.trim().is_empty()) {
            None => None,
            Some(relay) => {
                if !(relay.starts_with("smtp://") || relay.starts_with("smtps://")) {
                    return Err(invalid(
                        "smtp_relay",
                        "must start with smtp:// or smtps://".to_owned(),
                    ));
                }
                Some(SmtpSettings {
                    relay: SecretString::from(relay),
                    from: raw.smtp_from,
                })
            }
        };
        let log_format = match raw.log_format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?} is neither \"pretty\" nor \"json\""),
                ));
            }
        };
        let data_key = match raw.data_key.filter(|k| !k.trim().is_empty()) {
            None => None,
            Some(key) => {
                crate::crypto::Kek::from_base64(&key)
                    .map_err(|e| invalid("data_key", e.to_string()))?;
                Some(SecretString::from(key))
            }
        };
        if !(1..=60).contains(&raw.token_lifetime_minutes) {
            return Err(invalid(
                "token_lifetime_minutes",
                "must be between 1 and 60".to_owned(),
            ));
        }
        for (name, value) in [
            ("agent_max_unauthenticated", raw.agent_max_unauthenticated),
            (
                "agent_max_unauthenticated_per_address",
                raw.agent_max_unauthenticated_per_address,
            ),
        ] {
            if value == 0 || value > 1_000_000 {
                return Err(invalid(name, "must be between 1 and 1000000".to_owned()));
            }
        }
        if raw.db_pool_size == 0 || raw.db_pool_size > 1024 {
            return Err(invalid(
                "db_pool_size",
                "must be between 1 and 1024".to_owned(),
            ));
        }
        let proxies: Vec<String> = match raw.trusted_proxies {
            ProxyList::List(list) => list,
            ProxyList::Text(text) => text.split(',').map(str::to_owned).collect(),
        };
        let trusted_proxies = proxies
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "trusted_proxies",
                            format!("{p:?} is not an address or CIDR range like 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let otlp = otlp(
            raw.otlp_endpoint,
            raw.otlp_headers,
            raw.otlp_service_name,
            raw.otlp_sample_ratio,
            raw.otlp_ca_cert,
        )?;
        Ok(Self {
            database_url,
            listen,
            public_origin,
            tls,
            smtp,
            key_dir: raw.key_dir,
            embedded_pg_dir: raw.embedded_pg_dir,
            data_key,
            policy_dir: raw.policy_dir,
            log_format,
            db_pool_size: raw.db_pool_size,
            token_lifetime: chrono::Duration::minutes(raw.token_lifetime_minutes),
            agent_listen,
            agent_tls,
            metrics_listen,
            audit_checkpoint_interval: std::time::Duration::from_secs(raw.audit_checkpoint_seconds),
            trusted_proxies,
            ignored_variables: Vec::new(),
            agent_max_unauthenticated: raw.agent_max_unauthenticated,
            agent_max_unauthenticated_per_address: raw.agent_max_unauthenticated_per_address,
            otlp,
        })
    }
}

/// The `otlp_*` settings: nothing unless `otlp_endpoint` is set; then every one of them checked.
fn otlp(
    endpoint: Option<String>,
    headers: Option<String>,
    service_name: String,
    sample_ratio: f64,
    ca_cert: Option<PathBuf>,
) -> Result<Option<OtlpSettings>, SettingsError> {
    let invalid = |setting: &str, reason: String| SettingsError::Invalid {
        setting: setting.to_owned(),
        reason,
    };
    let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    let url = reqwest::Url::parse(endpoint.trim()).map_err(|e| {
        invalid(
            "otlp_endpoint",
            format!("not a URL like http://127.0.0.1:4318 ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "otlp_endpoint",
            "must be an http:// or https:// URL with a host".to_owned(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "otlp_endpoint",
            "must not carry credentials; put them in otlp_headers".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "otlp_endpoint",
            "must not have a query or fragment".to_owned(),
        ));
    }
    let base = url.as_str().trim_end_matches('/');
    let traces_url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let service_name = service_name.trim().to_owned();
    if service_name.is_empty()
        || service_name.len() > 255
        || service_name.chars().any(char::is_control)
    {
        return Err(invalid(
            "otlp_service_name",
            "must be 1 to 255 printable characters".to_owned(),
        ));
    }
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(invalid(
            "otlp_sample_ratio",
            "must be between 0.0 and 1.0".to_owned(),
        ));
    }
    let mut parsed = Vec::new();
    for pair in headers.as_deref().unwrap_or("").split(',') {
        if pair.trim().is_empty() {
            continue;
        }
        // The value is secret: the reason names the header, never its value.
        let Some((name, value)) = pair.split_once('=') else {
            return Err(invalid(
                "otlp_headers",
                "must look like name=value,name2=value2".to_owned(),
            ));
        };
        let name = name.trim().to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                "otlp_headers",
                format!("{name:?} is not a header name"),
            ));
        }
        if matches!(name.as_str(), "content-type" | "content-length" | "host") {
            return Err(invalid(
                "otlp_headers",
                format!("{name:?} is set by the exporter"),
            ));
        }
        let value = value.trim();
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(invalid(
                "otlp_headers",
                format!("the value of {name:?} is not a valid header value"),
            ));
        }
        parsed.push((name, SecretString::from(value.to_owned())));
    }
    if let Some(path) = &ca_cert
        && !path.is_file()
    {
        return Err(invalid(
            "otlp_ca_cert",
            format!("{} is not a readable file", path.display()),
        ));
    }
    Ok(Some(OtlpSettings {
        traces_url,
        service_name,
        sample_ratio,
        headers: parsed,
        ca_cert,
    }))
}

/// A certificate and key setting pair: both or neither, each a readable file.
fn tls_files(
    cert_setting: &str,
    cert: Option<PathBuf>,
    key_setting: &str,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, SettingsError> {
    let invalid = |setting: &str, reason: String| SettingsError::Invalid {
        setting: setting.to_owned(),
        reason,
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            for (name, path) in [(cert_setting, &cert), (key_setting, &key)] {
                if !path.is_file() {
                    return Err(invalid(
                        name,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
            Ok(Some(TlsFiles { cert, key }))
        }
        (Some(_), None) => Err(invalid(
            key_setting,
            format!("{cert_setting} is set but {key_setting} is not"),
        )),
        (None, Some(_)) => Err(invalid(
            cert_setting,
            format!("{key_setting} is set but {cert_setting} is not"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load(Some(Path::new("/nonexistent")), env(&[])).unwrap_err();
        assert!(s.to_string().contains("--config"));
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.agent_listen.port(), 8443);
        assert!(s.agent_tls.is_none());
        assert!(s.database_url.is_none());
        assert_eq!(s.public_origin.host(), "localhost");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (var, value, setting) in [
            ("FIRSTKEY_LISTEN", "nowhere", "listen"),
            ("FIRSTKEY_PUBLIC_ORIGIN", "ftp://x", "public_origin"),
            (
                "FIRSTKEY_PUBLIC_ORIGIN",
                "http://example.org",
                "public_origin",
            ),
            (
                "FIRSTKEY_PUBLIC_ORIGIN",
                "https://example.org/path",
                "public_origin",
            ),
            ("FIRSTKEY_LOG_FORMAT", "xml", "log_format"),
            ("FIRSTKEY_DB_POOL_SIZE", "0", "db_pool_size"),
            ("FIRSTKEY_DB_POOL_SIZE", "many", "db_pool_size"),
            (
                "FIRSTKEY_AGENT_MAX_UNAUTHENTICATED",
                "0",
                "agent_max_unauthenticated",
            ),
            (
                "FIRSTKEY_AGENT_MAX_UNAUTHENTICATED_PER_ADDRESS",
                "0",
                "agent_max_unauthenticated_per_address",
            ),
            (
                "FIRSTKEY_TOKEN_LIFETIME_MINUTES",
                "0",
                "token_lifetime_minutes",
            ),
            ("FIRSTKEY_SMTP_RELAY", "mail.example.org", "smtp_relay"),
            ("FIRSTKEY_TLS_CERT", "/nonexistent.pem", "tls_key"),
            ("FIRSTKEY_AGENT_LISTEN", "nowhere", "agent_listen"),
            ("FIRSTKEY_METRICS_LISTEN", "nowhere", "metrics_listen"),
            (
                "FIRSTKEY_AGENT_TLS_KEY",
                "/nonexistent.pem",
                "agent_tls_cert",
            ),
            ("FIRSTKEY_DATA_KEY", "c2hvcnQ=", "data_key"),
            (
                "FIRSTKEY_DATABASE_URL",
                "postgres://db.example:notaport/x",
                "database_url",
            ),
        ] {
            let err = Settings::load(None, env(&[(var, value)])).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{setting}`")),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn every_server_setting_under_the_agent_prefix_is_read_not_ignored() {
        for (name, _) in Settings::known() {
            if name.starts_with("agent_") {
                assert!(
                    SERVER_AGENT_SETTINGS.contains(&name.as_str()),
                    "`{name}` would be ignored as the lock agent's variable"
                );
            }
        }
    }

    #[test]
    fn unknown_setting_is_refused() {
        let err = Settings::load(None, env(&[("FIRSTKEY_LISTEN_ADRESS", "x")])).unwrap_err();
        assert!(err.to_string().contains("listen_adress"), "{err}");
    }

    #[test]
    fn the_agents_variables_do_not_stop_the_server() {
        let s = Settings::load(
            None,
            env(&[
                ("FIRSTKEY_AGENT_STATE_DIR", "/var/lib/firstkey-agent"),
                ("FIRSTKEY_AGENT_LISTEN", "127.0.0.1:9443"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.agent_listen.port(),
            9443,
            "the server's own agent_* settings still apply"
        );
        assert_eq!(
            s.ignored_variables,
            vec!["FIRSTKEY_AGENT_STATE_DIR".to_owned()]
        );
        // A typo of one of the server's own settings is still refused.
        let err = Settings::load(None, env(&[("FIRSTKEY_LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn trusted_proxies_parse_from_the_environment_and_the_file() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert!(s.trusted_proxies.is_empty(), "default: no proxy is trusted");
        let s = Settings::load(
            None,
            env(&[("FIRSTKEY_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7 ,::1")]),
        )
        .unwrap();
        let nets: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("firstkey.toml");
        std::fs::write(&file, "trusted_proxies = [\"172.16.0.0/12\"]\n").unwrap();
        let s = Settings::load(Some(&file), env(&[])).unwrap();
        assert_eq!(s.trusted_proxies.len(), 1);
        let err =
            Settings::load(None, env(&[("FIRSTKEY_TRUSTED_PROXIES", "10.0.0.0/33")])).unwrap_err();
        assert!(err.to_string().contains("`trusted_proxies`"), "{err}");
    }

    #[test]
    fn otlp_is_off_by_default_and_every_setting_of_it_is_checked() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert!(s.otlp.is_none(), "no export unless otlp_endpoint is set");
        let s = Settings::load(
            None,
            env(&[
                ("FIRSTKEY_OTLP_SERVICE_NAME", "town-a"),
                ("FIRSTKEY_OTLP_ENDPOINT", ""),
            ]),
        )
        .unwrap();
        assert!(s.otlp.is_none(), "an empty endpoint is off");

        let s = Settings::load(
            None,
            env(&[
                ("FIRSTKEY_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("FIRSTKEY_OTLP_SAMPLE_RATIO", "0.25"),
                ("FIRSTKEY_OTLP_SERVICE_NAME", "firstkey-town-a"),
                (
                    "FIRSTKEY_OTLP_HEADERS",
                    "Authorization=Bearer s3cr3t, x-scope-orgid=town-a",
                ),
            ]),
        )
        .unwrap();
        let otlp = s.otlp.clone().unwrap();
        assert_eq!(otlp.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert!((otlp.sample_ratio - 0.25).abs() < f64::EPSILON);
        assert_eq!(otlp.service_name, "firstkey-town-a");
        let names: Vec<&str> = otlp.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["authorization", "x-scope-orgid"]);
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&otlp.headers[0].1),
            "Bearer s3cr3t"
        );
        assert!(
            !format!("{s:?}").contains("s3cr3t"),
            "a header value never shows in the settings' Debug"
        );

        for (endpoint, url) in [
            (
                "https://otel.example.org/",
                "https://otel.example.org/v1/traces",
            ),
            (
                "http://collector:4318/v1/traces",
                "http://collector:4318/v1/traces",
            ),
            (
                "https://gw.example.org/otlp",
                "https://gw.example.org/otlp/v1/traces",
            ),
        ] {
            let s = Settings::load(None, env(&[("FIRSTKEY_OTLP_ENDPOINT", endpoint)])).unwrap();
            assert_eq!(s.otlp.unwrap().traces_url, url, "{endpoint}");
        }
        // A whole number is a ratio too (the environment's `1`).
        let s = Settings::load(
            None,
            env(&[
                ("FIRSTKEY_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("FIRSTKEY_OTLP_SAMPLE_RATIO", "1"),
            ]),
        )
        .unwrap();
        assert!((s.otlp.unwrap().sample_ratio - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn bad_otlp_values_name_the_setting_and_never_echo_a_header_value() {
        let on = ("FIRSTKEY_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for (pairs, setting) in [
            (
                vec![("FIRSTKEY_OTLP_ENDPOINT", "127.0.0.1:4318")],
                "otlp_endpoint",
            ),
            (
                vec![("FIRSTKEY_OTLP_ENDPOINT", "grpc://collector:4317")],
                "otlp_endpoint",
            ),
            (
                vec![("FIRSTKEY_OTLP_ENDPOINT", "https://user:hunter2@collector")],
                "otlp_endpoint",
            ),
            (
                vec![("FIRSTKEY_OTLP_ENDPOINT", "http://collector:4318/?x=1")],
                "otlp_endpoint",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_SAMPLE_RATIO", "1.5")],
                "otlp_sample_ratio",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_SAMPLE_RATIO", "-0.1")],
                "otlp_sample_ratio",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_SAMPLE_RATIO", "half")],
                "otlp_sample_ratio",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_SERVICE_NAME", " ")],
                "otlp_service_name",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_HEADERS", "hunter2")],
                "otlp_headers",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_HEADERS", "bad name=hunter2")],
                "otlp_headers",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_HEADERS", "x-key=hunter2\u{7f}")],
                "otlp_headers",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_HEADERS", "content-type=hunter2")],
                "otlp_headers",
            ),
            (
                vec![on, ("FIRSTKEY_OTLP_CA_CERT", "/nonexistent.pem")],
                "otlp_ca_cert",
            ),
        ] {
            let err = Settings::load(None, env(&pairs)).unwrap_err().to_string();
            assert!(err.contains(&format!("`{setting}`")), "{pairs:?}: {err}");
            assert!(!err.contains("hunter2"), "{pairs:?}: a secret in {err}");
        }
    }

    #[test]
    fn origin_parsing() {
        let o = PublicOrigin::parse("https://firstkey.example.org:8443").unwrap();
        assert_eq!(o.host(), "firstkey.example.org");
        assert!(PublicOrigin::parse("https://").is_err());
        assert!(PublicOrigin::parse("https://h:99999").is_err());
        assert!(PublicOrigin::parse("http://127.0.0.1:1").is_ok());
    }
}

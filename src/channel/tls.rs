//! TLS for the agent channel: the rustls server configuration (ring provider only), from the
//! configured certificate files or, when none are configured, from a dev CA generated once into the
//! key directory.
//!
//! The dev material lives in one file, `<key_dir>/agent-server.pem` (mode 0600: the server's private
//! key, its certificate, then the CA certificate), created atomically so that replicas sharing a key
//! directory agree on it. The CA certificate is also written to `<key_dir>/agent-ca.pem`, the file
//! locks are provisioned with (`firstkey-agent init --server-ca`). The CA's private key is discarded
//! after signing: nobody, not even this server, can mint a second certificate under it.
//!
//! [`ServerIdentity`] also answers which TLS names an agent may have signed into its `Hello`: a name
//! our certificate is valid for (see `firmware-agent/PROTOCOL.md`, handshake).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::settings::{Settings, TlsFiles};

/// File name of the dev server key and certificate chain in the key directory.
pub const DEV_SERVER_FILE: &str = "agent-server.pem";
/// File name of the dev CA certificate in the key directory, for provisioning agents.
pub const DEV_CA_FILE: &str = "agent-ca.pem";

/// Why the agent channel's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The certificate material is unusable.
    #[error("agent channel certificate: {0}")]
    Certificate(String),
}

/// The certificate the agent channel presents, and the rustls configuration serving it.
#[derive(Clone)]
pub struct ServerIdentity {
    config: Arc<rustls::ServerConfig>,
    leaf: CertificateDer<'static>,
    ca_pem: Option<String>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// From `settings.agent_tls`, or the dev CA in `settings.key_dir` (created on first use, with
    /// `localhost`, `127.0.0.1`, `::1` and the public origin's host as names).
    pub fn from_settings(settings: &Settings) -> Result<Self, TlsSetupError> {
        match &settings.agent_tls {
            Some(files) => Self::from_files(files),
            None => {
                let mut names = vec![
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                    "::1".to_owned(),
                ];
                let host = settings
                    .public_origin
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                if !names.iter().any(|n| n == host) {
                    names.push(host.to_owned());
                }
                Self::dev(&settings.key_dir, &names)
            }
        }
    }

    /// From PEM files: a certificate chain (leaf first) and its private key.
    pub fn from_files(files: &TlsFiles) -> Result<Self, TlsSetupError> {
        let certs = read_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsSetupError::File {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
        Self::build(certs, key, None)
    }

    /// The dev CA and server certificate in `key_dir`, generated for `names` when absent.
    pub fn dev(key_dir: &Path, names: &[String]) -> Result<Self, TlsSetupError> {
        let path = key_dir.join(DEV_SERVER_FILE);
        if !path.is_file() {
            generate_dev(key_dir, &path, names)?;
        }
        let certs = read_certs(&path)?;
        let key = PrivateKeyDer::from_pem_file(&path).map_err(|e| TlsSetupError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let ca = certs
            .last()
            .filter(|_| certs.len() >= 2)
            .ok_or_else(|| TlsSetupError::Certificate(format!("{} holds no CA", path.display())))?;
        let ca_pem = pem_encode("CERTIFICATE", ca.as_ref());
        let ca_path = key_dir.join(DEV_CA_FILE);
        if std::fs::read_to_string(&ca_path).ok().as_deref() != Some(ca_pem.as_str()) {
            write_atomic(&ca_path, ca_pem.as_bytes(), 0o644)?;
        }
        // The CA is not part of what a server sends: agents hold it already.
        let chain: Vec<_> = certs.iter().take(certs.len() - 1).cloned().collect();
        Self::build(chain, key, Some(ca_pem))
    }

    fn build(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca_pem: Option<String>,
    ) -> Result<Self, TlsSetupError> {
        let leaf = certs
            .first()
            .cloned()
            .ok_or_else(|| TlsSetupError::Certificate("no certificate".to_owned()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Certificate(e.to_string()))?;
        // Agents reconnect to any replica; session resumption would only add per-server state.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
            leaf,
            ca_pem,
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The dev CA certificate (PEM) agents must trust, when the dev CA is in use.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Whether our certificate is valid for `name` (a DNS name or an IP address): only then can an
    /// agent that verified our certificate under that name have signed it into its `Hello`.
    pub fn serves_name(&self, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(&self.leaf) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&server_name).is_ok()
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Certificate(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn generate_dev(key_dir: &Path, path: &Path, names: &[String]) -> Result<(), TlsSetupError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let bad = |e: rcgen::Error| TlsSetupError::Certificate(e.to_string());
    let ca_key = KeyPair::generate().map_err(bad)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "firstkey agent channel dev CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(bad)?;
    let key = KeyPair::generate().map_err(bad)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(bad)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "firstkey agent channel");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca, &ca_key).map_err(bad)?;
    let bundle = format!("{}{}{}", key.serialize_pem(), leaf.pem(), ca.pem());

    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| TlsSetupError::File {
            path: p,
            reason: e.to_string(),
        }
    };
    create_private_dir(key_dir)?;
    let tmp = key_dir.join(format!("{DEV_SERVER_FILE}.{}.tmp", std::process::id()));
    write_new(&tmp, bundle.as_bytes(), 0o600)?;
    // A hard link creates the name only if it does not exist yet: when replicas sharing the key
    // directory race, exactly one set of material wins and every replica loads that one.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the agent channel dev CA and server certificate");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), TlsSetupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsSetupError::File {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), TlsSetupError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsSetupError::File {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let err = |e: std::io::Error| TlsSetupError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    write_new(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| TlsSetupError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_identity_is_created_once_and_serves_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = ServerIdentity::dev(&keys, &names).unwrap();
        let again = ServerIdentity::dev(&keys, &names).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert_eq!(
            std::fs::read_to_string(keys.join(DEV_CA_FILE)).unwrap(),
            first.ca_pem().unwrap()
        );
        assert!(first.serves_name("localhost"));
        assert!(first.serves_name("127.0.0.1"));
        assert!(!first.serves_name("evil.example"));
        assert!(!first.serves_name("10.0.0.1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.join(DEV_SERVER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

//! `firstkey health`: asks a running server on this machine whether it is ready (`GET /readyz`),
//! for container `HEALTHCHECK`s and probes that have no curl. Exit 0 when it answers 200.
//!
//! The address comes from the same settings the server loads (`listen`, with an unspecified
//! address such as `0.0.0.0` probed on loopback). When the server serves HTTPS (`tls_cert` and
//! `tls_key`), the probe speaks TLS to it, sends the public origin's host as the server name and
//! trusts the certificates of `tls_cert` itself (leaf and intermediates), so it needs no system
//! trust store. One request, no body, nothing secret sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::settings::Settings;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// Where the probe went, e.g. `http://127.0.0.1:8080/readyz`.
    pub url: String,
}

/// The address to probe for a server bound to `listen`: loopback for an unspecified address.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, listen.port())
}

/// Sends `GET /readyz` to the server `settings` describe, within `timeout`.
pub async fn readyz(settings: &Settings, timeout: Duration) -> anyhow::Result<ProbeAnswer> {
    let addr = probe_addr(settings.listen);
    let host = settings.public_origin.host().to_owned();
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}/readyz");
    let status = tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("nothing answers at {addr}"))?;
        match &settings.tls {
            None => get_status(tcp, &host).await,
            Some(files) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(&files.cert)
                    .with_context(|| {
                        format!("setting `tls_cert`: cannot read {}", files.cert.display())
                    })?
                    .collect::<Result<Vec<_>, _>>()
                    .context("setting `tls_cert`: not a PEM certificate chain")?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    bail!("setting `tls_cert`: no certificate to trust");
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("TLS protocol versions")?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| anyhow!("public_origin host {host:?} is not a TLS server name"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake with the server failed")?;
                get_status(tls, &host).await
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no answer from {url} within {} s", timeout.as_secs()))??;
    Ok(ProbeAnswer { status, url })
}

/// One HTTP/1.1 `GET /readyz`; returns the status code of the answer.
async fn get_status(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    host: &str,
) -> anyhow::Result<u16> {
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {host}\r\nUser-Agent: firstkey-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    // The status line is in the first bytes; read at most 1 KiB of the answer.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 256];
    while head.len() < 1024 && !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend(buf.iter().take(n));
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .lines()
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            anyhow!(
                "the answer is not HTTP: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:8080".parse().unwrap()),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.1.2.3:80".parse().unwrap()),
            "10.1.2.3:80".parse().unwrap()
        );
    }
}

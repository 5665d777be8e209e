//! The agent's half of the channel: a TLS client that authenticates with the device key, applies
//! inbox messages in order, acknowledges them after they are durable, and uploads receipts.
//!
//! [`run`] reconnects forever with exponential backoff and jitter; taps never wait for it. One
//! connection is one [`session`]: handshake, then a loop over server frames (read by their own
//! task, because frame reads are not cancel-safe), tap notifications, and a keep-alive timer.
//! Receipts go up one batch at a time; the next batch waits for the previous batch's ack.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsConnector;

use crate::door::Door;
use crate::protocol::channel::{
    AgentMessage, InboxMessage, MAX_CHANNEL_FRAME, MAX_RECEIPTS_PER_FRAME, ServerMessage,
    auth_signed_bytes, decode_server_message, encode_agent_message,
};
use crate::protocol::{Bytes, FrameError, PROTOCOL_VERSION, read_frame, write_frame};
use crate::state::{Applied, StateError};

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// TCP or TLS failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be read, written or decoded.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The TLS configuration is unusable.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed with an error code.
    #[error("server error: {0:?}")]
    Server(crate::protocol::channel::ErrorCode),
    /// The lock's state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No frame from the server within the idle timeout.
    #[error("server silent for too long")]
    Idle,
    /// Internal task failure.
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// How the channel connects and retries.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// `host:port`.
    pub address: String,
    /// TLS server name (also signed into the handshake).
    pub server_name: String,
    /// Trusted CA certificates for the server, PEM.
    pub ca_pem: Vec<u8>,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Keep-alive interval; the session ends after three intervals without a server frame.
    pub ping_interval: Duration,
}

impl ChannelSettings {
    /// Settings with production timings.
    pub fn new(address: String, server_name: String, ca_pem: Vec<u8>) -> Self {
        Self {
            address,
            server_name,
            ca_pem,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// Build the rustls client configuration (ring provider, the given CA roots only).
pub fn tls_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, ChannelError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| ChannelError::Tls(format!("server CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ChannelError::Tls(format!("server CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ChannelError::Tls(
            "server CA file holds no certificate".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ChannelError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Exponential backoff with "equal jitter": the n-th delay is uniform in [d/2, d] with
/// d = min(max, base·2ⁿ).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: ring::rand::SystemRandom,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// Forget past failures (after a successful handshake).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let mut r = [0u8; 4];
        let frac = if self.rng.fill(&mut r).is_ok() {
            f64::from(u32::from_be_bytes(r)) / f64::from(u32::MAX)
        } else {
            1.0
        };
        ceiling.mul_f64(0.5 + 0.5 * frac)
    }
}

/// Keep a channel to the server forever. Never returns; taps do not depend on it.
pub async fn run(door: Arc<Mutex<Door>>, settings: ChannelSettings, decided: Arc<Notify>) {
    let tls = match tls_config(&settings.ca_pem) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "channel disabled: bad TLS configuration");
            std::future::pending::<()>().await;
            return;
        }
    };
    let mut backoff = Backoff::new(settings.backoff_base, settings.backoff_max);
    loop {
        let mut welcomed = false;
        match session(&door, &settings, tls.clone(), &decided, &mut welcomed).await {
            Ok(()) => tracing::info!("channel closed by server"),
            Err(e) => tracing::warn!(error = %e, "channel session ended"),
        }
        if welcomed {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "reconnecting later"
        );
        tokio::time::sleep(delay).await;
    }
}

fn with_door<T>(
    door: &Arc<Mutex<Door>>,
    f: impl FnOnce(&mut Door) -> Result<T, ChannelError>,
) -> Result<T, ChannelError> {
    let mut d = door
        .lock()
        .map_err(|_| ChannelError::Internal("door state poisoned"))?;
    f(&mut d)
}

async fn blocking<T: Send + 'static>(
    door: &Arc<Mutex<Door>>,
    f: impl FnOnce(&mut Door) -> Result<T, ChannelError> + Send + 'static,
) -> Result<T, ChannelError> {
    let door = door.clone();
    tokio::task::spawn_blocking(move || with_door(&door, f))
        .await
        .map_err(|_| ChannelError::Internal("blocking task failed"))?
}

fn battery_percent(dir: &Path) -> Option<u8> {
    std::fs::read_to_string(dir.join("battery"))
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .filter(|p| *p <= 100)
}

/// Battery voltage in millivolts from `battery_mv` in the state directory, where the (simulated)
/// hardware can tell.
fn battery_millivolts(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("battery_mv"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|mv| *mv <= 100_000)
}

/// One connection: handshake, then inbox, acks and receipt uploads until it fails or closes.
/// Sets `welcomed` once the server accepted the handshake.
pub async fn session(
    door: &Arc<Mutex<Door>>,
    settings: &ChannelSettings,
    tls: Arc<rustls::ClientConfig>,
    decided: &Notify,
    welcomed: &mut bool,
) -> Result<(), ChannelError> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(&settings.address),
    )
    .await
    .map_err(|_| ChannelError::Protocol("connect timed out".into()))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(settings.server_name.clone())
        .map_err(|e| ChannelError::Tls(format!("server name: {e}")))?;
    let stream = TlsConnector::from(tls).connect(name, tcp).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);

    // Handshake.
    let first = read_frame(&mut rd, MAX_CHANNEL_FRAME)
        .await?
        .ok_or_else(|| ChannelError::Protocol("closed before challenge".into()))?;
    let nonce = match decode_server_message(&first)? {
        ServerMessage::Challenge { version, nonce } if version == PROTOCOL_VERSION => nonce,
        ServerMessage::Challenge { .. } => {
            return Err(ChannelError::Protocol(
                "unsupported protocol version".into(),
            ));
        }
        ServerMessage::Error { code } => return Err(ChannelError::Server(code)),
        _ => return Err(ChannelError::Protocol("expected a challenge".into())),
    };
    let server_name = settings.server_name.clone();
    let hello = with_door(door, |d| {
        let s = d.store();
        let lock_id = s.lock_id().to_string();
        let msg = auth_signed_bytes(&nonce.0, &lock_id, &server_name);
        Ok(AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            lock_id,
            device_public_key: Bytes(*s.device_public_key()),
            resume_after: s.inbox_seq(),
            signature: s.device_key().sign(&msg).as_ref().to_vec(),
        })
    })?;
    send(&mut wr, &hello).await?;
    let welcome = read_frame(&mut rd, MAX_CHANNEL_FRAME)
        .await?
        .ok_or_else(|| ChannelError::Protocol("closed before welcome".into()))?;
    let receipts_through = match decode_server_message(&welcome)? {
        ServerMessage::Welcome { receipts_through } => receipts_through,
        ServerMessage::Error { code } => return Err(ChannelError::Server(code)),
        _ => return Err(ChannelError::Protocol("expected welcome".into())),
    };
    *welcomed = true;
    tracing::info!(receipts_through, "channel authenticated");
    blocking(door, move |d| {
        Ok(d.store_mut().mark_uploaded(receipts_through)?)
    })
    .await?;
    let state_root = with_door(door, |d| Ok(d.store().dir().root().to_path_buf()))?;
    send_status(door, &mut wr, &state_root).await?;
    send_alarms(door, &mut wr).await?;

    // Server frames arrive through a task so that a half-read frame is never dropped by select.
    let (tx, mut rx) = mpsc::channel::<Result<ServerMessage, FrameError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let item = match read_frame(&mut rd, MAX_CHANNEL_FRAME).await {
                Ok(Some(p)) => decode_server_message(&p),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let result = async {
        let mut in_flight: Option<u64> = None;
        in_flight = upload_next(door, &mut wr, in_flight).await?;
        let mut ping = tokio::time::interval(settings.ping_interval);
        ping.tick().await;
        let mut silent_ticks = 0u32;
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    silent_ticks = 0;
                    let Some(msg) = msg else { return Ok(()) };
                    match msg? {
                        ServerMessage::Inbox { seq, message } => {
                            let opened = matches!(message, InboxMessage::RemoteOpen { .. });
                            let applied = blocking(door, move |d| {
                                if let InboxMessage::RemoteOpen { token, hold_secs } = &message
                                    && seq > d.store().inbox_seq()
                                {
                                    let (outcome, receipt_seq) = d.remote_open(token, *hold_secs)?;
                                    tracing::info!(seq, receipt_seq, ?outcome, "remote open decided");
                                }
                                Ok(d.store_mut().apply_inbox(seq, &message)?)
                            })
                            .await?;
                            match &applied {
                                Applied::Applied => tracing::info!(seq, "inbox message applied"),
                                Applied::Duplicate => tracing::info!(seq, "inbox message already applied"),
                                Applied::Refused(why) => tracing::warn!(seq, reason = %why, "inbox message refused"),
                            }
                            send(&mut wr, &AgentMessage::Ack { seq }).await?;
                            if opened {
                                // The receipt goes up at once: the homeowner is waiting for it.
                                in_flight = upload_next(door, &mut wr, in_flight).await?;
                            }
                        }
                        ServerMessage::ReceiptsAck { through } => {
                            blocking(door, move |d| Ok(d.store_mut().mark_uploaded(through)?)).await?;
                            if in_flight.is_some_and(|s| through >= s) {
                                in_flight = None;
                            }
                            in_flight = upload_next(door, &mut wr, in_flight).await?;
                        }
                        ServerMessage::Pong => {}
                        ServerMessage::Time { now } => {
                            blocking(door, move |d| {
                                let skew = d.store().config().skew_secs;
                                Ok(d.store_mut().advance_floor(now.saturating_sub(skew))?)
                            })
                            .await?;
                        }
                        ServerMessage::Error { code } => return Err(ChannelError::Server(code)),
                        ServerMessage::Challenge { .. } | ServerMessage::Welcome { .. } => {
                            return Err(ChannelError::Protocol("handshake frame after handshake".into()));
                        }
                    }
                }
                () = decided.notified() => {
                    in_flight = upload_next(door, &mut wr, in_flight).await?;
                    send_alarms(door, &mut wr).await?;
                }
                _ = ping.tick() => {
                    silent_ticks = silent_ticks.saturating_add(1);
                    if silent_ticks >= 3 {
                        return Err(ChannelError::Idle);
                    }
                    send(&mut wr, &AgentMessage::Ping).await?;
                    send_status(door, &mut wr, &state_root).await?;
                    in_flight = upload_next(door, &mut wr, in_flight).await?;
                }
            }
        }
    }
    .await;
    reader.abort();
    result
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    msg: &AgentMessage,
) -> Result<(), ChannelError> {
    let bytes = encode_agent_message(msg)?;
    write_frame(wr, &bytes, MAX_CHANNEL_FRAME).await?;
    Ok(())
}

async fn send_status<W: tokio::io::AsyncWrite + Unpin>(
    door: &Arc<Mutex<Door>>,
    wr: &mut W,
    state_root: &Path,
) -> Result<(), ChannelError> {
    let status = with_door(door, |d| {
        let s = d.store();
        Ok(AgentMessage::Status {
            battery_percent: battery_percent(state_root),
            bundle_version: s
                .trust_bundle()
                .map_or(0, firstkey_token::TrustBundle::version),
            time_floor: s.floor(),
            battery_millivolts: battery_millivolts(state_root),
        })
    })?;
    send(wr, &status).await
}

/// Sends every queued detector alarm, oldest first, removing each once its frame is written.
async fn send_alarms<W: tokio::io::AsyncWrite + Unpin>(
    door: &Arc<Mutex<Door>>,
    wr: &mut W,
) -> Result<(), ChannelError> {
    let dir = with_door(door, |d| Ok(d.store().dir().clone()))?;
    for alarm in crate::events::pending_alarms(&dir) {
        let kind = alarm.kind;
        send(
            wr,
            &AgentMessage::Alarm {
                kind,
                detector: alarm.detector,
                id: alarm.id,
            },
        )
        .await?;
        if let Err(e) = std::fs::remove_file(&alarm.path) {
            tracing::warn!(error = %e, "sent alarm not removed from the outbox");
        }
        tracing::info!(?kind, "alarm sent");
    }
    Ok(())
}

/// Send the next batch of receipts if none is in flight; returns the new in-flight high mark.
async fn upload_next<W: tokio::io::AsyncWrite + Unpin>(
    door: &Arc<Mutex<Door>>,
    wr: &mut W,
    in_flight: Option<u64>,
) -> Result<Option<u64>, ChannelError> {
    if in_flight.is_some() {
        return Ok(in_flight);
    }
    let batch = with_door(door, |d| {
        Ok(d.store().pending_receipts(0, MAX_RECEIPTS_PER_FRAME))
    })?;
    let Some(last) = batch.last().map(|(seq, _)| *seq) else {
        return Ok(None);
    };
    let receipts = batch
        .into_iter()
        .map(|(_, r)| serde_bytes::ByteBuf::from(r))
        .collect();
    send(wr, &AgentMessage::Receipts { receipts }).await?;
    tracing::debug!(through = last, "receipts uploaded, awaiting ack");
    Ok(Some(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d0 = b.next_delay();
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        let d1 = b.next_delay();
        assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
        for _ in 2..5 {
            b.next_delay();
        }
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn tls_config_needs_a_certificate() {
        assert!(tls_config(b"").is_err());
        assert!(
            tls_config(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}

//! Simulated lock agents for tests and `firstkey bench`: paired locks created straight in the
//! database, and minimal TLS clients that speak the channel protocol (handshake, then acknowledge
//! every inbox entry at once and report when it arrived). They keep no state on disk; the real
//! agent is `firstkey-agent`. [`connect_deciding`] also decides remote opens as the agent's
//! `Door::remote_open` does (the token verified offline against the trust bundle, no proof of
//! possession, scope `remote_open`) and uploads the signed receipt, for `firstkey bench
//! --remote-open`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::GenericClient;
use firstkey_agent::protocol::channel::{
    AgentMessage, MAX_CHANNEL_FRAME, ServerMessage, auth_signed_bytes, decode_server_message,
    encode_agent_message,
};
use firstkey_agent::protocol::{Bytes, FrameError, PROTOCOL_VERSION, read_frame, write_frame};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use uuid::Uuid;

use crate::store::{StoreError, Tenant};

/// A paired lock whose device key the simulator holds.
pub struct SimLock {
    /// The lock's id.
    pub id: Uuid,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for SimLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLock")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a simulated agent failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// TCP or TLS failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be read or written.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The server did not follow the protocol, or refused us.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Key generation or TLS configuration failed.
    #[error("setup: {0}")]
    Setup(String),
}

/// Creates `n` locks on `property`, already paired with fresh device keys.
pub async fn provision(
    client: &impl GenericClient,
    tenant: Tenant,
    property: Uuid,
    n: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<SimLock>, StoreError> {
    provision_across(client, tenant, &[property], n, now).await
}

/// Creates `n` locks, the i-th on `properties[i % len]`, already paired with fresh device keys.
pub async fn provision_across(
    client: &impl GenericClient,
    tenant: Tenant,
    properties: &[Uuid],
    n: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<SimLock>, StoreError> {
    if properties.is_empty() {
        return Err(StoreError::NotFound);
    }
    let rng = ring::rand::SystemRandom::new();
    let mut locks = Vec::with_capacity(n);
    for _ in 0..n {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| StoreError::Conflict("key generation failed".to_owned()))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| StoreError::Conflict("key generation failed".to_owned()))?;
        let id = Uuid::parse_str(&firstkey_agent::pairing::derived_lock_id(
            key.public_key().as_ref(),
        ))
        .map_err(|_| StoreError::Conflict("lock id derivation failed".to_owned()))?;
        locks.push(SimLock { id, key });
    }
    let on: Vec<Uuid> = (0..n)
        .filter_map(|i| properties.get(i % properties.len()).copied())
        .collect();
    for (chunk, on) in locks.chunks(1000).zip(on.chunks(1000)) {
        let ids: Vec<Uuid> = chunk.iter().map(|l| l.id).collect();
        let keys: Vec<Vec<u8>> = chunk
            .iter()
            .map(|l| l.key.public_key().as_ref().to_vec())
            .collect();
        client
            .execute(
                "INSERT INTO locks (id, municipality_id, property_id, name, pairing_state, device_public_key,
                     paired_at, created_at)
                 SELECT id, $2, property, 'sim ' || id::text, 'paired', key, $5, $5
                 FROM unnest($1::uuid[], $4::bytea[], $3::uuid[]) AS t(id, key, property)",
                &[&ids, &tenant.id(), &on, &keys, &now],
            )
            .await?;
    }
    Ok(locks)
}

/// Where simulated agents connect and how they check the server.
#[derive(Clone)]
pub struct SimTarget {
    /// The listener's address.
    pub addr: SocketAddr,
    /// The TLS name to verify and sign.
    pub server_name: String,
    tls: Arc<rustls::ClientConfig>,
}

impl SimTarget {
    /// A target trusting the CA certificates in `ca_pem`.
    pub fn new(addr: SocketAddr, server_name: &str, ca_pem: &[u8]) -> Result<Self, SimError> {
        let tls = firstkey_agent::client::tls_config(ca_pem)
            .map_err(|e| SimError::Setup(e.to_string()))?;
        Ok(Self {
            addr,
            server_name: server_name.to_owned(),
            tls,
        })
    }
}

/// One inbox entry as a simulated agent received it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The lock.
    pub lock: Uuid,
    /// The entry's sequence number.
    pub seq: u64,
    /// When it arrived (just before the agent sent its `Ack`).
    pub at: Instant,
}

/// How often a simulated agent pings, as the real agent does (the server closes a session that
/// stays silent past its idle timeout, 100 s).
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// A connected simulated agent; dropping it hangs up.
#[derive(Debug)]
pub struct SimConnection {
    task: tokio::task::JoinHandle<Result<(), SimError>>,
    /// Pings the server like a real agent (`None`: a short-lived session that does not).
    pinger: Option<tokio::task::JoinHandle<()>>,
}

impl SimConnection {
    /// Whether the session is still running.
    pub fn is_connected(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for SimConnection {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(pinger) = &self.pinger {
            pinger.abort();
        }
    }
}

type SimStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS, `Challenge`, signed `Hello`, `Welcome`.
async fn handshake(
    target: &SimTarget,
    lock: &SimLock,
    resume_after: u64,
) -> Result<SimStream, SimError> {
    let tcp = TcpStream::connect(target.addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(target.server_name.clone())
        .map_err(|e| SimError::Setup(e.to_string()))?;
    let mut stream = TlsConnector::from(target.tls.clone())
        .connect(name, tcp)
        .await?;
    let nonce = match next(&mut stream).await? {
        ServerMessage::Challenge { nonce, .. } => nonce,
        other => {
            return Err(SimError::Protocol(format!(
                "expected a challenge: {other:?}"
            )));
        }
    };
    let lock_id = lock.id.to_string();
    let signature = lock
        .key
        .sign(&auth_signed_bytes(&nonce.0, &lock_id, &target.server_name));
    let mut public_key = [0u8; 32];
    public_key.copy_from_slice(lock.key.public_key().as_ref());
    send(
        &mut stream,
        &AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            lock_id,
            device_public_key: Bytes(public_key),
            resume_after,
            signature: signature.as_ref().to_vec(),
        },
    )
    .await?;
    match next(&mut stream).await? {
        ServerMessage::Welcome { .. } => {}
        other => return Err(SimError::Protocol(format!("expected welcome: {other:?}"))),
    }
    Ok(stream)
}

/// Connects `lock` to `target`, completes the handshake (returns after `Welcome`), then
/// acknowledges every inbox entry after `resume_after` and reports it on `deliveries`.
pub async fn connect(
    target: &SimTarget,
    lock: &SimLock,
    resume_after: u64,
    deliveries: mpsc::UnboundedSender<Delivery>,
) -> Result<SimConnection, SimError> {
    let stream = handshake(target, lock, resume_after).await?;
    let id = lock.id;
    // One task reads (and acknowledges at once), one pings; they share the write half.
    let (mut reader, writer) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let pinging = writer.clone();
    let pinger = tokio::spawn(async move {
        let mut interval = tokio::time::interval(PING_INTERVAL);
        interval.tick().await;
        loop {
            interval.tick().await;
            if send(&mut *pinging.lock().await, &AgentMessage::Ping)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let task = tokio::spawn(async move {
        loop {
            match next(&mut reader).await? {
                ServerMessage::Inbox { seq, .. } => {
                    let _ = deliveries.send(Delivery {
                        lock: id,
                        seq,
                        at: Instant::now(),
                    });
                    send(&mut *writer.lock().await, &AgentMessage::Ack { seq }).await?;
                }
                ServerMessage::Pong
                | ServerMessage::Time { .. }
                | ServerMessage::ReceiptsAck { .. } => {}
                other => return Err(SimError::Protocol(format!("unexpected {other:?}"))),
            }
        }
    });
    Ok(SimConnection {
        task,
        pinger: Some(pinger),
    })
}

/// A remote open as a deciding simulated agent decided it.
#[derive(Debug, Clone)]
pub struct RemoteDecision {
    /// The lock.
    pub lock: Uuid,
    /// Whether the token verified with the `remote_open` scope (the door would open).
    pub opened: bool,
    /// The receipt reason (`ok`, a refusal code, or `wrong_scope`).
    pub reason: String,
    /// When it decided (the door would move now).
    pub at: Instant,
}

/// What a deciding simulated agent remembers: its id and the tokens it used (replay records).
struct SimDoor {
    id: firstkey_token::LockId,
    used: std::collections::HashSet<[u8; 16]>,
}

impl firstkey_token::LockView for SimDoor {
    fn lock_id(&self) -> &firstkey_token::LockId {
        &self.id
    }
    fn time_floor(&self) -> u64 {
        0
    }
    fn is_revoked(&self, _: &firstkey_token::TokenHash) -> bool {
        false
    }
    fn uses(&self, id: &firstkey_token::TokenId) -> u32 {
        u32::from(self.used.contains(&id.0))
    }
}

/// Like [`connect`], and each `RemoteOpen` entry is decided as the agent decides it: verified
/// offline against `bundle` at `clock` (signature, audience, window, replay; no proof of
/// possession), then the scope must be `remote_open`. The decision is reported on `decisions`,
/// the entry acknowledged and the signed receipt uploaded (held in memory, chained from the last
/// receipt the server acknowledged at `Welcome`: a fresh lock starts at 1).
pub async fn connect_deciding(
    target: &SimTarget,
    lock: SimLock,
    bundle: Arc<firstkey_token::TrustBundle>,
    clock: Arc<dyn crate::clock::Clock>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    decisions: mpsc::UnboundedSender<RemoteDecision>,
) -> Result<SimConnection, SimError> {
    use firstkey_agent::protocol::channel::InboxMessage as Wire;
    use firstkey_agent::protocol::tap::Outcome;
    use firstkey_agent::receipt::{ChainHead, ReceiptBody, sign_next};

    let mut stream = handshake(target, &lock, 0).await?;
    let wire_id = lock.id.to_string();
    let mut door = SimDoor {
        id: firstkey_token::LockId::parse(&wire_id)
            .ok_or_else(|| SimError::Setup("lock id".to_owned()))?,
        used: std::collections::HashSet::new(),
    };
    let task = tokio::spawn(async move {
        let mut head = ChainHead::GENESIS;
        loop {
            match next(&mut stream).await? {
                ServerMessage::Inbox { seq, message } => {
                    let _ = deliveries.send(Delivery {
                        lock: lock.id,
                        seq,
                        at: Instant::now(),
                    });
                    let Wire::RemoteOpen { token, .. } = message else {
                        send(&mut stream, &AgentMessage::Ack { seq }).await?;
                        continue;
                    };
                    let now = u64::try_from(clock.now().timestamp()).unwrap_or(0);
                    let options = firstkey_token::VerifyOptions {
                        require_proof_of_possession: false,
                        ..firstkey_token::VerifyOptions::default()
                    };
                    let challenge = firstkey_token::Challenge([0; 32]);
                    let presentation = firstkey_token::Presentation {
                        challenge: &challenge,
                        proof: None,
                    };
                    let mut body = ReceiptBody {
                        version: 0,
                        lock_id: wire_id.clone(),
                        seq: 0,
                        time: now,
                        prev: Bytes([0; 32]),
                        outcome: Outcome::Deny,
                        reason: String::new(),
                        token_hash: Some(Bytes(firstkey_token::token_hash(&token).0)),
                        token_id: None,
                        expires_at: None,
                        door_event: None,
                    };
                    match firstkey_token::verify(
                        &token,
                        &bundle,
                        &door,
                        &presentation,
                        now,
                        &options,
                    ) {
                        Ok(v) if v.claims().scope != firstkey_token::Scope::RemoteOpen => {
                            body.reason = "wrong_scope".to_owned();
                            body.token_id = Some(Bytes(v.claims().token_id.0));
                        }
                        Ok(v) => {
                            body.outcome = Outcome::Allow;
                            body.reason = "ok".to_owned();
                            body.token_id = Some(Bytes(v.claims().token_id.0));
                            body.expires_at = Some(v.claims().expires_at);
                            door.used.insert(v.claims().token_id.0);
                        }
                        Err(refusal) => body.reason = refusal.code().to_owned(),
                    }
                    let _ = decisions.send(RemoteDecision {
                        lock: lock.id,
                        opened: body.outcome == Outcome::Allow,
                        reason: body.reason.clone(),
                        at: Instant::now(),
                    });
                    let receipt = sign_next(&lock.key, head, body)?;
                    head = ChainHead {
                        seq: receipt.body.seq,
                        hash: receipt.hash,
                    };
                    send(&mut stream, &AgentMessage::Ack { seq }).await?;
                    send(
                        &mut stream,
                        &AgentMessage::Receipts {
                            receipts: vec![receipt.encoded.into()],
                        },
                    )
                    .await?;
                }
                ServerMessage::Pong
                | ServerMessage::Time { .. }
                | ServerMessage::ReceiptsAck { .. } => {}
                other => return Err(SimError::Protocol(format!("unexpected {other:?}"))),
            }
        }
    });
    Ok(SimConnection { task, pinger: None })
}

async fn next<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<ServerMessage, SimError> {
    let frame = read_frame(s, MAX_CHANNEL_FRAME)
        .await?
        .ok_or_else(|| SimError::Protocol("server closed".to_owned()))?;
    Ok(decode_server_message(&frame)?)
}

async fn send<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    m: &AgentMessage,
) -> Result<(), SimError> {
    write_frame(s, &encode_agent_message(m)?, MAX_CHANNEL_FRAME).await?;
    Ok(())
}

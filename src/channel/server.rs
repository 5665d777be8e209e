//! The agent channel's TLS listener and one session per connected lock (`firmware-agent/PROTOCOL.md`).
//!
//! A session: TLS handshake → `Challenge` → `Hello` checked against the lock's paired device key or
//! its pending pairing → `Welcome` → then, in any order, inbox entries after the agent's
//! `resume_after` (and new ones whenever [`wake`](super::wake) says the lock's inbox changed), acks,
//! receipt batches, status reports and pings, until the agent hangs up or stays silent past the idle
//! timeout.
//!
//! Built to hold very many idle agents per replica: an idle session owns no database connection
//! (one is taken from the pool per query), no read buffer (a frame's payload is allocated when its
//! length prefix arrives and freed once decoded), and waits on one small [`Notify`](tokio::sync::Notify).
//! At most [`ChannelOptions::window`] inbox entries are unacknowledged at a time, which bounds what
//! a session holds and keeps a slow agent from filling its socket.
//!
//! This module does not decide what goes into an inbox ([`super::inbox`]) or what a receipt means
//! to the homeowner ([`super::receipts`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use firstkey_agent::protocol::channel::{
    AgentMessage, ErrorCode, InboxMessage as WireInbox, MAX_CHANNEL_FRAME, MAX_HELLO_FRAME,
    MAX_RECEIPTS_PER_FRAME, ServerMessage, decode_agent_message, encode_server_message,
    verify_hello,
};
use firstkey_agent::protocol::frame::encode_frame;
use firstkey_agent::protocol::{Bytes, FrameError, PROTOCOL_VERSION};
use ring::rand::SecureRandom;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

use super::inbox::{self, InboxMessage};
use super::receipts::{self, BatchOutcome, LockIdentity};
use super::tls::ServerIdentity;
use super::wake::{self, Registry};
use crate::audit::{self, Event, Outcome};
use crate::clock::Clock;
use crate::settings::Settings;
use crate::store::{StoreError, Tenant};

/// Timings and limits of the channel.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// A session ends when the agent sends nothing for this long (agents ping every 30 s).
    pub idle_timeout: Duration,
    /// Longest TLS handshake, and longest wait for `Hello`.
    pub handshake_timeout: Duration,
    /// Longest wait for one frame to be written to a slow agent.
    pub write_timeout: Duration,
    /// Most inbox entries sent and not yet acknowledged.
    pub window: usize,
    /// An unchanged status is written to the database at most this often (last seen, battery).
    pub status_write_interval: Duration,
    /// Most connections that have not yet authenticated (TLS handshake, `Hello`), in all.
    pub max_unauthenticated: usize,
    /// Most connections that have not yet authenticated, per peer IP address.
    pub max_unauthenticated_per_address: usize,
    /// Where locks' keypad code secrets come from (derived from the data key); without it (tests,
    /// benchmarks) keypad-secret inbox entries are skipped.
    pub keypad_root: Option<crate::codes::SecretRoot>,
    /// The policy set deciding what a lock-reported alarm may do (the shipped set when `None`).
    pub policy: Option<Arc<crate::policy::PolicyEngine>>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(100),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            window: 32,
            status_write_interval: Duration::from_secs(300),
            keypad_root: None,
            max_unauthenticated: 1024,
            max_unauthenticated_per_address: 16,
            policy: None,
        }
    }
}

/// Counts connections that have not authenticated yet, overall and per address, so that
/// strangers cannot hold more than a bounded share of a replica before proving anything.
#[derive(Debug, Default)]
struct Unauthenticated {
    counts: std::sync::Mutex<(usize, std::collections::HashMap<IpAddr, usize>)>,
}

/// One unauthenticated connection's place; dropping it (authenticated, or gone) frees it.
struct UnauthPermit {
    limiter: Arc<Unauthenticated>,
    ip: IpAddr,
}

impl Unauthenticated {
    /// A place for a new connection from `ip`, if both caps allow one.
    fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        per_address: usize,
    ) -> Option<UnauthPermit> {
        let mut guard = self.counts.lock().ok()?;
        let (total, per_ip) = &mut *guard;
        let here = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= max || here >= per_address {
            return None;
        }
        *total = total.saturating_add(1);
        per_ip.insert(ip, here.saturating_add(1));
        Some(UnauthPermit {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for UnauthPermit {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.limiter.counts.lock() {
            let (total, per_ip) = &mut *guard;
            *total = total.saturating_sub(1);
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// What every session of one listener shares.
struct Shared {
    pool: Pool,
    clock: Arc<dyn Clock>,
    identity: ServerIdentity,
    acceptor: TlsAcceptor,
    registry: Arc<Registry>,
    options: ChannelOptions,
    rng: ring::rand::SystemRandom,
    unauthenticated: Arc<Unauthenticated>,
    policy: Arc<crate::policy::PolicyEngine>,
}

/// A bound agent-channel listener, not yet accepting.
pub struct AgentListener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl AgentListener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        identity: ServerIdentity,
        pool: Pool,
        clock: Arc<dyn Clock>,
        registry: Arc<Registry>,
        options: ChannelOptions,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let acceptor = TlsAcceptor::from(identity.config());
        let policy = match &options.policy {
            Some(engine) => engine.clone(),
            None => {
                Arc::new(crate::policy::PolicyEngine::shipped().map_err(std::io::Error::other)?)
            }
        };
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                pool,
                clock,
                identity,
                acceptor,
                registry,
                options,
                rng: ring::rand::SystemRandom::new(),
                unauthenticated: Arc::default(),
                policy,
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped; dropping it ends every session it started.
    pub async fn run(self) {
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let opts = &self.shared.options;
                        let Some(permit) = self.shared.unauthenticated.acquire(
                            peer.ip(),
                            opts.max_unauthenticated,
                            opts.max_unauthenticated_per_address,
                        ) else {
                            // Closed before TLS: nothing is spent on a peer over the cap.
                            tracing::debug!(%peer, "too many unauthenticated agent connections; closed");
                            drop(tcp);
                            continue;
                        };
                        let shared = self.shared.clone();
                        sessions.spawn(async move {
                            match session(&shared, tcp, permit).await {
                                Ok(()) => tracing::debug!(%peer, "agent session ended"),
                                Err(e) => tracing::info!(%peer, error = %e, "agent session failed"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "agent channel accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
    }
}

/// A running agent channel: the listener and the `LISTEN` connection. Dropping it (or [`stop`])
/// stops both and ends every session, as a killed replica would.
///
/// [`stop`]: RunningChannel::stop
pub struct RunningChannel {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    identity: ServerIdentity,
    tasks: JoinSet<()>,
}

impl RunningChannel {
    /// The address agents connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The sessions of this replica.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The certificate in use.
    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// Stops accepting, ends every session and the `LISTEN` connection.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

/// Starts the channel as `firstkey serve` runs it: `settings.agent_listen`, the configured or dev
/// certificate, sessions over `pool`, wake-ups over a `LISTEN` connection to `pg_config`.
pub async fn start(
    settings: &Settings,
    pool: Pool,
    pg_config: tokio_postgres::Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RunningChannel> {
    // Either the configured certificate or the dev CA in `key_dir`: name the setting (exit code 2).
    let identity = ServerIdentity::from_settings(settings).map_err(|e| {
        crate::settings::SettingsError::Invalid {
            setting: if settings.agent_tls.is_some() {
                "agent_tls_cert"
            } else {
                "key_dir"
            }
            .to_owned(),
            reason: format!("agent channel TLS: {e}"),
        }
    })?;
    start_with(
        settings.agent_listen,
        identity,
        pool,
        pg_config,
        clock,
        ChannelOptions {
            max_unauthenticated: settings.agent_max_unauthenticated,
            max_unauthenticated_per_address: settings.agent_max_unauthenticated_per_address,
            keypad_root: Some(keypad_root(settings)?),
            policy: Some(Arc::new(match &settings.policy_dir {
                Some(dir) => crate::policy::PolicyEngine::from_dir(dir).map_err(|e| {
                    crate::settings::SettingsError::Invalid {
                        setting: "policy_dir".to_owned(),
                        reason: format!("{}: {e:#}", dir.display()),
                    }
                })?,
                None => crate::policy::PolicyEngine::shipped()?,
            })),
            ..ChannelOptions::default()
        },
    )
    .await
}

/// Starts the channel with explicit parts (tests, benchmarks). Returns once the `LISTEN` connection
/// is up, or after a few seconds without it (sessions then still work; wake-ups from other replicas
/// start when it connects).
pub async fn start_with(
    addr: SocketAddr,
    identity: ServerIdentity,
    pool: Pool,
    pg_config: tokio_postgres::Config,
    clock: Arc<dyn Clock>,
    options: ChannelOptions,
) -> anyhow::Result<RunningChannel> {
    let registry = Registry::new();
    let listener = AgentListener::bind(
        addr,
        identity.clone(),
        pool,
        clock,
        registry.clone(),
        options,
    )
    .await
    .map_err(|e| crate::settings::SettingsError::Invalid {
        setting: "agent_listen".to_owned(),
        reason: format!("cannot listen on {addr}: {e}"),
    })?;
    let local_addr = listener.local_addr()?;
    let ready = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let listening = ready.notified();
    tokio::pin!(listening);
    listening.as_mut().enable();
    tasks.spawn(wake::listen(pg_config, registry.clone(), ready.clone()));
    if tokio::time::timeout(Duration::from_secs(5), listening)
        .await
        .is_err()
    {
        tracing::warn!("agent channel started before its LISTEN connection");
    }
    tasks.spawn(listener.run());
    tracing::info!(address = %local_addr, "agent channel listening");
    Ok(RunningChannel {
        local_addr,
        registry,
        identity,
        tasks,
    })
}

/// Why a session ended abnormally (for the log; the agent only sees an error code).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("refused: {0:?}")]
    Refused(ErrorCode),
}

/// Reads length-prefixed frames without losing bytes when the read is cancelled (it is polled in a
/// `select!` beside wake-ups and timers), and without any buffer while no frame is arriving.
#[derive(Debug, Default)]
struct FrameReader {
    header: [u8; 4],
    header_got: usize,
    payload: Vec<u8>,
    payload_got: usize,
}

impl FrameReader {
    /// The next frame's payload, refused before anything is allocated if its declared length is
    /// over `cap`; `Ok(None)` on a clean end of stream between frames.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        cap: usize,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if self.header_got < 4 {
                let Some(dst) = self.header.get_mut(self.header_got..) else {
                    return Err(FrameError::Malformed);
                };
                let n = r.read(dst).await?;
                if n == 0 {
                    return if self.header_got == 0 {
                        Ok(None)
                    } else {
                        Err(FrameError::Truncated)
                    };
                }
                self.header_got = self.header_got.saturating_add(n);
                if self.header_got == 4 {
                    let len32 = u32::from_be_bytes(self.header);
                    let len = usize::try_from(len32).unwrap_or(usize::MAX);
                    if len > cap {
                        return Err(FrameError::TooLarge {
                            len: u64::from(len32),
                            cap,
                        });
                    }
                    self.payload = vec![0u8; len];
                    self.payload_got = 0;
                }
                continue;
            }
            if self.payload_got == self.payload.len() {
                self.header_got = 0;
                self.payload_got = 0;
                return Ok(Some(std::mem::take(&mut self.payload)));
            }
            let Some(dst) = self.payload.get_mut(self.payload_got..) else {
                return Err(FrameError::Malformed);
            };
            let n = r.read(dst).await?;
            if n == 0 {
                return Err(FrameError::Truncated);
            }
            self.payload_got = self.payload_got.saturating_add(n);
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ServerMessage,
    timeout: Duration,
) -> Result<(), SessionError> {
    let framed = encode_frame(&encode_server_message(msg)?, MAX_CHANNEL_FRAME)?;
    tokio::time::timeout(timeout, async {
        w.write_all(&framed).await?;
        w.flush().await
    })
    .await
    .map_err(|_| SessionError::Timeout("writing to the agent"))??;
    Ok(())
}

/// Sends `Error { code }` (best effort) and ends the session with it.
async fn refuse<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: ErrorCode,
    timeout: Duration,
) -> SessionError {
    let _ = send(w, &ServerMessage::Error { code }, timeout).await;
    let _ = tokio::time::timeout(timeout, w.shutdown()).await;
    SessionError::Refused(code)
}

/// The name the agent must have signed: the TLS server name it asked for, or, when it connected by
/// IP address (no SNI), the address it reached us at. Either must be a name our certificate is
/// valid for, so a signature made for another server cannot be relayed to this one.
fn signed_server_name(sni: Option<&str>, local: IpAddr) -> String {
    match sni {
        Some(name) => name.to_owned(),
        None => match local {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
            IpAddr::V4(v4) => v4.to_string(),
        },
    }
}

/// The keypad secret root from the data key, as the HTTP side loads it.
fn keypad_root(settings: &Settings) -> anyhow::Result<crate::codes::SecretRoot> {
    let kek = match &settings.data_key {
        Some(key) => crate::crypto::Kek::from_base64(secrecy::ExposeSecret::expose_secret(key))
            .map_err(|e| crate::settings::SettingsError::Invalid {
                setting: "data_key".to_owned(),
                reason: e.to_string(),
            })?,
        None => crate::crypto::Kek::load_or_create(&settings.key_dir).map_err(|e| {
            crate::settings::SettingsError::Invalid {
                setting: "key_dir".to_owned(),
                reason: format!("{}: {e}", settings.key_dir.display()),
            }
        })?,
    };
    Ok(crate::codes::SecretRoot::derive(&kek))
}

fn to_wire(
    message: InboxMessage,
    lock: Uuid,
    keypad_root: Option<&crate::codes::SecretRoot>,
) -> Option<WireInbox> {
    Some(match message {
        InboxMessage::KeypadSecret { generation } => WireInbox::KeypadSecret {
            secret: keypad_root?.lock_secret(lock, generation),
        },
        InboxMessage::Token(token) => WireInbox::Token { token },
        InboxMessage::Revocation {
            token_hash,
            expires_at,
        } => WireInbox::Revocation {
            token_hash: Bytes(token_hash),
            expires_at,
        },
        InboxMessage::TrustBundle(bundle) => WireInbox::TrustBundle { bundle },
        InboxMessage::RemoteOpen { token, hold_secs } => WireInbox::RemoteOpen { token, hold_secs },
        InboxMessage::KeypadStanding { slot, schedule } => {
            WireInbox::KeypadStanding { slot, schedule }
        }
    })
}

/// The server's clock for the agent (`ServerMessage::Time`).
fn server_time(shared: &Shared) -> ServerMessage {
    ServerMessage::Time {
        now: u64::try_from(shared.clock.now().timestamp()).unwrap_or(0),
    }
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

async fn session(
    shared: &Shared,
    tcp: TcpStream,
    unauthenticated: UnauthPermit,
) -> Result<(), SessionError> {
    let opts = &shared.options;
    let _ = tcp.set_nodelay(true);
    let local_ip = tcp.local_addr()?.ip();
    // The rare and large futures of a session (the TLS handshake, every database call) are boxed:
    // a session's task is as large as its largest suspended state, and each of these would
    // otherwise be carried, as dead space, by every idle session (see the test below).
    let mut stream = Box::pin(tokio::time::timeout(
        opts.handshake_timeout,
        shared.acceptor.accept(tcp),
    ))
    .await
    .map_err(|_| SessionError::Timeout("in the TLS handshake"))??;
    let server_name = signed_server_name(stream.get_ref().1.server_name(), local_ip);
    let mut reader = FrameReader::default();

    let mut nonce = [0u8; 32];
    shared
        .rng
        .fill(&mut nonce)
        .map_err(|_| SessionError::Refused(ErrorCode::Internal))?;
    send(
        &mut stream,
        &ServerMessage::Challenge {
            version: PROTOCOL_VERSION,
            nonce: Bytes(nonce),
        },
        opts.write_timeout,
    )
    .await?;
    // Before the peer has proved anything, read no more than a `Hello` can be.
    let hello = tokio::time::timeout(
        opts.handshake_timeout,
        reader.next(&mut stream, MAX_HELLO_FRAME),
    )
    .await
    .map_err(|_| SessionError::Timeout("waiting for Hello"))??;
    let Some(hello) = hello else {
        return Ok(());
    };
    let (lock_id, device_public_key, resume_after, signature) = match decode_agent_message(&hello) {
        Ok(AgentMessage::Hello {
            version,
            lock_id,
            device_public_key,
            resume_after,
            signature,
        }) => {
            if version != PROTOCOL_VERSION {
                return Err(refuse(
                    &mut stream,
                    ErrorCode::UnsupportedVersion,
                    opts.write_timeout,
                )
                .await);
            }
            (lock_id, device_public_key.0, resume_after, signature)
        }
        _ => return Err(refuse(&mut stream, ErrorCode::Malformed, opts.write_timeout).await),
    };
    let signature_ok = shared.identity.serves_name(&server_name)
        && verify_hello(
            &device_public_key,
            &nonce,
            &lock_id,
            &server_name,
            &signature,
        );
    let lock = if signature_ok {
        Box::pin(authenticate(shared, &lock_id, &device_public_key)).await
    } else {
        Err(ErrorCode::AuthenticationFailed)
    };
    let lock = match lock {
        Ok(lock) => lock,
        Err(code) => {
            tracing::info!(lock = %lock_id.escape_debug(), ?code, "agent handshake refused");
            return Err(refuse(&mut stream, code, opts.write_timeout).await);
        }
    };
    // Authenticated: no longer counts against the unauthenticated caps.
    drop(unauthenticated);
    // Registered before the first inbox read: an entry committed after this point wakes us, one
    // committed before it is found by that read.
    let registration = shared.registry.register(lock.id);

    let now = shared.clock.now();
    let receipts_through = Box::pin(async {
        let client = shared.pool.get().await.map_err(StoreError::from)?;
        client
            .execute(
                "UPDATE locks SET last_seen_at = $2,
                     inbox_acked_seq = GREATEST(inbox_acked_seq, LEAST($3, inbox_next_seq - 1))
                 WHERE id = $1",
                &[&lock.id, &now, &seq_i64(resume_after)],
            )
            .await
            .map_err(StoreError::from)?;
        Ok::<_, SessionError>(receipts::head(&client, lock.id).await?.0)
    })
    .await?;
    send(
        &mut stream,
        &ServerMessage::Welcome { receipts_through },
        opts.write_timeout,
    )
    .await?;
    // Trusted time for the lock's floor: its own clock never raises it (PROTOCOL.md).
    send(&mut stream, &server_time(shared), opts.write_timeout).await?;
    tracing::info!(lock = %lock.id, resume_after, receipts_through, "agent connected");

    let mut sent = resume_after;
    let mut acked = resume_after;
    let mut dirty = true;
    let mut last_status: Option<(Option<u8>, u64, u64)> = None;
    let mut status_written = Instant::now();
    let idle = tokio::time::sleep(opts.idle_timeout);
    tokio::pin!(idle);
    let window = i64::try_from(opts.window.max(1)).unwrap_or(32);

    enum Wake {
        Frame(Result<Option<Vec<u8>>, FrameError>),
        Inbox,
        Idle,
    }
    loop {
        if dirty && acked >= sent {
            let entries = Box::pin(async {
                let client = shared.pool.get().await.map_err(StoreError::from)?;
                inbox::pending(&client, lock.id, seq_i64(sent), window).await
            })
            .await?;
            dirty = i64::try_from(entries.len()).unwrap_or(i64::MAX) >= window;
            let before = sent;
            for (seq, message) in entries {
                let seq = u64::try_from(seq).unwrap_or(0);
                let Some(message) = to_wire(message, lock.id, opts.keypad_root.as_ref()) else {
                    // Only a listener started without a data key (tests, benchmarks): the entry is
                    // skipped; a later entry's ack covers it (gaps are allowed).
                    tracing::warn!(lock = %lock.id, seq, "no keypad secret root; keypad secret not sent");
                    if acked >= sent {
                        // Nothing outstanding: nothing will be acked for this one either.
                        acked = acked.max(seq);
                    }
                    sent = sent.max(seq);
                    continue;
                };
                send(
                    &mut stream,
                    &ServerMessage::Inbox { seq, message },
                    opts.write_timeout,
                )
                .await?;
                sent = sent.max(seq);
            }
            if sent > before {
                Box::pin(record_pushed(shared, lock.id, before, sent)).await?;
            }
        }
        let wake = tokio::select! {
            frame = reader.next(&mut stream, MAX_CHANNEL_FRAME) => Wake::Frame(frame),
            () = registration.woken() => Wake::Inbox,
            () = &mut idle => Wake::Idle,
        };
        let payload = match wake {
            Wake::Inbox => {
                dirty = true;
                continue;
            }
            Wake::Idle => {
                tracing::info!(lock = %lock.id, "agent silent past the idle timeout; closing");
                let _ = tokio::time::timeout(opts.write_timeout, stream.shutdown()).await;
                return Ok(());
            }
            Wake::Frame(Ok(None)) => return Ok(()),
            Wake::Frame(Err(e)) => {
                let _ = refuse(&mut stream, ErrorCode::Malformed, opts.write_timeout).await;
                return Err(e.into());
            }
            Wake::Frame(Ok(Some(payload))) => payload,
        };
        idle.as_mut().reset(Instant::now() + opts.idle_timeout);
        let Ok(message) = decode_agent_message(&payload) else {
            return Err(refuse(&mut stream, ErrorCode::Malformed, opts.write_timeout).await);
        };
        drop(payload);
        match message {
            AgentMessage::Ack { seq } => {
                if seq > sent {
                    return Err(
                        refuse(&mut stream, ErrorCode::Malformed, opts.write_timeout).await,
                    );
                }
                if seq > acked {
                    Box::pin(record_ack(shared, lock.id, acked, seq)).await?;
                    acked = seq;
                }
            }
            AgentMessage::Receipts { receipts } => {
                if receipts.is_empty() || receipts.len() > MAX_RECEIPTS_PER_FRAME {
                    return Err(
                        refuse(&mut stream, ErrorCode::Malformed, opts.write_timeout).await,
                    );
                }
                let now = shared.clock.now();
                match Box::pin(receipts::store_batch(&shared.pool, &lock, &receipts, now)).await? {
                    BatchOutcome::Stored { through } => {
                        send(
                            &mut stream,
                            &ServerMessage::ReceiptsAck { through },
                            opts.write_timeout,
                        )
                        .await?;
                    }
                    BatchOutcome::Rejected { reason, seq } => {
                        tracing::error!(lock = %lock.id, reason, ?seq, "receipt batch rejected");
                        Box::pin(record_rejection(shared, &lock, reason, seq)).await;
                        return Err(refuse(
                            &mut stream,
                            ErrorCode::ReceiptRejected,
                            opts.write_timeout,
                        )
                        .await);
                    }
                }
            }
            AgentMessage::Status {
                battery_percent,
                bundle_version,
                time_floor,
                battery_millivolts,
            } => {
                let status = (
                    battery_percent.filter(|b| *b <= 100),
                    bundle_version,
                    time_floor,
                );
                // The time floor moves with every report; only a change of battery or bundle
                // (or the interval) is worth a write, so 100k idle agents stay cheap.
                if last_status.map(|(b, v, _)| (b, v)) != Some((status.0, status.1))
                    || status_written.elapsed() >= opts.status_write_interval
                {
                    let report = crate::health::Report {
                        battery_percent: status.0,
                        battery_millivolts: battery_millivolts.filter(|mv| *mv <= 100_000),
                        bundle_version: status.1,
                        time_floor: status.2,
                    };
                    Box::pin(crate::health::record(
                        &shared.pool,
                        &lock,
                        &report,
                        shared.clock.now(),
                    ))
                    .await?;
                    last_status = Some(status);
                    status_written = Instant::now();
                }
            }
            AgentMessage::Alarm { kind, detector, id } => {
                Box::pin(record_alarm(
                    shared,
                    &lock,
                    kind,
                    detector,
                    id.map(|b| Uuid::from_bytes(b.0)),
                ))
                .await?;
            }
            AgentMessage::Ping => {
                send(&mut stream, &ServerMessage::Pong, opts.write_timeout).await?;
                send(&mut stream, &server_time(shared), opts.write_timeout).await?;
            }
            AgentMessage::Hello { .. } => {
                return Err(refuse(&mut stream, ErrorCode::Malformed, opts.write_timeout).await);
            }
        }
    }
}

/// Checks the lock's identity after the `Hello` signature verified over `device_public_key`: the
/// lock's paired key, or, for a lock not yet paired, the registration whose code that key derives
/// (which this pairs: `pairing::at_handshake`).
async fn authenticate(
    shared: &Shared,
    wire_id: &str,
    device_public_key: &[u8; 32],
) -> Result<LockIdentity, ErrorCode> {
    let internal = |e: StoreError| {
        tracing::warn!(error = %e, "agent handshake: database");
        ErrorCode::Internal
    };
    let Ok(id) = Uuid::parse_str(wire_id) else {
        return Err(ErrorCode::AuthenticationFailed);
    };
    let mut client = shared.pool.get().await.map_err(|e| internal(e.into()))?;
    let row = client
        .query_opt(
            "SELECT municipality_id, property_id, name, pairing_state, device_public_key FROM locks WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(|e| internal(e.into()))?;
    let identity = |tenant, property, name| LockIdentity {
        id,
        wire_id: wire_id.to_owned(),
        tenant,
        property,
        name,
        device_public_key: *device_public_key,
    };
    if let Some(row) = row {
        let state: String = row.get(3);
        let stored_key: Option<Vec<u8>> = row.get(4);
        return if state == "paired" && stored_key.as_deref() == Some(device_public_key.as_slice()) {
            Ok(identity(Tenant::assume(row.get(0)), row.get(1), row.get(2)))
        } else {
            Err(ErrorCode::AuthenticationFailed)
        };
    }
    // Not paired. A lock pairs only under the id derived from the key it proved: knowing a lock id
    // (it is on tokens and pages) lets nobody pair their own key under it, nor touch any
    // registration of it.
    if Uuid::parse_str(&firstkey_agent::pairing::derived_lock_id(device_public_key)).ok()
        != Some(id)
    {
        tracing::warn!(lock = %id, "pairing refused: the lock id is not the device key's");
        crate::metrics::count(|m| m.pairing_failures.inc());
        return Err(ErrorCode::AuthenticationFailed);
    }
    let now = shared.clock.now();
    let tx = client.transaction().await.map_err(|e| internal(e.into()))?;
    let paired = crate::pairing::at_handshake(
        &tx,
        id,
        device_public_key,
        shared.options.keypad_root.is_some(),
        now,
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(|e| internal(e.into()))?;
    match paired {
        Some(lock) => {
            tracing::info!(lock = %id, "lock paired at its first handshake");
            Ok(identity(lock.tenant, lock.property, lock.name))
        }
        None => {
            tracing::info!(lock = %id, "pairing refused: no registration with this lock's code");
            Err(ErrorCode::AuthenticationFailed)
        }
    }
}

/// Records that tokens among the inbox entries after `previous` through `seq` were sent to the lock
/// (`issued_tokens.pushed_at`; the dispatcher console shows it as "pushed to the lock"). Its span
/// carries only how many entries were sent.
#[tracing::instrument(name = "channel.push", skip_all, fields(entries = seq.saturating_sub(previous)))]
async fn record_pushed(
    shared: &Shared,
    lock: Uuid,
    previous: u64,
    seq: u64,
) -> Result<(), StoreError> {
    let client = shared.pool.get().await.map_err(StoreError::from)?;
    let statement = client
        .prepare_cached(
            "UPDATE issued_tokens SET pushed_at = $4
             WHERE lock_id = $1 AND pushed_at IS NULL AND token_hash IN (
                 SELECT sha256(payload) FROM lock_inbox
                 WHERE lock_id = $1 AND kind = 'token' AND seq > $2 AND seq <= $3)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &lock,
                &seq_i64(previous),
                &seq_i64(seq),
                &shared.clock.now(),
            ],
        )
        .await?;
    Ok(())
}

/// Records the agent's acknowledgement of inbox entries up to `seq` (monotonic), and marks tokens
/// among the newly acknowledged entries delivered.
#[tracing::instrument(name = "channel.ack", skip_all, fields(entries = seq.saturating_sub(previous)))]
async fn record_ack(
    shared: &Shared,
    lock: Uuid,
    previous: u64,
    seq: u64,
) -> Result<(), StoreError> {
    let client = shared.pool.get().await.map_err(StoreError::from)?;
    // One statement (one round trip, prepared once per pooled connection) for both updates.
    let statement = client
        .prepare_cached(
            "WITH acked AS (
                 UPDATE locks SET inbox_acked_seq = $3
                 WHERE id = $1 AND inbox_acked_seq < $3 AND $3 < inbox_next_seq)
             UPDATE issued_tokens SET status = 'delivered'
             WHERE lock_id = $1 AND status = 'issued' AND token_hash IN (
                 SELECT sha256(payload) FROM lock_inbox
                 WHERE lock_id = $1 AND kind = 'token' AND seq > $2 AND seq <= $3)",
        )
        .await?;
    client
        .execute(&statement, &[&lock, &seq_i64(previous), &seq_i64(seq)])
        .await?;
    Ok(())
}

/// Acts on an alarm the lock reported from a connected detector, as a monitoring centre's would be
/// (`crate::alarms::raise`); a detector name that is not valid text is dropped, not the alarm.
async fn record_alarm(
    shared: &Shared,
    lock: &LockIdentity,
    kind: firstkey_agent::protocol::channel::DetectorKind,
    detector: Option<String>,
    id: Option<Uuid>,
) -> Result<(), StoreError> {
    let alarm = crate::alarms::Alarm {
        property: lock.property,
        kind: kind.into(),
        source: crate::alarms::Source::Lock(lock.id),
        source_id: id,
        detector: detector
            .and_then(|d| crate::domain::Text::parse("detector", &d, 100).ok())
            .map(crate::domain::Text::into_string),
    };
    let now = shared.clock.now();
    let mut client = shared.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await?;
    match crate::alarms::raise(&tx, &shared.policy, lock.tenant, &alarm, now).await {
        Ok(outcome) => {
            tx.commit().await?;
            tracing::info!(lock = %lock.id, kind = alarm.kind.as_str(), incident = ?outcome.incident, "lock alarm");
            Ok(())
        }
        Err(crate::emergency::EmergencyError::Store(e)) => Err(e),
        Err(e) => {
            tracing::warn!(lock = %lock.id, error = %e, "lock alarm could not be acted on");
            Ok(())
        }
    }
}

/// Audits a refused receipt batch (a fork is an alert: the lock's history disagrees with ours).
async fn record_rejection(shared: &Shared, lock: &LockIdentity, reason: &str, seq: Option<u64>) {
    let event = Event::new("lock.receipt_rejected", Outcome::Deny)
        .subject("lock", lock.id)
        .property(lock.property)
        .details(json!({ "reason": reason, "seq": seq }));
    let result = async {
        let client = shared.pool.get().await.map_err(StoreError::from)?;
        audit::record(&client, lock.tenant, &event, shared.clock.now()).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(lock = %lock.id, error = %e, "could not audit a rejected receipt batch");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_reader_survives_byte_by_byte_delivery_and_cancellation() {
        let mut wire = encode_frame(b"hello", 16).unwrap();
        wire.extend(encode_frame(b"", 16).unwrap());
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut reader = FrameReader::default();
        for b in &wire[..6] {
            client.write_all(&[*b]).await.unwrap();
            // A read cancelled by a timer loses nothing.
            let r =
                tokio::time::timeout(Duration::from_millis(5), reader.next(&mut server, 16)).await;
            assert!(r.is_err());
        }
        client.write_all(&wire[6..]).await.unwrap();
        assert_eq!(
            reader.next(&mut server, 16).await.unwrap().unwrap(),
            b"hello"
        );
        assert_eq!(reader.next(&mut server, 16).await.unwrap().unwrap(), b"");
        drop(client);
        assert!(reader.next(&mut server, 16).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frame_reader_refuses_oversize_before_allocating() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::default();
        assert!(matches!(
            reader.next(&mut server, MAX_CHANNEL_FRAME).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(reader.payload.capacity() == 0);
    }

    #[tokio::test]
    async fn before_hello_a_frame_longer_than_a_hello_is_refused_before_allocating() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let declared = u32::try_from(256 * 1024).unwrap();
        client.write_all(&declared.to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::default();
        assert!(matches!(
            reader.next(&mut server, MAX_HELLO_FRAME).await,
            Err(FrameError::TooLarge {
                cap: MAX_HELLO_FRAME,
                ..
            })
        ));
        assert_eq!(reader.payload.capacity(), 0);
    }

    #[test]
    fn unauthenticated_places_are_capped_overall_and_per_address_and_freed_on_drop() {
        let limiter = Arc::new(Unauthenticated::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limiter.acquire(a, 3, 2).unwrap();
        let a2 = limiter.acquire(a, 3, 2).unwrap();
        assert!(limiter.acquire(a, 3, 2).is_none(), "per-address cap");
        let b1 = limiter.acquire(b, 3, 2).unwrap();
        assert!(limiter.acquire(b, 3, 2).is_none(), "overall cap");
        drop(a1);
        let b2 = limiter.acquire(b, 3, 2).unwrap();
        drop((a2, b1, b2));
        assert_eq!(limiter.counts.lock().unwrap().0, 0);
        assert!(limiter.counts.lock().unwrap().1.is_empty());
    }

    /// Every idle agent's session is a task as large as the session's largest suspended state;
    /// with the handshake and the database calls boxed, that is the waiting loop's own state
    /// (the TLS stream, frame reader, timers), not a database future's.
    #[tokio::test]
    async fn a_session_task_carries_no_database_future() {
        let dir = tempfile::tempdir().unwrap();
        let identity = ServerIdentity::dev(dir.path(), &["localhost".to_owned()]).unwrap();
        let config: tokio_postgres::Config =
            "host=127.0.0.1 user=nobody dbname=nothing".parse().unwrap();
        let listener = AgentListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            identity,
            crate::store::pool(config, 1).unwrap(),
            Arc::new(crate::clock::SystemClock),
            Registry::new(),
            ChannelOptions::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.listener.accept().await.unwrap();
        let permit = listener
            .shared
            .unauthenticated
            .acquire(peer.ip(), 4, 4)
            .unwrap();
        let shared = listener.shared.clone();
        let task = session(&shared, tcp, permit);
        let size = std::mem::size_of_val(&task);
        // The TLS stream alone (rustls' connection state, held inline) is most of it.
        let stream = std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>();
        assert!(
            size <= stream + 2048,
            "session future {size} B, its TLS stream {stream} B"
        );
    }

    #[test]
    fn signed_name_prefers_sni_then_local_address() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            signed_server_name(Some("locks.example"), v4),
            "locks.example"
        );
        assert_eq!(signed_server_name(None, v4), "127.0.0.1");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(signed_server_name(None, mapped), "127.0.0.1");
    }
}

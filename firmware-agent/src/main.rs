//! `firstkey-agent`: the lock agent's command line. Thin: parse, then call the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use firstkey_agent::clock::{Clock, SystemClock};
use firstkey_agent::daemon::{self, RunOptions};
use firstkey_agent::demo::{self, Issuer, TokenSpec};
use firstkey_agent::pairing::PairingCode;
use firstkey_agent::protocol::tap::Outcome;
use firstkey_agent::state::{self, InitParams, ServerConfig, StateDir};
use firstkey_agent::tap_server::{self, PresenterKey};

/// The firstkey lock agent: checks override tokens offline, opens the door, signs receipts.
#[derive(Debug, Parser)]
#[command(name = "firstkey-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a state directory: generate the device key, store the lock id, the municipality's
    /// root key, the server and its CA; print the device public key and the pairing code.
    Init(InitArgs),
    /// Run the agent: serve taps on the local socket and keep the channel to the server.
    Run(RunArgs),
    /// Show the agent's state (works while `run` is running).
    Status(StatusArgs),
    /// Play the responder's device: present a token at the lock's tap socket with proof of
    /// possession. Exits 0 on allow, 2 on deny, 1 on error.
    Tap(TapArgs),
    /// Play the lock's keypad: enter a code at the lock's tap socket. Exits 0 on allow, 2 on
    /// deny, 3 while the keypad is locked after wrong codes, 1 on error.
    Keypad(KeypadArgs),
    /// Issuer-side helpers for trying the agent by hand (the server does this in production).
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Play the door hardware: report a door event to the running agent, which records it as a
    /// signed receipt in the lock's chain and uploads it.
    Event(EventArgs),
    /// Play a detector wired to the lock: report an alarm, which the running agent sends to the
    /// server over its channel (queued while offline).
    Alarm(AlarmArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DoorEventKind {
    /// Opened with the mechanical key.
    KeyOverride,
    /// Forced open.
    Forced,
    /// Held open longer than allowed (see --seconds).
    HeldOpen,
    /// The bolt jammed.
    Jammed,
}

#[derive(Debug, clap::Args)]
struct EventArgs {
    /// What happened at the door.
    kind: DoorEventKind,
    /// For held-open: how long the door stood open, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    #[command(flatten)]
    state: StateArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AlarmKindArg {
    /// Smoke detector.
    Smoke,
    /// Carbon monoxide detector.
    Co,
    /// Medical alert pendant.
    Medical,
    /// Intrusion sensor.
    Intrusion,
}

#[derive(Debug, clap::Args)]
struct AlarmArgs {
    /// What went off.
    kind: AlarmKindArg,
    /// The detector's name, e.g. Kitchen (at most 100 bytes).
    #[arg(long)]
    detector: Option<String>,
    #[command(flatten)]
    state: StateArg,
}

#[derive(Debug, clap::Args)]
struct StateArg {
    /// The agent's state directory.
    #[arg(
        long,
        env = "FIRSTKEY_AGENT_STATE_DIR",
        default_value = "./agent-state"
    )]
    state_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    #[command(flatten)]
    state: StateArg,
    /// This lock's id (the `aud` of its tokens): 1-64 characters of A-Z a-z 0-9 - _ . By default
    /// (and for a lock that pairs with a server: the server pairs no other) the id derived from
    /// the new device key.
    #[arg(long)]
    lock_id: Option<String>,
    /// The municipality's root Ed25519 public key (64 hex characters); trust bundles must be
    /// signed by it.
    #[arg(long)]
    root_public_key: String,
    /// A first trust bundle (file as minted by the server); without one, every tap is refused
    /// until a bundle arrives over the channel.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// The server to keep a channel with, as HOST:PORT. Without it the lock works offline only.
    #[arg(long, requires_all = ["server_name", "server_ca"])]
    server: Option<String>,
    /// The TLS name to verify on the server's certificate.
    #[arg(long)]
    server_name: Option<String>,
    /// PEM file with the CA certificate(s) that sign the server's TLS certificate.
    #[arg(long)]
    server_ca: Option<PathBuf>,
    /// How long the door stays unlocked after an allow, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    hold_ms: u64,
    /// Clock skew allowance for a token's validity window, in seconds.
    #[arg(long, default_value_t = 60)]
    skew_secs: u64,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    state: StateArg,
    /// Where to listen for taps (default: tap.sock in the state directory).
    #[arg(long)]
    tap_socket: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Serve the door panel, a local web page where a responder's browser presents a token with
    /// its security key (the stand-in for NFC/BLE): on ADDR, or on loopback port 8470 if no ADDR.
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = firstkey_agent::door_panel::DEFAULT_LISTEN)]
    door_panel: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    state: StateArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct KeypadArgs {
    /// The code as typed (digits; spaces and dashes are ignored).
    #[arg(long)]
    code: String,
    /// The lock's tap socket (default: tap.sock in the state directory).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(flatten)]
    state: StateArg,
}

#[derive(Debug, clap::Args)]
struct TapArgs {
    /// The override token file (bytes as minted).
    #[arg(long)]
    token: PathBuf,
    /// The responder's proof-of-possession key, PKCS#8 (Ed25519, or P-256 answering like a
    /// FIDO2 security key). Omit only for a token without a `cnf` key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The lock's tap socket (default: tap.sock in the state directory).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(flatten)]
    state: StateArg,
    /// WebAuthn relying party id for a P-256 key (the trust bundle's rp_id).
    #[arg(long, default_value = "firstkey.example")]
    rp_id: String,
}

#[derive(Debug, Subcommand)]
enum DemoCommand {
    /// Create a throwaway municipality in DIR: root key, issuer key k1, and bundle.cbor (version 1).
    Issuer {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Issuer name (the tokens' `iss`).
        #[arg(long, default_value = "demo-city")]
        issuer: String,
        /// WebAuthn relying party id.
        #[arg(long, default_value = "firstkey.example")]
        rp_id: String,
    },
    /// Generate a responder key (PKCS#8) for proof of possession.
    Key {
        /// Key type.
        #[arg(long, value_enum, default_value_t = KeyKind::Ed25519)]
        kind: KeyKind,
        /// Output file (written 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a token for a lock, bound to a responder key, valid from now.
    Mint {
        /// Issuer directory from `demo issuer`.
        #[arg(long)]
        dir: PathBuf,
        /// The lock the token opens.
        #[arg(long)]
        lock_id: String,
        /// The responder's key (PKCS#8) to bind with `cnf`.
        #[arg(long)]
        key: PathBuf,
        /// Validity in seconds.
        #[arg(long, default_value_t = 900)]
        ttl_secs: u64,
        /// Allowed uses.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyKind {
    /// Ed25519.
    Ed25519,
    /// P-256, as a FIDO2 security key.
    P256,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("firstkey-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(a) => init(a),
        Command::Run(a) => {
            init_tracing(a.log_json);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::run(
                RunOptions {
                    state_dir: StateDir::new(a.state.state_dir),
                    tap_socket: a.tap_socket,
                    channel_timing: None,
                    door_panel: a.door_panel,
                },
                Arc::new(SystemClock),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Event(a) => {
            use firstkey_agent::events::{self, DoorEvent, HardwareEvent};
            let event = match a.kind {
                DoorEventKind::KeyOverride => DoorEvent::KeyOverride,
                DoorEventKind::Forced => DoorEvent::Forced,
                DoorEventKind::HeldOpen => DoorEvent::HeldOpen { seconds: a.seconds },
                DoorEventKind::Jammed => DoorEvent::Jammed,
            };
            events::submit(
                &StateDir::new(a.state.state_dir),
                &HardwareEvent::Door(event),
                SystemClock.now(),
            )?;
            out(&format!("{} reported\n", event.name()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Alarm(a) => {
            use firstkey_agent::events::{self, HardwareEvent};
            use firstkey_agent::protocol::channel::DetectorKind;
            let kind = match a.kind {
                AlarmKindArg::Smoke => DetectorKind::Smoke,
                AlarmKindArg::Co => DetectorKind::CarbonMonoxide,
                AlarmKindArg::Medical => DetectorKind::Medical,
                AlarmKindArg::Intrusion => DetectorKind::Intrusion,
            };
            events::submit(
                &StateDir::new(a.state.state_dir),
                &HardwareEvent::Alarm {
                    kind,
                    detector: a.detector,
                    id: Some(events::new_alarm_id()?),
                },
                SystemClock.now(),
            )?;
            out("alarm reported\n")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(a) => {
            let s = state::peek_status(&StateDir::new(a.state.state_dir))?;
            if a.json {
                out(&format!("{}\n", serde_json::to_string_pretty(&s)?))?;
            } else {
                out(&format!(
                    "lock id:            {}\ndevice public key:  {}\ntrust bundle:       version {}\n\
                     time floor:         {}\ninbox seq applied:  {}\nreceipts:           {} ({} uploaded, {} pending)\n\
                     revocations:        {}\nstaged tokens:      {}\nserver:             {}\n\
                     deciding:           {}\nmalformed frames:   {}\n",
                    s.lock_id,
                    s.device_public_key,
                    s.bundle_version,
                    s.time_floor,
                    s.inbox_seq,
                    s.receipt_seq,
                    s.uploaded_through,
                    s.pending_uploads,
                    s.revocations,
                    s.staged_tokens,
                    s.server.as_deref().unwrap_or("none (offline)"),
                    s.halted.as_deref().map_or_else(
                        || "yes".to_owned(),
                        |why| format!("NO, every tap is refused: {why}")
                    ),
                    if s.malformed_frames.count == 0 {
                        "0".to_owned()
                    } else {
                        format!(
                            "{} (first at {}, last at {})",
                            s.malformed_frames.count,
                            s.malformed_frames.first,
                            s.malformed_frames.last
                        )
                    },
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tap(a) => tap(a),
        Command::Keypad(a) => keypad(a),
        Command::Demo(d) => demo_cmd(d),
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let root = hex::decode(a.root_public_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .context("--root-public-key must be 64 hex characters")?;
    let trust_bundle = match &a.trust_bundle {
        Some(p) => Some(std::fs::read(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    let server_ca_pem = match &a.server_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    let server = match (a.server, a.server_name) {
        (Some(address), Some(server_name)) => Some(ServerConfig {
            address,
            server_name,
        }),
        _ => None,
    };
    let dir = StateDir::new(a.state.state_dir);
    let done = state::init(
        &dir,
        &InitParams {
            lock_id: a.lock_id.clone().unwrap_or_default(),
            root_public_key: root,
            trust_bundle,
            server,
            server_ca_pem,
            hold_ms: a.hold_ms,
            skew_secs: a.skew_secs,
        },
    )?;
    let code = PairingCode::derive(&done.device_public_key, &done.lock_id);
    out(&format!(
        "initialised {}\nlock id:           {}\ndevice public key: {}\n\n\
         pairing code:      {}\n\nEnter the pairing code on the server when you add this lock to \
         your property. It is shown only now.\n",
        dir.root().display(),
        done.lock_id,
        hex::encode(done.device_public_key),
        code.display(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn tap(a: TapArgs) -> anyhow::Result<ExitCode> {
    let token = std::fs::read(&a.token).with_context(|| a.token.display().to_string())?;
    let key = match &a.key {
        Some(p) => {
            let pk8 = std::fs::read(p).with_context(|| p.display().to_string())?;
            Some(PresenterKey::from_pkcs8(&pk8, &a.rp_id)?)
        }
        None => None,
    };
    let socket = a
        .socket
        .unwrap_or_else(|| StateDir::new(a.state.state_dir).tap_socket());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt
        .block_on(tap_server::tap(&socket, &token, key.as_ref()))
        .with_context(|| format!("tap at {}", socket.display()))?;
    let word = match answer.outcome {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
    };
    out(&format!(
        "{word}\nreceipt: seq {} hash {}\n",
        answer.ack.seq,
        hex::encode(answer.ack.receipt_hash.0)
    ))?;
    Ok(match answer.outcome {
        Outcome::Allow => ExitCode::SUCCESS,
        Outcome::Deny => ExitCode::from(2),
    })
}

fn keypad(a: KeypadArgs) -> anyhow::Result<ExitCode> {
    let socket = a
        .socket
        .unwrap_or_else(|| StateDir::new(a.state.state_dir).tap_socket());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt
        .block_on(firstkey_agent::keypad::enter(&socket, &a.code))
        .with_context(|| format!("keypad at {}", socket.display()))?;
    match answer {
        firstkey_agent::keypad::EntryAnswer::Decided { outcome, ack } => {
            let word = match outcome {
                Outcome::Allow => "allow",
                Outcome::Deny => "deny",
            };
            out(&format!(
                "{word}\nreceipt: seq {} hash {}\n",
                ack.seq,
                hex::encode(ack.receipt_hash.0)
            ))?;
            Ok(match outcome {
                Outcome::Allow => ExitCode::SUCCESS,
                Outcome::Deny => ExitCode::from(2),
            })
        }
        firstkey_agent::keypad::EntryAnswer::Locked(secs) => {
            out(&format!("locked: try again in {secs} s\n"))?;
            Ok(ExitCode::from(3))
        }
    }
}

fn demo_cmd(d: DemoCommand) -> anyhow::Result<ExitCode> {
    match d {
        DemoCommand::Issuer { dir, issuer, rp_id } => {
            let iss = Issuer::generate(&issuer, &rp_id)?;
            iss.save(&dir)?;
            let bundle = iss.bundle(1, &["k1"])?;
            firstkey_agent::durable::write_atomic(&dir.join("bundle.cbor"), &bundle, 0o644)?;
            out(&format!(
                "issuer {issuer} in {}\nroot public key: {}\ntrust bundle:    {}\n",
                dir.display(),
                hex::encode(iss.root_public_key()?),
                dir.join("bundle.cbor").display()
            ))?;
        }
        DemoCommand::Key { kind, out: path } => {
            let pk8 = match kind {
                KeyKind::Ed25519 => demo::new_ed25519_pkcs8()?,
                KeyKind::P256 => demo::new_p256_pkcs8()?,
            };
            firstkey_agent::durable::write_atomic(&path, &pk8, 0o600)?;
            out(&format!("wrote {}\n", path.display()))?;
        }
        DemoCommand::Mint {
            dir,
            lock_id,
            key,
            ttl_secs,
            max_uses,
            out: path,
        } => {
            let iss = Issuer::load(&dir)?;
            let pk8 = std::fs::read(&key).with_context(|| key.display().to_string())?;
            let presenter = PresenterKey::from_pkcs8(&pk8, &iss.rp_id)?;
            let now = SystemClock.now();
            let token = iss.mint(
                "k1",
                &TokenSpec {
                    lock_id,
                    not_before: now,
                    expires_at: now.saturating_add(ttl_secs),
                    max_uses,
                    confirmation: Some(demo::confirmation_key(&presenter)),
                },
            )?;
            firstkey_agent::durable::write_atomic(&path, &token, 0o600)?;
            out(&format!(
                "wrote {} ({} bytes)\n",
                path.display(),
                token.len()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

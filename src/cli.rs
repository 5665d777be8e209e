//! The `firstkey` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::settings::Settings;
use crate::{demo, server, store, telemetry};

/// firstkey: emergency access for first responders, with proof that nobody else got in.
///
/// Configuration comes from defaults, then `firstkey.toml` (or --config), then FIRSTKEY_* environment
/// variables (for example FIRSTKEY_DATABASE_URL, FIRSTKEY_LISTEN, FIRSTKEY_PUBLIC_ORIGIN). With no
/// database configured, firstkey uses PostgreSQL at 127.0.0.1:5432, or starts a private cluster.
#[derive(Debug, Parser)]
#[command(name = "firstkey", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./firstkey.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server: migrate the database, then serve until SIGINT/SIGTERM.
    Serve,
    /// Apply pending database migrations and exit. Running it again is a no-op.
    Migrate,
    /// Ask the server running here (at `listen`, loopback for 0.0.0.0) whether it is ready:
    /// `GET /readyz`. Exit 0 on 200, 1 otherwise. For container HEALTHCHECKs and probes.
    Health {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// The whole story in one command: server, a simulated lock agent over TLS, a local SMTP sink
    /// (mail lands in .firstkey/demo/mail); homeowner plan → dispatcher grant → responder token →
    /// push to the lock → tap → door opens → receipt → mail, each step timed; then keeps serving.
    Demo {
        /// Walk the story once and exit (non-zero if any step fails) instead of serving afterwards.
        #[arg(long)]
        once: bool,
    },
    /// Print the OpenAPI 3.1 document of the JSON API to standard output.
    Openapi,
    /// Measure the emergency-entry figures (push latency, issuance throughput, memory per agent) on a
    /// scratch database and print them with their baselines. Not a test: nothing is asserted.
    Bench {
        /// Simulated agents connected while timing token pushes.
        #[arg(long, default_value_t = 1000)]
        latency_agents: usize,
        /// Token requests timed for push latency.
        #[arg(long, default_value_t = 1000)]
        pushes: usize,
        /// Concurrent responders for issuance throughput.
        #[arg(long, default_value_t = 32)]
        responders: usize,
        /// Seconds each throughput measurement runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Idle agents for the memory-per-connection figure.
        #[arg(long, default_value_t = 10_000)]
        idle_agents: usize,
        /// Alarms timed for alarm → live grant latency (0 skips it).
        #[arg(long, default_value_t = 1000)]
        alarms: usize,
        /// Locks sending a battery report each, for the health write cost (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        battery_agents: usize,
        /// Only the home section (alarms, battery reports).
        #[arg(long)]
        home_only: bool,
        /// Only the dispatcher-console figures (render time, live-state latency).
        #[arg(long)]
        console_only: bool,
        /// Only the homeowner's remote unlock: request → the lock's open, p50/p99, with
        /// `--latency-agents` agents connected and `--pushes` opens (`src/bench_remote.rs`).
        #[arg(long)]
        remote_open: bool,
        /// Only the disaster burst: replicas sharing one PostgreSQL, agents across them, one token
        /// per grant within a window (the --burst-* and --replicas options).
        #[arg(long)]
        burst: bool,
        /// Burst: server replicas (`firstkey serve` processes of this binary).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Burst: idle agents connected across the replicas (lower it on a small machine).
        #[arg(long, default_value_t = 10_000)]
        burst_agents: usize,
        /// Burst: grants, one token each.
        #[arg(long, default_value_t = 2000)]
        burst_grants: usize,
        /// Burst: concurrent responders asking for the tokens.
        #[arg(long, default_value_t = 64)]
        burst_clients: usize,
        /// Burst: seconds the tokens are asked for in (evenly spread).
        #[arg(long, default_value_t = 60)]
        burst_seconds: u64,
        /// Burst: skip connecting as many agents as the open-file limit allows.
        #[arg(long)]
        burst_skip_max_agents: bool,
    },
    /// Internal: the simulated-agent process of `firstkey bench` (c).
    #[command(hide = true)]
    BenchFleet {
        /// PostgreSQL connection string of the bench database.
        #[arg(long)]
        database: String,
        /// Municipality id.
        #[arg(long)]
        municipality: uuid::Uuid,
        /// Property id.
        #[arg(long)]
        property: uuid::Uuid,
        /// Agent channel address.
        #[arg(long)]
        agent_addr: std::net::SocketAddr,
        /// The channel's CA (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// Number of agents.
        #[arg(long)]
        agents: usize,
    },
    /// Administer accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Work with Cedar policy sets.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Issuer signing keys (in `key_dir`, never in the database) and trust bundles.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The verifiable audit log: offline verification, exports, witnesses (docs/audit-log.md).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Watch a municipality's audit log as a witness: check each checkpoint against the last one
    /// seen and cosign it (C2SP tlog-cosignature).
    #[command(subcommand)]
    Witness(WitnessCommand),
}

/// `firstkey audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an export offline (no database, no network) against the log's public key; prints what
    /// verified and exactly what failed. Exit 1 when anything failed.
    Verify {
        /// The export (JSON, from `firstkey audit export` or GET /api/v1/audit/export).
        file: PathBuf,
        /// The log's verifier key, `<name>+<hash>+<base64>`.
        #[arg(long)]
        log_key: String,
        /// A witness's verifier key (type 0x04) whose cosignature counts; repeatable.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Valid cosignatures required from the given witnesses.
        #[arg(long, default_value_t = 0)]
        quorum: usize,
    },
    /// Write an export of a municipality's log against its newest checkpoint.
    Export {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// Only the entries about this property, each with its inclusion proof.
        #[arg(long)]
        property: Option<uuid::Uuid>,
        /// Output file; standard output when absent.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Register a witness whose cosignatures the log accepts and serves.
    WitnessAdd {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// The witness's verifier key (type 0x04), as `firstkey witness keygen` printed it.
        #[arg(long)]
        key: String,
    },
}

/// `firstkey witness …`
#[derive(Debug, Subcommand)]
pub enum WitnessCommand {
    /// Write a new witness key (Ed25519 PKCS#8, mode 0600) and print its verifier key.
    Keygen {
        /// The witness's name, e.g. `oversight.example/witness`.
        #[arg(long)]
        name: String,
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Watch a log: fetch, check consistency with the state file, cosign, post. Exit 1 (and never
    /// cosign) when the log forked, rolled back or is not append-only.
    Run {
        /// The firstkey server's base URL.
        #[arg(long)]
        server: String,
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// The log's verifier key.
        #[arg(long)]
        log_key: String,
        /// The witness's name.
        #[arg(long)]
        name: String,
        /// The witness's key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The witness's state (the last checkpoint it accepted).
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// One round, then exit.
        #[arg(long)]
        once: bool,
        /// Seconds between rounds.
        #[arg(long, default_value_t = 30)]
        interval_seconds: u64,
    },
}

/// `firstkey keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make the municipality's first issuer signing key (Ed25519, `<key_dir>/issuer/<kid>.pk8`, 0600).
    Generate {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
    },
    /// Add a new active issuer key; the previous keys stay in trust bundles for the overlap, then
    /// retire (no longer used, left out of bundles, private files deleted).
    Rotate {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// Hours the previous keys stay trusted after rotation.
        #[arg(long, default_value_t = 24)]
        overlap_hours: u32,
    },
    /// Build the next trust bundle from the keys not yet retired, sign it with the municipality's
    /// offline root key, store it and queue it for every lock.
    Bundle {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// The root key (Ed25519 PKCS#8 file), read for this command only.
        #[arg(long, value_name = "FILE")]
        root_key: PathBuf,
    },
    /// Make the municipality's first audit-log key (Ed25519, `<key_dir>/log/…`, 0600) and print its
    /// verifier key; this fixes the log's origin, `<public origin without scheme>/log/<slug>`.
    LogGenerate {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
    },
    /// Add a new audit-log key; checkpoints carry the old key's signature too until it retires.
    LogRotate {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// Hours the previous keys keep signing.
        #[arg(long, default_value_t = 24)]
        overlap_hours: u32,
    },
    /// Write a new municipality root key (Ed25519 PKCS#8, mode 0600) for development and demos, and
    /// print its public key. A production root key is made and kept offline.
    RootGenerate {
        /// Where to write it; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `firstkey admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Bootstrap a municipal admin: creates the municipality if needed and the admin account, and
    /// prints a one-time link (valid 72 hours) where the admin enrols a hardware security key.
    Create {
        /// Municipality slug, e.g. `springfield` (lower-case letters, digits, dashes).
        #[arg(long)]
        municipality: String,
        /// Municipality display name, used when the municipality is created.
        #[arg(long)]
        municipality_name: Option<String>,
        /// The admin's e-mail address.
        #[arg(long)]
        email: String,
        /// The admin's display name.
        #[arg(long)]
        name: String,
    },
    /// List the municipalities in the database (slug and name).
    Municipalities,
    /// Admit a security-key maker for a municipality: adds a PEM attestation CA to its list (beside
    /// the shipped strict list), e.g. before the first admin enrols a key of another make.
    TrustCa {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// PEM file with the CA certificate.
        pem: PathBuf,
    },
    /// The municipality's agencies: add, rename, retire, list (each change audited).
    #[command(subcommand)]
    Agency(AgencyCommand),
    /// Admit security keys whose attestation certificate is self-signed with one known key (a batch
    /// key, or Chromium's virtual authenticator in a test configuration): pins the SHA-256 of that
    /// key's SubjectPublicKeyInfo for a municipality (audited).
    TrustKey {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// SHA-256 of the attestation key's SubjectPublicKeyInfo: 64 hex digits (colons allowed).
        #[arg(long)]
        spki_sha256: String,
        /// What the key is, e.g. "Chromium virtual authenticator (tests only)".
        #[arg(long)]
        name: String,
        /// The key belongs to a software authenticator used for tests (Chromium's virtual one):
        /// enrolments here then ask for credProtect without enforcing it, which that authenticator
        /// cannot honour. Never for a municipality's real staff keys.
        #[arg(long)]
        test_only: bool,
    },
}

/// `firstkey admin agency …`
#[derive(Debug, Subcommand)]
pub enum AgencyCommand {
    /// Add an agency.
    Add {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// `fire`, `ems`, `police` or `other`.
        #[arg(long)]
        kind: String,
        /// Its name, unique in the municipality.
        #[arg(long)]
        name: String,
    },
    /// Rename an agency.
    Rename {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// The agency: its id or its current name.
        #[arg(long)]
        agency: String,
        /// The new name.
        #[arg(long)]
        name: String,
    },
    /// Retire an agency: no new invitations or units; its people and history stay.
    Retire {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
        /// The agency: its id or its name.
        #[arg(long)]
        agency: String,
    },
    /// List the agencies (id, kind, name, state).
    List {
        /// Municipality slug.
        #[arg(long)]
        municipality: String,
    },
}

/// `firstkey policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory (`*.cedar` files and an optional `schema.cedarschema`; the shipped
    /// schema is used when it has none) and report each error with file and line. Exit 1 on errors.
    Check {
        /// The directory, e.g. `policies/`.
        dir: PathBuf,
    },
}

/// Parses the command line, runs the command, and maps failure to a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Policy(PolicyCommand::Check { dir }) = &cli.command {
        return match crate::policy::check_dir(dir) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                eprintln!(
                    "firstkey: {} error(s) in {}",
                    diagnostics.len(),
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Keys(KeysCommand::RootGenerate { out }) = &cli.command {
        return match crate::emergency::keys::root_generate(out) {
            Ok(root) => {
                println!("root key written to {}", root.path.display());
                println!("public key: {}", hex::encode(root.public_key));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.into()),
        };
    }
    if let Command::Audit(AuditCommand::Verify {
        file,
        log_key,
        witnesses,
        quorum,
    }) = &cli.command
    {
        return audit_verify(file, log_key, witnesses, *quorum);
    }
    if let Command::Witness(command) = &cli.command {
        return witness(command);
    }
    if let Command::BenchFleet {
        database,
        municipality,
        property,
        agent_addr,
        ca,
        agents,
    } = &cli.command
    {
        let target = crate::bench::FleetTarget {
            database: database.clone(),
            municipality: *municipality,
            property: *property,
            agent_addr: *agent_addr,
            ca: ca.clone(),
            agents: *agents,
        };
        let result = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(crate::bench::fleet_process(target)));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Command::Openapi = cli.command {
        return match crate::http::openapi::document_json() {
            Ok(doc) => {
                print!("{doc}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&anyhow::Error::from(e)),
        };
    }
    let settings = match Settings::from_process(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("firstkey: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Health { timeout } = cli.command {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(crate::probe::readyz(
                    &settings,
                    Duration::from_secs(timeout),
                ))
            });
        return match result {
            Ok(answer) if answer.status == 200 => {
                println!("ready: {} answered 200", answer.url);
                ExitCode::SUCCESS
            }
            Ok(answer) => {
                eprintln!(
                    "firstkey: not ready: {} answered {}",
                    answer.url, answer.status
                );
                ExitCode::FAILURE
            }
            Err(e) => fail(&e),
        };
    }
    let telemetry = match telemetry::init(settings.log_format, settings.otlp.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("firstkey: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            telemetry.shutdown();
            return fail(&e.into());
        }
    };
    let result = runtime.block_on(run(cli.command, settings));
    // The spans of the run are flushed to the collector (bounded: a collector that is down or
    // silent costs at most `telemetry::SHUTDOWN_TIMEOUT`).
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the error in one line; exit code 2 when a setting's value caused it (as for a bad value
/// found while loading the settings), else 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("firstkey: {e:#}");
    if e.chain().any(|cause| {
        cause
            .downcast_ref::<crate::settings::SettingsError>()
            .is_some()
    }) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let database = server::open_database(&settings).await?;
    match command {
        Command::Migrate => {
            let applied = server::migrate_with_patience(&database, Duration::ZERO).await?;
            println!(
                "{}: {applied} migration(s) applied; schema at version {}",
                database.description,
                store::latest_migration()
            );
            Ok(())
        }
        Command::Serve => {
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            server::serve(settings, database, |_| {}).await
        }
        Command::Demo { once } => demo::run(settings, database, once).await,
        Command::Bench {
            latency_agents,
            pushes,
            responders,
            seconds,
            idle_agents,
            alarms,
            battery_agents,
            home_only,
            console_only,
            remote_open,
            burst,
            replicas,
            burst_agents,
            burst_grants,
            burst_clients,
            burst_seconds,
            burst_skip_max_agents,
        } => {
            if remote_open {
                let options = crate::bench_remote::RemoteBenchOptions {
                    agents: latency_agents,
                    opens: pushes,
                };
                return crate::bench_remote::run(settings, database.config.clone(), options).await;
            }
            if burst {
                let options = crate::bench_burst::BurstOptions {
                    replicas,
                    agents: burst_agents,
                    grants: burst_grants,
                    clients: burst_clients,
                    window: Duration::from_secs(burst_seconds),
                    max_agents: !burst_skip_max_agents,
                };
                return crate::bench_burst::run(settings, database.config.clone(), options).await;
            }
            let options = crate::bench::BenchOptions {
                latency_agents,
                pushes,
                responders,
                duration: Duration::from_secs(seconds),
                idle_agents,
                alarms,
                battery_agents,
                home_only,
                console_only,
            };
            let config = database.config.clone();
            crate::bench::run(settings, config, options).await
        }
        Command::Admin(AdminCommand::Create {
            municipality,
            municipality_name,
            email,
            name,
        }) => {
            let slug = crate::domain::Slug::parse(&municipality)?;
            let email = crate::domain::Email::parse(&email)?;
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            let now = SystemClock.now();
            let mut client = database.pool.get().await.map_err(store::StoreError::from)?;
            let tx = client
                .transaction()
                .await
                .map_err(store::StoreError::from)?;
            let display = municipality_name.unwrap_or_else(|| municipality.clone());
            let (tenant, _) =
                store::tenancy::ensure_municipality(&tx, &slug, &display, now).await?;
            let existing = tx
                .query_opt(
                    "SELECT status FROM users WHERE municipality_id = $1 AND lower(email) = lower($2)",
                    &[&tenant.id(), &email.as_str()],
                )
                .await
                .map_err(store::StoreError::from)?
                .map(|row| row.get::<_, String>(0));
            let (user, link) =
                crate::auth::accounts::bootstrap_admin(&tx, tenant, &email, &name, now).await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            match existing {
                Some(status) => println!(
                    "municipal admin {} ({}) of {slug} already exists ({status}); this link replaces the earlier ones, which no longer work",
                    email.as_str(),
                    user.id
                ),
                None => println!("municipal admin {} ({}) of {slug}", email.as_str(), user.id),
            }
            println!("enrol a hardware security key within 72 hours at:");
            println!("  {}", link.invitation_url(&settings.public_origin));
            Ok(())
        }
        Command::Keys(command) => {
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            run_keys(command, &settings, &database.pool).await
        }
        Command::Admin(AdminCommand::TrustCa { municipality, pem }) => {
            let text = std::fs::read_to_string(&pem)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", pem.display()))?;
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            let mut client = database.pool.get().await.map_err(store::StoreError::from)?;
            let tx = client
                .transaction()
                .await
                .map_err(store::StoreError::from)?;
            let (tenant, slug) = find_municipality(&tx, &municipality).await?;
            let ca = crate::auth::webauthn::add_attestation_ca(
                &tx,
                tenant,
                &text,
                None,
                SystemClock.now(),
            )
            .await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            println!(
                "{slug} now admits security keys attested by the CA in {} (fingerprint {})",
                pem.display(),
                ca.fingerprint
            );
            Ok(())
        }
        Command::Admin(AdminCommand::Agency(command)) => {
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            run_agency(command, &database.pool).await
        }
        Command::Admin(AdminCommand::TrustKey {
            municipality,
            spki_sha256,
            name,
            test_only,
        }) => {
            let pin = crate::auth::pins::parse_pin(&spki_sha256)?;
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            let mut client = database.pool.get().await.map_err(store::StoreError::from)?;
            let tx = client
                .transaction()
                .await
                .map_err(store::StoreError::from)?;
            let (tenant, slug) = find_municipality(&tx, &municipality).await?;
            let used = if test_only {
                crate::auth::pins::PinUse::TestOnly
            } else {
                crate::auth::pins::PinUse::Production
            };
            let added =
                crate::auth::pins::pin_key(&tx, tenant, &pin, &name, used, None, SystemClock.now())
                    .await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            if added {
                println!(
                    "{slug} now admits security keys attested by the key {}",
                    hex::encode(pin)
                );
            } else {
                println!("{slug} already admits the key {}", hex::encode(pin));
            }
            Ok(())
        }
        Command::Admin(AdminCommand::Municipalities) => {
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            let client = database.pool.get().await.map_err(store::StoreError::from)?;
            let rows = client
                .query("SELECT slug, name FROM municipalities ORDER BY slug", &[])
                .await
                .map_err(store::StoreError::from)?;
            if rows.is_empty() {
                println!("no municipalities yet; `firstkey admin create` makes the first");
            }
            for row in rows {
                println!("{}\t{}", row.get::<_, String>(0), row.get::<_, String>(1));
            }
            Ok(())
        }
        Command::Audit(command) => {
            server::migrate_with_patience(&database, Duration::from_secs(60)).await?;
            run_audit(command, &database.pool).await
        }
        Command::Openapi
        | Command::Policy(_)
        | Command::BenchFleet { .. }
        | Command::Health { .. }
        | Command::Witness(_) => Ok(()),
    }
}

/// The municipality `slug`, or an error that names it and says how to list the ones there are.
async fn find_municipality(
    client: &impl deadpool_postgres::GenericClient,
    slug: &str,
) -> anyhow::Result<(store::Tenant, crate::domain::Slug)> {
    let slug = crate::domain::Slug::parse(slug)?;
    match store::tenancy::municipality_by_slug(client, &slug).await {
        Ok((tenant, _)) => Ok((tenant, slug)),
        Err(store::StoreError::NotFound) => Err(anyhow::anyhow!(
            "there is no municipality `{slug}` in this database; `firstkey admin municipalities` lists them"
        )),
        Err(e) => Err(e.into()),
    }
}

async fn run_keys(
    command: KeysCommand,
    settings: &Settings,
    pool: &deadpool_postgres::Pool,
) -> anyhow::Result<()> {
    use crate::emergency::keys;

    let now = SystemClock.now();
    let mut client = pool.get().await.map_err(store::StoreError::from)?;
    match command {
        KeysCommand::Generate { municipality } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            let key = keys::generate(&mut client, tenant, &settings.key_dir, now).await?;
            println!(
                "issuer key {} of {slug} written to {}",
                key.kid,
                key.path.display()
            );
            println!("next: firstkey keys bundle --municipality {slug} --root-key FILE");
        }
        KeysCommand::Rotate {
            municipality,
            overlap_hours,
        } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            let overlap = chrono::Duration::hours(i64::from(overlap_hours));
            let key = keys::rotate(&mut client, tenant, &settings.key_dir, overlap, now).await?;
            println!("new active issuer key {} of {slug}", key.kid);
            for (kid, at) in &key.retiring {
                println!("  {kid} retires at {}", at.to_rfc3339());
            }
            println!("next: firstkey keys bundle --municipality {slug} --root-key FILE");
        }
        KeysCommand::Bundle {
            municipality,
            root_key,
        } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            let root = keys::load_pair(&root_key)?;
            let rp_id = settings.public_origin.host().to_owned();
            let built = keys::bundle(&mut client, tenant, &root, &rp_id, now).await?;
            println!(
                "trust bundle v{} of {slug} (keys {}) queued for {} lock(s)",
                built.version,
                built.kids.join(", "),
                built.locks
            );
        }
        KeysCommand::LogGenerate { municipality } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            let origin =
                crate::audit::log::origin_for(settings.public_origin.as_str(), slug.as_str());
            let key = crate::audit::log::generate_key(
                &mut client,
                tenant,
                &origin,
                &settings.key_dir,
                now,
            )
            .await?;
            println!("audit-log key of {slug} written to {}", key.path.display());
            println!("verifier key (give it to auditors and witnesses):");
            println!("  {}", key.verifier);
        }
        KeysCommand::LogRotate {
            municipality,
            overlap_hours,
        } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            let overlap = chrono::Duration::hours(i64::from(overlap_hours));
            let key =
                crate::audit::log::rotate_key(&mut client, tenant, &settings.key_dir, overlap, now)
                    .await?;
            println!("new audit-log key of {slug}: {}", key.verifier);
            for (id, at) in &key.retiring {
                println!("  {id} keeps signing until {}", at.to_rfc3339());
            }
        }
        KeysCommand::RootGenerate { .. } => {}
    }
    Ok(())
}

async fn run_audit(command: AuditCommand, pool: &deadpool_postgres::Pool) -> anyhow::Result<()> {
    let client = pool.get().await.map_err(store::StoreError::from)?;
    match command {
        AuditCommand::Export {
            municipality,
            property,
            out,
        } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            crate::audit::seal(&client, tenant).await?;
            let export = crate::audit::log::export(&client, tenant, property)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{slug}'s log has no signed checkpoint yet"))?;
            let json = serde_json::to_string_pretty(&export)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, json)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    println!(
                        "{} entries against the checkpoint of size {} written to {}",
                        export.entries.len(),
                        crate::audit::note::Note::parse(&export.checkpoint)
                            .ok()
                            .and_then(|n| crate::audit::note::Checkpoint::parse(&n.text).ok())
                            .map_or(0, |c| c.size),
                        path.display()
                    );
                }
                None => println!("{json}"),
            }
        }
        AuditCommand::WitnessAdd { municipality, key } => {
            let (tenant, slug) = find_municipality(&client, &municipality).await?;
            let key = crate::audit::note::VerifierKey::parse(&key)?;
            crate::audit::log::add_witness(&client, tenant, &key, SystemClock.now()).await?;
            println!("{slug}'s log now accepts cosignatures by {}", key.name());
        }
        AuditCommand::Verify { .. } => {}
    }
    Ok(())
}

fn audit_verify(
    file: &std::path::Path,
    log_key: &str,
    witnesses: &[String],
    quorum: usize,
) -> ExitCode {
    use crate::audit::note::VerifierKey;
    let parsed = VerifierKey::parse(log_key).map_err(|e| anyhow::anyhow!("--log-key: {e}"));
    let witnesses: Result<Vec<VerifierKey>, anyhow::Error> = witnesses
        .iter()
        .map(|w| VerifierKey::parse(w).map_err(|e| anyhow::anyhow!("--witness {w}: {e}")))
        .collect();
    let (log_key, witnesses) = match (parsed, witnesses) {
        (Ok(k), Ok(w)) => (k, w),
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(&anyhow::anyhow!("cannot read {}: {e}", file.display())),
    };
    let report = crate::audit::verify::verify_export(&text, &log_key, &witnesses, quorum);
    if let Some((origin, size, root)) = &report.checkpoint {
        println!("checkpoint: {origin}, tree size {size}, root {root} (signature verified)");
    }
    for (name, time) in &report.witnesses {
        println!("cosigned by {name} at {time}");
    }
    if report.ok() {
        println!("OK: {} entries verified", report.verified);
        ExitCode::SUCCESS
    } else {
        for f in &report.failures {
            println!("FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}

fn witness(command: &WitnessCommand) -> ExitCode {
    match command {
        WitnessCommand::Keygen { name, out } => {
            let result = crate::emergency::keys::root_generate(out)
                .map_err(anyhow::Error::from)
                .and_then(|key| {
                    crate::audit::note::VerifierKey::new(
                        name,
                        crate::audit::note::SIG_COSIGNATURE_V1,
                        key.public_key,
                    )
                    .map_err(anyhow::Error::from)
                });
            match result {
                Ok(key) => {
                    println!("witness key written to {}", out.display());
                    println!("verifier key (register it with `firstkey audit witness-add`):");
                    println!("  {key}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        WitnessCommand::Run {
            server,
            municipality,
            log_key,
            name,
            key,
            state,
            once,
            interval_seconds,
        } => {
            let witness = crate::audit::note::VerifierKey::parse(log_key)
                .map_err(anyhow::Error::from)
                .and_then(|log_key| {
                    Ok(crate::audit::witness::Witness {
                        server: server.clone(),
                        municipality: municipality.clone(),
                        log_key,
                        name: name.clone(),
                        key: crate::emergency::keys::load_pair(key)?,
                        state: state.clone(),
                    })
                });
            let witness = match witness {
                Ok(w) => w,
                Err(e) => return fail(&e),
            };
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        let http = reqwest::Client::new();
                        loop {
                            let now = u64::try_from(SystemClock.now().timestamp()).unwrap_or(0);
                            let done = crate::audit::witness::round(&witness, &http, now).await;
                            match done {
                                Ok(c) => println!(
                                    "cosigned tree size {} (previously {})",
                                    c.size,
                                    c.previous.map_or("none".to_owned(), |p| p.to_string())
                                ),
                                Err(e @ crate::audit::witness::WitnessError::Inconsistent(_)) => {
                                    return Err(anyhow::Error::from(e));
                                }
                                Err(e) if *once => return Err(e.into()),
                                Err(e) => eprintln!("firstkey witness: {e}; will retry"),
                            }
                            if *once {
                                return Ok(());
                            }
                            tokio::time::sleep(Duration::from_secs(*interval_seconds)).await;
                        }
                    })
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// Finds an agency of `tenant` by id or exact name.
async fn find_agency(
    client: &impl deadpool_postgres::GenericClient,
    tenant: store::Tenant,
    given: &str,
) -> anyhow::Result<uuid::Uuid> {
    let agencies = crate::municipal::agencies(client, tenant).await?;
    let id = uuid::Uuid::parse_str(given).ok();
    agencies
        .iter()
        .find(|a| Some(a.id) == id || a.name == given)
        .map(|a| a.id)
        .ok_or_else(|| anyhow::anyhow!("no agency {given:?} in this municipality"))
}

fn print_agency(a: &crate::municipal::AgencyView) {
    let state = a.retired_at.map_or_else(
        || "active".to_owned(),
        |t| format!("retired {}", t.format("%Y-%m-%d")),
    );
    println!("{}\t{}\t{}\t{state}", a.id, a.kind, a.name);
}

/// `firstkey admin agency …`: each change and its audit entry in one transaction.
async fn run_agency(command: AgencyCommand, pool: &deadpool_postgres::Pool) -> anyhow::Result<()> {
    use crate::municipal;
    let now = SystemClock.now();
    let mut client = pool.get().await.map_err(store::StoreError::from)?;
    let tx = client
        .transaction()
        .await
        .map_err(store::StoreError::from)?;
    match command {
        AgencyCommand::Add {
            municipality,
            kind,
            name,
        } => {
            let (tenant, _) = find_municipality(&tx, &municipality).await?;
            let new = municipal::NewAgency { kind, name };
            let agency = municipal::create_agency(&tx, tenant, None, &new, now).await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            print_agency(&agency);
        }
        AgencyCommand::Rename {
            municipality,
            agency,
            name,
        } => {
            let (tenant, _) = find_municipality(&tx, &municipality).await?;
            let id = find_agency(&tx, tenant, &agency).await?;
            let agency = municipal::rename_agency(&tx, tenant, None, id, &name, now).await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            print_agency(&agency);
        }
        AgencyCommand::Retire {
            municipality,
            agency,
        } => {
            let (tenant, _) = find_municipality(&tx, &municipality).await?;
            let id = find_agency(&tx, tenant, &agency).await?;
            let agency = municipal::retire_agency(&tx, tenant, None, id, now).await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            print_agency(&agency);
        }
        AgencyCommand::List { municipality } => {
            let (tenant, slug) = find_municipality(&tx, &municipality).await?;
            let agencies = municipal::agencies(&tx, tenant).await?;
            if agencies.is_empty() {
                println!("{slug} has no agencies yet; `firstkey admin agency add` makes one");
            }
            for a in &agencies {
                print_agency(a);
            }
        }
    }
    Ok(())
}

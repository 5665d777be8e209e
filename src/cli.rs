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
    /// Serve with a seeded demo municipality (agencies and one user of each role), printing where to go.
    Demo {
        /// Seed and check the server answers, then exit instead of serving.
        #[arg(long)]
        once: bool,
    },
    /// Print the OpenAPI 3.1 document of the JSON API to standard output.
    Openapi,
    /// Administer accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Work with Cedar policy sets.
    #[command(subcommand)]
    Policy(PolicyCommand),
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
    telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("firstkey: {e:#}");
    ExitCode::FAILURE
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let database = server::open_database(&settings).await?;
    match command {
        Command::Migrate => {
            let applied = store::migrate(&database.pool).await?;
            println!(
                "{}: {applied} migration(s) applied; schema at version {}",
                database.description,
                store::latest_migration()
            );
            Ok(())
        }
        Command::Serve => {
            server::migrate_with_patience(&database.pool, Duration::from_secs(60)).await?;
            server::serve(settings, database, |_| {}).await
        }
        Command::Demo { once } => {
            server::migrate_with_patience(&database.pool, Duration::from_secs(60)).await?;
            let world = demo::seed(&database.pool, SystemClock.now()).await?;
            let origin = settings.public_origin.as_str().to_owned();
            let description = database.description.clone();
            let slug = world.slug.clone();
            let users = world.users.clone();
            let print = move |app: &crate::http::Application| {
                println!("firstkey demo is running");
                println!("  database:     {description}");
                println!("  listening:    {}://{}", app.scheme(), app.local_addr());
                println!("  public origin {origin}");
                println!("  municipality: {slug}");
                for (role, email) in &users {
                    println!("  {:<16} {email}", role.as_str());
                }
                println!("  try: curl {}://{}/readyz", app.scheme(), app.local_addr());
                println!(
                    "       curl {}://{}/api/openapi.json",
                    app.scheme(),
                    app.local_addr()
                );
            };
            if once {
                let pool = database.pool.clone();
                match store::readiness(&pool).await {
                    store::Readiness::Ready => {
                        println!(
                            "firstkey demo: seeded municipality {} in {}",
                            world.slug, database.description
                        );
                        for (role, email) in &world.users {
                            println!("  {:<16} {email}", role.as_str());
                        }
                        Ok(())
                    }
                    other => anyhow::bail!("database not ready after seeding: {other:?}"),
                }
            } else {
                server::serve(settings, database, print).await
            }
        }
        Command::Admin(AdminCommand::Create {
            municipality,
            municipality_name,
            email,
            name,
        }) => {
            let slug = crate::domain::Slug::parse(&municipality)?;
            let email = crate::domain::Email::parse(&email)?;
            server::migrate_with_patience(&database.pool, Duration::from_secs(60)).await?;
            let now = SystemClock.now();
            let mut client = database.pool.get().await.map_err(store::StoreError::from)?;
            let tx = client
                .transaction()
                .await
                .map_err(store::StoreError::from)?;
            let display = municipality_name.unwrap_or_else(|| municipality.clone());
            let (tenant, _) =
                store::tenancy::ensure_municipality(&tx, &slug, &display, now).await?;
            let (user, link) =
                crate::auth::accounts::bootstrap_admin(&tx, tenant, &email, &name, now).await?;
            tx.commit().await.map_err(store::StoreError::from)?;
            println!("municipal admin {} ({}) of {slug}", email.as_str(), user.id);
            println!("enrol a hardware security key within 72 hours at:");
            println!("  {}", link.invitation_url(&settings.public_origin));
            Ok(())
        }
        Command::Openapi | Command::Policy(_) => Ok(()),
    }
}

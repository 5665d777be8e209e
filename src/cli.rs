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
}

/// Parses the command line, runs the command, and maps failure to a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Openapi => Ok(()),
    }
}

//! The embedded default database: what `serve` and `demo` use when no database URL is configured.
//!
//! In order: the local server at 127.0.0.1:5432 (the `firstkey` database is created if missing); else a
//! private cluster started from PostgreSQL's own server binaries in a data directory, listening only
//! on a Unix socket inside it, and stopped cleanly when the [`PrivateCluster`] is dropped; else one
//! clear paragraph saying what to install or set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

/// Name of the database the embedded default uses.
pub const DATABASE: &str = "firstkey";

/// What the embedded default resolved to.
pub struct Resolved {
    /// Connection settings for the `firstkey` database.
    pub config: tokio_postgres::Config,
    /// The private cluster, if one was started; dropping it stops the cluster.
    pub cluster: Option<PrivateCluster>,
    /// One line for the operator saying which database is in use.
    pub description: String,
}

/// No database could be found or started.
#[derive(Debug, thiserror::Error)]
#[error(
    "firstkey needs PostgreSQL and found none. Nothing answered at 127.0.0.1:5432{detail}. \
     Either set FIRSTKEY_DATABASE_URL (or database_url in firstkey.toml) to a PostgreSQL 13+ \
     connection string, or install PostgreSQL's server package (Debian/Ubuntu: \
     `apt-get install postgresql`), which firstkey will then start as a private cluster in \
     the directory named by `embedded_pg_dir`."
)]
pub struct NoDatabase {
    detail: String,
}

/// Resolves the embedded default: local server, else private cluster.
pub async fn resolve(pg_dir: &Path) -> Result<Resolved, NoDatabase> {
    let mut local = tokio_postgres::Config::new();
    local
        .host("127.0.0.1")
        .port(5432)
        .connect_timeout(Duration::from_secs(3));
    let mut users = vec!["postgres".to_owned()];
    if let Ok(user) = std::env::var("USER")
        && user != "postgres"
    {
        users.push(user);
    }
    let mut local_error = None;
    for user in &users {
        let mut config = local.clone();
        config.user(user);
        match ensure_database(&config).await {
            Ok(()) => {
                config.dbname(DATABASE);
                return Ok(Resolved {
                    config,
                    cluster: None,
                    description: format!(
                        "local PostgreSQL at 127.0.0.1:5432, database {DATABASE}, user {user}"
                    ),
                });
            }
            Err(e) => local_error = Some(e),
        }
    }
    let local_error = local_error.map(|e| e.to_string()).unwrap_or_default();
    let cluster = PrivateCluster::start(pg_dir).map_err(|e| NoDatabase {
        detail: format!(" ({local_error}), and no private cluster could be started: {e}"),
    })?;
    let mut config = cluster.config();
    ensure_database(&config).await.map_err(|e| NoDatabase {
        detail: format!(" ({local_error}); the private cluster started but refused: {e}"),
    })?;
    config.dbname(DATABASE);
    let description = format!(
        "private PostgreSQL cluster in {}",
        cluster.data_dir.display()
    );
    Ok(Resolved {
        config,
        cluster: Some(cluster),
        description,
    })
}

/// Creates the `firstkey` database through the server's maintenance database if it is missing.
async fn ensure_database(server: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let mut maintenance = server.clone();
    maintenance.dbname("postgres");
    let (client, connection) = maintenance.connect(NoTls).await?;
    let task = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
        .await?
        .is_some();
    if !exists {
        // CREATE DATABASE takes no parameters; the name is a constant.
        match client
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
        {
            Ok(()) => {}
            // Another replica created it between our check and our create.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e),
        }
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// A PostgreSQL cluster this process started; stopped (fast shutdown) on drop.
pub struct PrivateCluster {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
}

impl PrivateCluster {
    /// Initialises (if needed) and starts a cluster in `data_dir`, listening on a Unix socket there.
    pub fn start(data_dir: &Path) -> Result<Self, String> {
        let bin_dir = find_server_binaries().ok_or_else(|| {
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed".to_owned()
        })?;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", data_dir.display()))?;
        // PostgreSQL refuses to run as root; run it as the `postgres` system user then.
        let run_as = if is_root() {
            let owner = "postgres";
            let status = Command::new("chown")
                .args(["-R", owner])
                .arg(&data_dir)
                .status()
                .map_err(|e| format!("running as root and cannot chown the data directory: {e}"))?;
            if !status.success() {
                return Err(
                    "running as root, and there is no `postgres` user to run the cluster"
                        .to_owned(),
                );
            }
            Some(owner.to_owned())
        } else {
            None
        };
        let cluster = Self {
            data_dir,
            bin_dir,
            run_as,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.run(
                "initdb",
                &[
                    "-D",
                    &cluster.data_dir.to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
            )?;
        }
        if cluster
            .run(
                "pg_ctl",
                &["-D", &cluster.data_dir.to_string_lossy(), "status"],
            )
            .is_err()
        {
            let options = format!(
                "-c listen_addresses='' -c unix_socket_directories='{}'",
                cluster.data_dir.display()
            );
            let log = cluster.data_dir.join("server.log");
            cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    &cluster.data_dir.to_string_lossy(),
                    "-o",
                    &options,
                    "-l",
                    &log.to_string_lossy(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )?;
        }
        Ok(cluster)
    }

    /// Connection settings for the cluster's socket, user `postgres`.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.data_dir)
            .user("postgres")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let binary = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let dir = self.data_dir.to_string_lossy().into_owned();
        if let Err(e) = self.run("pg_ctl", &["-D", &dir, "-m", "fast", "-w", "stop"]) {
            tracing::warn!(error = %e, "stopping the private PostgreSQL cluster failed");
        }
    }
}

impl std::fmt::Debug for PrivateCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateCluster")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Hosts a config points at, for messages.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "database {} on {}",
        config.get_dbname().unwrap_or("(default)"),
        hosts.join(",")
    )
}

/// Where a config points, for error messages: `PostgreSQL at host:port, database D, role R` (never
/// the password).
pub fn target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{} (socket, port {port})", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        // libpq's default.
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let user = config
        .get_user()
        .map(str::to_owned)
        .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "(default)".to_owned()));
    format!(
        "PostgreSQL at {hosts}, database {}, role {user}",
        config.get_dbname().unwrap_or(user.as_str())
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Finds a directory holding both `initdb` and `pg_ctl`: `PATH` first, then Debian's layout (newest
/// version first).
fn find_server_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

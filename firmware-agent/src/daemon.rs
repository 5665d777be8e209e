//! `firstkey-agent run`: open the state directory, serve taps, keep the channel, housekeeping.
//!
//! Taps are served whether or not the server is reachable; the channel runs beside them and only
//! shares the door's mutex for short, durable updates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::actuator::{Actuator, SimulatedActuator};
use crate::client::{self, ChannelSettings};
use crate::clock::Clock;
use crate::door::Door;
use crate::state::{StateDir, Store};

/// How `run` is set up.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The state directory.
    pub state_dir: StateDir,
    /// The tap socket path (default: `tap.sock` in the state directory).
    pub tap_socket: Option<PathBuf>,
    /// Override channel timings (tests); `None` for production timings.
    pub channel_timing: Option<(Duration, Duration, Duration)>,
    /// Serve the door panel (the browser's stand-in for NFC/BLE) on this address; off if `None`.
    pub door_panel: Option<SocketAddr>,
}

/// A running agent's handles (for in-process tests).
#[derive(Debug)]
pub struct Running {
    /// The door, shared with the tap server and the channel.
    pub door: Arc<Mutex<Door>>,
    /// The socket taps arrive on.
    pub tap_socket: PathBuf,
    /// The address the door panel listens on, if it is served.
    pub door_panel: Option<SocketAddr>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Running {
    /// Stop serving: abort the tap server, the channel and the housekeeping, wait until nothing else
    /// holds the door, and release the state directory.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for _ in 0..500 {
            if Arc::strong_count(&self.door) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Ok(mut d) = self.door.lock()
            && let Err(e) = d.tick()
        {
            tracing::warn!(error = %e, "could not write the malformed-frame tally at shutdown");
        }
        let _ = std::fs::remove_file(&self.tap_socket);
    }
}

/// Open the store and start serving taps and the channel on the current tokio runtime.
/// Returns once the tap socket is listening.
pub fn start(
    opts: &RunOptions,
    clock: Arc<dyn Clock>,
    actuator: Option<Box<dyn Actuator>>,
) -> anyhow::Result<Running> {
    let store = Store::open(&opts.state_dir)?;
    let config = store.config().clone();
    let actuator =
        actuator.unwrap_or_else(|| Box::new(SimulatedActuator::new(opts.state_dir.root())));
    let door = Door::new(store, actuator, clock);
    let door = Arc::new(Mutex::new(door));

    let socket = opts
        .tap_socket
        .clone()
        .unwrap_or_else(|| opts.state_dir.tap_socket());
    // A socket file left by a killed agent would make bind fail; we hold the state lock, so no
    // other agent is using it.
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(&socket)?;
    let decided = Arc::new(Notify::new());
    let decided_for_events = decided.clone();
    let mut tasks = vec![
        tokio::spawn(crate::tap_server::serve(
            listener,
            door.clone(),
            decided.clone(),
        ))
        .abort_handle(),
    ];

    let door_panel = match opts.door_panel {
        Some(addr) => {
            let std_listener = std::net::TcpListener::bind(addr)?;
            std_listener.set_nonblocking(true)?;
            let local = std_listener.local_addr()?;
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            tasks.push(
                tokio::spawn(crate::door_panel::serve(
                    listener,
                    door.clone(),
                    decided.clone(),
                ))
                .abort_handle(),
            );
            tracing::info!(address = %local, "door panel listening");
            Some(local)
        }
        None => None,
    };

    match &config.server {
        Some(server) => {
            let ca_path = opts.state_dir.file("server-ca.pem");
            let ca_pem = std::fs::read(&ca_path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?;
            let mut settings =
                ChannelSettings::new(server.address.clone(), server.server_name.clone(), ca_pem);
            if let Some((base, max, ping)) = opts.channel_timing {
                settings.backoff_base = base;
                settings.backoff_max = max;
                settings.ping_interval = ping;
            }
            tasks.push(tokio::spawn(client::run(door.clone(), settings, decided)).abort_handle());
        }
        None => tracing::info!("no server configured; working offline"),
    }

    // The simulated hardware line: door events become receipts, alarms go to the channel.
    tasks.push(
        tokio::spawn(crate::events::watch(
            door.clone(),
            opts.state_dir.clone(),
            decided_for_events,
            Duration::from_millis(200),
        ))
        .abort_handle(),
    );

    // Housekeeping once a minute: the malformed-frame tally is written here when taps did not.
    let ticker = door.clone();
    let ticker_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let d = ticker.clone();
            let r = tokio::task::spawn_blocking(move || match d.lock() {
                Ok(mut d) => d.tick().map_err(|e| e.to_string()),
                Err(_) => Err("door state poisoned".to_string()),
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "housekeeping failed");
            }
        }
    });
    tasks.push(ticker_task.abort_handle());
    tracing::info!(socket = %socket.display(), "agent running");
    Ok(Running {
        door,
        tap_socket: socket,
        door_panel,
        tasks,
    })
}

/// Run until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let running = start(&opts, clock, None)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

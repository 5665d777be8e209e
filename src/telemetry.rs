//! Logging and tracing set-up. Spans carry request ids; nothing here ever records a token, key,
//! pairing code or responder note (those types do not implement `Debug` with their contents).
//!
//! Some libraries log the data passing through them at their debug and trace levels: tokio-postgres
//! the parameters of every statement (link-secret hashes, mail bodies with link secrets, override
//! tokens on their way to a lock), lettre every SMTP line including the message body, webauthn-rs its
//! ceremony state, reqwest raw connection bytes. [`SECRET_BEARING`] caps those targets below the
//! levels where they do that. The cap is a filter of its own, applied beside the operator's
//! `RUST_LOG` filter: an event is written only when both allow it, so no `RUST_LOG` can lift it.
//!
//! Logs go to standard error (standard output is the commands' own output); colour only when
//! standard error is a terminal and `NO_COLOR` is not set.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::LogFormat;

/// Targets that log parameters, message bodies or raw bytes below some level, and the most verbose
/// level each may log at whatever `RUST_LOG` says.
pub const SECRET_BEARING: [(&str, LevelFilter); 6] = [
    // `debug!("executing statement … with parameters: …")`
    ("tokio_postgres", LevelFilter::INFO),
    // `debug!("Wrote: …")` / `debug!("<< …")`: every SMTP line, the DATA (mail body) included.
    ("lettre", LevelFilter::INFO),
    // Ceremony state and client data at debug and trace.
    ("webauthn_rs_core", LevelFilter::INFO),
    ("webauthn_rs", LevelFilter::INFO),
    // Raw bytes of verbose connections at trace.
    ("reqwest", LevelFilter::DEBUG),
    // Frames (headers with cookies) at trace.
    ("h2", LevelFilter::DEBUG),
];

/// The cap of [`SECRET_BEARING`], as a filter that lets everything else through.
pub fn secret_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(SECRET_BEARING)
}

/// The operator's filter: `RUST_LOG`, else `info` (migrations' chatter at warn).
fn operator_filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,refinery_core=warn,tokio_postgres=error"))
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and not under `NO_COLOR`.
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat) {
    let registry = tracing_subscriber::registry()
        .with(operator_filter())
        .with(secret_cap());
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(colour())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_cap_keeps_secret_bearing_targets_quiet_and_lets_others_through() {
        let cap = secret_cap();
        let allows = |target: &str, level: Level| cap.would_enable(target, &level);
        assert!(!allows("tokio_postgres::query", Level::DEBUG));
        assert!(!allows(
            "lettre::transport::smtp::client::async_connection",
            Level::DEBUG
        ));
        assert!(!allows("webauthn_rs_core::core", Level::TRACE));
        assert!(allows("tokio_postgres::connection", Level::INFO));
        assert!(allows("lettre", Level::WARN));
        assert!(allows("firstkey::http", Level::TRACE));
    }
}

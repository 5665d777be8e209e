//! The server's side of the agent channel (`firmware-agent/PROTOCOL.md`): the durable, ordered
//! per-lock inbox, and the TLS listener that streams it to agents and takes their receipts.
//!
//! - [`inbox`]: pushing entries (inside the caller's transaction, with `NOTIFY`) and reading them.
//! - [`server`]: the TLS listener and one session per connected agent.
//! - [`wake`]: which sessions run on this replica, and the `LISTEN` connection that wakes them.
//! - [`receipts`]: verifying, storing, auditing and mailing about uploaded receipts.
//! - [`tls`]: the listener's certificate (configured, or a dev CA in the key directory).
//! - [`sim`]: simulated agents for tests and `firstkey bench`; [`bench`]: the figures it prints.

pub mod bench;
pub mod inbox;
pub mod receipts;
pub mod server;
pub mod sim;
pub mod tls;
pub mod wake;

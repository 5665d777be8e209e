//! The server's side of the agent channel (`firmware-agent/PROTOCOL.md`): the durable, ordered
//! per-lock inbox, and the TLS listener that streams it to agents and takes their receipts.

pub mod inbox;

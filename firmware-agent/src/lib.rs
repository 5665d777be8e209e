//! `firstkey-agent`: the lock-side daemon around the `firstkey-token` verifier.
//!
//! It decides taps offline, drives the door, writes a signed hash-chained receipt for every
//! decision, and keeps a TLS channel to the server for tokens, revocations, trust-bundle updates
//! and receipt uploads. Layout, top-down:
//!
//! - [`daemon`]: `run` — wires the store, the door, the tap socket and the channel together.
//! - [`door`]: the tap decision (floor → verify → receipt → actuate → answer).
//! - [`keypad`]: offline keypad codes (derivation, the lock's decision, the lockout).
//! - [`tap_server`]: the tap interface on a Unix socket, and the presenter's client side.
//! - [`door_panel`]: the opt-in local HTTP page that carries the same tap exchange for a browser.
//! - [`client`]: the channel client (TLS, handshake, inbox, acks, uploads, backoff).
//! - [`protocol`]: wire types of the tap exchange and the channel, shared with the server.
//! - [`receipt`]: signing and verifying receipts and whole chains.
//! - [`state`]: the state directory: config, keys, floor, channel state, replay records.
//! - [`durable`]: atomic file replacement and the crash-safe append-only log.
//! - [`events`]: door events (receipts) and detector alarms from the lock's own hardware.
//! - [`actuator`], [`clock`], [`pairing`], [`demo`]: the door trait, the time source, pairing
//!   codes, and issuer-side helpers for demos and tests.

pub mod actuator;
pub mod client;
pub mod clock;
pub mod daemon;
pub mod demo;
pub mod door;
pub mod door_panel;
pub mod durable;
pub mod events;
pub mod keypad;
pub mod pairing;
pub mod protocol;
pub mod receipt;
pub mod state;
pub mod tap_server;

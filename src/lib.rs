//! firstkey: the municipal server that gets first responders through smart-locked doors in an
//! emergency, and proves afterwards that nobody else got in.
//!
//! Layout (top-down):
//! - [`cli`]: the `firstkey` command line (serve, migrate, demo, openapi).
//! - [`settings`]: the one typed configuration, defaults → `firstkey.toml` → `FIRSTKEY_*`.
//! - [`server`]: opening the database (configured or embedded default), migrating, serving.
//! - [`http`]: actix-web application, middleware, problem-details errors, OpenAPI.
//! - [`web`]: the HTML pages beside it (askama templates, vendored assets, WebAuthn script).
//! - [`store`]: PostgreSQL pool, migrations (`sql/`), tenant-scoped repositories.
//! - [`domain`]: typed values parsed at the boundary.
//! - [`demo`]: the seeded demo municipality.
//! - [`policy`]: Cedar policy engine: typed authorization requests, decisions with the set's hash.
//! - [`auth`]: sessions, WebAuthn, accounts; [`audit`]: the hash-chained audit log;
//!   [`notify`]: the mail outbox.
//! - [`emergency`]: incidents, grants, override tokens, issuer keys and the CAD integration.
//! - [`municipal`]: municipal administration (agencies, units, staff, invitations, CAD credentials).
//! - [`metrics`]: domain metrics (agents, tokens, receipts, mail, audit sealing, policy).
//! - [`codes`]: offline keypad codes (code secrets, incident codes, the receipt join).
//! - [`clock`], [`telemetry`]: time source and logging.

pub mod access;
pub mod alarms;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod bench_burst;
pub mod bench_console;
pub mod bench_remote;
pub mod bench_sql;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod codes;
pub mod crypto;
pub mod demo;
pub mod domain;
pub mod emergency;
pub mod error;
pub mod health;
pub mod http;
pub mod metrics;
pub mod municipal;
pub mod notify;
pub mod pairing;
pub mod plans;
pub mod policy;
pub mod probe;
pub mod server;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod trusted;
pub mod web;

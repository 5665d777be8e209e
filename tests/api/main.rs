//! The server's black-box test binary: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
// The server under test runs on the system clock, so the tests read it too.
#![allow(clippy::disallowed_methods)]

mod access;
mod admin;
mod alarms;
mod audit_log;
mod auth;
mod auth_helpers;
mod browser;
mod channel;
mod cli;
mod consent;
mod console;
mod deploy;
mod emergency;
mod harness;
mod health;
mod helpers;
mod mail;
mod middleware;
mod migrations;
mod oneround;
mod openapi;
mod otlp;
mod privacy;
mod registrations;
mod restore;
mod schemathesis;
mod standing_codes;
mod startup;
mod story;
mod tenancy;
mod trusted;
mod trusted_pages;

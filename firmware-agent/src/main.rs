//! `firstkey-agent` (placeholder; built out by the lock-side issue).
fn main() {}

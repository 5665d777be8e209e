//! Token benchmark (filled in later).
fn main() {}

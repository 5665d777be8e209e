//! Rebuild when a migration changes: `refinery::embed_migrations!` reads `sql/` at compile time but
//! does not tell cargo, so without this a new migration would not reach the binary.

fn main() {
    println!("cargo:rerun-if-changed=sql");
}

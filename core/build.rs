// Re-embed migrations when a file is added to `migrations/` (sqlx::migrate! reads the folder at build time).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=web");
}

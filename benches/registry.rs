//! Registry benchmark (placeholder; filled in below).
fn main() {}

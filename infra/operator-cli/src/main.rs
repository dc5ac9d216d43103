//! `mailbridge`: the operator CLI.
fn main() {}

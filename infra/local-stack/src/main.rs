//! `local-stack`: start the local stack, or run the demo on it.
fn main() {}

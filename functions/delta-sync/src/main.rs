//! The scheduled delta Lambda: wiring only, once per cold start.

mod handler;

fn main() {}

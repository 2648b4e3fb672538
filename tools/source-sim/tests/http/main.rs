//! HTTP tests of the simulator: every request goes over TCP to a real server.

mod admin;
mod common;
mod corrupt;
mod determinism;
mod faults;
mod filters;
mod misbehave;
mod ordering;
mod paging;
mod scale;
mod shapes;
mod webhooks;

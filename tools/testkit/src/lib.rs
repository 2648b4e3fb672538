//! Test scaffolding in one place, for every crate that tests against the simulator or wraps a
//! store: the `it` binary (`tests/`), the unit tests of `tools/syncctl` and of the functions.
//!
//! - [`sim`]: the simulator started in-process ([`sim::start`], [`sim::people`]);
//! - [`config`]: the embedded configuration pointed at it ([`config::at`], [`config::quick`]),
//!   and the basic-auth credentials the demo's simulator expects ([`config::basic`]);
//! - [`TempDir`]: a uniquely named folder, removed on drop;
//! - [`forward`]: a store or source that forwards every call to an inner one, where a test
//!   states only the calls it changes (fault injection, observation, naive rules);
//! - [`converge`]: the seeded convergence harness (issue 13), run by `tests/it/converge` and
//!   by `bench converge` (the one normal dependent: a benchmark, never a function).
//!
//! Why a crate of its own: `tests/it/harness` is a module of the `it` binary and no other
//! crate can reach it, while `syncctl`'s and the functions' unit tests (`#[cfg(test)]`
//! modules inside their crates) need the same helpers; `source-sim` is the simulator, and a
//! config of `shared` or a store wrapper does not belong there. It is a dev-dependency only,
//! never a normal dependency of `functions/*` or `shared`, so nothing here ships in a Lambda.
//! The emulator plumbing (moto, DynamoDB Local) stays in `tests/it/harness.rs`: only the `it`
//! binary talks to the emulators.

pub mod config;
pub mod converge;
pub mod forward;
pub mod sim;

mod temp;

pub use temp::TempDir;

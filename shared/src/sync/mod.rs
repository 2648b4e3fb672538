//! The strategies, written against the ports only: delta sync, the worker (webhook and targeted
//! messages) and reconciliation's steps. Each run's summary says how it is logged and which
//! metrics it has; the functions' handlers publish them.

pub mod delta;
pub mod operator;
pub mod reconcile;
pub mod rejected;
pub mod resync;
pub mod worker;

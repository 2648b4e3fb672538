//! The strategies, written against the ports only: delta sync (later: webhook worker,
//! reconciliation steps).

pub mod delta;
pub mod reconcile;
pub mod worker;

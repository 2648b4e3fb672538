//! The simulator (`source-sim`), started in-process on a free port for one test.

pub use source_sim::{SimConfig, SimHandle};

/// Start the simulator with `cfg`; panics when it cannot listen.
pub async fn start(cfg: SimConfig) -> SimHandle {
    source_sim::start(cfg).await.expect("simulator starts")
}

/// A simulator configuration of `people` people and no donations.
pub fn people_only(people: usize) -> SimConfig {
    SimConfig {
        people,
        donations: 0,
        ..SimConfig::default()
    }
}

/// The simulator with `people` people and no donations.
pub async fn people(people: usize) -> SimHandle {
    start(people_only(people)).await
}

//! The simulator (`source-sim`), started in-process on a free port for one test.

pub use source_sim::{Corruption, Entity, Misbehave, SimConfig, SimHandle};

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

/// The simulator started with `cfg` and the misbehaviour flags `m` switched on.
pub async fn misbehaving(cfg: SimConfig, m: Misbehave) -> SimHandle {
    let sim = start(cfg).await;
    sim.set_misbehave(m);
    sim
}

/// The flags with only the one called `name` on (see [`Misbehave::NAMES`]); panics on an
/// unknown name.
pub fn only(name: &str) -> Misbehave {
    let mut m = Misbehave::default();
    *m.flag_mut(name)
        .unwrap_or_else(|| panic!("unknown misbehaviour {name:?}")) = true;
    m
}

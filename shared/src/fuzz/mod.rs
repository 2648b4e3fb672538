//! Property tests of every parser of untrusted input, one target each: the same bodies run in
//! `cargo test` (a short budget, a fixed seed) and in `bench fuzz --cases N` (any budget, any
//! seed), so that the long run exercises exactly what CI does.
//!
//! Each target is a proptest strategy (inputs, nasty by construction) and a `check_*` function
//! that says what must hold of one input, `Err` naming the violation. A failure is shrunk by
//! proptest to a minimal input, printed with the seed that replays it.
//!
//! Targets: `webhook_verify`, `webhook_extract`, `config`, `json_scan`, `run_reader`,
//! `envelope`, `step_input`.

use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config as RunnerConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use std::fmt::Debug;

pub mod config;
pub mod envelope;
pub mod json;
pub mod runs;
pub mod steps;
pub mod webhook;

#[cfg(test)]
mod tests;

/// How much to run: cases per target, and the seed of the generator (the same seed and case
/// count replay the same inputs).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub cases: u32,
    pub seed: u64,
}

/// What one target's run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: &'static str,
    pub cases: u32,
    /// The first property violated, with its shrunk (minimal) input; `None`: all held.
    pub failure: Option<String>,
}

/// One fuzz target: its name, and its run under a budget.
pub struct Target {
    pub name: &'static str,
    pub run: fn(Budget) -> Outcome,
}

/// Every target, in the order `bench fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "webhook_verify",
        run: webhook::run_verify,
    },
    Target {
        name: "webhook_extract",
        run: webhook::run_extract,
    },
    Target {
        name: "config",
        run: config::run,
    },
    Target {
        name: "json_scan",
        run: json::run,
    },
    Target {
        name: "run_reader",
        run: runs::run,
    },
    Target {
        name: "envelope",
        run: envelope::run,
    },
    Target {
        name: "step_input",
        run: steps::run,
    },
];

/// Run `check` on `budget.cases` inputs drawn from `strategy`; on a failure, proptest shrinks
/// the input and the outcome shows the minimal one (panics are caught and count as failures).
pub fn drive<S>(
    target: &'static str,
    budget: Budget,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), String>,
) -> Outcome
where
    S: Strategy,
    S::Value: Debug,
{
    let config = RunnerConfig {
        cases: budget.cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..RunnerConfig::default()
    };
    // One stream per target and seed, so that targets do not share inputs.
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&budget.seed.to_le_bytes());
    let name = xxhash_rust::xxh3::xxh3_64(target.as_bytes());
    seed[8..16].copy_from_slice(&name.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&strategy, |input| check(input).map_err(TestCaseError::fail));
    let failure = match result {
        Ok(()) => None,
        Err(TestError::Fail(why, input)) => Some(format!(
            "{target} (seed {}): {why}; minimal input: {input:?}",
            budget.seed
        )),
        Err(TestError::Abort(why)) => Some(format!("{target}: aborted: {why}")),
    };
    Outcome {
        target,
        cases: budget.cases,
        failure,
    }
}

/// A current-thread runtime for the targets whose code under test is async.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// A string strategy from a regular expression, parsed once (a `&str` strategy parses its
/// regex again for every value).
pub(crate) fn re(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(pattern).expect("a valid generator regex")
}

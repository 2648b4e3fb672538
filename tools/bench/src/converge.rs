//! `bench converge --seeds N`: N seeded convergence scenarios (`testkit::converge`) on the
//! embedded store against the in-process simulator. Prints each failing seed's violations and
//! schedule to stderr (and a progress line every 100 scenarios), and as its last line one JSON object:
//! `{"seeds":..,"scenarios":..,"operations":..,"violations":{"I1":0,...,"I6":0},...}`, with
//! `exercised`: late changes, records re-created, delta runs held mid-page, regressions written.
//! Exits 1 when any violation was found.

use std::collections::BTreeMap;
use std::time::Instant;
use testkit::converge::{INVARIANTS, Scenario, Settings, run};

/// Run seeds `first..first + seeds` and print the summary line.
pub fn main(seeds: u64, first: u64) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let t0 = Instant::now();
    let settings = Settings::default();
    let mut violations: BTreeMap<&str, u64> = INVARIANTS.iter().map(|i| (*i, 0)).collect();
    let (mut scenarios, mut operations, mut failing) = (0u64, 0u64, Vec::new());
    // What the scenarios exercised (`Outcome::exercised`).
    let mut exercised: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in first..first + seeds {
        let s = Scenario::generate(seed);
        let o = rt.block_on(run(&s, &settings));
        scenarios += 1;
        operations += o.operations as u64;
        for (k, v) in &o.exercised {
            *exercised.entry(k).or_default() += v;
        }
        for (k, v) in o.counts() {
            *violations.entry(k).or_default() += v;
        }
        if !o.violations.is_empty() {
            eprint!("{}", o.explain(&s));
            failing.push(seed);
        }
        if scenarios % 100 == 0 {
            eprintln!(
                "progress: {scenarios} scenarios, {operations} operations, {} failing, {:.0} s",
                failing.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let line = serde_json::json!({
        "seeds": seeds,
        "first_seed": first,
        "scenarios": scenarios,
        "operations": operations,
        "violations": violations,
        "failing_seeds": failing,
        "exercised": exercised,
        "seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{line}");
    std::process::exit(i32::from(!failing.is_empty()))
}

//! Step Functions step inputs from arbitrary JSON: `sync::reconcile::dispatch`, the one entry of
//! the reconcile Lambda, over in-memory stores, an empty source and a spill folder. Inputs are
//! arbitrary JSON values, and step-shaped objects (a known step name, the run reference a real
//! Plan step just answered, holding its lease, with fields replaced by arbitrary values, extra
//! fields). It must answer a step's output or a
//! typed `StepError` (a bad input being `StepError::BadInput`), never panic.

use super::{Budget, Outcome, drive, re, runtime};
use crate::adapters::local::LocalSpill;
use crate::config::{Config, EMBEDDED};
use crate::error::StoreError;
use crate::memory::{MemoryControl, MemoryRecords, ScriptedSource};
use crate::ports::{Queue, ReceivedMessage};
use crate::sync::reconcile::{ReconcileDeps, ReconcileOptions, StepError, StepOutput, dispatch};
use async_trait::async_trait;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::path::Path;

const STEPS: &[&str] = &[
    "plan",
    "source",
    "destination",
    "diff",
    "guard",
    "request_approval",
    "apply",
    "finish",
    "continue",
    "explode",
    "",
];

const FIELDS: &[&str] = &[
    "run",
    "shard",
    "progress",
    "diff",
    "guard",
    "approved",
    "entity",
    "report_only",
    "source",
    "apply",
    "error",
    "approval",
    "state_machine",
    "token",
    "v",
    "run_id",
    "started_us",
    "shards",
];

/// An arbitrary JSON value, with the edges a step input could carry.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(&[0i64, 1, -1, 65_535, 65_536, u32::MAX as i64][..])
            .prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        prop::sample::select(
            &[
                "people",
                "donations",
                "nope",
                "",
                "../..",
                "a/b",
                "1",
                "people\u{0}"
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS).prop_map(str::to_owned),
                        re("[a-z_]{0,8}")
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
pub enum Case {
    /// Any JSON value as the whole input.
    Any(Value),
    /// `{"step": ..., "run": <a valid run, some fields replaced>, <extra fields>}`.
    Shaped {
        step: &'static str,
        run_edits: Vec<(&'static str, Value)>,
        extra: Vec<(&'static str, Value)>,
    },
}

pub fn cases() -> impl Strategy<Value = Case> {
    let field = || (prop::sample::select(FIELDS), json_value());
    prop_oneof![
        1 => json_value().prop_map(Case::Any),
        3 => (
            prop::sample::select(STEPS),
            prop::collection::vec(field(), 0..3),
            prop::collection::vec(field(), 0..4),
        )
            .prop_map(|(step, run_edits, extra)| Case::Shaped {
                step,
                run_edits,
                extra,
            }),
    ]
}

/// The input of a case; `run`: a run reference that holds its lease (from a Plan step).
pub(crate) fn input_of(case: &Case, run: Value) -> Value {
    let (step, run_edits, extra) = match case {
        Case::Any(v) => return v.clone(),
        Case::Shaped {
            step,
            run_edits,
            extra,
        } => (step, run_edits, extra),
    };
    let mut run = run;
    for (k, v) in run_edits {
        run[*k] = v.clone();
    }
    let mut input = Map::new();
    input.insert("step".into(), Value::from(*step));
    input.insert("run".into(), run);
    for (k, v) in extra {
        input.insert((*k).into(), v.clone());
    }
    Value::Object(input)
}

/// A queue that takes every message and has none to give.
pub(crate) struct Sink;

#[async_trait]
impl Queue for Sink {
    async fn send_batch(&self, _bodies: &[String]) -> Result<Vec<usize>, StoreError> {
        Ok(Vec::new())
    }
    async fn receive(
        &self,
        _max: usize,
        _wait_ms: u64,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The property of one input.
pub fn check(
    case: Case,
    rt: &tokio::runtime::Runtime,
    config: &Config,
    spill: &LocalSpill,
) -> Result<(), String> {
    let (source, records, control) = (
        ScriptedSource::default(),
        MemoryRecords::default(),
        MemoryControl::default(),
    );
    let deps = ReconcileDeps {
        config,
        source: &source,
        records: &records,
        control: &control,
        spill,
        queue: &Sink,
    };
    let opts = ReconcileOptions::default();
    // A real run first, so that the step under test holds the lease and gets past it.
    let plan = json!({"step": "plan", "entity": "people", "report_only": true});
    let run = match rt.block_on(dispatch(&deps, plan, &opts)) {
        Ok(StepOutput::Plan(p)) if p.runs.len() == 1 => {
            serde_json::to_value(&p.runs[0]).map_err(|e| e.to_string())?
        }
        other => return Err(format!("the plan step before the case: {other:?}")),
    };
    let input = input_of(&case, run);
    match rt.block_on(dispatch(&deps, input, &opts)) {
        Ok(out) => serde_json::to_value(&out)
            .map(|_| ())
            .map_err(|e| format!("the output does not serialise: {e}")),
        Err(StepError::BadInput(m)) if m.is_empty() => Err("BadInput says nothing".into()),
        Err(_) => Ok(()),
    }
}

pub fn run(budget: Budget) -> Outcome {
    let rt = runtime();
    let config = Config::from_toml_str(EMBEDDED, Path::new("endpoints.toml")).expect("embedded");
    let dir = std::env::temp_dir().join(format!("sync-fuzz-steps-{}", uuid::Uuid::new_v4()));
    let spill = LocalSpill::new(&dir).expect("a spill folder");
    let out = drive("step_input", budget, cases(), |c| {
        check(c, &rt, &config, &spill)
    });
    let _ = std::fs::remove_dir_all(&dir);
    out
}

//! The real reconciliation state machine (`infra/reconcile.asl.json`) executed by moto's Step
//! Functions interpreter, its Lambda Task states answered through the test proxy (`sfn_proxy`)
//! by `shared::sync::reconcile::dispatch`, in process: the code the reconcile Lambda runs, on
//! the simulator, DynamoDB Local, S3 and SQS on moto, and Step Functions on moto for the
//! `continue` step (`dispatch_with` with `shared::adapters::sfn::StepFunctions`, as the Lambda's
//! handler). The function's errors reach the state machine as Lambda's do (`errorType` =
//! `StepError::error_type()`), so Retry and Catch are the definition's own.
//!
//! What each test checks, from both sides (the execution's history and output, the proxy's
//! records of every step invocation) and in the stores:
//! - a full run: deletions confirmed and soft-deleted, missed and stale records queued, the
//!   listing over at least three Source invocations, a transient error retried, every Task on
//!   the path entered, the lease released and the spill objects removed;
//! - over the threshold: WaitForApproval, then SendTaskSuccess (`shared::adapters::sfn`) →
//!   Apply deletes;
//! - an approval that expires, and one that is rejected: nothing deleted, the run recorded;
//! - a step failing for good: the failure path records the run as failed and releases the
//!   lease (a second execution takes it), and the execution fails;
//! - a listing longer than the loop limit: the run continues in a new execution of the state
//!   machine (the function's `continue` step starts it on moto), and then another, under the
//!   same run ID and lease; the last one finishes the run as the full run does, and every
//!   execution succeeds.

use crate::harness;
use crate::sfn_proxy::{self, ExecutionResult, HandlerResult, SfnProxy, handler};
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use serde_json::{Value, json};
use shared::adapters::s3::S3Spill;
use shared::adapters::sfn::{self, StepFunctions};
use shared::adapters::sqs::SqsQueue;
use shared::config::Config;
use shared::ports::{ControlStore, JobKind, Queue, RecordStore, RunRecord, SpillStore};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, run_delta};
use shared::sync::reconcile::{ReconcileDeps, ReconcileOptions, dispatch_with};
use shared::wire::{MessageKind, QueueEnvelope};
use source_sim::{Entity, SimHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFINITION: &str = include_str!("../../infra/reconcile.asl.json");
const START_ONE_ENTITY: &str = include_str!("../../events/reconcile/start-one-entity.json");
const START_ALL_ENTITIES: &str = include_str!("../../events/reconcile/start-all-entities.json");
const E: &str = "people";
const FUNCTION: &str = "reconcile";
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(180);
/// The errors every Task retries (the transient ones).
const RETRIED: [&str; 5] = [
    "Reconcile.Retryable",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
];
/// The Task that hands a run over to a new execution (the function's `continue` step).
const CONTINUE: &str = "ContinueInNewExecution";

/// A step made to fail: the next `times` invocations of `step` answer `error_type`.
struct Fault {
    step: &'static str,
    error_type: &'static str,
    times: usize,
}

/// The reconcile function, in process: what the Lambda's handler does (`dispatch_with` the
/// state machine's executions on moto, errors as `errorType`), with a deadline a millisecond
/// after each invocation starts (so that every Source invocation reads one page) and injectable
/// faults.
struct Function {
    config: Config,
    source: SourceClient,
    records: Arc<dyn RecordStore>,
    control: Arc<dyn ControlStore>,
    spill: S3Spill,
    queue: SqsQueue,
    /// Step Functions on moto (`AWS_ENDPOINT_URL_SFN`): the `continue` step starts the next
    /// execution there.
    executions: StepFunctions,
    options: ReconcileOptions,
    faults: Mutex<Vec<Fault>>,
}

impl Function {
    async fn call(&self, input: Value) -> HandlerResult {
        let step = input["step"].as_str().unwrap_or_default().to_owned();
        {
            let mut faults = self.faults.lock().unwrap();
            if let Some(f) = faults.iter_mut().find(|f| f.step == step && f.times > 0) {
                f.times -= 1;
                return Err((
                    f.error_type.to_owned(),
                    format!("injected: {step} fails with {}", f.error_type),
                ));
            }
        }
        let mut opts = self.options.clone();
        opts.stop_at = Some(Instant::now() + Duration::from_millis(1));
        let deps = ReconcileDeps {
            config: &self.config,
            source: &self.source,
            records: self.records.as_ref(),
            control: self.control.as_ref(),
            spill: &self.spill,
            queue: &self.queue,
        };
        dispatch_with(&deps, Some(&self.executions), input, &opts)
            .await
            .map(|out| serde_json::to_value(&out).expect("a step's output serialises"))
            .map_err(|e| (e.error_type().to_owned(), e.to_string()))
    }
}

type Reply = tokio::sync::oneshot::Sender<HandlerResult>;

/// Serve the function's invocations from a thread of its own, each step a local task there
/// (steps run concurrently, as Lambda's invocations do). A step's future holds references
/// across awaits in ways the compiler cannot prove `Send` for (higher-ranked lifetimes in
/// stream combinators), and the proxy's handlers must be `Send`; the channel is. The thread
/// ends when the proxy drops the handler (the last sender).
fn serve(function: Arc<Function>) -> tokio::sync::mpsc::UnboundedSender<(Value, Reply)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Value, Reply)>();
    std::thread::Builder::new()
        .name("reconcile-fn".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the function");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                while let Some((input, reply)) = rx.recv().await {
                    let f = function.clone();
                    tokio::task::spawn_local(async move {
                        let _ = reply.send(f.call(input).await);
                    });
                }
            });
        })
        .expect("the function's thread starts");
    tx
}

struct Env {
    sim: SimHandle,
    function: Arc<Function>,
    sfn: aws_sdk_sfn::Client,
    steps: StepFunctions,
    proxy: SfnProxy,
    machine: String,
    bucket: String,
    s3: aws_sdk_s3::Client,
}

struct Setup {
    people: usize,
    options: ReconcileOptions,
    approval_timeout_seconds: u32,
    max_source_invocations: u32,
    /// The state machine's definition: the real one, or a negative control's edit of it.
    definition: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            definition: DEFINITION.to_owned(),
            people: 60,
            // Several sorted runs and list objects per run.
            options: ReconcileOptions {
                run_size: 64,
                chunk_size: 2,
                ..Default::default()
            },
            approval_timeout_seconds: 300,
            max_source_invocations: 50,
        }
    }
}

/// The simulator backfilled into fresh DynamoDB Local tables, a bucket and a queue on moto, the
/// function registered with the proxy, the real definition created on moto.
async fn env(setup: Setup) -> Env {
    let sim = testkit::sim::people(setup.people).await;
    let config = testkit::config::quick(&sim.base_url(), |c| {
        c.source.max_attempts = 1;
        c.entities.truncate(1);
    });
    let source = SourceClient::new(&config, None).unwrap();
    let (records, control) = crate::conformance_dynamodb::dynamodb_stores().await;
    run_delta(
        &source,
        records.as_ref(),
        control.as_ref(),
        E,
        &DeltaOptions::default(),
    )
    .await
    .expect("backfill");
    let s3 = harness::s3_client().await;
    let bucket = harness::create_bucket(&s3).await;
    let sqs = harness::sqs_client().await;
    let queue = harness::create_queue(&sqs, &harness::QueueSpec::default()).await;
    // Moto itself (AWS_ENDPOINT_URL_SFN, which harness::sfn_client requires), not the proxy.
    let sfn = harness::sfn_client().await;
    let function = Arc::new(Function {
        config,
        source,
        records,
        control,
        spill: S3Spill::new(s3.clone(), &bucket, ""),
        queue: SqsQueue::new(sqs, &queue.url),
        executions: StepFunctions::from_sdk(&harness::sdk_config().await),
        options: setup.options,
        faults: Mutex::new(Vec::new()),
    });
    let proxy = SfnProxy::start().await;
    let invoke = serve(function.clone());
    let arn = proxy.register(
        FUNCTION,
        handler(move |input: Value| {
            let invoke = invoke.clone();
            async move {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let gone = || {
                    (
                        "Test.FunctionGone".to_owned(),
                        "the function's thread ended".to_owned(),
                    )
                };
                invoke.send((input, reply)).map_err(|_| gone())?;
                answer.await.map_err(|_| gone())?
            }
        }),
    );
    let machine = sfn_proxy::create_state_machine(
        &sfn,
        &setup.definition,
        &[
            ("ReconcileFunctionArn", &arn),
            (
                "ApprovalTimeoutSeconds",
                &setup.approval_timeout_seconds.to_string(),
            ),
            (
                "MaxSourceInvocations",
                &setup.max_source_invocations.to_string(),
            ),
        ],
    )
    .await;
    Env {
        sim,
        function,
        sfn,
        steps: StepFunctions::from_sdk(&harness::sdk_config().await),
        proxy,
        machine,
        bucket,
        s3,
    }
}

impl Env {
    fn fail(&self, step: &'static str, error_type: &'static str, times: usize) {
        self.function.faults.lock().unwrap().push(Fault {
            step,
            error_type,
            times,
        });
    }

    /// Start an execution (through `shared::adapters::sfn`) with a console sample.
    async fn start(&self, sample: &str) -> String {
        let input: Value = serde_json::from_str(sample).expect("a JSON sample");
        self.steps
            .start_execution(&self.machine, &input, Some(&harness::unique_name("it-rec")))
            .await
            .expect("StartExecution")
    }

    async fn wait(&self, execution: &str) -> ExecutionResult {
        sfn_proxy::wait_for_execution(&self.sfn, execution, EXECUTION_TIMEOUT).await
    }

    async fn run(&self, sample: &str) -> ExecutionResult {
        let execution = self.start(sample).await;
        self.wait(&execution).await
    }

    /// The steps the function was invoked for, in order, with their outcomes.
    fn steps_invoked(&self) -> Vec<(String, HandlerResult, Value)> {
        self.proxy
            .invocations_of(FUNCTION)
            .into_iter()
            .map(|i| {
                (
                    i.input["step"].as_str().unwrap_or_default().to_owned(),
                    i.outcome,
                    i.input,
                )
            })
            .collect()
    }

    /// How many times each step was invoked (successful invocations only).
    fn step_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (step, outcome, _) in self.steps_invoked() {
            if outcome.is_ok() {
                *out.entry(step).or_default() += 1;
            }
        }
        out
    }

    /// Wait (polling) for the `request_approval` invocation; returns its task token.
    async fn approval_token(&self) -> String {
        let deadline = Instant::now() + EXECUTION_TIMEOUT;
        loop {
            let asked = self
                .steps_invoked()
                .into_iter()
                .find(|(s, o, _)| s == "request_approval" && o.is_ok());
            if let Some((_, _, input)) = asked {
                return input["token"]
                    .as_str()
                    .expect("the payload carries $$.Task.Token")
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no request_approval in {EXECUTION_TIMEOUT:?}: {:#?}",
                self.steps_invoked()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn deleted(&self, id: u64) -> bool {
        self.function
            .records
            .get(E, &id.to_string())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("person {id} is stored"))
            .is_deleted()
    }

    async fn runs(&self) -> Vec<RunRecord> {
        self.function
            .control
            .list_runs(E, JobKind::Reconcile, 10)
            .await
            .unwrap()
    }

    async fn lease_holder(&self) -> Option<String> {
        self.function
            .control
            .job_state(E, JobKind::Reconcile)
            .await
            .unwrap()
            .lease_holder
    }

    /// Keys left in the spill bucket.
    async fn spilled(&self) -> Vec<String> {
        S3Spill::new(self.s3.clone(), &self.bucket, "")
            .list("")
            .await
            .unwrap()
    }

    /// Every message on the queue: `(entity, id)` of the targeted syncs.
    async fn queued(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        loop {
            let got = self.function.queue.receive(10, 0).await.unwrap();
            if got.is_empty() {
                return out;
            }
            for m in got {
                let env: QueueEnvelope = serde_json::from_str(&m.body).expect("an envelope");
                assert_eq!(env.kind, MessageKind::Targeted);
                out.insert((env.entity, env.id));
                self.function.queue.delete(&m.receipt).await.unwrap();
            }
        }
    }
}

/// The Task states of the definition, nested Maps included: name → state.
fn task_states(definition: &Value) -> BTreeMap<String, Value> {
    fn walk(states: &Value, out: &mut BTreeMap<String, Value>) {
        for (name, s) in states.as_object().expect("States") {
            if s["Type"] == "Task" {
                out.insert(name.clone(), s.clone());
            }
            if s["Type"] == "Map" {
                walk(&s["ItemProcessor"]["States"], out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&definition["States"], &mut out);
    out
}

fn definition() -> Value {
    serde_json::from_str(DEFINITION).expect("the definition is JSON")
}

fn entered(run: &ExecutionResult) -> BTreeSet<String> {
    run.entered_states().into_iter().collect()
}

fn count(run: &ExecutionResult, ty: HistoryEventType) -> usize {
    run.history.iter().filter(|e| *e.r#type() == ty).count()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------

/// Offline: every Task retries the transient errors with backoff, and every Task of a run (but
/// the failure path itself) is caught into the failure path, directly or through the Map that
/// holds it.
#[test]
fn reconcile_sfn_definition_retries_and_catches_every_task() {
    let d = definition();
    let tasks = task_states(&d);
    assert!(tasks.len() >= 10, "{:?}", tasks.keys());
    for (name, t) in &tasks {
        let retry = t["Retry"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: Retry"));
        let errors: BTreeSet<&str> = retry
            .iter()
            .flat_map(|r| r["ErrorEquals"].as_array().unwrap().iter())
            .filter_map(Value::as_str)
            .collect();
        for e in RETRIED {
            assert!(errors.contains(e), "{name} retries {e}: {errors:?}");
        }
        assert!(!errors.contains("States.ALL"), "{name}: a blanket retry");
        for r in retry {
            assert!(r["BackoffRate"].as_f64() >= Some(1.5), "{name}: backoff");
            assert!(r["MaxAttempts"].as_u64() >= Some(3), "{name}: attempts");
        }
    }
    let iteration = &d["States"]["Runs"]["ItemProcessor"]["States"];
    let catches_to_failure_path = |s: &Value| {
        s["Catch"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["ErrorEquals"] == json!(["States.ALL"])
                    && c["Next"] == "RecordFailure"
                    && c["ResultPath"] == "$.error"
            })
        })
    };
    for (name, s) in iteration.as_object().unwrap() {
        match s["Type"].as_str() {
            Some("Task") if name != "RecordFailure" => {
                assert!(catches_to_failure_path(s), "{name} is caught")
            }
            Some("Map") => {
                assert!(catches_to_failure_path(s), "{name} is caught");
                for (inner, t) in s["ItemProcessor"]["States"].as_object().unwrap() {
                    assert!(t.get("Catch").is_none(), "{inner}: the Map catches it");
                }
            }
            _ => {}
        }
    }
    let record = &iteration["RecordFailure"];
    assert_eq!(record["Parameters"]["Payload"]["step"], "finish");
    assert_eq!(record["Parameters"]["Payload"]["error.$"], "$.error");
    // The failure path ends the iteration with the failed run's summary; the execution fails
    // after the Map, once every run has ended.
    assert_eq!(record["End"], true);
    assert_eq!(d["States"]["ReconciliationFailed"]["Type"], "Fail");
    // The approval's expiry and rejection are caught apart from failures.
    let wait = &iteration["WaitForApproval"];
    assert_eq!(
        wait["Resource"],
        "arn:aws:states:::lambda:invoke.waitForTaskToken"
    );
    let catch: Vec<(&Value, &Value)> = wait["Catch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (&c["ErrorEquals"][0], &c["Next"]))
        .collect();
    assert_eq!(
        catch[0],
        (&json!("States.Timeout"), &json!("ApprovalExpired"))
    );
    assert_eq!(
        catch[1],
        (&json!(sfn::REJECTED), &json!("ApprovalRejected"))
    );
    assert_eq!(catch[2], (&json!("States.ALL"), &json!("RecordFailure")));

    // Past the loop limit the function's continue step starts a new execution of this same
    // state machine with the run and its listing's progress; the iteration ends continued.
    let limit = &iteration["SourceDone"]["Choices"][1];
    assert_eq!(limit["Next"], CONTINUE);
    assert_eq!(
        limit["NumericGreaterThanEqualsPath"],
        "$.limits.source_invocations_until"
    );
    let start = &iteration[CONTINUE];
    assert_eq!(start["Resource"], "arn:aws:states:::lambda:invoke");
    assert_eq!(
        start["Parameters"]["Payload"],
        json!({
            "step": "continue",
            "run.$": "$.run",
            "progress.$": "$.source.progress",
            "state_machine.$": "$$.StateMachine.Id",
            "parent.$": "$$.Execution.Id"
        })
    );
    assert_eq!(start["Next"], "Continued");
    let continued = &iteration["Continued"];
    assert_eq!(continued["Type"], "Pass");
    assert_eq!(continued["Parameters"]["status"], "continued");
    assert_eq!(
        continued["Parameters"]["continued_in.$"],
        "$.continuation.execution"
    );
    assert_eq!(continued["End"], true);
    // The new execution's start: a resume skips Plan and feeds its one run to the same Map,
    // whose items start the Source loop from the Map input's progress (none after Plan).
    let s = &d["States"];
    assert_eq!(s["Start"]["Next"], "Resuming");
    assert_eq!(s["Resuming"]["Choices"][0]["Variable"], "$.given.resume");
    assert_eq!(s["Resuming"]["Choices"][0]["Next"], "Resume");
    assert_eq!(s["Resuming"]["Default"], "Plan");
    assert_eq!(s["Resume"]["Next"], "Runs");
    assert_eq!(s["Plan"]["ResultSelector"]["progress"], Value::Null);
    assert_eq!(s["Plan"]["ResultSelector"]["source_invocations_before"], 0);
    assert_eq!(
        s["Runs"]["ItemSelector"]["source"],
        json!({"progress.$": "$.progress"})
    );
}

/// The negative control of Apply's loop (`ApplyDone`): the same drift as the full run below,
/// on the definition with Apply going straight to Finish. Each Apply invocation stops at its
/// deadline (1 ms away) after one batch, so without the loop the run ends after the first: the
/// stale records are never queued and the confirmed deletions never applied, yet it succeeds.
#[tokio::test]
async fn reconcile_sfn_negative_control_without_the_apply_loop_deletions_are_never_applied() {
    let mut d = definition();
    let states = &mut d["States"]["Runs"]["ItemProcessor"]["States"];
    states["Apply"]["Next"] = json!("Finish");
    states.as_object_mut().unwrap().remove("ApplyDone");
    let e = env(Setup {
        people: 260,
        definition: d.to_string(),
        ..Default::default()
    })
    .await;
    for id in [12, 131] {
        assert!(e.sim.sim().delete(Entity::People, id));
    }
    for _ in 0..2 {
        e.sim.sim().create(Entity::People, None);
    }
    for id in [5, 47] {
        e.sim.sim().update(Entity::People, id, None);
    }
    let run = e.run(START_ONE_ENTITY).await;
    let s = &run.succeeded()["runs"][0];
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(
        (&s["deleted"], &s["missed"], &s["stale"], &s["queued"]),
        (&json!(0), &json!(2), &json!(2), &json!(2)),
        "one Apply invocation: the missed records queued, nothing else: {s}"
    );
    assert!(!e.deleted(12).await && !e.deleted(131).await);
    assert_eq!(e.step_counts()["apply"], 1);
}

#[tokio::test]
async fn reconcile_sfn_full_run_deletes_confirmed_and_queues_missed_and_stale() {
    let e = env(Setup {
        people: 260,
        ..Default::default()
    })
    .await;
    // Drift delta sync did not see: two deletions, two creations, two updates.
    for id in [12, 131] {
        assert!(e.sim.sim().delete(Entity::People, id));
    }
    let created: Vec<u64> = (0..2)
        .map(|_| e.sim.sim().create(Entity::People, None).id)
        .collect();
    for id in [5, 47] {
        e.sim.sim().update(Entity::People, id, None);
    }
    // A transient error in Guard: retried by the definition.
    e.fail("guard", "Reconcile.Retryable", 1);

    let run = e.run(START_ONE_ENTITY).await;
    let out = run.succeeded();
    assert_eq!(out["failed"], false, "{out}");
    assert_eq!(out["skipped"], json!([]));
    let s = &out["runs"][0];
    assert_eq!(out["runs"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(s["entity"], E);
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(
        (&s["deleted"], &s["missed"], &s["stale"], &s["queued"]),
        (&json!(2), &json!(2), &json!(2), &json!(4)),
        "{s}"
    );
    assert_eq!(
        (&s["source_count"], &s["destination_count"]),
        (&json!(260), &json!(260))
    );
    assert_eq!(s["guard"], json!({"kind": "delete"}));

    // Every Task state on the path was entered; the approval and failure paths were not.
    let tasks: BTreeSet<String> = task_states(&definition()).into_keys().collect();
    let entered = entered(&run);
    let expected: BTreeSet<String> = &tasks - &set(&["WaitForApproval", "RecordFailure", CONTINUE]);
    assert_eq!(&entered & &tasks, expected, "Task states entered");
    for state in [
        "Start",
        "Resuming",
        "Plan",
        "SourceDone",
        "Destinations",
        "NeedsApproval",
        "AnyRuns",
        "CheckRuns",
        "Summarise",
        "AnyRunFailed",
        "Done",
    ] {
        assert!(entered.contains(state), "{state}: {entered:?}");
    }
    assert!(!entered.contains("ReconciliationFailed"));
    assert!(!entered.contains("Resume") && !entered.contains("Continued"));
    assert_eq!(out["continued"], false, "{out}");
    // The proxy saw the same, step by step.
    let counts = e.step_counts();
    assert_eq!(counts["plan"], 1);
    assert!(!counts.contains_key("continue"), "{counts:?}");
    assert!(
        counts["source"] >= 3,
        "one page per Source invocation: {counts:?}"
    );
    assert_eq!(counts["destination"], 16, "one per shard");
    // Apply loops (ApplyDone) one batch per invocation, the deadline 1 ms away: the fetch
    // list's object, the stale list's, then the deletions: repairs first.
    assert_eq!(
        (
            counts["diff"],
            counts["guard"],
            counts["apply"],
            counts["finish"]
        ),
        (1, 1, 3, 1)
    );
    assert!(entered.contains("ApplyDone"), "{entered:?}");
    let applies: Vec<Value> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, _, _)| s == "apply")
        .map(|(_, o, _)| o.expect("apply succeeded"))
        .collect();
    let progress: Vec<(&Value, &Value, &Value, &Value)> = applies
        .iter()
        .map(|o| (&o["queued"], &o["deleted"], &o["invocations"], &o["done"]))
        .collect();
    assert_eq!(
        progress,
        [
            (&json!(2), &json!(0), &json!(1), &json!(false)),
            (&json!(4), &json!(0), &json!(2), &json!(false)),
            (&json!(4), &json!(2), &json!(3), &json!(true)),
        ],
        "each invocation resumed the last one's output"
    );
    assert!(!counts.contains_key("request_approval"));
    let guard_failures: Vec<_> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, o, _)| s == "guard" && o.is_err())
        .collect();
    assert_eq!(
        guard_failures.len(),
        1,
        "the transient error, then its retry"
    );
    assert_eq!(
        count(&run, HistoryEventType::TaskFailed),
        1,
        "{:?}",
        run.event_types()
    );
    // The Source loop passed its progress along: each invocation resumed the last.
    let sources: Vec<Value> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, o, _)| s == "source" && o.is_ok())
        .map(|(_, _, input)| input["progress"].clone())
        .collect();
    assert_eq!(sources[0], Value::Null, "the first starts the listing");
    for (i, p) in sources.iter().enumerate().skip(1) {
        assert_eq!(p["invocations"], i, "{p}");
        assert_eq!(p["done"], false);
        assert!(p["resume"].is_string(), "{p}");
    }

    // The store: the two gone are soft-deleted (confirmed by a 404), the rest untouched.
    for id in [12, 131] {
        assert!(e.deleted(id).await, "{id} soft-deleted");
    }
    for id in [5, 47, 11, 130, 132] {
        assert!(!e.deleted(id).await, "{id} kept");
    }
    let queued = e.queued().await;
    let want: BTreeSet<(String, String)> = created
        .iter()
        .chain([5, 47].iter())
        .map(|id| (E.to_owned(), id.to_string()))
        .collect();
    assert_eq!(
        queued, want,
        "the missed and the stale, queued for the worker"
    );
    let runs = e.runs().await;
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!(runs[0].run_id, s["run_id"].as_str().unwrap());
    assert_eq!(e.lease_holder().await, None, "the lease is released");
    assert_eq!(
        e.spilled().await,
        Vec::<String>::new(),
        "the run's objects are gone"
    );
}

#[tokio::test]
async fn reconcile_sfn_over_the_threshold_waits_for_approval_then_applies() {
    let e = env(Setup::default()).await;
    // 10 of 60 (17%) is over the default 5%.
    for id in 11..=20 {
        e.sim.sim().delete(Entity::People, id);
    }
    let execution = e.start(START_ALL_ENTITIES).await;
    let token = e.approval_token().await;
    // Waiting: the run history holds the token; nothing deleted; the lease still held.
    let d = e
        .sfn
        .describe_execution()
        .execution_arn(&execution)
        .send()
        .await
        .unwrap();
    assert_eq!(*d.status(), ExecutionStatus::Running);
    let runs = e.runs().await;
    assert_eq!(runs[0].status, "awaiting_approval");
    assert!(
        runs[0].summary.contains(&token),
        "the token is in the run history"
    );
    assert!(!e.deleted(11).await);
    assert_eq!(
        e.lease_holder().await.as_deref(),
        Some(runs[0].run_id.as_str())
    );
    assert!(!e.step_counts().contains_key("apply"));
    // Meanwhile another execution (the next day's schedule) skips the entity: it takes no
    // lease, ends at once and says so.
    let other = e.run(START_ONE_ENTITY).await;
    let out = other.succeeded();
    assert_eq!(out["runs"], json!([]), "{out}");
    assert_eq!(out["skipped"][0]["entity"], E);
    assert_eq!(out["skipped"][0]["holder"], runs[0].run_id.as_str());
    assert!(!entered(&other).contains("Source"));

    e.steps
        .send_task_success(&token, &json!({"approved": true}))
        .await
        .expect("SendTaskSuccess");
    let run = e.wait(&execution).await;
    let s = &run.succeeded()["runs"][0];
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(s["deleted"], 10);
    assert_eq!(s["guard"]["kind"], "needs_approval");
    for id in 11..=20 {
        assert!(e.deleted(id).await, "{id}");
    }
    assert!(!e.deleted(21).await);
    let entered = entered(&run);
    for state in [
        "WaitForApproval",
        "ApprovalGiven",
        "Approved",
        "Apply",
        "Finish",
    ] {
        assert!(entered.contains(state), "{state}: {entered:?}");
    }
    assert!(!entered.contains("ApprovalExpired") && !entered.contains("RecordFailure"));
    let apply: Vec<Value> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, _, _)| s == "apply")
        .map(|(_, _, i)| i)
        .collect();
    // Ten deletions in lists of two: five Apply invocations, one object each, all approved.
    assert_eq!(apply.len(), 5);
    assert!(apply.iter().all(|a| a["approved"] == true), "{apply:?}");
    assert_eq!(e.lease_holder().await, None);

    // A token answers once.
    let again = e
        .steps
        .send_task_success(&token, &json!({"approved": true}))
        .await
        .expect_err("a used token is refused");
    assert!(
        sfn::is_stale_token(&again),
        "{again}: {:?}",
        sfn::error_code(&again)
    );
}

#[tokio::test]
async fn reconcile_sfn_an_expired_approval_deletes_nothing() {
    let e = env(Setup {
        approval_timeout_seconds: 1,
        ..Default::default()
    })
    .await;
    for id in 11..=20 {
        e.sim.sim().delete(Entity::People, id);
    }
    let run = e.run(START_ONE_ENTITY).await;
    let s = &run.succeeded()["runs"][0];
    assert_eq!(s["status"], "approval_expired", "{s}");
    assert_eq!(s["deleted"], 0);
    assert_eq!(
        count(&run, HistoryEventType::TaskTimedOut),
        1,
        "{:?}",
        run.event_types()
    );
    let entered = entered(&run);
    assert!(entered.contains("WaitForApproval") && entered.contains("ApprovalExpired"));
    assert!(!entered.contains("Apply"), "{entered:?}");
    assert!(!e.step_counts().contains_key("apply"));
    for id in 11..=20 {
        assert!(!e.deleted(id).await, "{id} kept");
    }
    let runs = e.runs().await;
    assert_eq!(runs[0].status, "approval_expired");
    let detail: Value = serde_json::from_str(&runs[0].summary).unwrap();
    assert_eq!(detail["approval"], "expired");
    assert_eq!(e.lease_holder().await, None);
    assert_eq!(e.spilled().await, Vec::<String>::new());
}

#[tokio::test]
async fn reconcile_sfn_a_rejected_approval_deletes_nothing() {
    let e = env(Setup::default()).await;
    for id in 11..=20 {
        e.sim.sim().delete(Entity::People, id);
    }
    let execution = e.start(START_ONE_ENTITY).await;
    let token = e.approval_token().await;
    e.steps
        .send_task_failure(&token, sfn::REJECTED, "ten deletions: checked, not wanted")
        .await
        .expect("SendTaskFailure");
    let run = e.wait(&execution).await;
    let s = &run.succeeded()["runs"][0];
    assert_eq!(s["deleted"], 0, "{s}");
    let entered = entered(&run);
    assert!(entered.contains("ApprovalRejected"), "{entered:?}");
    assert!(!entered.contains("Apply") && !entered.contains("RecordFailure"));
    for id in 11..=20 {
        assert!(!e.deleted(id).await, "{id} kept");
    }
    let detail: Value = serde_json::from_str(&e.runs().await[0].summary).unwrap();
    assert_eq!(detail["approval"], "rejected");
    assert_eq!(e.lease_holder().await, None);
}

#[tokio::test]
async fn reconcile_sfn_a_failing_step_records_the_run_and_releases_the_lease() {
    let e = env(Setup::default()).await;
    e.sim.sim().delete(Entity::People, 33);
    e.fail("diff", "Reconcile.Failed", usize::MAX);
    let run = e.run(START_ONE_ENTITY).await;
    assert_eq!(
        run.status,
        ExecutionStatus::Failed,
        "{:?}",
        run.event_types()
    );
    assert_eq!(
        run.error.as_deref(),
        Some("Reconcile.RunFailed"),
        "{:?}",
        run.cause
    );
    let entered = entered(&run);
    for state in ["Diff", "RecordFailure", "CheckRuns", "ReconciliationFailed"] {
        assert!(entered.contains(state), "{state}: {entered:?}");
    }
    assert!(!entered.contains("Guard") && !entered.contains("Apply"));
    let diffs: Vec<_> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, _, _)| s == "diff")
        .collect();
    assert_eq!(diffs.len(), 1, "a permanent error is not retried");
    let failure: Vec<Value> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, o, i)| s == "finish" && o.is_ok() && !i["error"].is_null())
        .map(|(_, _, i)| i)
        .collect();
    assert_eq!(failure.len(), 1, "the failure path ran once");
    assert_eq!(failure[0]["error"]["Error"], "Reconcile.Failed");
    assert!(
        failure[0]["error"]["Cause"]
            .as_str()
            .is_some_and(|c| c.contains("injected")),
        "{}",
        failure[0]["error"]
    );
    assert!(
        failure[0]["source"]["done"] == true,
        "the listing's progress goes along"
    );

    let runs = e.runs().await;
    assert_eq!(runs[0].status, "failed");
    assert!(
        runs[0].summary.contains("Reconcile.Failed"),
        "{}",
        runs[0].summary
    );
    assert_eq!(e.lease_holder().await, None, "released by the failure path");
    assert_eq!(e.spilled().await, Vec::<String>::new());
    assert!(!e.deleted(33).await, "nothing deleted");

    // The lease is free: the next execution takes it and completes the work.
    e.function.faults.lock().unwrap().clear();
    let again = e.run(START_ONE_ENTITY).await;
    let s = &again.succeeded()["runs"][0];
    assert_eq!(
        (&s["status"], &s["deleted"]),
        (&json!("succeeded"), &json!(1)),
        "{s}"
    );
    assert!(e.deleted(33).await);
}

#[tokio::test]
async fn reconcile_sfn_a_listing_past_the_loop_limit_continues_in_new_executions() {
    // 460 people, one page of 100 an invocation: five Source invocations, two an execution.
    let e = env(Setup {
        people: 460,
        max_source_invocations: 2,
        ..Default::default()
    })
    .await;
    // The full run's drift: two deletions, two creations, two updates.
    for id in [12, 131] {
        assert!(e.sim.sim().delete(Entity::People, id));
    }
    let created: Vec<u64> = (0..2)
        .map(|_| e.sim.sim().create(Entity::People, None).id)
        .collect();
    for id in [5, 47] {
        e.sim.sim().update(Entity::People, id, None);
    }

    // The first execution plans the run, lists two pages, hands the run over and succeeds.
    let first = e.run(START_ONE_ENTITY).await;
    let out = first.succeeded().clone();
    assert_eq!(
        (&out["failed"], &out["continued"]),
        (&json!(false), &json!(true)),
        "{out}"
    );
    assert_eq!(out["runs"].as_array().unwrap().len(), 1, "{out}");
    let s = &out["runs"][0];
    assert_eq!(
        (&s["entity"], &s["status"]),
        (&json!(E), &json!("continued")),
        "{s}"
    );
    assert_eq!(s["source_invocations_so_far"], 2, "{s}");
    assert!(
        s["source_pairs_so_far"].as_u64() > Some(100),
        "two pages of at most 100: {s}"
    );
    let first_pairs = s["source_pairs_so_far"].clone();
    let run_id = s["run_id"].as_str().expect("a run ID").to_owned();
    let entered_first = entered(&first);
    for state in [
        "Start",
        "Resuming",
        "Plan",
        "Source",
        "SourceDone",
        CONTINUE,
        "Continued",
        "Done",
    ] {
        assert!(entered_first.contains(state), "{state}: {entered_first:?}");
    }
    for state in [
        "Resume",
        "Destinations",
        "Finish",
        "RecordFailure",
        "ReconciliationFailed",
    ] {
        assert!(!entered_first.contains(state), "{state}: {entered_first:?}");
    }

    // Follow the hand-overs to the execution that finishes the run.
    let mut chain = vec![first];
    loop {
        let last = chain.last().unwrap().succeeded()["runs"][0].clone();
        if last["status"] != "continued" {
            break;
        }
        assert!(chain.len() < 5, "a runaway chain of executions");
        let next = last["continued_in"]
            .as_str()
            .expect("continued_in")
            .to_owned();
        chain.push(e.wait(&next).await);
    }
    assert_eq!(chain.len(), 3, "2 + 2 + 1 Source invocations");
    let arns: BTreeSet<&str> = chain.iter().map(|x| x.arn.as_str()).collect();
    assert_eq!(arns.len(), 3, "three executions: {arns:?}");

    // The function's continue step, once per hand-over: this state machine, the run and its
    // progress, the parent execution; its answer is the execution the summary names.
    let continues: Vec<(Value, Value)> = e
        .steps_invoked()
        .into_iter()
        .filter(|(s, _, _)| s == "continue")
        .map(|(_, o, input)| (input, o.expect("continue succeeded")))
        .collect();
    assert_eq!(continues.len(), 2, "{continues:#?}");
    for (i, (input, output)) in continues.iter().enumerate() {
        assert_eq!(input["state_machine"], e.machine.as_str());
        assert_eq!(input["parent"], chain[i].arn.as_str());
        assert_eq!(input["run"]["run_id"], run_id.as_str());
        assert_eq!(input["progress"]["invocations"], 2 * (i + 1));
        assert_eq!(input["progress"]["done"], false);
        assert_eq!(output["execution"], chain[i + 1].arn.as_str());
        assert_eq!(
            chain[i].succeeded()["runs"][0]["continued_in"],
            output["execution"],
            "the summary names the execution started"
        );
        // rec-<the run ID's xxh3, 16 hex digits>-<invocations>: a retried step finds it.
        let name = chain[i + 1].arn.rsplit(':').next().unwrap();
        let hash = name
            .strip_prefix("rec-")
            .and_then(|n| n.strip_suffix(&format!("-{}", 2 * (i + 1))))
            .unwrap_or_else(|| panic!("named after the run and the invocation count: {name}"));
        assert!(
            hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        if i > 0 {
            let before = chain[i].arn.rsplit(':').next().unwrap();
            assert!(
                before.starts_with(&format!("rec-{hash}-")),
                "one run: {before}, {name}"
            );
        }
    }
    for (i, x) in chain.iter().enumerate().skip(1) {
        let d = e
            .sfn
            .describe_execution()
            .execution_arn(&x.arn)
            .send()
            .await
            .unwrap();
        assert_eq!(d.state_machine_arn(), e.machine, "the same state machine");
        let input: Value = serde_json::from_str(d.input().unwrap()).unwrap();
        assert_eq!(input["resume"]["run"]["run_id"], run_id.as_str());
        assert_eq!(input["resume"]["progress"]["invocations"], 2 * i);
        assert_eq!(
            input["AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID"],
            chain[i - 1].arn.as_str()
        );
        let entered = entered(x);
        assert!(
            entered.contains("Resume") && !entered.contains("Plan"),
            "{entered:?}"
        );
        let last = i == chain.len() - 1;
        assert_eq!(entered.contains(CONTINUE), !last, "{i}: {entered:?}");
        assert_eq!(entered.contains("Finish"), last, "{entered:?}");
        assert!(!entered.contains("RecordFailure"), "{entered:?}");
    }
    let middle = chain[1].succeeded();
    assert_eq!(
        (
            &middle["runs"][0]["status"],
            &middle["runs"][0]["source_invocations_so_far"]
        ),
        (&json!("continued"), &json!(4)),
        "{middle}"
    );

    // The last one finishes the run as the full run does.
    let out = chain[2].succeeded();
    assert_eq!(
        (&out["failed"], &out["continued"]),
        (&json!(false), &json!(false)),
        "{out}"
    );
    let s = &out["runs"][0];
    assert_eq!(
        (&s["run_id"], &s["status"]),
        (&json!(run_id), &json!("succeeded")),
        "{s}"
    );
    assert_eq!(
        (&s["deleted"], &s["missed"], &s["stale"], &s["queued"]),
        (&json!(2), &json!(2), &json!(2), &json!(4)),
        "{s}"
    );
    assert_eq!(
        (&s["source_count"], &s["destination_count"]),
        (&json!(460), &json!(460))
    );
    assert_eq!(s["guard"], json!({"kind": "delete"}));

    // The proxy: one plan, one finish; five Source invocations resuming one another across
    // the executions, each renewing the lease under the run ID (a lost lease fails the step:
    // none failed), so the run kept its lease from Plan to Finish.
    let counts = e.step_counts();
    assert_eq!(
        (
            counts["plan"],
            counts["source"],
            counts["continue"],
            counts["finish"]
        ),
        (1, 5, 2, 1),
        "{counts:?}"
    );
    // Apply: the fetch list, the stale list, the deletions (one batch per invocation).
    assert_eq!(
        (counts["diff"], counts["guard"], counts["apply"]),
        (1, 1, 3)
    );
    let invoked = e.steps_invoked();
    assert!(invoked.iter().all(|(_, o, _)| o.is_ok()), "{invoked:#?}");
    // Each Source invocation resumed the last one's progress, across the executions too.
    let sources: Vec<(&Value, &Value)> = invoked
        .iter()
        .filter(|(s, _, _)| s == "source")
        .map(|(_, o, input)| (input, o.as_ref().expect("source succeeded")))
        .collect();
    assert_eq!(sources[0].0["progress"], Value::Null);
    for (i, (input, output)) in sources.iter().enumerate() {
        assert_eq!(input["run"]["run_id"], run_id.as_str());
        assert_eq!(output["invocations"], i + 1, "{output}");
        assert_eq!(output["done"], i == 4, "{output}");
        if i > 0 {
            assert_eq!(&input["progress"], sources[i - 1].1, "{input}");
        }
    }
    assert_eq!(sources[1].1["pairs"], first_pairs);
    assert_eq!(sources[4].1["pairs"], 460);

    // The store: as after the full run; one run recorded; the lease released at the end.
    for id in [12, 131] {
        assert!(e.deleted(id).await, "{id} soft-deleted");
    }
    for id in [5, 47, 11, 130, 132, 459] {
        assert!(!e.deleted(id).await, "{id} kept");
    }
    let want: BTreeSet<(String, String)> = created
        .iter()
        .chain([5, 47].iter())
        .map(|id| (E.to_owned(), id.to_string()))
        .collect();
    assert_eq!(e.queued().await, want);
    let runs = e.runs().await;
    assert_eq!(runs.len(), 1, "one run across the executions");
    assert_eq!(
        (runs[0].run_id.as_str(), runs[0].status.as_str()),
        (run_id.as_str(), "succeeded")
    );
    assert_eq!(e.lease_holder().await, None, "the lease is released");
    assert_eq!(
        e.spilled().await,
        Vec::<String>::new(),
        "the run's objects are gone"
    );
}

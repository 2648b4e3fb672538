//! The convergence harness (issue 13): from one seed, a schedule of source activity, webhook
//! deliveries, faults, crashes and the steps of delta sync, the worker and reconciliation,
//! run one operation at a time against the simulator (in-process, real HTTP) and the embedded
//! store, records and control in separate SQLite files. Violations of the invariants I1-I6
//! (`BRIEF.md`) are counted with the operation at which each was first seen; after the
//! schedule, with the source quiet, one delta run per entity, one reconciliation per entity
//! and the worker draining the queue must make the store equal the source.
//!
//! What replays from a seed: the operations, their order, the faults each request meets and
//! the crash points. What does not: the wall-clock timestamps the simulator stamps on changes
//! (and so the payloads' `updated_at`), run IDs and message IDs.

mod hooks;
pub mod schedule;

pub use hooks::{Crashes, Gate, Listings};
pub use schedule::{CrashPoint, Fate, FaultKind, Op, Scenario};

use crate::forward::Forward;
use crate::{TempDir, sim};
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::config::Config;
use shared::core::timefmt::now_us;
use shared::error::WalkError;
use shared::model::ID_SHARDS;
use shared::ports::{ControlStore, JobKind, Queue, RecordStore};
use shared::setdiff::merge::DiffSummary;
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, DeltaSummary, RunStatus, run_delta};
use shared::sync::reconcile::{
    ApplyInput, ApplyOutput, DestinationInput, DiffInput, FinishInput, GuardInput, GuardOutput,
    PlanInput, ReconcileDeps, ReconcileOptions, RunRef, SourceInput, SourceProgress, apply,
    destination, diff_step, finish, guard, plan, run_all, source,
};
use shared::sync::worker::{InMessage, WorkerDeps, WorkerOptions, process_batch};
use shared::wire::{EnvelopeAction, MessageKind, QueueEnvelope};
use shared::{SourceError, SyncError};
use source_sim::{Entity, Fault, SimHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The invariants counted (I1 to I6 of `BRIEF.md`).
pub const INVARIANTS: [&str; 6] = ["I1", "I2", "I3", "I4", "I5", "I6"];

const ENTITIES: [Entity; 2] = [Entity::People, Entity::Donations];

/// The engine's settings for a run, protections switched off by tests for negative controls.
#[derive(Clone)]
pub struct Settings {
    pub delta: DeltaOptions,
    pub worker: WorkerOptions,
    pub reconcile: ReconcileOptions,
    /// Applied to the source client (e.g. `SourceClient::without_walk_checks`).
    pub client: fn(SourceClient) -> SourceClient,
    /// The simulator's misbehaviour for the whole scenario (a source ignoring its order
    /// parameter, ...); `None`: a well-behaved source.
    pub misbehave: Option<source_sim::Misbehave>,
    /// Every scheduled delta invocation bounded to this many pages instead of its 1-3;
    /// `Some(u64::MAX)`: each reads to the end.
    pub delta_max_pages: Option<u64>,
    /// Negative control: the record store without the version rule (the last write wins,
    /// `LocalStore::with_last_write_wins`).
    pub last_write_wins: bool,
    /// `false`: a negative control without leases (`Crashes::without_leases`).
    pub leases: bool,
    /// Negative control: a second deletion keeps the first one's evidence
    /// (`LocalStore::with_first_deletion_evidence`).
    pub first_deletion_evidence: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delta: DeltaOptions::default(),
            // One fetch at a time, so each scripted fault meets the same request every replay.
            worker: WorkerOptions {
                concurrency: 1,
                ..WorkerOptions::default()
            },
            reconcile: ReconcileOptions {
                concurrency: 1,
                // Several sorted runs and Source invocations per reconciliation, so that a
                // crash can land mid-spill and steps interleave with the others.
                run_size: 1_000,
                max_source_pages: 3,
                // A deployment's setting (RECONCILE_MAX_DELETE_PERCENT): the schedules delete
                // at most 3 records of an entity of 8 or more (`Scenario::generate`), so a
                // run needing approval is a finding, not the schedule's doing.
                max_delete_share: 0.5,
                ..ReconcileOptions::default()
            },
            client: |c| c,
            misbehave: None,
            delta_max_pages: None,
            last_write_wins: false,
            leases: true,
            first_deletion_evidence: false,
        }
    }
}

/// One violation: the invariant, the operation index (`None`: the final check) and what.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub op: Option<usize>,
    pub detail: String,
}

/// What one scenario did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub operations: usize,
    pub violations: Vec<Violation>,
    /// Delta runs stopped by the walk's order checks (`WalkError::DeltaOrder`, `Skipped`).
    pub refused: u64,
    /// What the scenario exercised: `late` (versions stamped below the source's clock less the
    /// overlap), `recreated` (records created again under their ID), `held` (delta runs held
    /// mid-page), `regressed` (regressions written by reconciliation).
    pub exercised: BTreeMap<&'static str, u64>,
    /// What each operation did (a run's status, a batch's counts), for the replay.
    pub notes: Vec<String>,
}

impl Outcome {
    /// Violations per invariant, `I1` to `I6`.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let mut m: BTreeMap<&'static str, u64> = INVARIANTS.iter().map(|i| (*i, 0)).collect();
        for v in &self.violations {
            *m.entry(v.invariant).or_default() += 1;
        }
        m
    }

    /// The seed, the first violation of each invariant with its operation, and the op list.
    pub fn explain(&self, scenario: &Scenario) -> String {
        let mut s = format!("seed {}: {} violations\n", self.seed, self.violations.len());
        for inv in INVARIANTS {
            if let Some(v) = self.violations.iter().find(|v| v.invariant == inv) {
                let at =
                    v.op.map_or("the final check".to_owned(), |i| format!("op {i}"));
                s.push_str(&format!("  {inv} first at {at}: {}\n", v.detail));
            }
        }
        for (i, op) in scenario.ops.iter().enumerate() {
            let note = self.notes.get(i).map(String::as_str).unwrap_or_default();
            s.push_str(&format!("  op {i}: {op:?} {note}\n"));
        }
        s
    }
}

/// The store's live IDs of one entity with their delta timestamps.
type Live = BTreeMap<String, i64>;

/// A reconciliation run in progress, as the state machine holds it between steps.
struct Recon {
    run: RunRef,
    progress: SourceProgress,
    shard: usize,
    diff: Option<DiffSummary>,
    guard: Option<GuardOutput>,
    apply: Option<ApplyOutput>,
    failures: u32,
}

/// A delta invocation held between reading a page and writing it, while other operations run.
struct Paused {
    entity: Entity,
    /// The source's versions when it started (for I1 once it reads to the end).
    before: Vec<(u64, i64)>,
    /// The IDs of the page it holds.
    held: Vec<String>,
    /// When it started.
    started_us: i64,
    release: oneshot::Sender<()>,
    task: JoinHandle<Result<DeltaSummary, SyncError>>,
    /// Operations left before it resumes.
    left: u8,
}

/// Everything one scenario runs on.
struct World {
    sim: SimHandle,
    config: Config,
    /// Delta sync's and the worker's client.
    client: Arc<SourceClient>,
    /// Reconciliation's client, through the listing faults.
    recon_client: Forward<SourceClient, Listings>,
    listings: Listings,
    paused: Option<Paused>,
    records: Arc<Forward<LocalStore, Crashes>>,
    control: Arc<Forward<LocalStore, Crashes>>,
    queue: LocalQueue,
    spill: LocalSpill,
    crashes: Crashes,
    settings: Settings,
    recon: BTreeMap<&'static str, Recon>,
    delayed: Vec<String>,
    delivered: Vec<String>,
    events: u64,
    /// Per event ID: the entity, record and source version when the event was sent.
    event_versions: BTreeMap<String, (Entity, u64, i64)>,
    /// Store IDs ever seen live, per entity.
    ever_live: BTreeMap<&'static str, BTreeSet<String>>,
    live: BTreeMap<&'static str, Live>,
    violations: Vec<Violation>,
    /// Delta runs the walk's order checks stopped (a source that ignores its order parameter).
    refused: u64,
    /// Changes stamped below the source's highest clock reading less delta sync's overlap
    /// (`Op::LateCommit`, changes after the clock went back): the entity, ID and version.
    /// Delta sync does not promise them (I1 exempts them); reconciliation repairs them.
    late: BTreeSet<(Entity, u64, i64)>,
    /// The source's highest clock reading so far.
    source_high: i64,
    /// Every version seen at the source, to find the late ones.
    seen_versions: BTreeSet<(Entity, u64, i64)>,
    /// IDs deleted at the source, per entity (for `Op::Recreate`).
    deleted: BTreeMap<&'static str, Vec<u64>>,
    recreated: u64,
    held: u64,
    regressed: u64,
    /// Rewinds of the delta cursor by reconciliation: the entity, when, and to where; checked
    /// (and dropped) by the next delta run of the entity that starts after and reads to the end.
    rewinds: Vec<(Entity, i64, i64)>,
    /// Whether the last delta run was one of them.
    last_refused: bool,
    note: String,
    notes: Vec<String>,
    _dir: TempDir,
}

/// Run `scenario` with `settings`.
pub async fn run(scenario: &Scenario, settings: &Settings) -> Outcome {
    let sim = sim::start(sim::SimConfig {
        seed: scenario.seed,
        people: scenario.people,
        donations: scenario.donations,
        clock_skew_ms: scenario.clock_skew_ms,
        ..sim::SimConfig::default()
    })
    .await;
    if let Some(m) = &settings.misbehave {
        sim.sim().set_misbehave(*m);
    }
    let config = crate::config::quick(&sim.base_url(), |c| {
        c.source.timeout_ms = 150;
        for e in &mut c.entities {
            e.page_size = scenario.page_size;
            // The source's clock may go back (`Op::ClockStep`): reconciliation repairs the
            // regressions.
            e.allow_version_regression = true;
        }
    });
    let client = Arc::new((settings.client)(
        SourceClient::new(&config, None).expect("source client"),
    ));
    let dir = TempDir::new("converge");
    let crashes = if settings.leases {
        Crashes::default()
    } else {
        Crashes::default().without_leases()
    };
    let mut records_file = LocalStore::open(dir.join("records.sqlite")).expect("records file");
    if settings.last_write_wins {
        records_file = records_file.with_last_write_wins();
    }
    if settings.first_deletion_evidence {
        records_file = records_file.with_first_deletion_evidence();
    }
    let control_file = LocalStore::open(dir.join("control.sqlite")).expect("control file");
    let queue = control_file.queue(
        "work",
        QueueOptions {
            visibility_timeout: Duration::ZERO,
            max_receives: Some(5),
        },
    );
    let spill = LocalSpill::new(dir.join("spill")).expect("spill folder");
    let listings = Listings::default();
    let mut w = World {
        sim,
        config,
        recon_client: Forward::new(client.clone(), listings.clone()),
        client,
        listings,
        paused: None,
        records: Arc::new(Forward::new(Arc::new(records_file), crashes.clone())),
        control: Arc::new(Forward::new(Arc::new(control_file), crashes.clone())),
        queue,
        spill,
        crashes,
        settings: settings.clone(),
        recon: BTreeMap::new(),
        delayed: Vec::new(),
        delivered: Vec::new(),
        events: 0,
        event_versions: BTreeMap::new(),
        ever_live: BTreeMap::new(),
        live: BTreeMap::new(),
        violations: Vec::new(),
        refused: 0,
        late: BTreeSet::new(),
        source_high: 0,
        seen_versions: BTreeSet::new(),
        deleted: BTreeMap::new(),
        recreated: 0,
        held: 0,
        regressed: 0,
        rewinds: Vec::new(),
        last_refused: false,
        note: String::new(),
        notes: Vec::new(),
        _dir: dir,
    };
    // The initial backfill, then the schedule.
    for e in ENTITIES {
        let _ = w.delta(e, 0).await;
    }
    w.note.clear();
    w.observe(None).await;
    w.classify();
    for (i, op) in scenario.ops.iter().enumerate() {
        w.source_high = w.source_high.max(w.sim.sim().now_us());
        w.op(i, op).await;
        w.classify();
        let mut note = std::mem::take(&mut w.note);
        w.observe(Some(i)).await;
        if w.paused.as_mut().is_some_and(|p| {
            p.left = p.left.saturating_sub(1);
            p.left == 0
        }) {
            w.resume(Some(i)).await;
            note.push_str(&format!("; the held delta run resumed {}", w.note));
            w.note.clear();
            w.observe(Some(i)).await;
        }
        w.notes.push(note);
    }
    w.settle().await;
    w.sim.shutdown().await;
    Outcome {
        seed: scenario.seed,
        operations: scenario.ops.len(),
        violations: w.violations,
        refused: w.refused,
        exercised: BTreeMap::from([
            ("late", w.late.len() as u64),
            ("recreated", w.recreated),
            ("held", w.held),
            ("regressed", w.regressed),
        ]),
        notes: w.notes,
    }
}

impl World {
    fn violation(&mut self, invariant: &'static str, op: Option<usize>, detail: String) {
        self.violations.push(Violation {
            invariant,
            op,
            detail,
        });
    }

    /// Mark the source's new versions stamped below its highest clock reading less the
    /// overlap as late.
    fn classify(&mut self) {
        let floor = self.source_high - self.settings.delta.overlap_us;
        for e in ENTITIES {
            for (id, t) in self.sim.sim().versions(e) {
                if self.seen_versions.insert((e, id, t)) && self.source_high > 0 && t < floor {
                    self.late.insert((e, id, t));
                }
            }
        }
    }

    fn deps(&self) -> ReconcileDeps<'_> {
        ReconcileDeps {
            config: &self.config,
            source: &self.recon_client,
            records: self.records.as_ref(),
            control: self.control.as_ref(),
            spill: &self.spill,
            queue: &self.queue,
        }
    }

    fn live_ids(&self, e: Entity) -> Vec<u64> {
        self.sim
            .sim()
            .versions(e)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn pick(&self, e: Entity, pick: u32) -> Option<u64> {
        let ids = self.live_ids(e);
        (!ids.is_empty()).then(|| ids[pick as usize % ids.len()])
    }

    async fn send(&mut self, bodies: Vec<String>) {
        self.queue
            .send_batch(&bodies)
            .await
            .expect("the local queue takes the delivery");
    }

    /// The webhook a change sends, with its fate.
    async fn webhook(&mut self, e: Entity, id: u64, action: EnvelopeAction, fate: Fate) {
        self.events += 1;
        if let Some(v) = self.sim.sim().get(e, id) {
            self.event_versions
                .insert(format!("ev-{}", self.events), (e, id, v.updated_at_us));
        }
        let body = QueueEnvelope {
            v: 1,
            kind: MessageKind::Webhook,
            entity: e.name().to_owned(),
            id: id.to_string(),
            event_id: Some(format!("ev-{}", self.events)),
            action: Some(action),
            reason: None,
            received_at: now_us(),
        }
        .to_body();
        match fate {
            Fate::Drop => {}
            Fate::Deliver => self.send(vec![body.clone()]).await,
            Fate::Duplicate => self.send(vec![body.clone(), body.clone()]).await,
            Fate::Delay => self.delayed.push(body.clone()),
        }
        if fate != Fate::Drop {
            self.delivered.push(body);
        }
    }

    async fn delta(&mut self, e: Entity, max_pages: u8) -> Option<RunStatus> {
        let mut opts = self.settings.delta.clone();
        if max_pages > 0 {
            opts.max_pages = self
                .settings
                .delta_max_pages
                .unwrap_or(u64::from(max_pages));
        }
        let cursor_before = self
            .control
            .job_state(e.name(), JobKind::Delta)
            .await
            .ok()
            .and_then(|s| s.cursor);
        let r = run_delta(
            self.client.as_ref(),
            self.records.as_ref(),
            self.control.as_ref(),
            e.name(),
            &opts,
        )
        .await;
        self.delta_note(&r, cursor_before);
        r.ok().map(|s| s.status)
    }

    fn delta_note(&mut self, r: &Result<DeltaSummary, SyncError>, cursor_before: Option<String>) {
        self.last_refused = matches!(
            r,
            Err(SyncError::Source(SourceError::Walk {
                source: WalkError::DeltaOrder { .. } | WalkError::Skipped { .. },
                ..
            }))
        );
        self.refused += u64::from(self.last_refused);
        self.note = match r {
            Ok(s) => format!(
                "-> {:?}, {} pages, {} seen (cursor before: {cursor_before:?})",
                s.status, s.pages, s.seen
            ),
            Err(e) => format!("-> error: {e}"),
        };
    }

    /// One delta invocation of `e` (operation `op`); when it reads to the end, I1 and the
    /// rewinds before it are checked.
    async fn delta_checked(&mut self, e: Entity, max_pages: u8, op: usize) {
        let before = self.sim.sim().versions(e);
        let started = now_us();
        if self.delta(e, max_pages).await == Some(RunStatus::Succeeded) {
            self.check_i1(e, &before, Some(op)).await;
            self.check_rewinds(e, started, Some(op)).await;
        }
    }

    /// A delta invocation of `e` that reads its first page and stops before writing it, held
    /// for `hold` operations (`Op::DeltaHeld`); a run that ends before writing anything (the
    /// lease held, a fault, nothing to read) ends as an ordinary `Op::DeltaRun`.
    async fn delta_held(&mut self, e: Entity, max_pages: u8, hold: u8, op: usize) {
        if self.paused.is_some() {
            // One held run at a time; this one runs through (and meets the lease).
            return self.delta_checked(e, max_pages, op).await;
        }
        let mut opts = self.settings.delta.next_run();
        opts.max_pages = self
            .settings
            .delta_max_pages
            .unwrap_or(u64::from(max_pages.max(1)));
        let before = self.sim.sim().versions(e);
        let started_us = now_us();
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.crashes.hold(Gate {
            reached: reached_tx,
            release: release_rx,
        });
        let (client, records, control) = (
            self.client.clone(),
            self.records.clone(),
            self.control.clone(),
        );
        let name = e.name();
        let mut task = tokio::spawn(async move {
            run_delta(
                client.as_ref(),
                records.as_ref(),
                control.as_ref(),
                name,
                &opts,
            )
            .await
        });
        tokio::select! {
            r = reached => {
                if let Ok(held) = r {
                    self.held += 1;
                    self.note = format!("-> held before writing {held:?}");
                    self.paused = Some(Paused { entity: e, before, held, started_us, release, task, left: hold.max(1) });
                    return;
                }
                let r = (&mut task).await.expect("the delta task");
                self.crashes.unhold();
                self.finish_delta(e, &before, started_us, r, Some(op)).await;
            }
            r = &mut task => {
                self.crashes.unhold();
                self.finish_delta(e, &before, started_us, r.expect("the delta task"), Some(op)).await;
            }
        }
    }

    async fn finish_delta(
        &mut self,
        e: Entity,
        before: &[(u64, i64)],
        started_us: i64,
        r: Result<DeltaSummary, SyncError>,
        op: Option<usize>,
    ) {
        self.delta_note(&r, None);
        if r.is_ok_and(|s| s.status == RunStatus::Succeeded) {
            self.check_i1(e, before, op).await;
            self.check_rewinds(e, started_us, op).await;
        }
    }

    /// The held delta run goes on and finishes.
    async fn resume(&mut self, op: Option<usize>) {
        let Some(p) = self.paused.take() else { return };
        let _ = p.release.send(());
        let r = p.task.await.expect("the delta task");
        self.finish_delta(p.entity, &p.before, p.started_us, r, op)
            .await;
    }

    async fn worker_batch(&mut self, max: usize) -> (usize, usize) {
        self.worker_batch_at(max, None).await
    }

    /// One worker invocation; then I5: every upsert event acknowledged (deleted from the
    /// queue) has its change in the store, unless the source has deleted the record since.
    async fn worker_batch_at(&mut self, max: usize, op: Option<usize>) -> (usize, usize) {
        let got = self.queue.receive(max, 0).await.expect("receive");
        if got.is_empty() {
            return (0, 0);
        }
        let msgs: Vec<InMessage> = got.iter().map(InMessage::from).collect();
        let deps = WorkerDeps {
            source: self.client.as_ref(),
            records: self.records.as_ref(),
            control: self.control.as_ref(),
        };
        let r = process_batch(&deps, &msgs, &self.settings.worker).await;
        self.note = format!(
            "-> {} messages, {} failed, {} duplicates, {} written",
            r.messages,
            r.failed.len(),
            r.duplicates,
            r.written
        );
        let mut acked = Vec::new();
        for m in got.iter().filter(|m| !r.failed.contains(&m.message_id)) {
            self.queue.delete(&m.receipt).await.expect("delete");
            acked.push(m.body.clone());
        }
        for body in acked {
            let Some(env) = serde_json::from_str::<QueueEnvelope>(&body).ok() else {
                continue;
            };
            if env.action != Some(EnvelopeAction::Upsert) {
                continue;
            }
            let Some(&(e, id, t)) = env
                .event_id
                .as_ref()
                .and_then(|ev| self.event_versions.get(ev))
            else {
                continue;
            };
            let Some(now) = self.sim.sim().get(e, id) else {
                continue;
            };
            let stored = self
                .records
                .get(e.name(), &id.to_string())
                .await
                .expect("get");
            let have = stored
                .filter(|s| !s.is_deleted())
                .map(|s| s.version.delta_us);
            // Below the event's version is a loss, unless the source itself went back below
            // it since (its clock stepped back: a regression, which reconciliation repairs and
            // the final comparison checks).
            if have.is_none_or(|h| h < t) && now.updated_at_us >= t {
                self.violation(
                    "I5",
                    op,
                    format!(
                        "{} {id}: event {:?} acknowledged, its version {t} not stored ({have:?}; the source now {})",
                        e.name(),
                        env.event_id,
                        now.updated_at_us
                    ),
                );
            }
        }
        (got.len(), r.failed.len())
    }

    /// One step of `e`'s reconciliation; `false` when no run is under way after it (and then
    /// its listing tells the truth again).
    async fn recon_step(&mut self, e: Entity) -> bool {
        let going = self.recon_step_inner(e).await;
        if !self.recon.contains_key(e.name()) {
            self.listings.end_run(e.name());
        }
        going
    }

    async fn recon_step_inner(&mut self, e: Entity) -> bool {
        let name = e.name();
        let lost = self.crashes.take(CrashPoint::ReconcileStepLost);
        let Some(mut r) = self.recon.remove(name) else {
            let input = PlanInput {
                entity: Some(name.to_owned()),
                ..PlanInput::default()
            };
            if let Ok(p) = plan(&self.deps(), &input, &self.settings.reconcile).await
                && let Some(run) = p.runs.into_iter().next()
            {
                self.recon.insert(
                    name,
                    Recon {
                        run,
                        progress: SourceProgress::default(),
                        shard: 0,
                        diff: None,
                        guard: None,
                        apply: None,
                        failures: 0,
                    },
                );
                return true;
            }
            return false;
        };
        let opts = self.settings.reconcile.clone();
        let mut rewound = None;
        let mut regressed = 0;
        let mut note = String::new();
        let deps = self.deps();
        let run = r.run.clone();
        // Each arm: the step's error, or None when it advanced (a lost output advances not).
        let err = if !r.progress.done {
            let input = SourceInput {
                run: run.clone(),
                progress: Some(r.progress.clone()),
            };
            match source(&deps, &input, &opts).await {
                Ok(p) if !lost => {
                    r.progress = p;
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e),
            }
        } else if r.shard < run.shards.len() {
            // The Map state: every shard's Destination step (in parallel there, in order here).
            let mut failed = None;
            for &shard in &run.shards {
                let input = DestinationInput {
                    run: run.clone(),
                    shard,
                };
                if let Err(e) = destination(&deps, &input, &opts).await {
                    failed = Some(e);
                    break;
                }
            }
            if failed.is_none() && !lost {
                r.shard = run.shards.len();
            }
            failed
        } else if r.diff.is_none() {
            match diff_step(&deps, &DiffInput { run: run.clone() }, &opts).await {
                Ok(d) if !lost => {
                    r.diff = Some(d);
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e),
            }
        } else if r.guard.is_none() {
            let input = GuardInput {
                run: run.clone(),
                source: r.progress.clone(),
                diff: r.diff.clone().expect("diffed"),
            };
            match guard(&deps, &input, &opts).await {
                Ok(g) if !lost => {
                    r.guard = Some(g);
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e),
            }
        } else if !r.apply.as_ref().is_some_and(|a| a.done) {
            let input = ApplyInput {
                run: run.clone(),
                diff: r.diff.clone().expect("diffed"),
                guard: r.guard.clone().expect("guarded"),
                approved: false,
                progress: r.apply.clone(),
            };
            match apply(&deps, &input, &opts).await {
                Ok(a) if !lost => {
                    note = format!(
                        "-> apply: {} queued, {} deleted, rewound to {:?}",
                        a.queued, a.deleted, a.rewound_to_us
                    );
                    if let Some(to) = a.rewound_to_us {
                        rewound = Some((e, now_us(), to));
                    }
                    if a.done {
                        regressed = a.regress.as_ref().map_or(0, |g| g.regressed);
                    }
                    r.apply = Some(a);
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e),
            }
        } else {
            let input = FinishInput {
                run: run.clone(),
                source: Some(r.progress.clone()),
                diff: r.diff.clone(),
                guard: r.guard.clone(),
                apply: r.apply.clone(),
                error: None,
                approval: None,
            };
            match finish(&deps, &input, &opts).await {
                Ok(_) if !lost => return false,
                Ok(_) => None,
                Err(e) => Some(e),
            }
        };
        if let Some(e) = err {
            note = format!("-> step failed: {e}");
            r.failures += 1;
            // Step Functions' retries exhausted: the failure path ends the run.
            if r.failures >= 3 {
                let fail = FinishInput::failed(run.clone(), &e);
                let _ = finish(&deps, &fail, &opts).await;
                return false;
            }
        }
        self.rewinds.extend(rewound);
        self.regressed += regressed;
        self.note = note;
        self.recon.insert(name, r);
        true
    }

    async fn op(&mut self, i: usize, op: &Op) {
        let sim = self.sim.sim();
        match op {
            Op::Create { entity, n, fate } => {
                let made = if *n > 1 {
                    sim.create_many(*entity, usize::from(*n), None)
                } else {
                    vec![sim.create(*entity, None)]
                };
                for v in made {
                    self.webhook(*entity, v.id, EnvelopeAction::Upsert, *fate)
                        .await;
                }
            }
            Op::Update { entity, pick, fate } => {
                if let Some(id) = self.pick(*entity, *pick) {
                    sim.update(*entity, id, None);
                    self.webhook(*entity, id, EnvelopeAction::Upsert, *fate)
                        .await;
                }
            }
            Op::UpdateManyOneTimestamp { entity, picks } => {
                let at = sim.now_us();
                for p in picks {
                    if let Some(id) = self.pick(*entity, *p) {
                        sim.update(*entity, id, Some(at));
                        self.webhook(*entity, id, EnvelopeAction::Upsert, Fate::Deliver)
                            .await;
                    }
                }
            }
            Op::Delete { entity, pick, fate } => {
                if let Some(id) = self.pick(*entity, *pick) {
                    sim.delete(*entity, id);
                    self.deleted.entry(entity.name()).or_default().push(id);
                    self.webhook(*entity, id, EnvelopeAction::Delete, *fate)
                        .await;
                }
            }
            Op::FlushDelayed { reverse } => {
                let mut d = std::mem::take(&mut self.delayed);
                if *reverse {
                    d.reverse();
                }
                if !d.is_empty() {
                    self.send(d).await;
                }
            }
            Op::Replay { pick, expired } => {
                if !self.delivered.is_empty() {
                    let mut b = self.delivered[*pick as usize % self.delivered.len()].clone();
                    if *expired && let Ok(mut env) = serde_json::from_str::<QueueEnvelope>(&b) {
                        // The dedup record is gone: the worker sees an event it never had.
                        self.events += 1;
                        env.event_id = Some(format!("ev-replayed-{}", self.events));
                        b = env.to_body();
                    }
                    self.send(vec![b]).await;
                }
            }
            Op::DeltaRun { entity, max_pages } => {
                self.delta_checked(*entity, *max_pages, i).await;
            }
            Op::ClockStep { ms } => sim.set_clock_skew_ms(sim.clock_skew_ms() + ms),
            Op::Recreate { entity, pick, fate } => {
                let gone = self.deleted.entry(entity.name()).or_default();
                if gone.is_empty() {
                    return;
                }
                let id = gone.remove(*pick as usize % gone.len());
                if sim.recreate(*entity, id, None).is_some() {
                    self.recreated += 1;
                    self.webhook(*entity, id, EnvelopeAction::Upsert, *fate)
                        .await;
                }
            }
            Op::LateCommit { entity, pick, fate } => {
                let Some(id) = self.pick(*entity, *pick) else {
                    return;
                };
                let at = sim.now_us() - 600_000_000;
                // Only a change: at or below the current version it would be a regression.
                // (`classify` marks it late after the operation.)
                if sim.get(*entity, id).is_some_and(|v| v.updated_at_us < at)
                    && sim.update(*entity, id, Some(at)).is_some()
                {
                    self.webhook(*entity, id, EnvelopeAction::Upsert, *fate)
                        .await;
                }
            }
            Op::DeltaHeld {
                entity,
                max_pages,
                hold,
            } => self.delta_held(*entity, *max_pages, *hold, i).await,
            Op::ChangeHeld { pick, delete, fate } => {
                let Some((e, id)) = self.paused.as_ref().and_then(|p| {
                    let id = p.held.get(*pick as usize % p.held.len().max(1))?;
                    Some((p.entity, id.parse::<u64>().ok()?))
                }) else {
                    return;
                };
                if sim.get(e, id).is_none() {
                    return;
                }
                if *delete {
                    sim.delete(e, id);
                    self.deleted.entry(e.name()).or_default().push(id);
                    self.webhook(e, id, EnvelopeAction::Delete, *fate).await;
                } else {
                    sim.update(e, id, None);
                    self.webhook(e, id, EnvelopeAction::Upsert, *fate).await;
                }
            }
            Op::WorkerBatch { max } => {
                self.worker_batch_at(usize::from(*max), Some(i)).await;
            }
            Op::ReconcileStep { entity } => {
                self.recon_step(*entity).await;
            }
            Op::SourceFault { kind, count } => {
                let f = match kind {
                    FaultKind::RateLimited => Fault::RateLimited {
                        retry_after_secs: 0,
                    },
                    FaultKind::Unavailable => Fault::Status(503),
                    FaultKind::BadGateway => Fault::Html(502),
                    FaultKind::Truncated => Fault::Truncate,
                    FaultKind::Timeout => Fault::Delay(Duration::from_millis(200)),
                    FaultKind::ListingCut
                    | FaultKind::ListingEmptied
                    | FaultKind::ListingHidesOne
                    | FaultKind::SourceEmptied => {
                        self.listings.arm(*kind);
                        return;
                    }
                };
                sim.push_faults(std::iter::repeat_n(f, usize::from(*count)));
            }
            Op::Crash(p) => self.crashes.arm(*p),
        }
    }

    /// I1 after a delta run that read to the end: every source version from before it is in
    /// the store (or a newer one).
    async fn check_i1(&mut self, e: Entity, before: &[(u64, i64)], op: Option<usize>) {
        let now: BTreeMap<u64, i64> = self.sim.sim().versions(e).into_iter().collect();
        let live = self.read_live(e).await;
        for (id, t) in before {
            if !now.contains_key(id) || self.late.contains(&(e, *id, *t)) {
                continue;
            }
            let have = live.get(&id.to_string()).copied();
            if have.is_none_or(|h| h < *t) {
                self.violation(
                    "I1",
                    op,
                    format!(
                        "{} {id}: source at {t}, store {have:?} after a delta run",
                        e.name()
                    ),
                );
            }
        }
    }

    /// After a delta run of `e` that started at `started_us` and read to the end: every
    /// reconciliation rewind before it brought the late commits at or above its target.
    async fn check_rewinds(&mut self, e: Entity, started_us: i64, op: Option<usize>) {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rewinds)
            .into_iter()
            .partition(|(re, at, _)| *re == e && *at < started_us);
        self.rewinds = rest;
        let Some(to) = due.iter().map(|(_, _, to)| *to).min() else {
            return;
        };
        let source: BTreeMap<u64, i64> = self.sim.sim().versions(e).into_iter().collect();
        let live = self.read_live(e).await;
        let late: Vec<(u64, i64)> = self
            .late
            .iter()
            .filter(|(le, id, t)| *le == e && *t >= to && source.get(id) == Some(t))
            .map(|(_, id, t)| (*id, *t))
            .collect();
        for (id, t) in late {
            let have = live.get(&id.to_string()).copied();
            if have.is_none_or(|h| h < t) {
                self.violation(
                    "I1",
                    op,
                    format!(
                        "{} {id}: late commit at {t} not read by the delta run after the \
                         reconciliation's rewind to {to} (the rewind was lost; store {have:?})",
                        e.name()
                    ),
                );
            }
        }
    }

    async fn delta_cursor(&self, e: Entity) -> Option<i64> {
        let st = self
            .control
            .job_state(e.name(), JobKind::Delta)
            .await
            .expect("job state");
        st.cursor
            .and_then(|c| shared::core::cursor::DeltaCursor::decode(&c).ok())
            .map(|c| c.watermark_us)
    }

    async fn read_live(&self, e: Entity) -> Live {
        let mut out = Live::new();
        for shard in 0..ID_SHARDS {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .records
                    .list_live_ids(e.name(), shard, after.as_deref(), 1_000)
                    .await
                    .expect("list live IDs");
                out.extend(page.items.into_iter().map(|i| (i.id, i.delta_us)));
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
        }
        out
    }

    /// I2, I3 and I4 between two observations of the store.
    async fn observe(&mut self, op: Option<usize>) {
        for e in ENTITIES {
            let name = e.name();
            let now = self.read_live(e).await;
            let source: BTreeMap<String, i64> = self
                .sim
                .sim()
                .versions(e)
                .into_iter()
                .map(|(id, t)| (id.to_string(), t))
                .collect();
            let before = self.live.remove(name).unwrap_or_default();
            let ever = self.ever_live.entry(name).or_default().clone();
            let mut found = Vec::new();
            for (id, t) in &now {
                match before.get(id) {
                    // Lower, but the source's own version now: a regression repaired (the
                    // source's clock went back; reconciliation writes it, `write_regressed`).
                    Some(b) if t < b && source.get(id) != Some(t) => {
                        found.push(("I2", format!("{name} {id}: {b} replaced by the older {t}")));
                    }
                    None if ever.contains(id) && !source.contains_key(id) => {
                        found.push(("I3", format!("{name} {id}: live again, source has it not")));
                    }
                    _ => {}
                }
            }
            for id in before.keys() {
                if !now.contains_key(id) && source.contains_key(id) {
                    found.push(("I4", format!("{name} {id}: deleted, source has it")));
                }
            }
            for (inv, d) in found {
                self.violation(inv, op, d);
            }
            self.ever_live
                .entry(name)
                .or_default()
                .extend(now.keys().cloned());
            self.live.insert(name, now);
        }
    }

    /// The source quiet: in-flight deliveries arrive, reconciliations under way finish, then one
    /// delta run, one reconciliation and a drained queue per entity; the store must equal the
    /// source.
    async fn settle(&mut self) {
        self.sim.sim().clear_faults();
        self.crashes.clear();
        self.resume(None).await;
        let d = std::mem::take(&mut self.delayed);
        if !d.is_empty() {
            self.send(d).await;
        }
        for e in ENTITIES {
            for _ in 0..1_000 {
                if !self.recon_step(e).await || !self.recon.contains_key(e.name()) {
                    break;
                }
            }
            self.recon.remove(e.name());
        }
        // The runs under way met their listings' lies to their end; the final ones are told
        // the truth.
        self.listings.clear();
        // What the finished runs did (a deletion the final runs would repair is still one).
        self.observe(None).await;
        for e in ENTITIES {
            let before = self.sim.sim().versions(e);
            match self.delta(e, 0).await {
                Some(RunStatus::Succeeded) => self.check_i1(e, &before, None).await,
                // A source ignoring its order parameter: the run stops loudly, as it must;
                // reconciliation repairs what delta sync cannot read.
                None if self.last_refused && self.settings.misbehave.is_some() => {}
                other => self.violation(
                    "I6",
                    None,
                    format!("{}: the final delta run ended {other:?}", e.name()),
                ),
            }
            let input = PlanInput {
                entity: Some(e.name().to_owned()),
                ..PlanInput::default()
            };
            let cursor_before = self.delta_cursor(e).await;
            match run_all(&self.deps(), &input, &self.settings.reconcile).await {
                Ok(s) if s.first().is_some_and(|s| s.status == "succeeded") => {
                    self.regressed += s.first().map_or(0, |s| s.regressed);
                    // Repairs over `targeted_limit` rewind the cursor: the delta run after
                    // the reconciliation applies them.
                    if self.delta_cursor(e).await < cursor_before {
                        self.delta(e, 0).await;
                    }
                }
                other => {
                    let what = match other {
                        Ok(s) => format!("{:?}", s.first().map(|s| s.status.clone())),
                        Err(e) => e.to_string(),
                    };
                    self.violation(
                        "I6",
                        None,
                        format!("{}: the final reconciliation: {what}", e.name()),
                    );
                }
            }
        }
        for _ in 0..50 {
            let (got, _) = self.worker_batch(10).await;
            if got == 0 {
                break;
            }
        }
        self.observe(None).await;
        let counts = self.queue.counts().await.expect("queue counts");
        if counts.visible + counts.in_flight > 0 {
            self.violation("I5", None, format!("queue not drained: {counts:?}"));
        }
        // No dead letter, ever: a crash leaves no dedup marker behind (nothing is written
        // before the work), so every redelivery does the work.
        let dead = self
            .queue
            .list_dead_letters(None, 1_000)
            .await
            .expect("dead letters");
        for d in dead {
            let ev = serde_json::from_str::<QueueEnvelope>(&d.body)
                .ok()
                .and_then(|e| e.event_id);
            self.violation("I5", None, format!("dead letter {ev:?}"));
        }
        for e in ENTITIES {
            self.compare(e).await;
        }
    }

    /// I6: the same live IDs, versions and payloads; deletions soft-deleted; no lease held.
    async fn compare(&mut self, e: Entity) {
        let name = e.name();
        let sim = self.sim.sim();
        let source: BTreeMap<String, i64> = sim
            .versions(e)
            .into_iter()
            .map(|(id, t)| (id.to_string(), t))
            .collect();
        let live = self.read_live(e).await;
        let mut found = Vec::new();
        for (id, t) in &source {
            match live.get(id) {
                None => found.push(format!("{name} {id}: missing")),
                Some(h) if h != t => found.push(format!("{name} {id}: stale ({h} vs {t})")),
                Some(_) => {
                    let stored = self.records.get(name, id).await.expect("get");
                    let want: Option<serde_json::Value> = sim
                        .record_json(e, id.parse().expect("numeric"))
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .map(|mut v: serde_json::Value| v["data"].take());
                    if stored.map(|s| s.payload) != want {
                        found.push(format!("{name} {id}: payload differs"));
                    }
                }
            }
        }
        for id in live.keys().filter(|id| !source.contains_key(*id)) {
            found.push(format!("{name} {id}: live, deleted at the source"));
        }
        for kind in [JobKind::Delta, JobKind::Reconcile] {
            let st = self.control.job_state(name, kind).await.expect("job state");
            if st.lease_holder.is_some() && st.lease_expires_us.is_some_and(|x| x > now_us()) {
                found.push(format!("{name}: {kind:?} lease still held (a stalled run)"));
            }
        }
        for d in found {
            self.violation("I6", None, d);
        }
    }
}

//! `syncctl demo`: the whole delta cycle with no AWS account. Starts the bundled simulator
//! in-process, backfills into the embedded local store, changes the source (creates, updates,
//! a tie of many records on one timestamp, updates while a run is under way), runs delta again
//! and checks that the store equals the source. Then the webhook leg: `serve` in-process, the
//! simulator's signed deliveries pointed at it, and each change's latency from the source to
//! the store. Then the reconciliation leg: drift behind the engine's back (deletions, a missed
//! and a stale record) repaired by `syncctl reconcile`'s code, and the guard refusing to act on
//! an empty listing.

use crate::delta::describe;
use base64::Engine;
use clap::Args;
use shared::Config;
use shared::adapters::local::LocalStore;
use shared::config::{AuthConfig, Secret, SecretRef};
use shared::model::ID_SHARDS;
use shared::ports::RecordStore;
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, DeltaSummary, PageHook, run_delta};
use source_sim::{
    Entity, PcoEncoding, RetrySchedule, SimConfig, SimHandle, WebhookScheme, WebhookTarget,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// People at the source before the backfill.
    #[arg(long, default_value_t = 5_000)]
    pub people: usize,
    /// Donations at the source before the backfill.
    #[arg(long, default_value_t = 2_000)]
    pub donations: usize,
    /// Where the demo's local store goes (replaced at each run).
    #[arg(long, default_value = ".local/demo.sqlite")]
    pub db: PathBuf,
}

/// Differences between the store's live records and the source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub stale: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.stale.is_empty()
    }
}

/// Compare every live record of `entity` in the store with the simulator's current set.
pub async fn compare(
    store: &dyn RecordStore,
    sim: &SimHandle,
    entity: Entity,
) -> Result<Diff, String> {
    let source: BTreeMap<String, i64> = sim
        .sim()
        .versions(entity)
        .into_iter()
        .map(|(id, t)| (id.to_string(), t))
        .collect();
    let mut dest = BTreeMap::new();
    for shard in 0..ID_SHARDS {
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_live_ids(entity.name(), shard, after.as_deref(), 1_000)
                .await
                .map_err(|e| e.to_string())?;
            dest.extend(page.items.into_iter().map(|i| (i.id, i.delta_us)));
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    }
    let mut d = Diff::default();
    for (id, t) in &source {
        match dest.get(id) {
            None => d.missing.push(id.clone()),
            Some(dt) if dt != t => d.stale.push(id.clone()),
            Some(_) => {}
        }
    }
    d.extra = dest
        .keys()
        .filter(|id| !source.contains_key(*id))
        .cloned()
        .collect();
    Ok(d)
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", args.db.display()));
    }
    if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let secret = "demo:demo-secret";
    let auth_header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    let sim = source_sim::start(SimConfig {
        people: args.people,
        donations: args.donations,
        auth: Some(auth_header),
        ..SimConfig::default()
    })
    .await
    .map_err(|e| format!("cannot start the simulator: {e}"))?;
    println!(
        "▶ simulator at {} ({} people, {} donations)",
        sim.base_url(),
        args.people,
        args.donations
    );

    let mut config = Config::from_toml_str(
        shared::config::EMBEDDED,
        std::path::Path::new(shared::config::EMBEDDED_NAME),
    )
    .map_err(|e| e.to_string())?;
    config.source.base_url = sim.base_url();
    config.source.auth = AuthConfig::Basic {
        secret: SecretRef {
            env: "SOURCE_SECRET".into(),
        },
    };
    let source =
        SourceClient::new(&config, Some(Secret::new(secret))).map_err(|e| e.to_string())?;
    let store = LocalStore::open(&args.db).map_err(|e| format!("{}: {e}", args.db.display()))?;
    println!("▶ local store at {}", args.db.display());

    println!("\n1. Backfill");
    for e in [Entity::People, Entity::Donations] {
        let s = delta(&source, &store, e.name(), None).await?;
        println!("   {}", describe(&s));
    }
    check(&store, &sim).await?;

    println!(
        "\n2. The source changes: 5 created, 5 updated, 1 deleted (delta cannot see deletions: reconciliation's job), 250 people created on one timestamp"
    );
    let sim_ = sim.sim();
    for _ in 0..5 {
        sim_.create(Entity::People, None);
    }
    for id in [1, 2, 3, 500, 1_000] {
        sim_.update(Entity::People, id, None);
    }
    sim_.delete(Entity::People, 7);
    let tie_at = sim_.now_us() / 1_000_000 * 1_000_000;
    sim_.create_many(Entity::People, 250, Some(tie_at));
    sim_.update(Entity::Donations, 42, None);

    println!("\n3. Delta again, while 3 more people change during the run (after its first page)");
    let fired = Arc::new(AtomicBool::new(false));
    let (f, s2) = (fired.clone(), sim.sim());
    let hook = PageHook(Arc::new(move |_: &DeltaSummary| {
        if !f.swap(true, Ordering::SeqCst) {
            for id in [10, 11, 12] {
                s2.update(Entity::People, id, None);
            }
        }
    }));
    let s = delta(&source, &store, "people", Some(hook)).await?;
    println!("   {}", describe(&s));
    let s = delta(&source, &store, "donations", None).await?;
    println!("   {}", describe(&s));
    println!("   (records changed during a run are after its ceiling: the next run reads them)");
    let s = delta(&source, &store, "people", None).await?;
    println!("   {}", describe(&s));

    println!("\n4. Compare the store with the source");
    let people = compare(&store, &sim, Entity::People).await?;
    let extra_ok = people.extra == ["7"] && people.missing.is_empty() && people.stale.is_empty();
    let donations = compare(&store, &sim, Entity::Donations).await?;
    if !extra_ok || !donations.is_empty() {
        return Err(format!(
            "the store differs from the source: people {people:?}, donations {donations:?}"
        ));
    }
    println!(
        "   people: every source record present at its latest version; 1 extra (id 7, deleted at the source: the daily reconciliation soft-deletes it)"
    );
    println!("   donations: identical");
    println!(
        "   API calls: {}, retries: {}, 429s: {}",
        source.stats().requests,
        source.stats().retries,
        source.stats().rate_limited
    );

    println!(
        "\n5. Webhooks: the simulator's signed deliveries → syncctl serve (ingest, local queue, worker) → the store"
    );
    webhook_leg(&config, &store, &sim, secret).await?;

    println!(
        "\n6. Reconciliation: drift neither delta sync nor a webhook saw, repaired; then the guard"
    );
    let spill = args.db.with_extension("spill");
    let _ = std::fs::remove_dir_all(&spill);
    let result = reconcile_leg(&config, &store, &sim, secret, &spill, true).await;
    let _ = std::fs::remove_dir_all(&spill);
    result?;
    println!(
        "\n✔ demo finished: `syncctl status --db {}` shows the cursors and runs",
        args.db.display()
    );
    Ok(())
}

/// Fail the demo unless `cond` holds.
fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// The reconciliation leg: drift at the source behind the engine's back (no delta run, no
/// webhook: the webhook target is off), a local reconciliation of every entity, the queued
/// fetches drained by the worker (unless `drain` is false: the tests' way to see the final
/// check fail), the store compared with the source; then a source client pointed at an empty
/// account, whose empty listing the guard refuses to act on.
///
/// The expected counts are taken from the store's differences before the drift plus the drift
/// made here, so the leg holds from any starting point the demo's comparison describes.
pub async fn reconcile_leg(
    config: &Config,
    store: &LocalStore,
    sim: &SimHandle,
    source_secret: &str,
    spill: &std::path::Path,
    drain: bool,
) -> Result<(), String> {
    use crate::reconcile::{describe_drained, drain_queue};
    use shared::sync::reconcile::{Decision, ReconcileDeps};

    // Silence: no deliveries from here on.
    sim.set_webhook_target(None).map_err(|e| e.to_string())?;
    let before_people = compare(store, sim, Entity::People).await?;
    let before_donations = compare(store, sim, Entity::Donations).await?;

    let s = sim.sim();
    let gone_people = [20u64, 21, 22];
    for id in gone_people {
        expect(s.delete(Entity::People, id), || {
            format!("person {id}: no such record at the source")
        })?;
    }
    expect(s.delete(Entity::Donations, 11), || {
        "donation 11: no such record at the source".into()
    })?;
    let missed = s.create(Entity::People, None).id;
    let stale = s
        .update(Entity::People, 2, None)
        .ok_or("person 2: no such record at the source")?;
    println!(
        "   at the source, silently: people {} and donation 11 deleted, person {missed} created, person 2 updated",
        gone_people.map(|i| i.to_string()).join(", ")
    );
    if !before_people.extra.is_empty() {
        println!(
            "   (the store also still has people {} deleted earlier, which delta sync cannot see)",
            before_people.extra.join(", ")
        );
    }

    let source =
        SourceClient::new(config, Some(Secret::new(source_secret))).map_err(|e| e.to_string())?;
    let spill_store = shared::adapters::local::LocalSpill::new(spill)
        .map_err(|e| format!("{}: {e}", spill.display()))?;
    let queue_options = shared::adapters::local::QueueOptions::default();
    let queue = store.queue("work", queue_options.clone());
    let deps = ReconcileDeps {
        config,
        source: &source,
        records: store,
        control: store,
        spill: &spill_store,
        queue: &queue,
    };
    let entities = [Entity::People, Entity::Donations].map(|e| e.name().to_owned());
    let started = Instant::now();
    let report = reconcile_and_show(&deps, &entities).await;
    println!("   ({} for both entities)", ms(started.elapsed()));
    let want = [
        (
            "people",
            (before_people.extra.len() + gone_people.len()) as u64,
            before_people.missing.len() as u64 + 1,
            before_people.stale.len() as u64 + 1,
        ),
        (
            "donations",
            before_donations.extra.len() as u64 + 1,
            before_donations.missing.len() as u64,
            before_donations.stale.len() as u64,
        ),
    ];
    for (row, (entity, deleted, missed_n, stale_n)) in report.runs.iter().zip(want) {
        expect(
            row.entity == entity
                && row.status == "succeeded"
                && row.guard == Some(Decision::Delete)
                && (row.deleted, row.missed, row.stale, row.queued)
                    == (deleted, missed_n, stale_n, missed_n + stale_n),
            || {
                format!(
                    "reconciliation of {entity}: expected succeeded with {deleted} deleted, {missed_n} missed, {stale_n} stale queued; got {row:?}"
                )
            },
        )?;
    }
    for id in gone_people {
        let rec = store
            .get("people", &id.to_string())
            .await
            .map_err(|e| e.to_string())?;
        expect(rec.as_ref().is_some_and(|r| r.is_deleted()), || {
            format!("person {id}: not soft-deleted by the reconciliation ({rec:?})")
        })?;
    }
    println!(
        "   ✔ deletions confirmed one by one with the source (a JSON 404) and soft-deleted; person {missed} (missed) and person 2 (stale) queued"
    );

    if drain {
        let wdeps = shared::sync::worker::WorkerDeps {
            source: &source,
            records: store,
            control: store,
        };
        let d = drain_queue(&queue, &wdeps).await?;
        println!("   worker: {}", describe_drained(&d));
        expect(d.failed == 0 && d.written as u64 >= 2, || {
            format!("the worker did not fetch the queued records: {d:?}")
        })?;
    }
    let people = compare(store, sim, Entity::People).await?;
    let donations = compare(store, sim, Entity::Donations).await?;
    expect(people.is_empty() && donations.is_empty(), || {
        format!(
            "after reconciliation the store differs from the source: people {people:?}, donations {donations:?}"
        )
    })?;
    let got = store
        .get("people", &missed.to_string())
        .await
        .map_err(|e| e.to_string())?;
    expect(got.is_some_and(|r| !r.is_deleted()), || {
        format!("person {missed}: not in the store")
    })?;
    let got = store.get("people", "2").await.map_err(|e| e.to_string())?;
    expect(
        got.is_some_and(|r| r.version.delta_us == stale.updated_at_us),
        || "person 2: not at its latest version".into(),
    )?;
    println!("   ✔ store equals source again: nothing extra, nothing missing, nothing stale");

    // The guard: the same engine pointed at an empty account (a wrong base URL) lists nothing.
    let empty = source_sim::start(SimConfig {
        people: 0,
        donations: 0,
        auth: sim.config().auth.clone(),
        ..SimConfig::default()
    })
    .await
    .map_err(|e| format!("cannot start the empty simulator: {e}"))?;
    let mut wrong = config.clone();
    wrong.source.base_url = empty.base_url();
    let wrong_source =
        SourceClient::new(&wrong, Some(Secret::new(source_secret))).map_err(|e| e.to_string())?;
    println!(
        "   the guard: source base URL switched to {} (an account with no people)",
        empty.base_url()
    );
    let deps = ReconcileDeps {
        source: &wrong_source,
        ..deps
    };
    let report = reconcile_and_show(&deps, &entities[..1]).await;
    let row = &report.runs[0];
    expect(
        row.status == "guard_blocked"
            && row.deleted == 0
            && row.source_count == Some(0)
            && row.guard_reason().is_some_and(|r| r.contains("empty")),
        || format!("the guard did not block an empty listing: {row:?}"),
    )?;
    let people = compare(store, sim, Entity::People).await?;
    expect(people.is_empty(), || {
        format!("the blocked run changed the store: {people:?}")
    })?;
    println!(
        "   ✔ the guard tripped on the empty listing: nothing deleted, the store still equals the source"
    );
    empty.shutdown().await;
    Ok(())
}

/// The webhook demo's signing secret (the simulator and the ingest share it).
const WEBHOOK_SECRET: &str = "demo-webhook-secret";
/// A change not visible in the store within this long fails the demo.
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// One change at the source and how long it took to show in the store.
struct Change {
    what: String,
    entity: Entity,
    id: u64,
    /// `Some(updated_at)`: an upsert to see at that version; `None`: a delete.
    updated_at_us: Option<i64>,
}

async fn webhook_leg(
    config: &Config,
    store: &LocalStore,
    sim: &SimHandle,
    source_secret: &str,
) -> Result<(), String> {
    let source =
        SourceClient::new(config, Some(Secret::new(source_secret))).map_err(|e| e.to_string())?;
    let source = Arc::new(source);
    let serve = crate::serve::start(crate::serve::ServeOptions::new(
        store.clone(),
        config.clone(),
        vec![WEBHOOK_SECRET.to_owned()],
        source.clone(),
    ))
    .await?;
    sim.set_webhook_target(Some(
        WebhookTarget::new(
            serve.webhook_url.clone(),
            WebhookScheme::Pco {
                encoding: PcoEncoding::Hex,
            },
            WEBHOOK_SECRET,
        )
        .with_retry(RetrySchedule::fast()),
    ))
    .map_err(|e| e.to_string())?;
    println!(
        "   serve listening on {}; the simulator posts each change to {} (X-PCO-Webhooks-Authenticity, hex)",
        serve.url, serve.webhook_url
    );
    let result = changes_and_latencies(store, sim).await;
    // Stop delivering before the server goes.
    let _ = sim.set_webhook_target(None);
    let stats = serve.stats();
    serve.shutdown().await?;
    let latencies = result?;

    let mut sorted = latencies.clone();
    sorted.sort();
    let p50 = sorted[(sorted.len() - 1) / 2];
    let max = sorted[sorted.len() - 1];
    let ws = sim.webhook_stats();
    println!(
        "   {} changes: p50 {}, max {} (limit {} s)",
        latencies.len(),
        ms(p50),
        ms(max),
        VISIBLE_WITHIN.as_secs()
    );
    println!(
        "   {} webhooks delivered ({} retries), {} queued, {} batches, {} get_by_id, {} written, {} soft-deleted, {} failed",
        ws.delivered,
        ws.retries,
        stats.events_queued,
        stats.batches,
        stats.get_by_id_calls,
        stats.written,
        stats.deleted,
        stats.messages_failed
    );
    let people = compare(store, sim, Entity::People).await?;
    let donations = compare(store, sim, Entity::Donations).await?;
    if people.extra != ["7"]
        || !people.missing.is_empty()
        || !people.stale.is_empty()
        || !donations.is_empty()
    {
        return Err(format!(
            "after the webhooks the store differs from the source: people {people:?}, donations {donations:?}"
        ));
    }
    println!(
        "   ✔ store equals source again (deletions delivered by webhook are soft-deleted; id 7 is still reconciliation's)"
    );
    Ok(())
}

/// Make each change and wait until the store shows it; its latency, or an error after
/// [`VISIBLE_WITHIN`].
async fn changes_and_latencies(
    store: &LocalStore,
    sim: &SimHandle,
) -> Result<Vec<Duration>, String> {
    let sim = sim.sim();
    let upsert = |what: String, entity: Entity, v: Option<source_sim::RecordVersion>| {
        v.map(|v| Change {
            what,
            entity,
            id: v.id,
            updated_at_us: Some(v.updated_at_us),
        })
        .ok_or_else(|| format!("{}: no such record at the source", entity.name()))
    };
    let mut steps: Vec<Box<dyn Fn() -> Result<Change, String>>> = Vec::new();
    for id in [1u64, 2, 500] {
        let s = sim.clone();
        steps.push(Box::new(move || {
            upsert(
                format!("person {id} updated"),
                Entity::People,
                s.update(Entity::People, id, None),
            )
        }));
    }
    let s = sim.clone();
    steps.push(Box::new(move || {
        let v = s.create(Entity::People, None);
        upsert(format!("person {} created", v.id), Entity::People, Some(v))
    }));
    let s = sim.clone();
    steps.push(Box::new(move || {
        upsert(
            "donation 42 updated".into(),
            Entity::Donations,
            s.update(Entity::Donations, 42, None),
        )
    }));
    let s = sim.clone();
    steps.push(Box::new(move || {
        let v = s.create(Entity::Donations, None);
        upsert(
            format!("donation {} created", v.id),
            Entity::Donations,
            Some(v),
        )
    }));
    for (entity, id) in [(Entity::People, 3u64), (Entity::Donations, 10)] {
        let s = sim.clone();
        steps.push(Box::new(move || {
            if !s.delete(entity, id) {
                return Err(format!(
                    "{} {id}: no such record at the source",
                    entity.name()
                ));
            }
            Ok(Change {
                what: format!("{} {id} deleted", noun(entity)),
                entity,
                id,
                updated_at_us: None,
            })
        }));
    }
    let s = sim.clone();
    steps.push(Box::new(move || {
        upsert(
            "person 1 updated again".into(),
            Entity::People,
            s.update(Entity::People, 1, None),
        )
    }));

    let mut latencies = Vec::new();
    for step in &steps {
        let start = Instant::now();
        let change = step()?;
        let latency = wait_visible(store, &change, start, VISIBLE_WITHIN).await?;
        println!(
            "   {:<24} → in the store after {}",
            change.what,
            ms(latency)
        );
        latencies.push(latency);
    }
    Ok(latencies)
}

async fn wait_visible(
    store: &LocalStore,
    c: &Change,
    start: Instant,
    within: Duration,
) -> Result<Duration, String> {
    let id = c.id.to_string();
    loop {
        let rec = store
            .get(c.entity.name(), &id)
            .await
            .map_err(|e| e.to_string())?;
        let visible = match (&rec, c.updated_at_us) {
            (Some(r), Some(t)) => r.version.delta_us == t && !r.is_deleted(),
            (Some(r), None) => r.is_deleted(),
            (None, _) => false,
        };
        if visible {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!(
                "{}: not visible in the store within {:?} (webhook → ingest → queue → worker)",
                c.what, within
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn noun(e: Entity) -> &'static str {
    match e {
        Entity::People => "person",
        Entity::Donations => "donation",
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn delta(
    source: &SourceClient,
    store: &LocalStore,
    entity: &str,
    hook: Option<PageHook>,
) -> Result<DeltaSummary, String> {
    let opts = DeltaOptions {
        on_page: hook,
        ..DeltaOptions::default()
    };
    run_delta(source, store, store, entity, &opts)
        .await
        .map_err(|e| format!("{entity}: {e}"))
}

async fn check(store: &LocalStore, sim: &SimHandle) -> Result<(), String> {
    for e in [Entity::People, Entity::Donations] {
        let d = compare(store, sim, e).await?;
        if !d.is_empty() {
            return Err(format!(
                "{}: store differs from the source: {d:?}",
                e.name()
            ));
        }
    }
    println!("   ✔ store equals source");
    Ok(())
}

/// Reconcile `entities` with the default options and print the report's table, indented.
async fn reconcile_and_show(
    deps: &shared::sync::reconcile::ReconcileDeps<'_>,
    entities: &[String],
) -> crate::reconcile::Report {
    let runs = crate::reconcile::reconcile_entities(
        deps,
        entities,
        &shared::sync::reconcile::PlanInput::default(),
        &shared::sync::reconcile::ReconcileOptions::default(),
    )
    .await;
    let report = crate::reconcile::Report {
        runs,
        queue: "work".into(),
        worker: None,
    };
    for line in report.render().lines() {
        println!("   {line}");
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_demo_runs_end_to_end_and_its_check_can_fail() {
        let dir = testkit::TempDir::new("syncctl-demo");
        let db = dir.join("demo.sqlite");
        run(DemoArgs {
            people: 300,
            donations: 100,
            db: db.clone(),
        })
        .await
        .unwrap();
        // The comparison sees a difference when there is one.
        let sim = testkit::sim::people(3).await;
        let store = LocalStore::open(&db).unwrap();
        let d = compare(&store, &sim, Entity::People).await.unwrap();
        assert!(!d.is_empty());
    }

    #[tokio::test]
    async fn the_webhook_leg_fails_when_a_change_does_not_show() {
        let store = LocalStore::in_memory().unwrap();
        let upsert = Change {
            what: "person 1 updated".into(),
            entity: Entity::People,
            id: 1,
            updated_at_us: Some(1),
        };
        let e = wait_visible(&store, &upsert, Instant::now(), Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(e.starts_with("person 1 updated: not visible"), "{e}");
        let delete = Change {
            updated_at_us: None,
            ..upsert
        };
        assert!(
            wait_visible(&store, &delete, Instant::now(), Duration::from_millis(30))
                .await
                .is_err()
        );
    }
}

//! The sync worker: a batch of queue messages ("sync this record", from webhooks or from
//! reconciliation) becomes at most one `get_by_id` per record and a write under the version rule.
//!
//! - Dedup by event ID, one write per event: one read of the batch's markers first (an event
//!   marked processed is a duplicate: done, not fetched), the work, then a `completed` marker
//!   for each event whose work succeeded (kept for the sender's retry horizon). Nothing is
//!   written before the work, so a failure or a crash leaves no marker and the redelivery
//!   does the work: nothing is lost, and no claim outlives a crash to fail the redeliveries.
//!   Two deliveries of one event processed at the same moment both fetch (the read misses
//!   the other's marker): one more source request, never a wrong write, since the version rule
//!   decides every write. Powertools' claim-then-complete pattern closes that race for two
//!   writes per event; the race is rare (a sender retries after its timeout, SQS duplicates
//!   seldom) and its cost is one request, so one write it is (issue 16's cost benchmark:
//!   $0.625 per million events less).
//! - Coalescing: messages for one `(entity, id)` share one fetch.
//! - A JSON 404 soft-deletes, conditional on the record not having been fetched at or after the
//!   404's request was sent (`core::decide_delete`). One clock (`SourceApi::fetch_by_id`): the
//!   404's evidence time and a found record's `fetched_at_us` are both the send time of the
//!   attempt that produced the answer, after the rate limiter's and the backoff's waits, so a
//!   fetch that read the record before its deletion never outranks the delete nor restores it.
//!   A delete event is confirmed by the fetch: when the source still has the record (a delete
//!   that raced a re-create), the live data is written.
//! - A 404 storm (a wrong base path, an API change) looks like mass deletion: when the share of
//!   unexpected 404s passes the ceiling, nothing is deleted and those messages fail. The share
//!   is checked twice: in the batch, and in the entity's rolling window in the control table
//!   (`ControlStore::count_not_found`: this 10-minute bucket and the previous one, one write
//!   per entity and batch), so that a trickle of one or two messages per batch trips too.
//! - One span per message (`message`: message ID, event ID, entity, record ID; never its
//!   body), in which its `complete_event` runs and its failure is logged.
//! - A record the source has but that cannot be synced (`SourceError::Rejected`: a null or
//!   unreadable delta value, an unpaired surrogate escape, ...) or that the store refuses as too
//!   large: its messages are done (deleted from the queue, not retried: retrying cannot help
//!   until the source changes the record, and that change sends a new event), counted in
//!   `RecordsRejected` (per entity, `Strategy` = `worker`) and logged with the ID and reason.
//!   Never a delete, announced or not: the source has the record.
//! - The fetches respect the invocation's stop instant (`WorkerOptions::stop_at`): a fetch
//!   that would wait past it fails its messages at once (redelivered by SQS); nothing of it is
//!   written or deleted.

use crate::config::Env;
use crate::core::timefmt::now_us;
use crate::error::{ConfigError, SourceError, StoreError};
use crate::model::{DeleteOutcome, Fetched, Micros, Record, RejectReason, Strategy, WriteOutcome};
use crate::ports::{ControlStore, NotFoundCounts, RecordStore, SourceApi};
use crate::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use tracing::Instrument;

/// When the dedup marker is written (a negative-control switch, compiled for tests only).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// Mark completed after the work succeeded (the product).
    CompletedAfter,
    /// Negative control for tests: mark completed before the work, so a failure loses the
    /// message on redelivery.
    CompletedFirst,
}

/// How a batch is processed. `Default` is the production setting; [`WorkerOptions::from_env`]
/// the deployed one.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Share of fetched records answering an unexpected 404 (no delete event for them) at or
    /// above which nothing is deleted: in the batch, and in the entity's rolling 404 window.
    pub not_found_ceiling: f64,
    /// The ceiling applies from this many unexpected 404s in a batch, or in the window (a lone
    /// late update of a deleted record must still delete).
    pub not_found_min: usize,
    /// How long a processed event ID is remembered (at least the sender's retry horizon).
    pub retain_us: Micros,
    /// `get_by_id` calls in flight (the client's rate limiter still applies).
    pub concurrency: usize,
    /// The fetches run inside `core::deadline::within(stop_at)`: a fetch whose wait (a
    /// `Retry-After`, a backoff) would pass it fails at once with `SourceError::Deadline`, and
    /// its message is reported failed for SQS to redeliver. The handler sets it, a margin
    /// before the invocation's deadline; `None`: no deadline.
    pub stop_at: Option<std::time::Instant>,
    #[cfg(any(test, feature = "testing"))]
    pub dedup: DedupMode,
    /// Negative control for tests: `false` deletes on a delete event without asking the source.
    #[cfg(any(test, feature = "testing"))]
    pub confirm_deletes: bool,
    /// Negative control for tests: `false` fails the messages of a record that cannot be
    /// synced (redelivered until the DLQ takes them), as before per-record rejection.
    #[cfg(any(test, feature = "testing"))]
    pub per_record_rejection: bool,
    /// Negative control for tests: `true` takes a 404's evidence time before the fetch (before
    /// the rate limiter's and the backoff's waits), as the worker did before one clock.
    #[cfg(any(test, feature = "testing"))]
    pub evidence_before_waits: bool,
    /// Negative control for tests: `false` checks the 404 ceiling in the batch only (no
    /// rolling window in the control table), as before.
    #[cfg(any(test, feature = "testing"))]
    pub not_found_window: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            not_found_ceiling: 0.5,
            not_found_min: 5,
            retain_us: 8 * 24 * 3600 * 1_000_000,
            concurrency: 8,
            stop_at: None,
            #[cfg(any(test, feature = "testing"))]
            dedup: DedupMode::CompletedAfter,
            #[cfg(any(test, feature = "testing"))]
            confirm_deletes: true,
            #[cfg(any(test, feature = "testing"))]
            per_record_rejection: true,
            #[cfg(any(test, feature = "testing"))]
            evidence_before_waits: false,
            #[cfg(any(test, feature = "testing"))]
            not_found_window: true,
        }
    }
}

/// The environment variables [`WorkerOptions::from_env`] reads.
pub const NOT_FOUND_CEILING_VAR: &str = "NOT_FOUND_CEILING_PERCENT";
pub const NOT_FOUND_MIN_VAR: &str = "NOT_FOUND_MIN_COUNT";
pub const RETENTION_VAR: &str = "EVENT_RETENTION_DAYS";
pub const CONCURRENCY_VAR: &str = "WORKER_CONCURRENCY";

const US_PER_DAY: Micros = 86_400 * 1_000_000;

impl WorkerOptions {
    /// The deployed settings: `NOT_FOUND_CEILING_PERCENT`, `NOT_FOUND_MIN_COUNT`,
    /// `EVENT_RETENTION_DAYS` and `WORKER_CONCURRENCY`, whole numbers, the `Default` when
    /// unset; a value out of range or not a number fails, naming its variable.
    pub fn from_env(env: Env<'_>) -> Result<Self, ConfigError> {
        let d = WorkerOptions::default();
        // A percentage; 0 would refuse every 404, so a deleted record could never be deleted.
        let ceiling = env.num(
            NOT_FOUND_CEILING_VAR,
            (d.not_found_ceiling * 100.0).round() as u64,
            1..=100,
        )?;
        // At least one 404; a batch holds at most 10 messages on SQS, but a larger count is
        // harmless (the ceiling never applies), so the bound only catches typos.
        let min = env.num(NOT_FOUND_MIN_VAR, d.not_found_min as u64, 1..=10_000)?;
        // At least a day (SQS keeps a message up to 14 days, a sender retries for days); at
        // most a year, the control table's TTL being the only cost.
        let days = env.num(
            RETENTION_VAR,
            (d.retain_us / US_PER_DAY).unsigned_abs(),
            1..=365,
        )?;
        // Fetches in flight: at least one; the source's rate limit, not this, is the real
        // bound, and 64 is far past a batch of 10 records.
        let concurrency = env.num(CONCURRENCY_VAR, d.concurrency as u64, 1..=64)?;
        Ok(WorkerOptions {
            not_found_ceiling: ceiling as f64 / 100.0,
            not_found_min: min as usize,
            retain_us: days as Micros * US_PER_DAY,
            concurrency: concurrency as usize,
            ..d
        })
    }

    /// Negative control: the dedup marker written before the work.
    #[cfg(any(test, feature = "testing"))]
    fn completes_first(&self) -> bool {
        self.dedup == DedupMode::CompletedFirst
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn completes_first(&self) -> bool {
        false
    }

    /// Negative control: a record that cannot be synced fails its messages.
    #[cfg(any(test, feature = "testing"))]
    fn fails_on_rejected(&self) -> bool {
        !self.per_record_rejection
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn fails_on_rejected(&self) -> bool {
        false
    }

    /// Negative control: a 404's evidence time taken before the fetch's waits.
    #[cfg(any(test, feature = "testing"))]
    fn evidence_before_waits(&self) -> bool {
        self.evidence_before_waits
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn evidence_before_waits(&self) -> bool {
        false
    }

    /// Whether the rolling 404 window is kept and checked (always, without `testing`).
    #[cfg(any(test, feature = "testing"))]
    fn keeps_window(&self) -> bool {
        self.not_found_window
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn keeps_window(&self) -> bool {
        true
    }

    /// Whether `counts` of unexpected 404s among fetches pass the ceiling (the one rule for
    /// the batch and the rolling window).
    fn trips(&self, counts: NotFoundCounts) -> bool {
        counts.not_found >= self.not_found_min.max(1) as u64
            && counts.fetched > 0
            && counts.not_found as f64 / counts.fetched as f64 >= self.not_found_ceiling
    }
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InMessage {
    pub message_id: String,
    pub body: String,
}

impl From<&crate::ports::ReceivedMessage> for InMessage {
    fn from(m: &crate::ports::ReceivedMessage) -> Self {
        InMessage {
            message_id: m.message_id.clone(),
            body: m.body.clone(),
        }
    }
}

/// What a batch did. `failed` are the message IDs to report as batch item failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub messages: usize,
    pub failed: Vec<String>,
    /// Messages that could not be decoded (they fail until the DLQ takes them).
    pub poison: usize,
    /// Events already processed (or repeated inside the batch).
    pub duplicates: usize,
    pub get_by_id_calls: usize,
    pub written: usize,
    pub unchanged: usize,
    pub stale: usize,
    /// Records erased here (`syncctl erase`): fetched, refused by the store, unwritten.
    pub suppressed: usize,
    pub deleted: usize,
    /// 404s that deleted nothing (already deleted, never stored, or fetched after the 404).
    pub delete_skipped: usize,
    pub not_found: usize,
    /// The batch's own 404 ceiling passed (see `window_tripped` for the rolling window).
    pub ceiling_tripped: bool,
    /// Entities whose rolling 404 window (this 10-minute bucket and the previous one, in the
    /// control table) passed the ceiling: none of their records was deleted in this batch.
    pub window_tripped: Vec<String>,
    /// Records the source has that cannot be synced (`SourceError::Rejected`) or that the
    /// store refused as too large, per entity: their messages are done, not retried.
    pub rejected: BTreeMap<String, u64>,
}

impl BatchReport {
    pub fn all_failed(&self) -> bool {
        self.messages > 0 && self.failed.len() == self.messages
    }
}

/// The stores and source a worker uses.
pub struct WorkerDeps<'a> {
    pub source: &'a dyn SourceApi,
    pub records: &'a dyn RecordStore,
    pub control: &'a dyn ControlStore,
}

/// Why a message failed (logged with its ID; never its body).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("undecodable message: {0}")]
    Poison(String),
    /// The batch's read of processed events failed (every message with an event ID fails).
    #[error("reading processed events: {0}")]
    Dedup(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The record's fetch or write failed (shared by every message of the record).
    #[error("{0}")]
    Group(String),
    #[error("404 ceiling: {unexpected} of {fetched} records not found; nothing deleted")]
    Ceiling { unexpected: usize, fetched: usize },
    #[error(
        "404 window of {entity}: {} of {} records not found in the last 10 to 20 minutes; \
         nothing of {entity} deleted", counts.not_found, counts.fetched
    )]
    Window {
        entity: String,
        counts: NotFoundCounts,
    },
    #[error("404 window of {entity} unknown ({source}); nothing of {entity} deleted")]
    WindowUnknown {
        entity: String,
        #[source]
        source: StoreError,
    },
}

/// A decoded message's place in the batch.
struct Item {
    message_id: String,
    env: QueueEnvelope,
    /// The event ID to mark processed once the work succeeded.
    event: Option<String>,
}

/// Process one batch. Every message ends either done (processed or a duplicate) or in
/// `failed` (to be redelivered; after the redrive count, the DLQ).
pub async fn process_batch(
    deps: &WorkerDeps<'_>,
    msgs: &[InMessage],
    opts: &WorkerOptions,
) -> BatchReport {
    let mut report = BatchReport {
        messages: msgs.len(),
        ..BatchReport::default()
    };
    let mut failures: Vec<(String, Failure)> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    // Duplicates inside the batch ride on the first message with the same event ID.
    let mut first_of_event: HashMap<String, usize> = HashMap::new();
    let mut followers: Vec<(String, usize)> = Vec::new();

    // One span per message: its ID, then its event ID, entity and record ID once decoded
    // (never its body). The message's own calls run in it, and its failure is logged in it.
    let mut spans: HashMap<&str, tracing::Span> = HashMap::with_capacity(msgs.len());

    let mut decoded: Vec<(&InMessage, QueueEnvelope, tracing::Span)> =
        Vec::with_capacity(msgs.len());
    for m in msgs {
        let span = tracing::info_span!(
            "message",
            message_id = %m.message_id,
            event_id = tracing::field::Empty,
            entity = tracing::field::Empty,
            record_id = tracing::field::Empty,
        );
        spans.entry(&m.message_id).or_insert_with(|| span.clone());
        match decode(&m.body) {
            Ok(env) => {
                span.record("entity", env.entity.as_str());
                span.record("record_id", env.id.as_str());
                if let Some(ev) = &env.event_id {
                    span.record("event_id", ev.as_str());
                }
                decoded.push((m, env, span));
            }
            Err(reason) => {
                report.poison += 1;
                failures.push((m.message_id.clone(), Failure::Poison(reason)));
            }
        }
    }

    // Which events were processed already: one read for the batch (nothing is written before
    // the work: a failure or a crash leaves no marker, and the redelivery does the work).
    let event_ids: Vec<&str> = decoded
        .iter()
        .filter_map(|(_, env, _)| env.event_id.as_deref())
        .collect();
    let processed = if event_ids.is_empty() {
        Ok(HashSet::new())
    } else {
        deps.control
            .processed_events(&event_ids, now_us())
            .await
            .map_err(|e| e.to_string())
    };
    for (m, env, span) in decoded {
        let Some(ev) = env.event_id.clone() else {
            items.push(Item {
                message_id: m.message_id.clone(),
                event: None,
                env,
            });
            continue;
        };
        if let Some(&first) = first_of_event.get(&ev) {
            followers.push((m.message_id.clone(), first));
            continue;
        }
        match &processed {
            Err(e) => {
                failures.push((m.message_id.clone(), Failure::Dedup(e.clone())));
                continue;
            }
            Ok(done) if done.contains(&ev) => {
                report.duplicates += 1;
                continue;
            }
            Ok(_) => {}
        }
        if opts.completes_first()
            && let Err(e) = deps
                .control
                .complete_event(&ev, now_us() + opts.retain_us)
                .instrument(span)
                .await
        {
            failures.push((m.message_id.clone(), e.into()));
            continue;
        }
        first_of_event.insert(ev.clone(), items.len());
        items.push(Item {
            message_id: m.message_id.clone(),
            event: Some(ev),
            env,
        });
    }

    // Coalesce by (entity, id): one fetch per record.
    let mut groups: Vec<Group> = Vec::new();
    let mut by_key: HashMap<(String, String), usize> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        let key = (it.env.entity.clone(), it.env.id.clone());
        let g = *by_key.entry(key).or_insert_with(|| {
            groups.push(Group {
                entity: it.env.entity.clone(),
                id: it.env.id.clone(),
                items: Vec::new(),
                delete_announced: false,
                webhook: false,
                result: None,
            });
            groups.len() - 1
        });
        let grp = &mut groups[g];
        grp.items.push(i);
        grp.delete_announced |= it.env.action == Some(EnvelopeAction::Delete);
        grp.webhook |= it.env.kind == MessageKind::Webhook;
    }

    let outcomes = crate::core::deadline::within(
        opts.stop_at,
        fetch_all(deps, &mut groups, opts, &mut report),
    )
    .await;
    apply(deps, &mut groups, outcomes, opts, &mut report).await;

    // Settle every item: a processed event is marked so (a failed one is left unmarked).
    let mut item_ok = vec![false; items.len()];
    for g in &mut groups {
        let result = g.result.take().unwrap_or(Ok(()));
        match result {
            Ok(()) => {
                for &i in &g.items {
                    item_ok[i] = true;
                }
            }
            Err(f) => {
                let text = f.to_string();
                for &i in &g.items {
                    failures.push((items[i].message_id.clone(), Failure::Group(text.clone())));
                }
            }
        }
    }
    for (i, it) in items.iter().enumerate() {
        let Some(ev) = &it.event else { continue };
        if opts.completes_first() || !item_ok[i] {
            continue;
        }
        let span = spans
            .get(it.message_id.as_str())
            .cloned()
            .unwrap_or_else(tracing::Span::none);
        if let Err(e) = deps
            .control
            .complete_event(ev, now_us() + opts.retain_us)
            .instrument(span)
            .await
        {
            // The work is done and idempotent: the redelivery redoes it (one more fetch).
            item_ok[i] = false;
            failures.push((it.message_id.clone(), e.into()));
        }
    }
    for (follower, first) in followers {
        if item_ok.get(first).copied().unwrap_or(false) {
            report.duplicates += 1;
        } else {
            failures.push((
                follower,
                Failure::Group("the first message of its event failed".into()),
            ));
        }
    }
    for (id, f) in &failures {
        let _in_message = spans.get(id.as_str()).map(tracing::Span::enter);
        tracing::warn!(message_id = %id, reason = %f, "message failed; it will be redelivered");
    }
    report.failed = failures.into_iter().map(|(id, _)| id).collect();
    report.failed.sort();
    report.failed.dedup();
    // The batch's unspent budget goes back to the account's other callers.
    deps.source.release_budget().await;
    report
}

struct Group {
    entity: String,
    id: String,
    /// Indices into the batch's items.
    items: Vec<usize>,
    delete_announced: bool,
    webhook: bool,
    result: Option<Result<(), Failure>>,
}

impl Group {
    fn strategy(&self) -> Strategy {
        if self.webhook {
            Strategy::Webhook
        } else {
            Strategy::Targeted
        }
    }
}

enum Got {
    Found(Record),
    /// The source has it, but it cannot be synced.
    Rejected(RejectReason),
    /// A JSON 404; the send time of the request that got it is the evidence time of the
    /// delete (`Fetched::sent_us`).
    NotFound(Micros),
    /// Not fetched: a delete event taken at its word (negative control only).
    #[cfg(any(test, feature = "testing"))]
    Unconfirmed(Micros),
}

pub(crate) fn decode(body: &str) -> Result<QueueEnvelope, String> {
    let env: QueueEnvelope = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if env.v != ENVELOPE_VERSION {
        return Err(format!(
            "envelope version {} (this build reads {ENVELOPE_VERSION})",
            env.v
        ));
    }
    crate::source::validate_id(&env.id).map_err(|e| e.to_string())?;
    Ok(env)
}

async fn fetch_all(
    deps: &WorkerDeps<'_>,
    groups: &mut [Group],
    opts: &WorkerOptions,
    report: &mut BatchReport,
) -> Vec<Option<Got>> {
    let mut out: Vec<Option<Got>> = (0..groups.len()).map(|_| None).collect();
    let to_fetch: Vec<usize> = (0..groups.len()).collect();
    // Negative control: a delete event taken at its word, not fetched.
    #[cfg(any(test, feature = "testing"))]
    let to_fetch: Vec<usize> = if opts.confirm_deletes {
        to_fetch
    } else {
        to_fetch
            .into_iter()
            .filter(|&i| {
                let unconfirmed = groups[i].delete_announced;
                if unconfirmed {
                    out[i] = Some(Got::Unconfirmed(now_us()));
                }
                !unconfirmed
            })
            .collect()
    };
    report.get_by_id_calls += to_fetch.len();
    let results: Vec<(usize, Result<Got, SourceError>)> = futures::stream::iter(to_fetch)
        .map(|i| {
            let (entity, id) = (groups[i].entity.clone(), groups[i].id.clone());
            async move {
                // Only the negative control uses it: the old clock, before every wait.
                let before = now_us();
                let r = match deps.source.fetch_by_id(&entity, &id).await {
                    Ok(Fetched {
                        record: Some(rec), ..
                    }) => Ok(Got::Found(rec)),
                    Ok(Fetched {
                        record: None,
                        sent_us,
                    }) => Ok(Got::NotFound(if opts.evidence_before_waits() {
                        before
                    } else {
                        sent_us
                    })),
                    Err(SourceError::Rejected { reason, .. }) if !opts.fails_on_rejected() => {
                        Ok(Got::Rejected(reason))
                    }
                    Err(e) => Err(e),
                };
                (i, r)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    for (i, r) in results {
        match r {
            Ok(f) => out[i] = Some(f),
            Err(e) => groups[i].result = Some(Err(e.into())),
        }
    }
    out
}

async fn apply(
    deps: &WorkerDeps<'_>,
    groups: &mut [Group],
    fetched: Vec<Option<Got>>,
    opts: &WorkerOptions,
    report: &mut BatchReport,
) {
    // The 404 ceiling: unexpected 404s among the records fetched.
    let fetched_count = fetched
        .iter()
        .filter(|f| matches!(f, Some(Got::Found(_) | Got::NotFound(_) | Got::Rejected(_))))
        .count();
    let unexpected = fetched
        .iter()
        .zip(groups.iter())
        .filter(|(f, g)| matches!(f, Some(Got::NotFound(_))) && !g.delete_announced)
        .count();
    report.not_found = fetched
        .iter()
        .filter(|f| matches!(f, Some(Got::NotFound(_))))
        .count();
    let tripped = opts.trips(NotFoundCounts {
        fetched: fetched_count as u64,
        not_found: unexpected as u64,
    });
    if tripped {
        report.ceiling_tripped = true;
        tracing::error!(
            unexpected,
            fetched = fetched_count,
            ceiling = opts.not_found_ceiling,
            "404 ceiling passed: deleting nothing in this batch (wrong base path or API change?)"
        );
    }
    // The rolling window: the batch's fetches and unexpected 404s per entity.
    let mut counts: BTreeMap<String, NotFoundCounts> = BTreeMap::new();
    for (f, g) in fetched.iter().zip(groups.iter()) {
        if !matches!(f, Some(Got::Found(_) | Got::NotFound(_) | Got::Rejected(_))) {
            continue;
        }
        let c = counts.entry(g.entity.clone()).or_default();
        c.fetched += 1;
        if matches!(f, Some(Got::NotFound(_))) && !g.delete_announced {
            c.not_found += 1;
        }
    }
    let blocked = check_windows(deps, counts, opts, report).await;

    // Upserts, at most one call per strategy.
    let mut found: HashMap<Strategy, (Vec<usize>, Vec<Record>)> = HashMap::new();
    let mut deletes: Vec<(usize, Micros)> = Vec::new();
    for (i, f) in fetched.into_iter().enumerate() {
        match f {
            Some(Got::Found(rec)) => {
                let e = found.entry(groups[i].strategy()).or_default();
                e.0.push(i);
                e.1.push(rec);
            }
            Some(Got::NotFound(ev)) => deletes.push((i, ev)),
            Some(Got::Rejected(reason)) => {
                reject(&mut groups[i], reason, report);
            }
            #[cfg(any(test, feature = "testing"))]
            Some(Got::Unconfirmed(ev)) => deletes.push((i, ev)),
            None => {}
        }
    }
    if tripped {
        for (i, _) in deletes.drain(..) {
            groups[i].result = Some(Err(Failure::Ceiling {
                unexpected,
                fetched: fetched_count,
            }));
        }
    }
    deletes.retain(|&(i, _)| match blocked.get(&groups[i].entity) {
        Some(why) => {
            groups[i].result = Some(Err(Failure::Group(why.clone())));
            false
        }
        None => true,
    });
    for (strategy, (mut idx, mut recs)) in found {
        loop {
            match deps.records.upsert_many(&recs, strategy).await {
                // One record too large for the store: done and counted, the others written.
                Err(StoreError::TooLarge { key, bytes })
                    if !opts.fails_on_rejected()
                        && let Some(k) = recs.iter().position(|r| {
                            key == crate::core::size::record_key(&r.entity, &r.id)
                        }) =>
                {
                    tracing::debug!(key = %key, bytes, "record too large for the store");
                    recs.remove(k);
                    reject(&mut groups[idx.remove(k)], RejectReason::TooLarge, report);
                    if recs.is_empty() {
                        break;
                    }
                }
                other => {
                    settle_upserts(groups, &idx, other, report);
                    break;
                }
            }
        }
    }
    for (i, evidence) in deletes {
        let g = &groups[i];
        let r = deps
            .records
            .soft_delete(&g.entity, &g.id, evidence, g.strategy())
            .await;
        groups[i].result = Some(match r {
            Ok(DeleteOutcome::Deleted) => {
                report.deleted += 1;
                Ok(())
            }
            Ok(_) => {
                report.delete_skipped += 1;
                Ok(())
            }
            Err(e) => Err(e.into()),
        });
    }
}

/// Add the batch's counts to each entity's rolling 404 window (one write per entity) and
/// answer the entities whose deletes must wait, with the reason: the window passed the
/// ceiling, or it could not be counted (then nothing of the entity is deleted either: the
/// messages are redelivered). Nothing when the window is off (negative control).
async fn check_windows(
    deps: &WorkerDeps<'_>,
    counts: BTreeMap<String, NotFoundCounts>,
    opts: &WorkerOptions,
    report: &mut BatchReport,
) -> HashMap<String, String> {
    let mut blocked = HashMap::new();
    if !opts.keeps_window() {
        return blocked;
    }
    let now = now_us();
    for (entity, add) in counts {
        match deps.control.count_not_found(&entity, now, add).await {
            Ok(total) if opts.trips(total) => {
                tracing::error!(
                    entity = %entity,
                    not_found = total.not_found,
                    fetched = total.fetched,
                    ceiling = opts.not_found_ceiling,
                    "404 window passed the ceiling: deleting nothing of this entity (wrong base \
                     path or API change?)"
                );
                report.window_tripped.push(entity.clone());
                let why = Failure::Window {
                    entity: entity.clone(),
                    counts: total,
                };
                blocked.insert(entity, why.to_string());
            }
            Ok(_) => {}
            Err(source) => {
                tracing::warn!(entity = %entity, error = %source, "cannot count 404s; deleting nothing of this entity");
                let why = Failure::WindowUnknown {
                    entity: entity.clone(),
                    source,
                };
                blocked.insert(entity, why.to_string());
            }
        }
    }
    blocked
}

/// The upserts of one strategy done (each group's outcome counted) or failed (each group
/// failed, to be redelivered).
fn settle_upserts(
    groups: &mut [Group],
    idx: &[usize],
    result: Result<Vec<WriteOutcome>, StoreError>,
    report: &mut BatchReport,
) {
    match result {
        Ok(outcomes) => {
            for (&i, o) in idx.iter().zip(outcomes) {
                match o {
                    WriteOutcome::Inserted | WriteOutcome::Updated | WriteOutcome::Restored => {
                        report.written += 1
                    }
                    WriteOutcome::Unchanged => report.unchanged += 1,
                    WriteOutcome::Stale => report.stale += 1,
                    WriteOutcome::Suppressed => report.suppressed += 1,
                }
                groups[i].result = Some(Ok(()));
            }
        }
        Err(e) => {
            let text = e.to_string();
            for &i in idx {
                groups[i].result = Some(Err(Failure::Group(text.clone())));
            }
        }
    }
}

/// A record that cannot be synced: its messages are done, counted and logged.
fn reject(g: &mut Group, reason: RejectReason, report: &mut BatchReport) {
    tracing::warn!(
        entity = %g.entity,
        id = %g.id,
        reason = %reason,
        "record cannot be synced: its messages are done, not retried (RecordsRejected)"
    );
    *report.rejected.entry(g.entity.clone()).or_default() += 1;
    g.result = Some(Ok(()));
}

/// What a worker batch tells the operator: its log line and its metrics (the handler publishes
/// them with `telemetry::publish`).
impl BatchReport {
    /// Log the batch (one structured line).
    pub fn log(&self) {
        tracing::info!(
            messages = self.messages,
            failed = self.failed.len(),
            poison = self.poison,
            duplicates = self.duplicates,
            get_by_id = self.get_by_id_calls,
            written = self.written,
            unchanged = self.unchanged,
            stale = self.stale,
            suppressed = self.suppressed,
            deleted = self.deleted,
            delete_skipped = self.delete_skipped,
            not_found = self.not_found,
            ceiling_tripped = self.ceiling_tripped,
            window_tripped = ?self.window_tripped,
            rejected = self.rejected.values().sum::<u64>(),
            "worker batch finished"
        );
    }

    /// The batch's metrics as EMF lines: one for the batch (`NotFoundCeilingTripped` has no
    /// dimensions, so that one alarm watches every entity: 1 when the batch's ceiling or an
    /// entity's rolling window tripped; `NotFoundWindowTripped` counts the entities whose
    /// window tripped, so that the two can be told apart), then one per entity with rejected
    /// records (`RecordsRejected` under `Entity` and `Strategy` = `worker`, the dimensions the
    /// rejected-records alarm sums over). Lines are separated by `\n`.
    pub fn metrics(&self) -> String {
        let mut lines = vec![self.batch_metrics()];
        lines.retain(|l| !l.is_empty());
        for (entity, n) in &self.rejected {
            lines.push(crate::telemetry::emf(
                &[("Entity", entity), ("Strategy", "worker")],
                &[("RecordsRejected", *n as f64, "Count")],
            ));
        }
        lines.join("\n")
    }

    /// Zeros left out (`telemetry::emf_counts`).
    fn batch_metrics(&self) -> String {
        crate::telemetry::emf_counts(
            &[],
            &[
                (
                    "MessagesProcessed",
                    (self.messages - self.failed.len()) as f64,
                    "Count",
                ),
                ("MessagesFailed", self.failed.len() as f64, "Count"),
                ("MessagesDuplicate", self.duplicates as f64, "Count"),
                ("GetByIdCalls", self.get_by_id_calls as f64, "Count"),
                ("RecordsWritten", self.written as f64, "Count"),
                ("RecordsUnchanged", self.unchanged as f64, "Count"),
                ("RecordsDeleted", self.deleted as f64, "Count"),
                ("RecordsSuppressed", self.suppressed as f64, "Count"),
                (
                    "NotFoundCeilingTripped",
                    if self.ceiling_tripped || !self.window_tripped.is_empty() {
                        1.0
                    } else {
                        0.0
                    },
                    "Count",
                ),
                (
                    "NotFoundWindowTripped",
                    self.window_tripped.len() as f64,
                    "Count",
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod options_tests {
    use super::*;
    use crate::config::env::with;

    #[test]
    fn options_from_the_environment_default_and_range_check_naming_the_variable() {
        let o = with(&[], |env| WorkerOptions::from_env(env).unwrap());
        let d = WorkerOptions::default();
        assert_eq!(o.not_found_ceiling, d.not_found_ceiling);
        assert_eq!(
            (o.not_found_min, o.retain_us, o.concurrency),
            (d.not_found_min, d.retain_us, d.concurrency)
        );
        assert_eq!(o.retain_us, 8 * 86_400 * 1_000_000);
        let o = with(
            &[
                (NOT_FOUND_CEILING_VAR, "20"),
                (NOT_FOUND_MIN_VAR, "1"),
                (RETENTION_VAR, "365"),
                (CONCURRENCY_VAR, "64"),
            ],
            |env| WorkerOptions::from_env(env).unwrap(),
        );
        assert_eq!(o.not_found_ceiling, 0.2);
        assert_eq!(
            (o.not_found_min, o.retain_us, o.concurrency),
            (1, 365 * 86_400 * 1_000_000, 64)
        );
        for (name, bad) in [
            (NOT_FOUND_CEILING_VAR, "0"),
            (NOT_FOUND_CEILING_VAR, "150"),
            (NOT_FOUND_CEILING_VAR, "0.5"),
            (NOT_FOUND_MIN_VAR, "0"),
            (RETENTION_VAR, "a week"),
            (RETENTION_VAR, "366"),
            (CONCURRENCY_VAR, "-1"),
            (CONCURRENCY_VAR, "65"),
        ] {
            let e = with(&[(name, bad)], |env| {
                WorkerOptions::from_env(env).unwrap_err()
            });
            assert!(
                matches!(&e, ConfigError::BadEnv { name: n, .. } if n == name),
                "{name}={bad}: {e}"
            );
        }
    }
}

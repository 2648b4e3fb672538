//! The listing steps: plan (leases and runs), source (the source's IDs into sorted runs,
//! resumable, continued in a new execution when long), destination (one shard of the live-ID
//! index) and diff (the four lists).

use super::wire::*;
use super::{ReconcileDeps, ReconcileOptions, StepError, renew};
use crate::core::timefmt::now_us;
use crate::core::token::TokenError;
use crate::error::{SourceError, WaitCause};
use crate::model::{ID_SHARDS, IdVersion, Micros};
use crate::ports::{Executions, JobKind, LeaseOutcome, RunRecord};
use crate::setdiff::{
    DiffOutputs, DiffSummary, MergeOptions, RunWriter, SortedRunWriter, diff_with, list_runs,
};
use crate::sync::rejected::Tally;
use futures::StreamExt;
use std::time::Instant;

/// Take each entity's reconciliation lease and record a run; entities another run holds are
/// skipped (and say so).
pub async fn plan(
    deps: &ReconcileDeps<'_>,
    input: &PlanInput,
    opts: &ReconcileOptions,
) -> Result<PlanOutput, StepError> {
    let entities = deps
        .config
        .entity_names(input.entity.as_deref())
        .map_err(StepError::UnknownEntity)?;
    let mut out = PlanOutput {
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    for entity in entities {
        let started_us = now_us();
        let run_id = match &input.execution {
            Some(x) => format!("rec-{x}-{entity}"),
            None => format!("rec-{}", uuid::Uuid::new_v4().simple()),
        };
        match deps
            .control
            .acquire_lease(
                &entity,
                JobKind::Reconcile,
                &run_id,
                started_us,
                opts.lease_ttl_us,
            )
            .await?
        {
            LeaseOutcome::Held { holder, .. } => {
                tracing::info!(entity = %entity, holder = %holder, "reconciliation already running; skipped");
                out.skipped.push(Skipped { entity, holder });
                continue;
            }
            LeaseOutcome::Acquired { .. } => {}
        }
        deps.control
            .put_run(&RunRecord {
                entity: entity.clone(),
                kind: JobKind::Reconcile,
                run_id: run_id.clone(),
                started_us,
                finished_us: None,
                status: "running".into(),
                summary: serde_json::json!({"report_only": input.report_only}).to_string(),
            })
            .await?;
        out.runs.push(RunRef {
            v: STEP_VERSION,
            entity,
            run_id,
            started_us,
            report_only: input.report_only,
            approved: input.approve_deletions,
            shards: (0..ID_SHARDS).collect(),
        });
    }
    Ok(out)
}

/// The version under which a rejected record with a usable ID goes into the source runs:
/// present at the source, version unknown. Older than any stored version, so never "stale";
/// missing at the destination, it is queued for a targeted sync (which the worker counts as
/// rejected again); never a deletion candidate, since the source lists it.
pub const UNKNOWN_VERSION: Micros = crate::setdiff::UNKNOWN_VERSION;

/// Stream the source's `(id, version)` pairs into sorted runs, until the listing ends, or
/// `stop_at` or `max_source_pages` (then resumable from `progress`). The stream runs under
/// `stop_at` (`core::deadline::within`): the client's waits and requests stop at it too, and a
/// listing that stops there after at least one page resumes like one stopped between pages. A
/// failing listing ends the step with `ended_normally = false`: the guard then deletes nothing,
/// repairs still apply. Records the listing rejects are counted and reported
/// (`SourceProgress::rejected`); those with a usable ID are written as present
/// ([`UNKNOWN_VERSION`]).
pub async fn source(
    deps: &ReconcileDeps<'_>,
    input: &SourceInput,
    opts: &ReconcileOptions,
) -> Result<SourceProgress, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "source").await?;
    let mut p = input.progress.clone().unwrap_or_default();
    if p.done {
        return Ok(p);
    }
    let prefix = format!("{}/source", run.prefix(opts));
    match check_resume(run, &p, opts).await {
        Ok(()) => {}
        Err(TokenError::OtherKey { key_id }) => {
            // Signed under a key this stack no longer holds (the signing secret was rotated
            // during the run): the token cannot be trusted, so the listing starts again, with
            // no run of the earlier attempt left to be merged.
            tracing::warn!(entity = %run.entity, run_id = %run.run_id, key_id = %key_id, "resume token signed under another key; the listing starts again");
            if opts.cleans_restart() {
                deps.spill.delete_prefix(&format!("{prefix}/")).await?;
            }
            // Run numbering goes on (nothing of the earlier attempt can be overwritten by
            // chance: it is removed), and so does the invocation count, which names the
            // continuing executions.
            p = SourceProgress {
                invocations: p.invocations,
                restarts: p.restarts + 1,
                next_run: p.next_run,
                ..SourceProgress::default()
            };
        }
        Err(e) => {
            tracing::error!(entity = %run.entity, run_id = %run.run_id, error = %e, "resume token refused");
            return Err(StepError::ResumeToken(e));
        }
    }
    p.invocations += 1;
    p.stopped_by = None;
    let stops_before = p.budget_stops;
    let mut writer = RunWriter::new(deps.spill, &prefix, opts.run_size)?.starting_at(p.next_run);
    let mut stream = deps
        .source
        .stream_ids_from(&run.entity, p.resume.as_deref());
    // Pairs pushed since the last token we may resume from (all pushed ones are flushed below).
    let mut resume = p.resume.clone();
    let mut stopped = false;
    let pages_before = p.pages;
    let mut tally = Tally::default();
    crate::core::deadline::within(opts.stop_at, async {
    loop {
        // Every invocation reads at least one page, so that a run always progresses.
        let read = p.pages - pages_before;
        if read > 0
            && (opts.stop_at.is_some_and(|t| Instant::now() >= t) || read >= opts.max_source_pages)
        {
            stopped = true;
            break;
        }
        match stream.next().await {
            None => {
                p.done = true;
                p.ended_normally = true;
                break;
            }
            Some(Err(SourceError::Deadline { .. })) if read > 0 => {
                stopped = true;
                break;
            }
            // The shared budget had no token for the lowest lane before the stop instant
            // (higher lanes took it, or a 429's pause holds every caller): not the source's
            // failure; the next invocation resumes where this one is.
            Some(Err(SourceError::Deadline {
                cause: WaitCause::Budget,
                ..
            })) => {
                stopped = true;
                p.stopped_by = Some("budget".into());
                if read == 0 {
                    p.budget_stops += 1;
                }
                if p.budget_stops >= MAX_BUDGET_STOPS {
                    // Invocations that read nothing cannot go on for ever: the listing ends
                    // without deleting anything, and the run says why.
                    p.done = true;
                    p.ended_normally = false;
                    p.error = Some(format!(
                        "the shared rate budget had no token for reconciliation in \
                         {MAX_BUDGET_STOPS} invocations in a row (webhooks and delta use the \
                         whole limit, or a 429's pause holds every caller)"
                    ));
                }
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(entity = %run.entity, error = %e, "source listing failed; no deletions this run");
                p.done = true;
                p.ended_normally = false;
                p.error = Some(e.to_string());
                break;
            }
            Some(Ok(page)) => {
                if !opts.rejects_per_record()
                    && let Some(r) = page.rejected.first()
                {
                    // The negative control: a bad record fails the listing, as it used to.
                    p.done = true;
                    p.ended_normally = false;
                    p.error = Some(format!("record {:?}: {}", r.id, r.reason));
                    break;
                }
                let present: Vec<IdVersion> = page
                    .rejected
                    .iter()
                    .filter_map(|r| r.usable_id())
                    .map(|id| IdVersion {
                        id: id.to_owned(),
                        delta_us: UNKNOWN_VERSION,
                    })
                    .collect();
                for r in &page.rejected {
                    if r.usable_id().is_none() {
                        p.rejected_unidentified += 1;
                    }
                    tally.note(
                        &run.entity,
                        "reconcile",
                        r,
                        &mut p.rejected,
                        &mut p.rejected_ids,
                    );
                }
                writer.push_all(&page.ids).await?;
                writer.push_all(&present).await?;
                p.pairs += (page.ids.len() + present.len()) as u64;
                p.pages += 1;
                if page.total_count.is_some() {
                    p.total_count = page.total_count;
                }
                resume = page.resume;
            }
        }
    }
    Ok::<_, StepError>(())
    })
    .await?;
    drop(stream);
    deps.source.release_budget().await;
    if p.budget_stops == stops_before {
        // This invocation read a page, or stopped for another reason.
        p.budget_stops = 0;
    }
    let written = writer.finish().await?;
    p.next_run = written.next_index;
    if stopped {
        if resume.is_none() && p.pages > pages_before {
            // The page read last was the listing's last: no token follows the end.
            p.done = true;
            p.ended_normally = true;
        }
        p.resume_sig = resume.as_deref().map(|t| sign_resume(run, t, opts));
        p.resume = resume;
    }
    Ok(p)
}

/// Invocations in a row that the shared rate budget let read nothing, before the listing
/// ends (not normally: nothing is deleted).
pub const MAX_BUDGET_STOPS: u32 = 3;

/// What a resume token's tag is for (`core::token`): bound into its MAC with the run's entity
/// and ID, so that a token is good for its own run only.
const RESUME_PURPOSE: &str = "reconcile-resume";

fn resume_parts<'a>(run: &'a RunRef, token: &'a str) -> [&'a [u8]; 3] {
    [
        run.entity.as_bytes(),
        run.run_id.as_bytes(),
        token.as_bytes(),
    ]
}

fn sign_resume(run: &RunRef, token: &str, opts: &ReconcileOptions) -> String {
    let (_, key) = opts.token_key.current();
    key.sign(RESUME_PURPOSE, &resume_parts(run, token))
}

/// Authenticate the progress's resume token before anything follows it (it came through the
/// state machine's input: anyone allowed to start an execution could write one). A token
/// under another key id is checked again after one re-read of the key (a container that read
/// the secret before a rotation), then is `OtherKey`.
async fn check_resume(
    run: &RunRef,
    p: &SourceProgress,
    opts: &ReconcileOptions,
) -> Result<(), TokenError> {
    let Some(token) = p.resume.as_deref() else {
        return Ok(());
    };
    if !opts.verifies_resume_tokens() {
        return Ok(());
    }
    let tag = p.resume_sig.as_deref().ok_or(TokenError::Unsigned)?;
    let parts = resume_parts(run, token);
    let (seen, key) = opts.token_key.current();
    match key.verify(RESUME_PURPOSE, &parts, tag) {
        Err(other @ TokenError::OtherKey { .. }) => match opts.token_key.refresh(seen).await {
            Some((_, key)) => key.verify(RESUME_PURPOSE, &parts, tag),
            None => Err(other),
        },
        verdict => verdict,
    }
}

/// Start the execution that continues this run (same run ID, same lease, the listing's
/// progress), named from the run and the invocation count so that a retried step starts
/// nothing twice. The lease is renewed, not released.
pub async fn continue_in_new_execution(
    deps: &ReconcileDeps<'_>,
    executions: &dyn Executions,
    input: &ContinueInput,
    opts: &ReconcileOptions,
) -> Result<ContinueOutput, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "continue").await?;
    let hash = xxhash_rust::xxh3::xxh3_64(run.run_id.as_bytes());
    let name = format!("rec-{hash:016x}-{}", input.progress.invocations);
    let mut new_input = serde_json::json!({
        "resume": {"run": run, "progress": input.progress},
    });
    if let Some(p) = &input.parent {
        new_input["AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID"] = p.clone().into();
    }
    let execution = executions
        .start(&input.state_machine, &name, &new_input)
        .await?;
    tracing::info!(entity = %run.entity, run_id = %run.run_id, execution = %execution, "reconciliation continues in a new execution");
    Ok(ContinueOutput { execution })
}

/// One shard of the destination's live-ID index, already sorted, into runs.
pub async fn destination(
    deps: &ReconcileDeps<'_>,
    input: &DestinationInput,
    opts: &ReconcileOptions,
) -> Result<DestinationOutput, StepError> {
    let run = &input.run;
    if input.shard >= ID_SHARDS {
        return Err(StepError::BadInput(format!(
            "shard {} (there are {ID_SHARDS})",
            input.shard
        )));
    }
    renew(deps, run, opts, "destination").await?;
    let prefix = format!("{}/dest/{:02}", run.prefix(opts), input.shard);
    let mut writer = SortedRunWriter::new(deps.spill, &prefix, opts.run_size)?;
    let mut after: Option<String> = None;
    loop {
        let page = deps
            .records
            .list_live_ids(&run.entity, input.shard, after.as_deref(), 1_000)
            .await?;
        writer.push_all(&page.items).await?;
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    let w = writer.finish().await?;
    Ok(DestinationOutput {
        shard: input.shard,
        pairs: w.pairs,
        objects: w.next_index,
    })
}

/// Merge every source run against every destination run; four lists out (to delete, to fetch,
/// stale, newer at the destination), counts back.
pub async fn diff_step(
    deps: &ReconcileDeps<'_>,
    input: &DiffInput,
    opts: &ReconcileOptions,
) -> Result<DiffSummary, StepError> {
    let run = &input.run;
    renew(deps, run, opts, "diff").await?;
    let base = run.prefix(opts);
    // Each source run is sorted on its own; each shard's runs are one sorted sequence.
    let source_runs: Vec<Vec<String>> = list_runs(deps.spill, &format!("{base}/source"))
        .await?
        .into_iter()
        .map(|k| vec![k])
        .collect();
    let mut dest_runs: Vec<Vec<String>> = Vec::new();
    for shard in &run.shards {
        let keys = list_runs(deps.spill, &format!("{base}/dest/{shard:02}")).await?;
        if !keys.is_empty() {
            dest_runs.push(keys);
        }
    }
    // A retried diff starts its outputs afresh.
    deps.spill.delete_prefix(&format!("{base}/diff/")).await?;
    let outputs = DiffOutputs {
        to_delete: format!("{base}/diff/delete"),
        to_fetch: format!("{base}/diff/fetch"),
        stale: format!("{base}/diff/stale"),
        newer: format!("{base}/diff/newer"),
        chunk_size: opts.chunk_size,
    };
    let merge = MergeOptions::beside(&outputs);
    Ok(diff_with(deps.spill, &source_runs, &dest_runs, &outputs, &merge).await?)
}

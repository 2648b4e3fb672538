//! The paths, in order: delta (backfill, incremental, idle, re-read), webhooks (busy queue,
//! trickle), reconciliation (at two sizes).

use super::handlers::{
    delivery, delta_facts, delta_invocation, ingest_invocation, receive, reconcile_path,
    source_client, worker_invocation,
};
use super::prices::{self, extrapolate};
use super::report::{Env, priced};
use super::{Clients, CostArgs, ENTITY, Names, SECRET, create_bucket, progress, round};
use shared::adapters::aws::AwsError;
use shared::adapters::dynamodb::{
    DynamoControl, DynamoRecords, create_table, create_tables, schema, stores,
};
use shared::adapters::s3::S3Spill;
use shared::adapters::sqs::SqsQueue;
use shared::config::Config;
use shared::source::SourceClient;
use shared::sync::reconcile::ReconcileDeps;
use shared::sync::worker::WorkerDeps;
use shared::webhook::Ingest;
use source_sim::{Entity, SimHandle};
use std::sync::Arc;

/// Webhook deliveries queued before the worker drains them (the busy-queue path).
const BURST: u64 = 100;

/// DynamoDB's write-unit step: a write costs one unit per started KB of the item.
const WRITE_UNIT_BYTES: usize = 1_024;

/// The stored records, sampled (about 50): their JSON (as the source serves it, compact) against
/// `requested` (`None`: the simulator's natural size), and their DynamoDB items, with the write
/// units a write of each costs.
async fn record_sizes(
    sim: &SimHandle,
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    n: u64,
    requested: Option<usize>,
) -> Result<serde_json::Value, String> {
    let sample: Vec<u64> = (1..=n).step_by((n / 50).max(1) as usize).collect();
    let (mut json, mut item, mut max_item, mut units) = (0usize, 0usize, 0usize, 0usize);
    let (mut at_requested, mut over_1k) = (0usize, 0usize);
    for &id in &sample {
        let doc = sim
            .sim()
            .record_json(Entity::People, id)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&doc).map_err(|e| e.to_string())?;
        let len = v["data"].to_string().len();
        json += len;
        at_requested += usize::from(Some(len) == requested);
        let got = ddb
            .get_item()
            .table_name(table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("{ENTITY}#{id}")),
            )
            .send()
            .await
            .map_err(|e| format!("get item: {}", AwsError::new(e)))?;
        let bytes = got.item().map_or(0, prices::item_bytes);
        item += bytes;
        max_item = max_item.max(bytes);
        over_1k += usize::from(bytes > WRITE_UNIT_BYTES);
        units += bytes.div_ceil(WRITE_UNIT_BYTES).max(1);
    }
    let k = sample.len().max(1);
    let avg_item = item / k;
    Ok(serde_json::json!({
        "requested_record_json_bytes": requested,
        "requested_is": match requested {
            Some(_) => "every record's JSON made this size by the simulator (its notes sized; optional parts such as a work e-mail left out where even the shortest notes were too long): --record-bytes",
            None => "the simulator's natural records (--record-bytes 0)",
        },
        "sampled": sample.len(),
        "sampled_at_requested_bytes": requested.map(|_| at_requested),
        "avg_record_json_bytes": json / k,
        "avg_dynamodb_item_bytes": avg_item,
        "max_dynamodb_item_bytes": max_item,
        "share_of_items_over_1024_bytes": round(over_1k as f64 / k as f64, 3),
        "write_units_per_write_of_the_average_item": avg_item.div_ceil(WRITE_UNIT_BYTES).max(1),
        "avg_write_units_per_item_write": round(units as f64 / k as f64, 3),
        "note": "the record's JSON as the source serves it (the resource object, compact), and its DynamoDB item (the payload as a native map plus the version, hash and sync attributes, sized by DynamoDB's rules); a write costs one write unit per started KB of the item, so a record whose item crosses 1,024 bytes costs one more write unit per write (2 instead of 1)",
    }))
}

/// Every path, in order; returns the top of the output with the priced paths under `_runs`.
pub(super) async fn paths(
    env: &Env<'_>,
    c: &Clients,
    names: &Names,
    region: Option<&str>,
    sim: &SimHandle,
    sim_small: &SimHandle,
    args: &CostArgs,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let n = args.records;
    progress(format!(
        "tables, queue and bucket (suffix of {}); {n} people in the simulator",
        names.bucket
    ));
    let table_err = |e: shared::error::StoreError| format!("create tables: {e}");
    create_tables(&c.ddb, &names.records, &names.control)
        .await
        .map_err(table_err)?;
    create_tables(&c.ddb, &names.records_small, &names.control_small)
        .await
        .map_err(table_err)?;
    create_table(&c.ddb, &schema::CONTROL, &names.control_reread)
        .await
        .map_err(table_err)?;
    // The records tables' stream off: DynamoDB Streams writes are not billed, and DynamoDB
    // Local keeps every stream record, slowing down with each run (the emulator is shared).
    for table in [&names.records, &names.records_small] {
        c.ddb
            .update_table()
            .table_name(table)
            .stream_specification(
                aws_sdk_dynamodb::types::StreamSpecification::builder()
                    .stream_enabled(false)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| format!("stream off on {table}: {}", AwsError::new(e)))?;
    }
    let url = c
        .sqs
        .create_queue()
        .queue_name(&names.queue)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "360",
        )
        .send()
        .await
        .map_err(|e| format!("create queue: {}", AwsError::new(e)))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    create_bucket(&c.s3, &names.bucket, region).await?;
    let (records, control) = stores(c.ddb.clone(), &names.records, &names.control);
    let control = Arc::new(control);
    let (records_small, control_small) =
        stores(c.ddb.clone(), &names.records_small, &names.control_small);
    let control_small = Arc::new(control_small);
    let (_, control_reread) = stores(c.ddb.clone(), &names.records, &names.control_reread);
    let (cfg, source) = source_client(sim, &control)?;
    let (cfg_small, source_small) = source_client(sim_small, &control_small)?;
    let queue = SqsQueue::new(c.sqs.clone(), &url);
    let spill = S3Spill::new(c.s3.clone(), &names.bucket, "");
    let stack = Stack {
        c,
        url: &url,
        sim,
        records_table: &names.records,
        cfg: &cfg,
        source: &source,
        records: &records,
        control: &control,
        queue: &queue,
        spill: &spill,
    };
    let mut runs = serde_json::Map::new();
    let requested = args.sim_record_bytes();
    let record_bytes = delta_paths(env, &stack, &control_reread, n, requested, &mut runs).await?;
    webhook_paths(env, &stack, args, &mut runs).await?;
    let small_stack = Stack {
        sim: sim_small,
        records_table: &names.records_small,
        cfg: &cfg_small,
        source: &source_small,
        records: &records_small,
        control: &control_small,
        ..stack
    };
    reconcile_paths(env, &stack, &small_stack, &mut runs).await?;

    let mut out = serde_json::Map::new();
    out.insert("bench".into(), "cost".into());
    out.insert("records_per_path".into(), n.into());
    out.insert("record_size".into(), record_bytes);
    out.insert(
        "model".into(),
        serde_json::json!({
            "counted": "every DynamoDB, SQS and S3 request the library code sends (an SDK interceptor on the clients, each attempt), against DynamoDB Local and moto",
            "dynamodb_units": "DynamoDB Local's ConsumedCapacity (ReturnConsumedCapacity=INDEXES set on every request: table and live_ids index), plus the model where it is not DynamoDB's billing: a failed conditional write bills the larger of the old and the new item, 1 WRU per KB rounded up, at least 1; a BatchGetItem key with no item bills a read (1 RRU strongly consistent); a Query matching nothing bills its minimum (0.5 RRU on the index); each request's modelled part is in of_which_modelled_units",
            "sqs": "billable requests: each call's 64 KB chunks (the larger HTTP body of request and answer)",
            "s3": "PUT/COPY/POST/LIST and GET/other classes; DeleteObjects free",
            "lambda": "one invocation per delta run, ingest request, worker batch and reconciliation step; each billed the CPU time of the handler's work on the engine's thread, rounded up to the millisecond (at least 1 ms), times the function's MemorySize read from template.yaml; waiting on the network is not billed here (the emulators' latency is not AWS's): each path's lambda_wait_sensitivity says what it could add",
            "step_functions": "one transition per state one execution enters (the path checked against infra/reconcile.asl.json); one entity per execution",
            "cloudwatch_logs": "tracing lines (the Lambda subscriber's JSON format, info), the EMF lines each handler publishes, Lambda's START/END/REPORT lines, the webhook API's access-log line (template format); 26 bytes per event added",
            "api_gateway": "one HTTP API request per webhook delivery (one event each)",
            "scaling": "usd_per_million_records = the path's cost x 1,000,000 / its records (webhooks: events; delta_idle, which has no records: the cost of 1,000,000 idle runs; reconcile_unchanged: the cost of one 1,000,000-record entity, see its usd_per_million_records_is); usd_per_million_records_units says which for each path",
            "not_included": "storage (DynamoDB, S3, logs retention), data transfer, the source API, Secrets Manager reads at cold start, the event source mapping's idle polling, CloudWatch metrics from EMF (custom metrics are billed per metric-month, not per record)",
        }),
    );
    out.insert("_runs".into(), runs.into());
    Ok(out)
}

/// What the paths share: the clients, the queue, and one simulator with its stores.
#[derive(Clone, Copy)]
struct Stack<'a> {
    c: &'a Clients,
    url: &'a str,
    sim: &'a SimHandle,
    records_table: &'a str,
    cfg: &'a Config,
    source: &'a SourceClient,
    records: &'a DynamoRecords,
    control: &'a Arc<DynamoControl>,
    queue: &'a SqsQueue,
    spill: &'a S3Spill,
}

/// Delta: backfill, incremental, idle, and a re-read of unchanged records (with a cursor of its
/// own in `control_reread`); returns the records' sizes.
async fn delta_paths(
    env: &Env<'_>,
    st: &Stack<'_>,
    control_reread: &DynamoControl,
    n: u64,
    requested: Option<usize>,
    runs: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let (sim, source, records, control) = (st.sim, st.source, st.records, st.control.as_ref());
    // 1. Backfill: every record new.
    progress(format!("delta backfill of {n} records"));
    let mut w = env.open(source);
    let s = delta_invocation(env, &mut w, source, records, control).await?;
    if s.written() != n {
        return Err(format!("the backfill wrote {} of {n} records", s.written()));
    }
    let p = env.close(
        w,
        source,
        "delta backfill: every record new to the store",
        s.seen,
        delta_facts(&s),
    );
    priced(env, runs, "delta_backfill", &p);
    let record_bytes = record_sizes(sim, &st.c.ddb, st.records_table, n, requested).await?;
    progress(format!(
        "records: {} bytes of JSON on average, stored as {}-byte DynamoDB items ({} over 1 KB)",
        record_bytes["avg_record_json_bytes"],
        record_bytes["avg_dynamodb_item_bytes"],
        record_bytes["share_of_items_over_1024_bytes"]
    ));

    // 2. Incremental: every record changed at the source since (an hour ago, so outside the
    // overlap window the next run re-reads).
    let hour_ago = sim.sim().now_us() - 3_600_000_000;
    for id in 1..=n {
        sim.sim()
            .update(Entity::People, id, Some(hour_ago + id as i64));
    }
    progress(format!("delta incremental: {n} records changed"));
    let mut w = env.open(source);
    let s = delta_invocation(env, &mut w, source, records, control).await?;
    if s.written() != n {
        return Err(format!(
            "the incremental run wrote {} of {n} records",
            s.written()
        ));
    }
    let p = env.close(
        w,
        source,
        "delta incremental: every record read changed since the last run",
        s.written(),
        delta_facts(&s),
    );
    priced(env, runs, "delta_incremental", &p);

    // 3. Idle: nothing changed.
    progress("delta idle run");
    let mut w = env.open(source);
    let s = delta_invocation(env, &mut w, source, records, control).await?;
    let facts = delta_facts(&s);
    let what = "an idle delta run: nothing changed since the last run (the cursor's boundary \
                re-read only); priced per run";
    let p = env.close(w, source, what, 0, facts);
    let (idle_usd, _) = priced(env, runs, "delta_idle", &p);
    if let Some(v) = runs.get_mut("delta_idle") {
        v["usd_per_run"] = round(idle_usd, 9).into();
    }

    // 4. Re-read of unchanged records: a run without a cursor over a store that has them all.
    progress(format!("delta re-read of {n} unchanged records"));
    let mut w = env.open(source);
    let s = delta_invocation(env, &mut w, source, records, control_reread).await?;
    if s.written() != 0 || s.unchanged != n {
        return Err(format!(
            "the re-read wrote {} and found {} unchanged of {n}",
            s.written(),
            s.unchanged
        ));
    }
    let what = "delta re-read of unchanged records: a run from no cursor over a store already \
                holding every record (the version rule's hash: no write)";
    let p = env.close(w, source, what, s.seen, delta_facts(&s));
    priced(env, runs, "delta_reread_unchanged", &p);

    Ok(record_bytes)
}

/// Webhooks: a busy queue (batches of 10), then a trickle (one event per invocation).
async fn webhook_paths(
    env: &Env<'_>,
    st: &Stack<'_>,
    args: &CostArgs,
    runs: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let (sim, source, url, c) = (st.sim, st.source, st.url, st.c);
    // 5. Webhooks on a busy queue: deliveries queued, then the worker in batches of 10.
    let events = args.webhook_events.min(args.records);
    let ingest = Ingest::new(st.cfg, &[SECRET], Arc::new(st.queue.clone()))
        .map_err(|e| format!("ingest: {e}"))?;
    let wdeps = WorkerDeps {
        source,
        records: st.records,
        control: st.control.as_ref(),
    };
    progress(format!(
        "webhooks: {events} deliveries, the worker in batches of up to 10 after each {BURST}"
    ));
    let mut w = env.open(source);
    let (mut done, mut written, mut batches) = (0u64, 0u64, 0u64);
    // Bursts of deliveries, each drained before the next: batches of 10 as on a busy queue,
    // without a queue of thousands (which moto answers slowly).
    for first in (1..=events).step_by(BURST as usize) {
        let last = (first + BURST - 1).min(events);
        for id in first..=last {
            sim.sim().update(Entity::People, id, None);
            let (headers, body) = delivery(sim, id, &ingest)?;
            ingest_invocation(env, &mut w, &ingest, &headers, &body).await?;
        }
        while done < last {
            let got = receive(&c.sqs, url, 10).await?;
            if got.is_empty() {
                continue;
            }
            let r = worker_invocation(env, &mut w, &wdeps, source, &c.sqs, url, got).await?;
            done += r.messages as u64;
            written += r.written as u64;
            batches += 1;
        }
    }
    if written != events {
        return Err(format!("the worker wrote {written} of {events} records"));
    }
    let p = env.close(
        w,
        source,
        "webhook events on a busy queue: one delivery (one event) per API Gateway request to the ingest function, SendMessageBatch, the event source mapping's batches of 10 (ReceiveMessage, DeleteMessageBatch), the worker's dedup read and completion, get_by_id and the write of the changed record",
        events,
        serde_json::json!({"events": events, "worker_batches": batches, "written": written}),
    );
    priced(env, runs, "webhooks", &p);

    // 6. Webhooks as a trickle: each event alone in its worker invocation.
    let trickle = args.trickle_events.min(args.records);
    progress(format!(
        "webhooks, trickle: {trickle} events, each alone in a worker invocation"
    ));
    let mut w = env.open(source);
    let mut written = 0u64;
    for id in 1..=trickle {
        sim.sim().update(Entity::People, id, None);
        let (headers, body) = delivery(sim, id, &ingest)?;
        ingest_invocation(env, &mut w, &ingest, &headers, &body).await?;
        let mut got = Vec::new();
        while got.is_empty() {
            got = receive(&c.sqs, url, 10).await?;
        }
        let r = worker_invocation(env, &mut w, &wdeps, source, &c.sqs, url, got).await?;
        written += r.written as u64;
    }
    if written != trickle {
        return Err(format!("the worker wrote {written} of {trickle} records"));
    }
    let p = env.close(
        w,
        source,
        "webhook events as a trickle (about one a second or fewer, which is what a million events a month is on average): every event alone in its ingest request, its worker invocation, its receive and delete",
        trickle,
        serde_json::json!({"events": trickle, "worker_batches": trickle}),
    );
    priced(env, runs, "webhooks_trickle", &p);

    Ok(())
}

/// The reconciliation of the unchanged entity, at two sizes (`st`'s and `small`'s): the fixed
/// part of a run (plan, 16 shards, finish, the execution's states) does not grow with the
/// records.
async fn reconcile_paths(
    env: &Env<'_>,
    st: &Stack<'_>,
    small_st: &Stack<'_>,
    runs: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    fn deps<'a>(s: &Stack<'a>) -> ReconcileDeps<'a> {
        ReconcileDeps {
            config: s.cfg,
            source: s.source,
            records: s.records,
            control: s.control.as_ref(),
            spill: s.spill,
            queue: s.queue,
        }
    }
    let n = st.sim.sim().len(Entity::People) as u64;
    let small = small_st.sim.sim().len(Entity::People) as u64;
    progress(format!(
        "reconciliation of the unchanged entity ({n} records)"
    ));
    let large = reconcile_path(env, &deps(st), n).await?;
    progress(format!(
        "delta backfill of {small} records for the second reconciliation (not priced)"
    ));
    let mut w = env.open(small_st.source);
    delta_invocation(
        env,
        &mut w,
        small_st.source,
        small_st.records,
        small_st.control,
    )
    .await?;
    progress(format!(
        "reconciliation of the unchanged entity ({small} records)"
    ));
    let small_run = reconcile_path(env, &deps(small_st), small).await?;
    let small_priced = env.price(&small_run);
    let (usd_large, records_writes) = priced(env, runs, "reconcile_unchanged", &large);
    let at_million = extrapolate((small, small_priced.total), (n, usd_large), 1_000_000);
    if let Some(v) = runs.get_mut("reconcile_unchanged") {
        v["usd_per_million_records_linear"] = v["usd_per_million_records"].clone();
        v["usd_per_million_records"] = round(at_million, 4).into();
        v["usd_per_million_records_is"] = format!(
            "the cost of reconciling one unchanged 1,000,000-record entity: a straight line through \
             the runs at {small} and {n} records (what does not grow with the records stays fixed); \
             usd_per_million_records_linear scales the {n}-record run's whole cost instead"
        )
        .into();
        v["smaller_run"] = small_priced.json;
    }
    progress(format!(
        "reconcile_unchanged: ${at_million:.4} for a 1,000,000-record entity"
    ));
    if records_writes != 0.0 {
        progress("warning: the reconciliation wrote to the records table");
    }

    Ok(())
}

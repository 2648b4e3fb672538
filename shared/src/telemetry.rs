//! One logging set-up for every binary. JSON lines under Lambda (CloudWatch), plain text
//! elsewhere; `RUST_LOG` filters. Never log payloads or secrets.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if in_lambda {
        builder
            .json()
            .without_time()
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_writer(std::io::stderr).try_init()
    };
}

/// Namespace of every metric we publish.
pub const NAMESPACE: &str = "SyncEngine";

/// One CloudWatch embedded-metric-format line: `dims` become dimensions, `metrics` counts.
pub fn emf(dims: &[(&str, &str)], metrics: &[(&str, f64, &str)]) -> String {
    let mut root = serde_json::Map::new();
    let ts = crate::core::timefmt::now_us() / 1000;
    let dim_names: Vec<&str> = dims.iter().map(|(k, _)| *k).collect();
    let defs: Vec<serde_json::Value> = metrics
        .iter()
        .map(|(n, _, unit)| serde_json::json!({"Name": n, "Unit": unit}))
        .collect();
    root.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": ts,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [dim_names], "Metrics": defs}]
        }),
    );
    for (k, v) in dims {
        root.insert((*k).into(), serde_json::Value::String((*v).into()));
    }
    for (n, v, _) in metrics {
        root.insert((*n).into(), serde_json::json!(v));
    }
    serde_json::Value::Object(root).to_string()
}

/// Publish metrics: EMF on stdout inside Lambda (CloudWatch turns it into metrics), nothing
/// elsewhere (local runs print their own summaries).
pub fn publish(line: &str) {
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!("{line}");
    }
}

/// Log a delta run's summary (one structured line) and publish its metrics.
pub fn delta_run(s: &crate::sync::delta::DeltaSummary) {
    tracing::info!(
        entity = %s.entity,
        run_id = %s.run_id,
        status = s.status.as_str(),
        pages = s.pages,
        seen = s.seen,
        written = s.written(),
        unchanged = s.unchanged,
        stale = s.stale,
        rejected = s.rejected,
        duration_ms = s.duration_ms,
        cursor_before = s.cursor_before.as_deref().unwrap_or("-"),
        cursor_after = s.cursor_after.as_deref().unwrap_or("-"),
        "delta run finished"
    );
    let failed = if s.status == crate::sync::delta::RunStatus::Failed {
        1.0
    } else {
        0.0
    };
    publish(&emf(
        &[("Entity", &s.entity), ("Strategy", "delta")],
        &[
            ("RecordsSeen", s.seen as f64, "Count"),
            ("RecordsWritten", s.written() as f64, "Count"),
            ("RecordsUnchanged", s.unchanged as f64, "Count"),
            ("RecordsStale", s.stale as f64, "Count"),
            ("RecordsRejected", s.rejected as f64, "Count"),
            ("ApiPages", s.pages as f64, "Count"),
            ("RunFailed", failed, "Count"),
            ("RunDuration", s.duration_ms as f64, "Milliseconds"),
        ],
    ));
}

/// Log a reconciliation's summary (one structured line) and publish its metrics.
pub fn reconcile_run(s: &crate::sync::reconcile::RunSummary) {
    tracing::info!(
        entity = %s.entity,
        run_id = %s.run_id,
        status = %s.status,
        source_count = ?s.source_count,
        destination_count = ?s.destination_count,
        deleted = s.deleted,
        missed = s.missed,
        stale = s.stale,
        queued = s.queued,
        duration_ms = s.duration_ms,
        "reconciliation finished"
    );
    let failed = if s.status == "failed" { 1.0 } else { 0.0 };
    publish(&emf(
        &[("Entity", &s.entity), ("Strategy", "reconcile")],
        &[
            ("ReconcileMissed", s.missed as f64, "Count"),
            ("ReconcileStale", s.stale as f64, "Count"),
            ("ReconcileDeleted", s.deleted as f64, "Count"),
            ("RunFailed", failed, "Count"),
        ],
    ));
}

/// Publish a failed delta run (it has no summary: the error is logged by the caller).
pub fn delta_failed(entity: &str) {
    publish(&emf(
        &[("Entity", entity), ("Strategy", "delta")],
        &[("RunFailed", 1.0, "Count")],
    ));
}

/// Log a worker batch (one structured line) and publish its metrics. `NotFoundCeilingTripped`
/// has no dimensions, so that one alarm watches every entity.
pub fn worker_batch(r: &crate::sync::worker::BatchReport) {
    tracing::info!(
        messages = r.messages,
        failed = r.failed.len(),
        poison = r.poison,
        duplicates = r.duplicates,
        get_by_id = r.get_by_id_calls,
        written = r.written,
        unchanged = r.unchanged,
        stale = r.stale,
        deleted = r.deleted,
        delete_skipped = r.delete_skipped,
        not_found = r.not_found,
        ceiling_tripped = r.ceiling_tripped,
        "worker batch finished"
    );
    publish(&emf(
        &[],
        &[
            (
                "MessagesProcessed",
                (r.messages - r.failed.len()) as f64,
                "Count",
            ),
            ("MessagesFailed", r.failed.len() as f64, "Count"),
            ("MessagesDuplicate", r.duplicates as f64, "Count"),
            ("GetByIdCalls", r.get_by_id_calls as f64, "Count"),
            ("RecordsWritten", r.written as f64, "Count"),
            ("RecordsDeleted", r.deleted as f64, "Count"),
            (
                "NotFoundCeilingTripped",
                if r.ceiling_tripped { 1.0 } else { 0.0 },
                "Count",
            ),
        ],
    ));
}

#[cfg(test)]
mod tests {
    #[test]
    fn emf_line_has_the_cloudwatch_shape() {
        let line = super::emf(&[("Entity", "people")], &[("RecordsSeen", 3.0, "Count")]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["Entity"], "people");
        assert_eq!(v["RecordsSeen"], 3.0);
        let m = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "SyncEngine");
        assert_eq!(m["Dimensions"][0][0], "Entity");
        assert_eq!(m["Metrics"][0]["Name"], "RecordsSeen");
        assert!(v["_aws"]["Timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    }
}

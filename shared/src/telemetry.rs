//! One logging set-up for every binary. JSON lines under Lambda (CloudWatch), plain text
//! elsewhere; `RUST_LOG` filters. Never log payloads or secrets.
//!
//! And the generic half of metrics: [`emf`] builds a CloudWatch embedded-metric-format line,
//! [`publish`] sends it. Which metrics a run has is said beside its summary type
//! (`sync::delta::DeltaSummary::metrics`, `sync::worker::BatchReport::metrics`,
//! `sync::reconcile::StepOutput::metrics`); each function's handler publishes them. This module
//! imports nothing from `sync`.

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

/// Like [`emf`] for counts that are mostly zero (a request's outcome flags, a batch's
/// counters): the zero counts are left out, and so is the line when every count is zero (an
/// empty string). CloudWatch reads a count that is absent from a period as no data, which the
/// alarms treat as not breaching and a Sum on the dashboard shows as nothing: the same as a
/// zero, for a fraction of the log bytes (issue 16's cost benchmark: these lines are most of
/// what a webhook event writes to CloudWatch Logs).
pub fn emf_counts(dims: &[(&str, &str)], metrics: &[(&str, f64, &str)]) -> String {
    let nonzero: Vec<(&str, f64, &str)> = metrics.iter().copied().filter(|m| m.1 != 0.0).collect();
    if nonzero.is_empty() {
        return String::new();
    }
    emf(dims, &nonzero)
}

/// Publish metrics: EMF on stdout inside Lambda (CloudWatch turns it into metrics), nothing
/// elsewhere (local runs print their own summaries).
pub fn publish(line: &str) {
    if !line.is_empty() && std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!("{line}");
    }
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

    #[test]
    fn count_lines_leave_zeros_out() {
        let line = super::emf_counts(&[], &[("A", 0.0, "Count"), ("B", 2.0, "Count")]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["B"], 2.0);
        assert!(v.get("A").is_none(), "{line}");
        let defs = &v["_aws"]["CloudWatchMetrics"][0]["Metrics"];
        assert_eq!(defs.as_array().map(Vec::len), Some(1), "{line}");
        assert_eq!(super::emf_counts(&[], &[("A", 0.0, "Count")]), "");
    }
}

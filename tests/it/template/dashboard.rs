//! The CloudWatch dashboard: its body (a `!Sub` of JSON) parses once substituted, names only
//! resources of this template and metrics the code emits, and has a widget for each thing an
//! operator watches (README, Operate).

use super::cfn::*;
use super::code::*;
use serde_json::Value as Json;
use serde_yaml::Value;
use std::collections::BTreeSet;

/// One metric a widget shows: its namespace, its name, and where it is taken from (the query
/// of a Metrics Insights expression; `Dim=Value` pairs of a plain metric).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Shown {
    namespace: String,
    name: String,
    detail: String,
}

/// The body with each `${X}` / `${X.Attr}` replaced by `X` (after checking X is a parameter, a
/// pseudo parameter or a resource of the template) and `${!X}` by the literal `${X}`.
fn substitute(t: &Value, body: &str) -> Result<String, Vec<String>> {
    let mut out = String::new();
    let mut bad = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            bad.push(format!("an unclosed ${{ at {:?}", &rest[i..]));
            break;
        };
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str(&format!("${{{literal}}}"));
        } else {
            let id = name.split('.').next().unwrap_or_default();
            let known = id.starts_with("AWS::")
                || t["Parameters"].get(id).is_some()
                || t["Resources"].get(id).is_some();
            if !known {
                bad.push(format!(
                    "${{{name}}}: {id} is not a resource of this template"
                ));
            }
            out.push_str(id);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// `SELECT SUM(X) FROM SCHEMA("NS", ...) ...`: (NS, X).
fn query_metric(q: &str) -> Option<(String, String)> {
    let rest = q.trim().strip_prefix("SELECT ")?;
    let open = rest.find('(')?;
    let close = rest[open..].find(')')? + open;
    let name = rest[open + 1..close].trim().to_owned();
    let from = rest.find("FROM ")? + 5;
    let source = rest[from..].trim_start();
    let source = source.strip_prefix("SCHEMA(").unwrap_or(source);
    let ns = source.strip_prefix('"')?;
    let ns = &ns[..ns.find('"')?];
    Some((ns.to_owned(), name))
}

/// The metrics every widget shows; `Err` for a metric row this reader does not understand.
fn shown(dashboard: &Json) -> Result<BTreeSet<Shown>, Vec<String>> {
    let mut out = BTreeSet::new();
    let mut bad = Vec::new();
    let widgets = dashboard["widgets"].as_array().cloned().unwrap_or_default();
    if widgets.is_empty() {
        bad.push("no widgets".into());
    }
    for w in &widgets {
        let title = w["properties"]["title"].as_str().unwrap_or("?");
        for row in w["properties"]["metrics"].as_array().into_iter().flatten() {
            let items = row.as_array().cloned().unwrap_or_default();
            match items.first() {
                Some(Json::Object(o)) if o.contains_key("expression") => {
                    let e = o["expression"].as_str().unwrap_or_default();
                    if e.trim_start().starts_with("SELECT") {
                        match query_metric(e) {
                            Some((namespace, name)) => {
                                out.insert(Shown {
                                    namespace,
                                    name,
                                    detail: e.to_owned(),
                                });
                            }
                            None => bad.push(format!("{title}: unreadable query {e}")),
                        }
                    }
                }
                Some(Json::String(ns)) if ns != "." => {
                    let strs: Vec<&str> = items.iter().filter_map(Json::as_str).collect();
                    if strs.len() < 2 || !strs.len().is_multiple_of(2) {
                        bad.push(format!("{title}: a metric row {row}"));
                        continue;
                    }
                    let detail = strs[2..]
                        .chunks(2)
                        .map(|p| format!("{}={}", p[0], p[1]))
                        .collect::<Vec<_>>()
                        .join(",");
                    out.insert(Shown {
                        namespace: ns.clone(),
                        name: strs[1].to_owned(),
                        detail,
                    });
                }
                _ => bad.push(format!("{title}: a metric row {row}")),
            }
        }
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// What an operator watches, each an item the dashboard must show: (what, namespace, metric,
/// a piece of its query or dimensions that says which strategy or resource).
const WATCHED: [(&str, &str, &str, &str); 22] = [
    (
        "delta: written",
        "SyncEngine",
        "RecordsWritten",
        "Strategy = 'delta'",
    ),
    (
        "delta: unchanged",
        "SyncEngine",
        "RecordsUnchanged",
        "Strategy = 'delta'",
    ),
    ("worker: written", "SyncEngine", "RecordsWritten", ""),
    ("worker: unchanged", "SyncEngine", "RecordsUnchanged", ""),
    (
        "reconcile: missed",
        "SyncEngine",
        "ReconcileMissed",
        "Strategy = 'reconcile'",
    ),
    (
        "reconcile: stale",
        "SyncEngine",
        "ReconcileStale",
        "Strategy = 'reconcile'",
    ),
    (
        "reconcile: deleted",
        "SyncEngine",
        "ReconcileDeleted",
        "Strategy = 'reconcile'",
    ),
    (
        "source requests",
        "SyncEngine",
        "SourceRequests",
        "GROUP BY Strategy",
    ),
    (
        "source 429s",
        "SyncEngine",
        "SourceRateLimited",
        "GROUP BY Strategy",
    ),
    (
        "webhook answers",
        "AWS/ApiGateway",
        "Count",
        "ApiId=WebhookApi",
    ),
    ("webhook 4xx", "AWS/ApiGateway", "4xx", "ApiId=WebhookApi"),
    ("webhook 5xx", "AWS/ApiGateway", "5xx", "ApiId=WebhookApi"),
    ("ingest: queued", "SyncEngine", "WebhookEventsQueued", ""),
    ("ingest: ignored", "SyncEngine", "WebhookEventsIgnored", ""),
    ("ingest: 401", "SyncEngine", "WebhookUnauthorized", ""),
    ("ingest: 400", "SyncEngine", "WebhookMalformed", ""),
    ("ingest: 413", "SyncEngine", "WebhookTooLarge", ""),
    ("ingest: 503", "SyncEngine", "WebhookQueueFailed", ""),
    (
        "work queue age",
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        "QueueName=WorkQueue",
    ),
    (
        "DLQ depth",
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "QueueName=DeadLetterQueue",
    ),
    ("guard trips", "SyncEngine", "ReconcileGuardTripped", ""),
    (
        "delta lag",
        "SyncEngine",
        "CursorLagSeconds",
        "GROUP BY Entity",
    ),
];

/// Besides [`WATCHED`]: the 404 ceiling and the rate budget's stops are guard trips too.
const ALSO_WATCHED: [(&str, &str, &str, &str); 2] = [
    ("404 ceiling", "SyncEngine", "NotFoundCeilingTripped", ""),
    (
        "stopped by the rate budget",
        "SyncEngine",
        "RunStoppedByBudget",
        "Strategy = 'delta'",
    ),
];

/// The whole check of a dashboard body: it substitutes and parses, each `SyncEngine` metric it
/// names is emitted by the production code (`"Name"` in `shared/src` or `functions/*/src`),
/// and each watched item has a widget.
fn check_dashboard(t: &Value, body: &str, code: &str) -> Vec<String> {
    let text = match substitute(t, body) {
        Ok(text) => text,
        Err(bad) => return bad,
    };
    let dashboard: Json = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => return vec![format!("the body is not JSON: {e}")],
    };
    let shown = match shown(&dashboard) {
        Ok(s) => s,
        Err(bad) => return bad,
    };
    let mut bad = Vec::new();
    for s in &shown {
        if s.namespace == shared::telemetry::NAMESPACE && !code.contains(&format!("\"{}\"", s.name))
        {
            bad.push(format!(
                "{}: the code emits no metric {} ({})",
                s.namespace, s.name, s.detail
            ));
        }
    }
    for (what, ns, name, detail) in WATCHED.iter().chain(&ALSO_WATCHED) {
        let found = shown.iter().any(|s| {
            s.namespace == *ns
                && s.name == *name
                && if detail.is_empty() {
                    // A metric without dimensions: a plain row naming none.
                    s.detail.is_empty()
                } else {
                    s.detail.contains(detail)
                }
        });
        if !found {
            bad.push(format!("no widget shows {what} ({ns} {name} {detail})"));
        }
    }
    bad
}

fn body(t: &Value) -> String {
    let d = &t["Resources"]["Dashboard"];
    assert_eq!(d["Type"].as_str(), Some("AWS::CloudWatch::Dashboard"));
    let (f, arg) = intrinsic(&d["Properties"]["DashboardBody"]).expect("DashboardBody: !Sub");
    assert_eq!(f, "Sub");
    arg.as_str().expect("a string to substitute").to_owned()
}

fn code() -> String {
    let mut dirs = vec![root().join("shared/src")];
    dirs.extend(
        function_crates()
            .iter()
            .map(|c| root().join("functions").join(c).join("src")),
    );
    production_code_under(&dirs)
}

#[test]
fn template_dashboard_shows_what_the_code_emits_for_each_watched_item() {
    let t = template();
    let d = &t["Resources"]["Dashboard"]["Properties"];
    assert!(
        is_ref_to(&d["DashboardName"], "AWS::StackName"),
        "named after the stack"
    );
    assert!(is_ref_to(
        &t["Outputs"]["DashboardName"]["Value"],
        "Dashboard"
    ));
    let (body, code) = (body(&t), code());
    assert_eq!(check_dashboard(&t, &body, &code), Vec::<String>::new());

    // Negative controls, each on a tampered copy of the body.
    // A metric the code does not emit (a typo).
    let typo = body.replacen("SUM(CursorLagSeconds)", "SUM(CursorLag)", 1);
    let typo = typo.replacen("MAX(CursorLagSeconds)", "MAX(CursorLag)", 1);
    assert_ne!(typo, body);
    let found = check_dashboard(&t, &typo, &code);
    assert!(
        found
            .iter()
            .any(|b| b.contains("the code emits no metric CursorLag ")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|b| b.contains("no widget shows delta lag")),
        "{found:?}"
    );
    let plain = body.replacen(
        "\"SyncEngine\", \"WebhookTooLarge\"",
        "\"SyncEngine\", \"WebhookTooBig\"",
        1,
    );
    assert_ne!(plain, body);
    let found = check_dashboard(&t, &plain, &code);
    assert!(
        found
            .iter()
            .any(|b| b.contains("the code emits no metric WebhookTooBig")),
        "{found:?}"
    );
    // The same body is refused when the code stops emitting a metric it shows.
    let found = check_dashboard(&t, &body, &code.replace("\"SourceRateLimited\"", "\"X\""));
    assert!(
        found
            .iter()
            .any(|b| b.contains("the code emits no metric SourceRateLimited")),
        "{found:?}"
    );
    // A resource the template does not have.
    let gone = body.replacen("${WorkQueue.QueueName}", "${OldQueue.QueueName}", 1);
    assert_ne!(gone, body);
    let found = check_dashboard(&t, &gone, &code);
    assert!(
        found
            .iter()
            .any(|b| b.contains("OldQueue is not a resource")),
        "{found:?}"
    );
    // Not JSON once substituted.
    let found = check_dashboard(&t, &body.replacen("]}", "]", 1), &code);
    assert!(found.iter().any(|b| b.contains("not JSON")), "{found:?}");
    // A watched item without its widget: the DLQ's depth.
    let no_dlq = body.replacen(
        "${DeadLetterQueue.QueueName}",
        "${DeltaFailureQueue.QueueName}",
        1,
    );
    let found = check_dashboard(&t, &no_dlq, &code);
    assert_eq!(
        found,
        [
            "no widget shows DLQ depth (AWS/SQS ApproximateNumberOfMessagesVisible \
          QueueName=DeadLetterQueue)"
        ]
    );
}

#[test]
fn template_dashboard_reader_understands_both_metric_forms() {
    let q = "SELECT MAX(CursorLagSeconds) FROM SCHEMA(\"SyncEngine\", Entity, Strategy) \
             WHERE Strategy = 'delta' GROUP BY Entity";
    assert_eq!(
        query_metric(q),
        Some(("SyncEngine".into(), "CursorLagSeconds".into()))
    );
    let d: Json = serde_json::from_str(
        r#"{"widgets": [{"properties": {"title": "t", "metrics": [
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", "Q", {"label": "x"}],
            [{"expression": "a - b", "id": "e"}],
            [{"expression": "SELECT SUM(X) FROM SCHEMA(\"SyncEngine\", Strategy)", "id": "q"}]
        ]}}]}"#,
    )
    .unwrap();
    let s: Vec<Shown> = shown(&d).unwrap().into_iter().collect();
    assert_eq!(s.len(), 2, "the math expression names no metric: {s:?}");
    assert!(
        s.iter()
            .any(|m| m.name == "ApproximateAgeOfOldestMessage" && m.detail == "QueueName=Q")
    );
    assert!(
        s.iter()
            .any(|m| m.name == "X" && m.namespace == "SyncEngine")
    );
    // A row in the "." shorthand (repeat the row above) is refused rather than misread.
    let d: Json = serde_json::from_str(
        r#"{"widgets": [{"properties": {"title": "t", "metrics": [[".", "Y"]]}}]}"#,
    )
    .unwrap();
    assert!(shown(&d).is_err());
}

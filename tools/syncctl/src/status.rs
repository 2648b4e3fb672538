//! `syncctl status`: each entity's cursor, lag, lease and last runs (delta sync, then
//! reconciliation, with a run waiting for approval called out), as a table or JSON.

use crate::stores::StoreArgs;
use clap::Args;
use shared::Config;
use shared::core::cursor::DeltaCursor;
use shared::core::timefmt::{format_rfc3339, now_us};
use shared::ports::{ControlStore, JobKind};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Runs shown per entity.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: StatusArgs) -> Result<(), String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    let (_, control) = args.store.open().await?;
    let rows = collect(&config, &*control, args.runs).await?;
    if args.json {
        crate::print_json(&rows)?;
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

pub async fn collect(
    config: &Config,
    control: &dyn ControlStore,
    runs: usize,
) -> Result<Vec<serde_json::Value>, String> {
    let mut rows = Vec::new();
    let now = now_us();
    for e in &config.entities {
        let state = control
            .job_state(&e.name, JobKind::Delta)
            .await
            .map_err(|e| e.to_string())?;
        let cursor = match state.cursor.as_deref() {
            Some(c) => Some(
                DeltaCursor::decode(c)
                    .map_err(|err| format!("stored cursor of {}: {err}", e.name))?,
            ),
            None => None,
        };
        let recent = control
            .list_runs(&e.name, JobKind::Delta, runs)
            .await
            .map_err(|e| e.to_string())?;
        let recent: Vec<serde_json::Value> = recent
            .iter()
            .map(|r| {
                serde_json::json!({
                    "run_id": r.run_id,
                    "started": format_rfc3339(r.started_us),
                    "status": r.status,
                    "summary": serde_json::from_str::<serde_json::Value>(&r.summary).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        let lease = match (&state.lease_holder, state.lease_expires_us) {
            (Some(h), Some(exp)) if exp > now => {
                Some(serde_json::json!({"holder": h, "until": format_rfc3339(exp)}))
            }
            _ => None,
        };
        let reconcile =
            reconcile_status(control, &e.name, e.allow_version_regression, runs, now).await?;
        rows.push(serde_json::json!({
            "entity": e.name,
            "cursor": cursor.map(|c| format_rfc3339(c.watermark_us)),
            "lag_seconds": cursor.map(|c| (now - c.watermark_us) / 1_000_000),
            "lease": lease,
            "runs": recent,
            "reconcile": reconcile,
        }));
    }
    Ok(rows)
}

/// An entity's reconciliation: its lease, its last runs (summaries without any task token),
/// the run waiting for approval when the last run is one, and the records whose source version
/// went backwards in the last run.
async fn reconcile_status(
    control: &dyn ControlStore,
    entity: &str,
    allow_version_regression: bool,
    runs: usize,
    now: i64,
) -> Result<serde_json::Value, String> {
    let state = control
        .job_state(entity, JobKind::Reconcile)
        .await
        .map_err(|e| e.to_string())?;
    let lease = match (&state.lease_holder, state.lease_expires_us) {
        (Some(h), Some(exp)) if exp > now => {
            Some(serde_json::json!({"holder": h, "until": format_rfc3339(exp)}))
        }
        _ => None,
    };
    let recent = control
        .list_runs(entity, JobKind::Reconcile, runs.max(1))
        .await
        .map_err(|e| e.to_string())?;
    let awaiting = recent
        .first()
        .filter(|r| r.status == "awaiting_approval")
        .map(|r| {
            let sum = serde_json::from_str::<serde_json::Value>(&r.summary).unwrap_or_default();
            // A local run records its guard decision; the state machine's wait, its reason.
            let reason = sum["guard"]["reason"]
                .as_str()
                .or_else(|| sum["reason"].as_str())
                .unwrap_or("-")
                .to_owned();
            let how = if sum.get("task_token").is_some() {
                format!(
                    "the state machine waits for approval of this run (until its timeout): \
                     `syncctl reconcile approve --entity {entity}` (or `reject`)"
                )
            } else {
                format!(
                    "read the run's counts, then `syncctl reconcile --entity {entity} --approve-deletions`"
                )
            };
            serde_json::json!({
                "run_id": r.run_id,
                "since": format_rfc3339(r.started_us),
                "reason": reason,
                "next_step": how,
            })
        });
    let recent: Vec<serde_json::Value> = recent
        .iter()
        .take(runs)
        .map(|r| {
            let mut sum = serde_json::from_str::<serde_json::Value>(&r.summary).unwrap_or_default();
            // The task token approves the run: not for a status screen.
            if let Some(o) = sum.as_object_mut() {
                o.remove("task_token");
            }
            serde_json::json!({
                "run_id": r.run_id,
                "started": format_rfc3339(r.started_us),
                "finished": r.finished_us.map(format_rfc3339),
                "status": r.status,
                "summary": sum,
            })
        })
        .collect();
    let last = &recent
        .first()
        .map(|r| r["summary"].clone())
        .unwrap_or_default();
    let regressions = serde_json::json!({
        "last_run": last["regressions"].as_u64().unwrap_or(0),
        "regressed": last["regressed"].as_u64().unwrap_or(0),
        "allow_version_regression": allow_version_regression,
    });
    Ok(serde_json::json!({
        "lease": lease,
        "runs": recent,
        "awaiting_approval": awaiting,
        "version_regressions": regressions,
    }))
}

/// Columns padded to their widest cell, two spaces apart.
pub fn render_table(lines: &[Vec<String>]) -> String {
    table_lines(lines).into_iter().map(|l| l + "\n").collect()
}

/// The lines of `render_table`, without their line ends (for callers that put more between
/// them).
pub fn table_lines<L: AsRef<[String]>>(lines: &[L]) -> Vec<String> {
    let columns = lines.iter().map(|l| l.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.as_ref().get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|l| {
            let cells: Vec<String> = l
                .as_ref()
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// The delta table, then the reconciliation table and its notes.
pub fn table(rows: &[serde_json::Value]) -> String {
    let mut out = delta_table(rows);
    out.push('\n');
    out.push_str(&reconcile_table(rows));
    out
}

/// A JSON string as a table cell, `-` when absent.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into())
}

/// The LEASE cell of a job.
fn lease_cell(lease: &serde_json::Value) -> String {
    lease["holder"]
        .as_str()
        .map(|h| format!("held by {h}"))
        .unwrap_or_else(|| "free".into())
}

/// A cell about the last run: `-` when there is none, else `cell()`.
fn last_run_cell(last: &serde_json::Value, cell: impl FnOnce() -> String) -> String {
    if last.is_null() { "-".into() } else { cell() }
}

fn reconcile_table(rows: &[serde_json::Value]) -> String {
    let s = text;
    let n = |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".into(), |v| v.to_string());
    let mut lines = vec![
        [
            "RECONCILE",
            "LEASE",
            "LAST RUN",
            "SOURCE/DEST",
            "DELETED/MISSED/STALE/QUEUED",
            "GUARD",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut notes = String::new();
    for r in rows {
        let rec = &r["reconcile"];
        let last = &rec["runs"][0];
        let sum = &last["summary"];
        let guard = match sum["guard"]["kind"].as_str() {
            Some("report_only") => format!(
                "report only ({})",
                sum["guard"]["would"]["kind"].as_str().unwrap_or("-")
            ),
            Some(k) => k.replace('_', " "),
            None => "-".into(),
        };
        lines.push(vec![
            s(&r["entity"]),
            lease_cell(&rec["lease"]),
            last_run_cell(last, || {
                format!("{} {}", s(&last["status"]), s(&last["started"]))
            }),
            last_run_cell(last, || {
                format!(
                    "{}/{}",
                    n(&sum["source_count"]),
                    n(&sum["destination_count"])
                )
            }),
            last_run_cell(last, || {
                with_erased(
                    format!(
                        "{}/{}/{}/{}",
                        n(&sum["deleted"]),
                        n(&sum["missed"]),
                        n(&sum["stale"]),
                        n(&sum["queued"])
                    ),
                    sum,
                )
            }),
            guard,
        ]);
        let a = &rec["awaiting_approval"];
        if !a.is_null() {
            notes.push_str(&format!(
                "{}: reconciliation {} awaits approval since {} (nothing deleted): {}; {}\n",
                s(&r["entity"]),
                s(&a["run_id"]),
                s(&a["since"]),
                s(&a["reason"]),
                s(&a["next_step"]),
            ));
        } else if let Some(reason) = sum["guard"]["reason"]
            .as_str()
            .filter(|_| last["status"] == "guard_blocked")
        {
            notes.push_str(&format!(
                "{}: last reconciliation blocked by the guard (nothing deleted): {reason}\n",
                s(&r["entity"])
            ));
        } else if last["status"] == "failed" {
            notes.push_str(&format!(
                "{}: last reconciliation failed: {}\n",
                s(&r["entity"]),
                sum["error"]["Cause"].as_str().unwrap_or("-")
            ));
        }
        notes.push_str(&regression_note(r));
    }
    let mut out = render_table(&lines);
    out.push_str(&notes);
    out
}

/// The note on records whose source version went backwards in the last run; empty when none.
fn regression_note(row: &serde_json::Value) -> String {
    let v = &row["reconcile"]["version_regressions"];
    let found = v["last_run"].as_u64().unwrap_or(0);
    if found == 0 {
        return String::new();
    }
    let entity = text(&row["entity"]);
    let what = format!(
        "{entity}: {found} record(s) whose source version went backwards (older than the stored \
         copy: a restore or a clock fix at the source?)"
    );
    if v["allow_version_regression"].as_bool() == Some(true) {
        format!(
            "{what}; {} written as the source's copy (allow_version_regression)\n",
            v["regressed"].as_u64().unwrap_or(0)
        )
    } else {
        format!(
            "{what} keep the stored copy: check the source, then set `allow_version_regression = \
             true` on the entity in the endpoint file to have reconciliation write the source's \
             copy\n"
        )
    }
}

/// A run's counts, and how many records it read again but left erased (`syncctl erase`) when
/// there were any.
fn with_erased(counts: String, summary: &serde_json::Value) -> String {
    match summary["suppressed"].as_u64().unwrap_or(0) {
        0 => counts,
        n => format!("{counts} ({n} erased)"),
    }
}

fn delta_table(rows: &[serde_json::Value]) -> String {
    let mut lines = vec![[
        "ENTITY".to_owned(),
        "CURSOR".to_owned(),
        "LAG".to_owned(),
        "LEASE".to_owned(),
        "LAST RUN".to_owned(),
        "SEEN/WRITTEN/UNCHANGED/STALE".to_owned(),
    ]];
    let s = text;
    for r in rows {
        let last = &r["runs"][0];
        let sum = &last["summary"];
        let written = ["inserted", "updated", "restored"]
            .iter()
            .filter_map(|k| sum[*k].as_u64())
            .sum::<u64>();
        lines.push([
            s(&r["entity"]),
            s(&r["cursor"]),
            r["lag_seconds"]
                .as_i64()
                .map(|l| format!("{l}s"))
                .unwrap_or_else(|| "-".into()),
            lease_cell(&r["lease"]),
            last_run_cell(last, || {
                format!("{} {}", s(&last["status"]), s(&last["started"]))
            }),
            last_run_cell(last, || {
                with_erased(
                    format!(
                        "{}/{}/{}/{}",
                        sum["seen"].as_u64().unwrap_or(0),
                        written,
                        sum["unchanged"].as_u64().unwrap_or(0),
                        sum["stale"].as_u64().unwrap_or(0)
                    ),
                    sum,
                )
            }),
        ]);
    }
    let lines: Vec<Vec<String>> = lines.into_iter().map(Vec::from).collect();
    render_table(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::adapters::local::LocalStore;
    use shared::ports::RunRecord;

    /// A finished reconciliation of `entity` whose summary says `regressions` and `regressed`.
    async fn finished(store: &LocalStore, entity: &str, regressions: u64, regressed: u64) {
        store
            .put_run(&RunRecord {
                entity: entity.into(),
                kind: JobKind::Reconcile,
                run_id: format!("rec-{entity}"),
                started_us: now_us() - 1_000_000,
                finished_us: Some(now_us()),
                status: "succeeded".into(),
                summary: serde_json::json!({
                    "deleted": 0, "missed": 0, "stale": 0, "queued": 0,
                    "destination_newer": regressions + 1,
                    "regressions": regressions, "regressed": regressed,
                })
                .to_string(),
            })
            .await
            .unwrap();
    }

    #[test]
    fn the_tables_count_erased_records_a_run_left_alone() {
        let row = |suppressed: u64| {
            serde_json::json!({
                "entity": "people", "cursor": "c", "lag_seconds": 5, "lease": null,
                "runs": [{"status": "succeeded", "started": "t", "summary": {
                    "seen": 3, "inserted": 1, "unchanged": 1, "stale": 0,
                    "suppressed": suppressed,
                }}],
            })
        };
        let table = delta_table(&[row(1)]);
        assert!(table.contains("3/1/1/0 (1 erased)"), "{table}");
        let rec = serde_json::json!({"entity": "people", "reconcile": {"lease": null, "runs": [
            {"status": "succeeded", "started": "t", "summary": {
                "deleted": 0, "missed": 2, "stale": 0, "queued": 2, "suppressed": 1,
            }}],
        }});
        let table = reconcile_table(&[rec]);
        assert!(table.contains("0/2/0/2 (1 erased)"), "{table}");
        let table = delta_table(&[row(0)]);
        assert!(
            table.contains("3/1/1/0") && !table.contains("erased"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn status_calls_out_source_versions_that_went_backwards() {
        let mut config = Config::from_toml_str(
            shared::config::EMBEDDED,
            std::path::Path::new("endpoints.toml"),
        )
        .unwrap();
        config
            .entities
            .iter_mut()
            .find(|e| e.name == "donations")
            .unwrap()
            .allow_version_regression = true;
        let store = LocalStore::in_memory().unwrap();
        finished(&store, "people", 3, 0).await;
        finished(&store, "donations", 2, 2).await;
        let rows = collect(&config, &store, 3).await.unwrap();
        assert_eq!(
            rows[0]["reconcile"]["version_regressions"],
            serde_json::json!({"last_run": 3, "regressed": 0, "allow_version_regression": false})
        );
        assert_eq!(
            rows[1]["reconcile"]["version_regressions"],
            serde_json::json!({"last_run": 2, "regressed": 2, "allow_version_regression": true})
        );
        let shown = table(&rows);
        assert!(
            shown.contains(
                "people: 3 record(s) whose source version went backwards (older than the stored \
                 copy: a restore or a clock fix at the source?) keep the stored copy"
            ) && shown.contains("allow_version_regression = true"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "donations: 2 record(s) whose source version went backwards (older than the \
                 stored copy: a restore or a clock fix at the source?); 2 written as the \
                 source's copy"
            ),
            "{shown}"
        );

        // None in the last run: no note.
        let store2 = LocalStore::in_memory().unwrap();
        finished(&store2, "people", 0, 0).await;
        let shown = table(&collect(&config, &store2, 3).await.unwrap());
        assert!(!shown.contains("went backwards"), "{shown}");
    }
}

//! `syncctl status`: each entity's cursor, lag, lease and last runs, as a table or JSON.

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
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
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
            Some(c) => Some(DeltaCursor::decode(c)?),
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
        rows.push(serde_json::json!({
            "entity": e.name,
            "cursor": cursor.map(|c| format_rfc3339(c.watermark_us)),
            "lag_seconds": cursor.map(|c| (now - c.watermark_us) / 1_000_000),
            "lease": lease,
            "runs": recent,
        }));
    }
    Ok(rows)
}

fn table(rows: &[serde_json::Value]) -> String {
    let mut lines = vec![[
        "ENTITY".to_owned(),
        "CURSOR".to_owned(),
        "LAG".to_owned(),
        "LEASE".to_owned(),
        "LAST RUN".to_owned(),
        "SEEN/WRITTEN/UNCHANGED/STALE".to_owned(),
    ]];
    for r in rows {
        let s = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
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
            r["lease"]["holder"]
                .as_str()
                .map(|h| format!("held by {h}"))
                .unwrap_or_else(|| "free".into()),
            if last.is_null() {
                "-".into()
            } else {
                format!("{} {}", s(&last["status"]), s(&last["started"]))
            },
            if last.is_null() {
                "-".into()
            } else {
                format!(
                    "{}/{}/{}/{}",
                    sum["seen"].as_u64().unwrap_or(0),
                    written,
                    sum["unchanged"].as_u64().unwrap_or(0),
                    sum["stale"].as_u64().unwrap_or(0)
                )
            },
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

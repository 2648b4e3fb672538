//! `syncctl erase ENTITY ID`: remove our copy of one record for a privacy request, and keep it
//! out. The stored item, whatever it holds, is replaced in one write by a suppression marker
//! (the key, when, by whom; nothing of the record), also when nothing was stored, so that no
//! path (a delta run, a webhook, a reconciliation's targeted sync) writes the record back:
//! every write refuses a marker in the write itself (`core::version`, `Suppressed`).
//! `syncctl erase --lift ENTITY ID` removes the marker; the next sync that sees the record
//! writes it afresh.
//!
//! What this does not reach (the output says it every time): the source itself (erase it there
//! too, or the marker must stay for as long as the source has it), DynamoDB's point-in-time
//! backups (35 days) and the table stream (24 hours), which keep earlier copies for their
//! retention. The local store zeroes the erased bytes in its file (`secure_delete`).

use crate::status::render_table;
use crate::stores::StoreArgs;
use clap::Args;
use shared::Config;
use shared::core::timefmt::{format_rfc3339, now_us};
use shared::model::{EraseOutcome, Erasure, LiftOutcome};

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The entity, as configured (infra/endpoints.toml, or the file SYNC_CONFIG names).
    pub entity: String,
    /// The record's ID, as the source spells it.
    pub id: String,
    /// Remove the erasure's marker instead (only a marker: a live record is left alone); the
    /// next sync that sees the record writes it again.
    #[arg(long)]
    pub lift: bool,
    /// Who asks, kept in the marker as `erased_by` (default: on AWS, the caller's ARN; locally
    /// the user name, $USER).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// What the command did, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub entity: String,
    pub id: String,
    /// `erased` (a stored record replaced), `marked` (nothing was stored: the marker alone),
    /// `already_erased` (the first marker kept), `lifted`, `not_erased` (nothing to lift).
    pub result: &'static str,
    /// The marker's time and author (absent after a lift).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_by: Option<String>,
    /// `local` or `dynamodb`.
    pub store: &'static str,
    /// What the erasure does not reach.
    pub notes: Vec<String>,
}

pub async fn run(args: EraseArgs) -> Result<(), String> {
    let report = erase(&args).await?;
    if args.json {
        crate::print_json(&report)?;
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

async fn erase(args: &EraseArgs) -> Result<Report, String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    config.entity_names(Some(&args.entity)).map_err(|e| {
        format!(
            "entity {e:?} is not configured in {}",
            config.file.display()
        )
    })?;
    if args.id.is_empty() {
        return Err("the ID is empty".into());
    }
    let (records, _) = args.store.open().await?;
    let store = if args.store.uses_dynamodb() {
        "dynamodb"
    } else {
        "local"
    };
    let mut report = Report {
        entity: args.entity.clone(),
        id: args.id.clone(),
        result: "",
        erased_at: None,
        erased_by: None,
        store,
        notes: Vec::new(),
    };
    if args.lift {
        report.result = match records
            .lift_erasure(&args.entity, &args.id)
            .await
            .map_err(|e| e.to_string())?
        {
            LiftOutcome::Lifted => "lifted",
            LiftOutcome::NotErased => "not_erased",
        };
        if report.result == "lifted" {
            report.notes.push(
                "the marker is gone: the next delta run, webhook or reconciliation that sees the \
                 record writes it again"
                    .into(),
            );
        }
        return Ok(report);
    }
    let actor = crate::actor::resolve(args.actor.as_deref(), &args.store).await?;
    let now = now_us();
    let (result, erasure) = match records
        .erase(&args.entity, &args.id, now, &actor)
        .await
        .map_err(|e| e.to_string())?
    {
        EraseOutcome::Erased => ("erased", None),
        EraseOutcome::Marked => ("marked", None),
        EraseOutcome::AlreadyErased(e) => ("already_erased", Some(e)),
    };
    let erasure = erasure.unwrap_or(Erasure {
        erased_us: now,
        erased_by: actor,
    });
    report.result = result;
    report.erased_at = Some(format_rfc3339(erasure.erased_us));
    report.erased_by = Some(erasure.erased_by);
    report.notes = notes(store);
    Ok(report)
}

/// What an erasure does not reach, for the store it ran on.
fn notes(store: &str) -> Vec<String> {
    let mut notes = vec![
        "erase the record at the source too: the marker keeps it out of this store only for as \
         long as it stays (syncctl erase --lift removes it)"
            .to_owned(),
    ];
    if store == "dynamodb" {
        notes.push(
            "point-in-time recovery backups keep earlier copies of the item for their retention \
             (up to 35 days), and the table's stream keeps the change records for 24 hours"
                .to_owned(),
        );
    } else {
        notes.push(
            "the local store's file has the erased bytes zeroed (secure_delete); copies of the \
             file made before (backups) still hold them"
                .to_owned(),
        );
    }
    notes
}

fn table(r: &Report) -> String {
    let lines = vec![
        vec![
            "ENTITY".to_owned(),
            "ID".to_owned(),
            "RESULT".to_owned(),
            "ERASED AT".to_owned(),
            "ERASED BY".to_owned(),
        ],
        vec![
            r.entity.clone(),
            r.id.clone(),
            r.result.to_owned(),
            r.erased_at.clone().unwrap_or_else(|| "-".into()),
            r.erased_by.clone().unwrap_or_else(|| "-".into()),
        ],
    ];
    let mut out = render_table(&lines);
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_result_and_the_caveats() {
        let r = Report {
            entity: "people".into(),
            id: "42".into(),
            result: "erased",
            erased_at: Some("2026-01-01T00:00:00Z".into()),
            erased_by: Some("ana".into()),
            store: "dynamodb",
            notes: notes("dynamodb"),
        };
        let t = table(&r);
        assert!(t.starts_with("ENTITY  ID  RESULT  ERASED AT"), "{t}");
        assert!(
            t.contains("people  42  erased  2026-01-01T00:00:00Z  ana"),
            "{t}"
        );
        assert!(
            t.contains("at the source too") && t.contains("point-in-time"),
            "{t}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["result"], "erased");
        assert_eq!(v["notes"].as_array().map(Vec::len), Some(2));
    }
}

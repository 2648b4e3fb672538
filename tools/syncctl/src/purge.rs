//! `syncctl purge`: remove soft-deleted records whose deletion is older than a retention (the
//! stack's `TombstoneRetentionDays`, read here from `TOMBSTONE_RETENTION_DAYS`, default 90
//! days; `--older-than` overrides it). Never an erasure's marker; never a live record; a record
//! restored between the read and the delete stays (each delete is conditional on the copy read).
//!
//! On DynamoDB it is a Scan of the whole records table (every item read, whatever the entity),
//! with conditional deletes of the matches; the stack's TTL removes the same items by itself
//! (`expires_at`), so the command is for a first clean-up, a shorter retention, or a table
//! without TTL. Locally it is one SQL statement.
//!
//! A purged record is forgotten: should the source list it again, it is inserted afresh.

use crate::status::render_table;
use crate::stores::StoreArgs;
use clap::Args;
use shared::Config;
use shared::config::{Env, TombstoneRetention};
use shared::core::timefmt::{format_rfc3339, now_us};
use shared::model::{Micros, PurgeCount};

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Only this entity (default: every entity).
    #[arg(long)]
    pub entity: Option<String>,
    /// Remove records soft-deleted longer ago than this: `90d`, `36h`, `30m`, `45s` (a bare
    /// number is days). Default: TOMBSTONE_RETENTION_DAYS (90; 0 keeps them for ever, and then
    /// this flag is needed).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<Micros>,
    /// Count what would go; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove at most this many.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// What the command did, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// The entity, or `null` for every entity.
    pub entity: Option<String>,
    /// Records soft-deleted (deletion evidence) before this time were purged.
    pub deleted_before: String,
    pub dry_run: bool,
    /// Items read to find them (DynamoDB: every item of the table).
    pub scanned: u64,
    pub matched: u64,
    pub purged: u64,
    /// Matched, but restored or deleted again between the read and the delete: kept.
    pub changed: u64,
    /// `local` or `dynamodb`.
    pub store: &'static str,
}

pub async fn run(args: PurgeArgs) -> Result<(), String> {
    let report = purge(&args).await?;
    if args.json {
        crate::print_json(&report)?;
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

async fn purge(args: &PurgeArgs) -> Result<Report, String> {
    if let Some(entity) = &args.entity {
        let config = Config::load().map_err(|e| e.to_string())?;
        config.entity_names(Some(entity)).map_err(|e| {
            format!(
                "entity {e:?} is not configured in {}",
                config.file.display()
            )
        })?;
    }
    let age = match args.older_than {
        Some(age) => age,
        None => TombstoneRetention::from_env(Env::process())
            .map_err(|e| e.to_string())?
            .as_us()
            .ok_or(
                "TOMBSTONE_RETENTION_DAYS is 0 (soft-deleted records are kept for ever): pass \
                 --older-than AGE to purge anyway",
            )?,
    };
    let before = now_us().saturating_sub(age);
    let (records, _) = args.store.open().await?;
    let count: PurgeCount = records
        .purge_deleted(args.entity.as_deref(), before, args.limit, args.dry_run)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Report {
        entity: args.entity.clone(),
        deleted_before: format_rfc3339(before),
        dry_run: args.dry_run,
        scanned: count.scanned,
        matched: count.matched,
        purged: count.purged,
        changed: count.changed,
        store: if args.store.uses_dynamodb() {
            "dynamodb"
        } else {
            "local"
        },
    })
}

/// `90d`, `36h`, `30m`, `45s`, or a bare number of days, as microseconds (at least a second).
pub fn parse_age(s: &str) -> Result<Micros, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "d"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not an age like 90d, 36h, 30m or 45s"))?;
    let secs: i64 = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{s:?}: the unit is d, h, m or s")),
    };
    let us = n
        .checked_mul(secs)
        .and_then(|x| x.checked_mul(1_000_000))
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if us < 1_000_000 {
        return Err(format!("{s:?}: the age must be at least one second"));
    }
    Ok(us)
}

fn table(r: &Report) -> String {
    let lines = vec![
        vec![
            "ENTITY".to_owned(),
            "DELETED BEFORE".to_owned(),
            "SCANNED".to_owned(),
            "MATCHED".to_owned(),
            "PURGED".to_owned(),
            "CHANGED".to_owned(),
        ],
        vec![
            r.entity.clone().unwrap_or_else(|| "(all)".into()),
            r.deleted_before.clone(),
            r.scanned.to_string(),
            r.matched.to_string(),
            r.purged.to_string(),
            r.changed.to_string(),
        ],
    ];
    let mut out = render_table(&lines);
    if r.dry_run {
        out.push_str("dry run: nothing removed\n");
    }
    if r.store == "dynamodb" {
        out.push_str(
            "note: the purge scanned the whole records table; the stack's TTL (expires_at) \
             removes expired soft-deleted items by itself\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_days_hours_minutes_and_seconds() {
        const S: i64 = 1_000_000;
        assert_eq!(parse_age("90d"), Ok(90 * 86_400 * S));
        assert_eq!(parse_age("90"), Ok(90 * 86_400 * S));
        assert_eq!(parse_age("36h"), Ok(36 * 3_600 * S));
        assert_eq!(parse_age("30m"), Ok(30 * 60 * S));
        assert_eq!(parse_age("45s"), Ok(45 * S));
        for bad in ["", "d", "0s", "-1d", "1w", "1.5d", "99999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_shows_the_counts_and_says_a_dry_run_removed_nothing() {
        let r = Report {
            entity: None,
            deleted_before: "2026-01-01T00:00:00Z".into(),
            dry_run: true,
            scanned: 10,
            matched: 3,
            purged: 0,
            changed: 0,
            store: "local",
        };
        let t = table(&r);
        assert!(
            t.contains("(all)   2026-01-01T00:00:00Z  10       3"),
            "{t}"
        );
        assert!(t.contains("dry run: nothing removed"), "{t}");
    }
}

//! `syncctl cursor show|set|reset ENTITY`: an entity's delta cursor, and an operator's change of
//! it (`shared::sync::operator::move_cursor`: under the delta job's lease, recorded in the run
//! history with `--actor`).

use crate::stores::StoreArgs;
use clap::{Args, Subcommand};
use serde::Serialize;
use shared::Config;
use shared::core::cursor::DeltaCursor;
use shared::core::timefmt::{format_rfc3339, now_us, parse_rfc3339};
use shared::ports::{ControlStore, JobKind};
use shared::sync::operator::{self, CURSOR_RESET, CURSOR_SET};
use shared::sync::resync;

#[derive(Debug, Args)]
pub struct CursorArgs {
    #[command(subcommand)]
    pub command: CursorCommand,
}

#[derive(Debug, Subcommand)]
pub enum CursorCommand {
    /// The cursor (where the next delta run starts reading), its lease, the latest operator
    /// changes and the re-sync's state.
    Show(ShowArgs),
    /// Move the cursor to a time (RFC 3339): the next run reads changes at or after it. Later
    /// skips what changed in between for delta sync (reconciliation still finds it); earlier
    /// reads again (unchanged records cost no write).
    Set(SetArgs),
    /// Remove the cursor: the next run reads the whole listing (a backfill; unchanged records
    /// cost no write). To re-read without holding delta back, see `syncctl resync`.
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub entity: String,
    /// Operator changes listed (from the run history's latest entries).
    #[arg(long, default_value_t = 20)]
    pub history: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    pub entity: String,
    /// The new cursor, RFC 3339 (`2026-11-30T00:00:00Z`).
    #[arg(long)]
    pub to: String,
    /// Who makes the change (default: the user name locally, the caller's ARN on AWS).
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    pub entity: String,
    /// Who makes the change (default: the user name locally, the caller's ARN on AWS).
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: CursorArgs) -> Result<(), String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    match args.command {
        CursorCommand::Show(a) => {
            check_entity(&config, &a.entity)?;
            let (_, control) = a.store.open().await?;
            let shown = show(&*control, &a.entity, a.history).await?;
            if a.json {
                crate::print_json(&shown)
            } else {
                print!("{}", shown.render());
                Ok(())
            }
        }
        CursorCommand::Set(a) => {
            check_entity(&config, &a.entity)?;
            let to = parse_rfc3339(a.to.trim()).map_err(|e| {
                format!(
                    "--to {:?}: {e} (expected RFC 3339, e.g. 2026-11-30T00:00:00Z)",
                    a.to
                )
            })?;
            change(&a.entity, Some(to), a.actor.as_deref(), a.json, &a.store).await
        }
        CursorCommand::Reset(a) => {
            check_entity(&config, &a.entity)?;
            change(&a.entity, None, a.actor.as_deref(), a.json, &a.store).await
        }
    }
}

pub fn check_entity(config: &Config, entity: &str) -> Result<(), String> {
    config.entity_names(Some(entity)).map(|_| ()).map_err(|e| {
        format!(
            "entity {e:?} is not configured in {} (configured: {})",
            config.file.display(),
            config
                .entities
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

async fn change(
    entity: &str,
    to: Option<i64>,
    actor: Option<&str>,
    json: bool,
    store: &StoreArgs,
) -> Result<(), String> {
    let actor = crate::actor::resolve(actor, store).await?;
    let (_, control) = store.open().await?;
    let done = operator::move_cursor(&*control, entity, to, &actor)
        .await
        .map_err(|e| format!("{entity}: {e}"))?;
    if json {
        return crate::print_json(&done);
    }
    println!(
        "{entity}: cursor {} → {} (by {}, recorded in the run history)",
        done.before.as_deref().unwrap_or("(none)"),
        done.after
            .as_deref()
            .unwrap_or("(none: the next run reads everything)"),
        done.actor
    );
    if let Some(bad) = &done.unreadable_before {
        println!("{entity}: the cursor it replaced did not read: {bad}");
    }
    Ok(())
}

/// What `cursor show` prints.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub entity: String,
    /// RFC 3339, `None` without one (the next run reads everything).
    pub cursor: Option<String>,
    /// The stored cursor when it does not read (`syncctl cursor set` repairs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    pub cursor_updated: Option<String>,
    /// `{"holder", "until"}` while a run holds the delta lease.
    pub lease: Option<serde_json::Value>,
    /// The latest operator changes, newest first (each as recorded: actor, before, after).
    pub changes: Vec<serde_json::Value>,
    /// The entity's re-sync: `idle`, `reading` or `reconcile`, with its cursor.
    pub resync: serde_json::Value,
}

impl Shown {
    fn render(&self) -> String {
        let mut out = format!(
            "{}: cursor {}{}\n",
            self.entity,
            self.cursor
                .as_deref()
                .unwrap_or("(none: the next run reads everything)"),
            self.cursor_updated
                .as_deref()
                .map(|t| format!(" (saved {t})"))
                .unwrap_or_default()
        );
        if let Some(bad) = &self.unreadable {
            out.push_str(&format!(
                "  UNREADABLE: {bad}; repair with `syncctl cursor set`\n"
            ));
        }
        if let Some(l) = &self.lease {
            out.push_str(&format!(
                "  lease: held by {} until {}\n",
                l["holder"].as_str().unwrap_or("?"),
                l["until"].as_str().unwrap_or("?")
            ));
        }
        out.push_str(&format!(
            "  re-sync: {}{}\n",
            self.resync["phase"].as_str().unwrap_or("?"),
            self.resync["cursor"]
                .as_str()
                .map(|c| format!(", cursor {c}"))
                .unwrap_or_default()
        ));
        if self.changes.is_empty() {
            out.push_str("  no operator changes in the recent history\n");
        } else {
            let mut lines = vec![
                ["WHEN", "ACTION", "BY", "BEFORE", "AFTER"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            for c in &self.changes {
                let f = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
                lines.push(vec![
                    f("when"),
                    f("action"),
                    f("actor"),
                    f("before"),
                    f("after"),
                ]);
            }
            out.push_str(&crate::status::render_table(&lines));
        }
        out
    }
}

pub async fn show(
    control: &dyn ControlStore,
    entity: &str,
    history: usize,
) -> Result<Shown, String> {
    let state = control
        .job_state(entity, JobKind::Delta)
        .await
        .map_err(|e| e.to_string())?;
    let (cursor, unreadable) = match state.cursor.as_deref() {
        None => (None, None),
        Some(raw) => match DeltaCursor::decode(raw) {
            Ok(c) => (Some(format_rfc3339(c.watermark_us)), None),
            Err(e) => (None, Some(format!("{raw:.200} ({e})"))),
        },
    };
    let now = now_us();
    let lease = match (&state.lease_holder, state.lease_expires_us) {
        (Some(h), Some(exp)) if exp > now => {
            Some(serde_json::json!({"holder": h, "until": format_rfc3339(exp)}))
        }
        _ => None,
    };
    let changes = control
        .list_runs(entity, JobKind::Delta, history)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.status == CURSOR_SET || r.status == CURSOR_RESET)
        .map(|r| {
            let mut v: serde_json::Value =
                serde_json::from_str(&r.summary).unwrap_or(serde_json::Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("when".into(), format_rfc3339(r.started_us).into());
            }
            v
        })
        .collect();
    let rs = resync::state(control, entity)
        .await
        .map_err(|e| e.to_string())?;
    let rs_cursor = control
        .job_state(entity, JobKind::Resync)
        .await
        .map_err(|e| e.to_string())?
        .cursor
        .and_then(|c| DeltaCursor::decode(&c).ok())
        .map(|c| format_rfc3339(c.watermark_us));
    Ok(Shown {
        entity: entity.to_owned(),
        cursor,
        unreadable,
        cursor_updated: state.cursor_updated_us.map(format_rfc3339),
        lease,
        changes,
        resync: serde_json::json!({
            "phase": rs.phase,
            "cursor": rs_cursor,
            "last": rs.last.map(|r| serde_json::json!({
                "status": r.status,
                "at": format_rfc3339(r.started_us),
            })),
        }),
    })
}

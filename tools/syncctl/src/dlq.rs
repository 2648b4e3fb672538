//! `syncctl dlq list|replay`: the work queue's dead letters, locally (the local queue's
//! dead-letter table, `syncctl serve`) or on SQS (AWS or moto: `--queue-url` and `--dlq-url`).
//!
//! On SQS a replay receives from the DLQ, sends each body to the main queue, then deletes it
//! from the DLQ, in that order, so that a failure in between duplicates at worst (the worker's
//! dedup absorbs it) and never loses a message. (SQS's own message-move task is not in moto.)
//! Listing receives too: the messages it saw are made visible again at the end.
//!
//! `list` never prints whole bodies unless asked (`--show-body`): one line per message with its
//! ID, the envelope's entity, record ID and event ID, the receive count and at most 80
//! characters of the body.

use clap::{ArgGroup, Args, Subcommand};
use shared::adapters::local::{LocalQueue, LocalStore, QueueOptions};
use shared::adapters::sqs::{SqsQueue, peek_dead_letters, redrive_dead_letters};
use shared::wire::QueueEnvelope;
use std::collections::HashSet;
use std::path::PathBuf;

/// Characters of a body `list` shows at most.
pub const PREVIEW_CHARS: usize = 80;

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters (IDs, entity, record, event, receive count, a short preview).
    /// On SQS, listing receives the messages and then makes them visible again, so each
    /// listing adds one to their receive counts.
    List(ListArgs),
    /// Put dead letters back on the work queue.
    Replay(ReplayArgs),
}

/// Which queue: the local store's (default) or SQS's.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The local store's SQLite file (unless --queue-url/--dlq-url are given).
    #[arg(long, default_value = ".local/sync.sqlite", env = "SYNC_LOCAL_DB")]
    pub db: PathBuf,
    /// The local queue's name.
    #[arg(long, default_value = "work")]
    pub queue: String,
    /// SQS: the work queue's URL (replay sends to it).
    #[arg(long, value_name = "URL")]
    pub queue_url: Option<String>,
    /// SQS: the dead-letter queue's URL.
    #[arg(long, value_name = "URL")]
    pub dlq_url: Option<String>,
    /// SQS endpoint, e.g. moto at http://127.0.0.1:5000. Default: the usual AWS settings
    /// (AWS_ENDPOINT_URL_SQS, region, profile).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: QueueArgs,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Print whole bodies (they name records; the envelope holds no payload).
    #[arg(long)]
    pub show_body: bool,
    /// Show at most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["all", "id"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: QueueArgs,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
    /// These message IDs (as `dlq list` shows them); repeat the flag for several.
    #[arg(long = "id", value_name = "ID")]
    pub id: Vec<String>,
}

/// One dead letter as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub message_id: String,
    pub entity: Option<String>,
    pub id: Option<String>,
    pub event_id: Option<String>,
    pub receive_count: u32,
    /// When it went to the dead letters (local queue only; RFC 3339).
    pub dead_at: Option<String>,
    /// The body's first [`PREVIEW_CHARS`] characters, control characters escaped.
    pub preview: String,
    /// The whole body, with `--show-body` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Row {
    fn new(message_id: &str, body: &str, receive_count: u32, show_body: bool) -> Row {
        // The envelope's fields; from any JSON object when the envelope does not decode (a
        // poison message may be an envelope of another version).
        let (entity, id, event_id) = match serde_json::from_str::<QueueEnvelope>(body) {
            Ok(e) => (Some(e.entity), Some(e.id), e.event_id),
            Err(_) => {
                let v = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
                let field = |k: &str| v.get(k).and_then(|s| s.as_str()).map(preview);
                (field("entity"), field("id"), field("event_id"))
            }
        };
        Row {
            message_id: message_id.to_owned(),
            entity,
            id,
            event_id,
            receive_count,
            dead_at: None,
            preview: preview(body),
            body: show_body.then(|| body.to_owned()),
        }
    }
}

/// At most [`PREVIEW_CHARS`] characters of `body`, on one line, with nothing a terminal would
/// interpret (a poison message may hold anything).
pub fn preview(body: &str) -> String {
    let mut out = String::new();
    for (n, c) in body.chars().enumerate() {
        if n == PREVIEW_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

enum Target {
    Local(LocalQueue),
    Sqs {
        work: Option<SqsQueue>,
        dlq: SqsQueue,
    },
}

impl QueueArgs {
    async fn open(&self) -> Result<Target, String> {
        if self.queue_url.is_some() || self.dlq_url.is_some() {
            let dlq_url = self
                .dlq_url
                .clone()
                .ok_or("--dlq-url is required with --queue-url (SQS dead letters live there)")?;
            let sdk = shared::adapters::aws::sdk_config().await;
            let client = shared::adapters::aws::sqs_client_at(&sdk, self.endpoint_url.as_deref());
            return Ok(Target::Sqs {
                work: self
                    .queue_url
                    .as_ref()
                    .map(|u| SqsQueue::new(client.clone(), u)),
                dlq: SqsQueue::new(client, dlq_url),
            });
        }
        if !self.db.exists() {
            return Err(format!(
                "no local store at {} (syncctl serve creates it; or pass --db, or --queue-url and --dlq-url for SQS)",
                self.db.display()
            ));
        }
        let store =
            LocalStore::open(&self.db).map_err(|e| format!("{}: {e}", self.db.display()))?;
        Ok(Target::Local(
            store.queue(&self.queue, QueueOptions::default()),
        ))
    }
}

pub async fn run(args: DlqArgs) -> Result<(), String> {
    match args.command {
        DlqCommand::List(a) => {
            let rows = list(&a.target.open().await?, a.limit, a.show_body).await?;
            if a.json {
                crate::print_json(&rows)?;
            } else {
                print!("{}", table(&rows, a.show_body));
                println!(
                    "{} dead letter(s){}",
                    rows.len(),
                    if rows.len() == a.limit {
                        " shown (--limit reached; there may be more)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        DlqCommand::Replay(a) => {
            let which = if a.all { None } else { Some(a.id.as_slice()) };
            let r = replay(&a.target.open().await?, which).await?;
            println!("{}", r.describe());
            if r.failed > 0 {
                return Err(format!(
                    "{} message(s) could not be sent to the work queue; they stay in the dead letters",
                    r.failed
                ));
            }
            Ok(())
        }
    }
}

async fn list(target: &Target, limit: usize, show_body: bool) -> Result<Vec<Row>, String> {
    match target {
        Target::Local(q) => list_local(q, limit, show_body).await,
        Target::Sqs { dlq, .. } => {
            let held = peek_dead_letters(dlq, limit)
                .await
                .map_err(|e| format!("{}: {e}", dlq.queue_url()))?;
            Ok(held
                .iter()
                .map(|m| Row::new(&m.message_id, &m.body, m.receive_count, show_body))
                .collect())
        }
    }
}

/// The local queue's dead letters, oldest first.
pub async fn list_local(q: &LocalQueue, limit: usize, show_body: bool) -> Result<Vec<Row>, String> {
    let dead = q
        .list_dead_letters(None, limit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(dead
        .into_iter()
        .map(|d| Row {
            dead_at: Some(shared::core::timefmt::format_rfc3339(d.dead_at_us)),
            ..Row::new(&d.message_id, &d.body, d.receive_count, show_body)
        })
        .collect())
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub moved: u64,
    /// Sends to the work queue that failed (those messages stay dead letters).
    pub failed: u64,
    /// Requested IDs that were not dead letters.
    pub not_found: Vec<String>,
}

impl Replayed {
    pub fn describe(&self) -> String {
        let mut s = format!("replayed {} message(s) onto the work queue", self.moved);
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        if !self.not_found.is_empty() {
            s.push_str(&format!(
                "; not dead letters: {}",
                self.not_found.join(", ")
            ));
        }
        s
    }
}

async fn replay(target: &Target, ids: Option<&[String]>) -> Result<Replayed, String> {
    match target {
        Target::Local(q) => replay_local(q, ids).await,
        Target::Sqs { work, dlq } => {
            let work = work.as_ref().ok_or(
                "--queue-url is required to replay on SQS (where the messages go back to)",
            )?;
            let r = redrive_dead_letters(work, dlq, ids).await.map_err(|e| {
                format!(
                    "{} -> {}: {e} (a message sent but not yet deleted from the DLQ is a harmless duplicate)",
                    dlq.queue_url(),
                    work.queue_url()
                )
            })?;
            Ok(Replayed {
                moved: r.moved,
                failed: r.failed,
                not_found: r.not_found,
            })
        }
    }
}

/// Move the named dead letters (`None`: all) back onto the local queue.
pub async fn replay_local(q: &LocalQueue, ids: Option<&[String]>) -> Result<Replayed, String> {
    match ids {
        None => Ok(Replayed {
            moved: q
                .replay_all_dead_letters()
                .await
                .map_err(|e| e.to_string())?,
            ..Replayed::default()
        }),
        Some(ids) => {
            // Which of them are dead letters, to name the others.
            let mut dead = HashSet::new();
            let mut after = None;
            loop {
                let page = q
                    .list_dead_letters(after, 1_000)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(last) = page.last() else { break };
                after = Some(last.seq);
                dead.extend(page.into_iter().map(|d| d.message_id));
            }
            let moved = q
                .replay_dead_letters(ids)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Replayed {
                moved,
                failed: 0,
                not_found: ids.iter().filter(|i| !dead.contains(*i)).cloned().collect(),
            })
        }
    }
}

fn table(rows: &[Row], show_body: bool) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines = vec![[
        "MESSAGE ID".to_owned(),
        "ENTITY".to_owned(),
        "ID".to_owned(),
        "EVENT ID".to_owned(),
        "RECEIVES".to_owned(),
        "DEAD SINCE".to_owned(),
        format!("BODY (first {PREVIEW_CHARS} chars)"),
    ]];
    for r in rows {
        lines.push([
            r.message_id.clone(),
            dash(&r.entity),
            dash(&r.id),
            dash(&r.event_id),
            r.receive_count.to_string(),
            dash(&r.dead_at),
            r.preview.clone(),
        ]);
    }
    let mut out = String::new();
    for (n, line) in crate::status::table_lines(&lines).into_iter().enumerate() {
        out.push_str(&line);
        out.push('\n');
        if show_body && n > 0 {
            out.push_str(&format!(
                "  body: {}\n",
                rows[n - 1].body.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_pads_columns_and_shows_bodies_under_their_rows() {
        let rows = [
            Row::new("m-1", r#"{"entity":"people","id":"7"}"#, 3, true),
            Row::new("message-2", "not json", 12, true),
        ];
        let out = table(&rows, true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].starts_with("MESSAGE ID  ENTITY  ID  EVENT ID  RECEIVES"));
        assert!(
            lines[1].starts_with("m-1         people  7   -         3 "),
            "{out}"
        );
        assert_eq!(lines[2], r#"  body: {"entity":"people","id":"7"}"#);
        assert!(
            lines[3].starts_with("message-2   -       -   -         12"),
            "{out}"
        );
        assert_eq!(lines[4], "  body: not json");
        assert_eq!(table(&rows, false).lines().count(), 3);
    }

    #[test]
    fn a_preview_is_short_and_on_one_line() {
        assert_eq!(preview("abc"), "abc");
        let long = "x".repeat(200);
        let p = preview(&long);
        assert_eq!(p.chars().count(), PREVIEW_CHARS + 1);
        assert!(p.ends_with('…'));
        assert_eq!(preview("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        // Multi-byte characters are cut on a character boundary.
        assert_eq!(preview(&"é".repeat(81)).chars().count(), 81);
    }

    #[test]
    fn a_row_reads_the_envelope_and_keeps_the_body_only_when_asked() {
        let body = r#"{"v":1,"kind":"webhook","entity":"people","id":"12","event_id":"e-1","action":"upsert","received_at":1}"#;
        let r = Row::new("m1", body, 3, false);
        assert_eq!(r.entity.as_deref(), Some("people"));
        assert_eq!(r.id.as_deref(), Some("12"));
        assert_eq!(r.event_id.as_deref(), Some("e-1"));
        assert_eq!(r.receive_count, 3);
        assert!(r.body.is_none());
        assert!(!serde_json::to_string(&r).unwrap().contains("\"body\""));
        assert_eq!(Row::new("m1", body, 3, true).body.as_deref(), Some(body));
        let poison = Row::new("m2", "not json", 5, false);
        assert_eq!((poison.entity, poison.preview.as_str()), (None, "not json"));
        let other_version = Row::new(
            "m3",
            r#"{"v":2,"entity":"people","id":"9","new":1}"#,
            1,
            false,
        );
        assert_eq!(other_version.entity.as_deref(), Some("people"));
        assert_eq!(other_version.id.as_deref(), Some("9"));
        let t = table(&[Row::new("m1", body, 3, false)], false);
        assert!(
            t.contains("m1") && t.contains("people") && t.contains("e-1"),
            "{t}"
        );
    }
}

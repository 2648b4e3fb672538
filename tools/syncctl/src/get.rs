//! `syncctl get ENTITY ID`: one record's stored copy beside the source's live record, fetched
//! now (one `get_by_id` in the shared rate budget's targeted lane, as a webhook's fetch), with
//! the verdict of the engine's one version rule (`core::version`: what a sync of the live record
//! would do now) and the field-level difference of the two payloads (`get::diff`).
//!
//! Reads only: nothing is written to the store. The store is read first (one strongly
//! consistent read), then the source asked; a sync or a source change landing between the two
//! reads shows as a difference that may be gone already: run it again before acting on it.
//!
//! Exit codes: 0 in sync (the same content on both sides, or deleted on both); 1 error (the
//! configuration, the ID, the store or the source failed: nothing compared); 3 out of sync (any
//! other verdict, a record the source has but cannot be synced included); 4 neither the store
//! nor the source has the ID. Clap's usage errors are 2.

mod diff;

use crate::status::render_table;
use crate::stores::StoreArgs;
use clap::Args;
use diff::{Diff, Shown};
use serde_json::{Value, json};
use shared::Config;
use shared::core::timefmt::format_rfc3339;
use shared::core::version::{decide_delete, decide_upsert};
use shared::error::SourceError;
use shared::model::{DeleteOutcome, Micros, Record, RejectReason, StoredRecord, WriteOutcome};
use shared::ports::SourceApi;
use shared::source::{SourceClient, validate_id};
use std::process::ExitCode;

/// The same content on both sides, or deleted on both.
pub const IN_SYNC: u8 = 0;
/// Nothing compared: the configuration, the ID, the store or the source failed.
pub const FAILED: u8 = 1;
/// The two sides differ (see the verdict).
pub const DIFFERS: u8 = 3;
/// Neither the store nor the source has the ID.
pub const NOWHERE: u8 = 4;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The entity, as configured (infra/endpoints.toml, or the file SYNC_CONFIG names).
    pub entity: String,
    /// The record's ID, as the source spells it.
    pub id: String,
    /// Print one JSON object (both sides, the verdict, the difference).
    #[arg(long)]
    pub json: bool,
    /// Differences listed at most (all are counted; values over 200 characters are cut).
    #[arg(long, default_value_t = 50)]
    pub max_diffs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: GetArgs) -> ExitCode {
    match compare(&args).await {
        Ok(c) => {
            if args.json {
                match serde_json::to_string_pretty(&c.to_json()) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(FAILED);
                    }
                }
            } else {
                print!("{}", c.table());
            }
            ExitCode::from(c.verdict.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(FAILED)
        }
    }
}

/// Reads the stored copy, then fetches the live record, and compares them.
async fn compare(args: &GetArgs) -> Result<Comparison, String> {
    let config = Config::load().map_err(|e| e.to_string())?;
    if config.entity(&args.entity).is_none() {
        let names: Vec<&str> = config.entities.iter().map(|e| e.name.as_str()).collect();
        return Err(format!(
            "entity {:?} is not configured in {} (configured: {})",
            args.entity,
            config.file.display(),
            names.join(", ")
        ));
    }
    validate_id(&args.id).map_err(|e| e.to_string())?;
    let secret = shared::source::secret_from_env(&config.source.auth).map_err(|e| e.to_string())?;
    let source = SourceClient::new(&config, secret)
        .map_err(|e| e.to_string())?
        .with_budget_in(args.store.budget().await?);
    let (records, _) = args.store.open().await?;
    let stored = records
        .get(&args.entity, &args.id)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let fetched = source.fetch_by_id(&args.entity, &args.id).await;
    source.release_budget().await;
    let live = match fetched {
        Ok(f) => match f.record {
            Some(r) => Live::Found(r),
            None => Live::Gone { sent_us: f.sent_us },
        },
        Err(SourceError::Rejected { reason, .. }) => Live::Rejected(reason),
        Err(e) => return Err(format!("source: {e}")),
    };
    Ok(Comparison::new(
        &args.entity,
        &args.id,
        stored,
        live,
        args.max_diffs,
    ))
}

/// What the source answered.
#[derive(Debug)]
pub enum Live {
    Found(Record),
    /// A JSON 404, to the request sent at `sent_us` (the evidence time a sync would record).
    Gone {
        sent_us: Micros,
    },
    /// The source has it, but it cannot be synced.
    Rejected(RejectReason),
}

/// How the two sides compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Live on both sides, the same content.
    InSync,
    /// The source's delta is later: it changed since the last sync.
    SourceNewer,
    /// The source's delta is earlier than the stored one: its version went backwards.
    StoreNewer,
    /// The same delta value, different content.
    DiffersAtEqualDelta,
    /// The source has it, the store does not.
    MissingInStore,
    /// Soft-deleted here, live at the source.
    DeletedHereLiveThere,
    /// Live here, a 404 at the source.
    GoneAtSource,
    /// Erased here (`syncctl erase`): no copy kept, and no path writes it back until lifted.
    Erased,
    /// Soft-deleted here, a 404 at the source.
    DeletedBoth,
    /// Neither side has it.
    Nowhere,
    /// The source has it, but it cannot be synced.
    RejectedAtSource,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InSync => "in_sync",
            Verdict::SourceNewer => "source_newer",
            Verdict::StoreNewer => "store_newer",
            Verdict::DiffersAtEqualDelta => "differs_at_equal_delta",
            Verdict::MissingInStore => "missing_in_store",
            Verdict::DeletedHereLiveThere => "deleted_here_live_there",
            Verdict::GoneAtSource => "gone_at_source",
            Verdict::Erased => "erased",
            Verdict::DeletedBoth => "deleted_both",
            Verdict::Nowhere => "nowhere",
            Verdict::RejectedAtSource => "rejected_at_source",
        }
    }

    /// The verdict in words.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::InSync => "in sync: the store holds the source's content",
            Verdict::SourceNewer => {
                "source newer: the record changed at the source since it was synced"
            }
            Verdict::StoreNewer => {
                "store newer: the source's version is older than the stored copy (went backwards: \
                 a restore or a clock fix at the source? reconciliation writes it only for an \
                 entity with allow_version_regression)"
            }
            Verdict::DiffersAtEqualDelta => {
                "differs at equal delta: the same delta value, different content"
            }
            Verdict::MissingInStore => "missing in store: the source has it, the store does not",
            Verdict::DeletedHereLiveThere => {
                "soft-deleted here but live at the source: it has it again"
            }
            Verdict::GoneAtSource => {
                "gone at source: the source answers 404, the store holds it live"
            }
            Verdict::DeletedBoth => "deleted on both sides: soft-deleted here, 404 at the source",
            Verdict::Erased => {
                "erased here (a privacy request): no copy is kept, and no sync writes it back \
                 until `syncctl erase --lift`"
            }
            Verdict::Nowhere => "not found: neither the store nor the source has it",
            Verdict::RejectedAtSource => {
                "rejected at source: the source has it, but it cannot be synced"
            }
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            // Erased: as intended, whatever the source holds.
            Verdict::InSync | Verdict::DeletedBoth | Verdict::Erased => IN_SYNC,
            Verdict::Nowhere => NOWHERE,
            _ => DIFFERS,
        }
    }
}

/// What a sync of the live record would do now: the version rule's answer (`decide_upsert` for
/// a record, `decide_delete` for a 404), or nothing for a record that cannot be synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncWould {
    Write(WriteOutcome),
    /// A confirmed 404 soft-deletes (the worker, reconciliation after its guard; delta never).
    SoftDelete,
    /// A 404 over nothing live: nothing to do.
    Nothing,
    /// Skipped and counted as rejected.
    Reject,
}

impl SyncWould {
    /// `inserted`, `updated`, `restored`, `unchanged`, `stale` (the write outcome's name, as
    /// the run summaries count them), `deleted`, `nothing` or `rejected`.
    pub fn name(self) -> String {
        match self {
            // The outcome's own name, so that an outcome the rule gains is named too.
            SyncWould::Write(o) => format!("{o:?}").to_ascii_lowercase(),
            SyncWould::SoftDelete => "deleted".into(),
            SyncWould::Nothing => "nothing".into(),
            SyncWould::Reject => "rejected".into(),
        }
    }

    /// One line for the table.
    pub fn describe(self) -> String {
        match self {
            SyncWould::Write(o) if o.wrote() => format!("a sync would write: {}", self.name()),
            SyncWould::Write(WriteOutcome::Stale) => {
                "a sync would write nothing: stale (the stored copy wins under the version rule)"
                    .into()
            }
            SyncWould::Write(_) => format!("a sync would write nothing: {}", self.name()),
            SyncWould::SoftDelete => {
                "a sync would soft-delete it (a targeted sync's confirmed 404, or reconciliation \
                 after its guard; delta runs never delete)"
                    .into()
            }
            SyncWould::Nothing => "a sync would do nothing".into(),
            SyncWould::Reject => {
                "a sync would skip it and count it as rejected until the source fixes it".into()
            }
        }
    }
}

/// The two sides, the verdict and the difference.
#[derive(Debug)]
pub struct Comparison {
    pub entity: String,
    pub id: String,
    pub stored: Option<StoredRecord>,
    pub live: Live,
    pub verdict: Verdict,
    pub sync_would: SyncWould,
    /// `None` unless both sides hold a payload; `Err` when the live one does not read.
    pub diff: Option<Result<Diff, String>>,
}

impl Comparison {
    pub fn new(
        entity: &str,
        id: &str,
        stored: Option<StoredRecord>,
        live: Live,
        max_diffs: usize,
    ) -> Comparison {
        let (verdict, sync_would) = judge(stored.as_ref(), &live);
        let diff = match (&stored, &live) {
            // An erasure keeps no payload to compare (and the point is not to show one).
            (Some(s), _) if s.version.erased => None,
            (Some(s), Live::Found(r)) => Some(
                serde_json::from_str::<Value>(r.payload.get())
                    .map(|v| diff::diff(&s.payload, &v, max_diffs))
                    .map_err(|e| format!("the source's payload does not read: {e}")),
            ),
            _ => None,
        };
        Comparison {
            entity: entity.to_owned(),
            id: id.to_owned(),
            stored,
            live,
            verdict,
            sync_would,
            diff,
        }
    }

    pub fn to_json(&self) -> Value {
        let store = self.stored.as_ref().map(|s| {
            json!({
                "status": if s.version.erased {
                    "erased"
                } else if s.is_deleted() {
                    "deleted"
                } else {
                    "live"
                },
                "delta": format_rfc3339(s.version.delta_us),
                "delta_us": s.version.delta_us,
                "fetched_at": format_rfc3339(s.version.fetched_at_us),
                "fetched_at_us": s.version.fetched_at_us,
                "hash": s.version.hash.to_hex(),
                "first_seen": format_rfc3339(s.first_seen_us),
                "first_seen_us": s.first_seen_us,
                "last_synced": format_rfc3339(s.last_synced_us),
                "last_synced_us": s.last_synced_us,
                "deleted_at": s.version.deleted_at_us.map(format_rfc3339),
                "deleted_at_us": s.version.deleted_at_us,
                "last_action": s.last_action.as_str(),
                "written_by": s.written_by.as_str(),
            })
        });
        let source = match &self.live {
            Live::Found(r) => json!({
                "status": "live",
                "delta": format_rfc3339(r.version.delta_us),
                "delta_us": r.version.delta_us,
                "fetched_at": format_rfc3339(r.version.fetched_at_us),
                "fetched_at_us": r.version.fetched_at_us,
                "hash": r.version.hash.to_hex(),
            }),
            Live::Gone { sent_us } => json!({
                "status": "gone",
                "fetched_at": format_rfc3339(*sent_us),
                "fetched_at_us": sent_us,
            }),
            Live::Rejected(reason) => json!({
                "status": "rejected",
                "reason": reason.as_str(),
            }),
        };
        let diff = match &self.diff {
            None => Value::Null,
            Some(Err(e)) => json!({ "error": e }),
            Some(Ok(d)) => json!({
                "total": d.total(),
                "added": d.added,
                "removed": d.removed,
                "changed": d.changed,
                "listed": d.listed.len(),
                "differences": d.listed.iter().map(|x| {
                    let mut o = serde_json::Map::new();
                    o.insert("change".into(), x.change.as_str().into());
                    o.insert("pointer".into(), x.pointer.clone().into());
                    if let Some(s) = &x.store {
                        o.insert("store".into(), s.to_json());
                    }
                    if let Some(s) = &x.source {
                        o.insert("source".into(), s.to_json());
                    }
                    let cut = x.store.as_ref().is_some_and(Shown::is_cut)
                        || x.source.as_ref().is_some_and(Shown::is_cut);
                    if cut {
                        o.insert("truncated".into(), true.into());
                    }
                    Value::Object(o)
                }).collect::<Vec<_>>(),
            }),
        };
        json!({
            "entity": self.entity,
            "id": self.id,
            "verdict": self.verdict.as_str(),
            "in_sync": self.verdict.exit_code() == IN_SYNC,
            "sync_would": self.sync_would.name(),
            "store": store,
            "source": source,
            "diff": diff,
        })
    }

    /// The verdict, both sides side by side, and the difference.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} {}: {}\n{}\n",
            printable(&self.entity),
            printable(&self.id),
            self.verdict.describe(),
            self.sync_would.describe()
        );
        if let Live::Rejected(reason) = &self.live {
            out.push_str(&format!(
                "the source's record cannot be synced: {reason} ({})\n",
                reason.as_str()
            ));
        }
        out.push('\n');
        let at = |us: Micros| format!("{} ({us})", format_rfc3339(us));
        let s = self.stored.as_ref();
        let found = match &self.live {
            Live::Found(r) => Some(r),
            _ => None,
        };
        let dash = || "-".to_owned();
        let mut lines: Vec<Vec<String>> = vec![vec![
            String::new(),
            "STORE".into(),
            "SOURCE (fetched now)".into(),
        ]];
        let mut row = |name: &str, store: String, source: String| {
            lines.push(vec![name.to_owned(), store, source]);
        };
        row(
            "status",
            match s {
                None => "absent".into(),
                Some(s) if s.version.erased => "erased".into(),
                Some(s) if s.is_deleted() => "soft-deleted".into(),
                Some(_) => "live".into(),
            },
            match &self.live {
                Live::Found(_) => "live".into(),
                Live::Gone { .. } => "404 (gone)".into(),
                Live::Rejected(r) => format!("cannot be synced ({})", r.as_str()),
            },
        );
        row(
            "delta",
            s.map_or_else(dash, |s| at(s.version.delta_us)),
            found.map_or_else(dash, |r| at(r.version.delta_us)),
        );
        row(
            "fetched at",
            s.map_or_else(dash, |s| at(s.version.fetched_at_us)),
            match &self.live {
                Live::Found(r) => at(r.version.fetched_at_us),
                Live::Gone { sent_us } => at(*sent_us),
                Live::Rejected(_) => dash(),
            },
        );
        row(
            "hash",
            s.map_or_else(dash, |s| s.version.hash.to_hex()),
            found.map_or_else(dash, |r| r.version.hash.to_hex()),
        );
        row(
            "first seen",
            s.map_or_else(dash, |s| at(s.first_seen_us)),
            dash(),
        );
        row(
            "last synced",
            s.map_or_else(dash, |s| at(s.last_synced_us)),
            dash(),
        );
        row(
            "deleted at",
            s.and_then(|s| s.version.deleted_at_us)
                .map_or_else(dash, at),
            dash(),
        );
        row(
            "last action",
            s.map_or_else(dash, |s| {
                format!("{} by {}", s.last_action.as_str(), s.written_by.as_str())
            }),
            dash(),
        );
        out.push_str(&render_table(&lines));
        match &self.diff {
            None => {}
            Some(Err(e)) => out.push_str(&format!("\npayloads not compared: {e}\n")),
            Some(Ok(d)) if d.is_empty() => out.push_str("\npayloads: no difference\n"),
            Some(Ok(d)) => out.push_str(&diff_table(d)),
        }
        out
    }
}

/// The difference's counts and its listed lines.
fn diff_table(d: &Diff) -> String {
    let mut out = format!(
        "\npayloads: {} difference(s) from the store to the source: {} changed, {} added, {} removed\n",
        d.total(),
        d.changed,
        d.added,
        d.removed
    );
    if d.listed.is_empty() {
        out.push_str("(none listed: --max-diffs)\n");
        return out;
    }
    let mut lines = vec![
        ["CHANGE", "POINTER", "STORE", "SOURCE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for x in &d.listed {
        let text = |v: &Option<Shown>| {
            v.as_ref()
                .map_or_else(|| "-".to_owned(), |v| printable(&v.text()))
        };
        lines.push(vec![
            x.change.as_str().to_owned(),
            if x.pointer.is_empty() {
                "(whole payload)".to_owned()
            } else {
                printable(&x.pointer)
            },
            text(&x.store),
            text(&x.source),
        ]);
    }
    out.push_str(&render_table(&lines));
    if d.unlisted() > 0 {
        out.push_str(&format!(
            "... and {} more not listed (--max-diffs {})\n",
            d.unlisted(),
            d.listed.len()
        ));
    }
    out
}

/// The verdict and what a sync would do, under the one version rule.
pub fn judge(stored: Option<&StoredRecord>, live: &Live) -> (Verdict, SyncWould) {
    let version = stored.map(|s| &s.version);
    match (stored, live) {
        (Some(s), live) if s.version.erased => {
            let would = match live {
                Live::Found(r) => SyncWould::Write(decide_upsert(version, &r.version)),
                _ => SyncWould::Nothing,
            };
            (Verdict::Erased, would)
        }
        (_, Live::Rejected(_)) => (Verdict::RejectedAtSource, SyncWould::Reject),
        (None, Live::Gone { .. }) => (Verdict::Nowhere, SyncWould::Nothing),
        (Some(s), Live::Gone { sent_us }) => {
            let would = match decide_delete(version, *sent_us) {
                DeleteOutcome::Deleted => SyncWould::SoftDelete,
                _ => SyncWould::Nothing,
            };
            let verdict = if s.is_deleted() {
                Verdict::DeletedBoth
            } else {
                Verdict::GoneAtSource
            };
            (verdict, would)
        }
        (_, Live::Found(r)) => {
            let would = SyncWould::Write(decide_upsert(version, &r.version));
            let verdict = match stored {
                None => Verdict::MissingInStore,
                Some(s) if s.is_deleted() => Verdict::DeletedHereLiveThere,
                Some(s) if s.version.hash == r.version.hash => Verdict::InSync,
                Some(s) => match r.version.delta_us.cmp(&s.version.delta_us) {
                    std::cmp::Ordering::Greater => Verdict::SourceNewer,
                    std::cmp::Ordering::Less => Verdict::StoreNewer,
                    std::cmp::Ordering::Equal => Verdict::DiffersAtEqualDelta,
                },
            };
            (verdict, would)
        }
    }
}

/// `s` with control characters escaped, for a terminal (a payload's key or value, or an ID,
/// may hold any character).
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::adapters::local::LocalStore;
    use shared::model::{RawJson, Strategy};
    use shared::ports::RecordStore;

    fn record(delta: i64, fetched: i64, text: &str) -> Record {
        Record::new("people", "1", delta, fetched, RawJson::parse(text).unwrap())
    }

    /// What a store returns for `text` synced by delta (delta value `delta`, fetched at
    /// `fetched`), soft-deleted with evidence at `deleted` when given.
    async fn stored(delta: i64, fetched: i64, text: &str, deleted: Option<i64>) -> StoredRecord {
        let store = LocalStore::in_memory().unwrap();
        store
            .upsert(&record(delta, fetched, text), Strategy::Delta)
            .await
            .unwrap();
        if let Some(at) = deleted {
            let done = store
                .soft_delete("people", "1", at, Strategy::Reconcile)
                .await
                .unwrap();
            assert_eq!(done, DeleteOutcome::Deleted);
        }
        store.get("people", "1").await.unwrap().unwrap()
    }

    /// What a store returns for a record erased after it was synced.
    async fn erased() -> StoredRecord {
        let store = LocalStore::in_memory().unwrap();
        store
            .upsert(&record(10, 100, r#"{"id":"1"}"#), Strategy::Delta)
            .await
            .unwrap();
        store.erase("people", "1", 150, "ana").await.unwrap();
        store.get("people", "1").await.unwrap().unwrap()
    }

    fn found(delta: i64, fetched: i64, text: &str) -> Live {
        Live::Found(record(delta, fetched, text))
    }

    #[tokio::test]
    async fn the_verdict_follows_the_version_rule() {
        use Verdict::*;
        use WriteOutcome::*;
        let a = r#"{"id":"1","v":1}"#;
        let b = r#"{"id":"1","v":2}"#;
        let live = || Some(stored(10, 100, a, None));
        let w = SyncWould::Write;
        let cases: Vec<(_, Live, Verdict, SyncWould, u8)> = vec![
            (live(), found(10, 200, a), InSync, w(Unchanged), 0),
            (live(), found(11, 200, b), SourceNewer, w(Updated), 3),
            (live(), found(9, 200, b), StoreNewer, w(Stale), 3),
            (
                live(),
                found(10, 200, b),
                DiffersAtEqualDelta,
                w(Updated),
                3,
            ),
            (None, found(10, 200, a), MissingInStore, w(Inserted), 3),
            (
                Some(stored(10, 100, a, Some(150))),
                found(10, 200, a),
                DeletedHereLiveThere,
                w(Restored),
                3,
            ),
            // An answer sent before the deletion's evidence does not restore it.
            (
                Some(stored(10, 100, a, Some(250))),
                found(10, 200, a),
                DeletedHereLiveThere,
                w(Stale),
                3,
            ),
            (
                live(),
                Live::Gone { sent_us: 200 },
                GoneAtSource,
                SyncWould::SoftDelete,
                3,
            ),
            // Fetched at or after the 404's request was sent: a sync keeps it.
            (
                Some(stored(10, 200, a, None)),
                Live::Gone { sent_us: 200 },
                GoneAtSource,
                SyncWould::Nothing,
                3,
            ),
            (
                Some(stored(10, 100, a, Some(150))),
                Live::Gone { sent_us: 200 },
                DeletedBoth,
                SyncWould::Nothing,
                0,
            ),
            (
                None,
                Live::Gone { sent_us: 200 },
                Nowhere,
                SyncWould::Nothing,
                4,
            ),
            (
                live(),
                Live::Rejected(RejectReason::NullDelta),
                RejectedAtSource,
                SyncWould::Reject,
                3,
            ),
        ];
        for (i, (s, live, verdict, would, code)) in cases.into_iter().enumerate() {
            let s = match s {
                Some(f) => Some(f.await),
                None => None,
            };
            assert_eq!(judge(s.as_ref(), &live), (verdict, would), "case {i}");
            assert_eq!(verdict.exit_code(), code, "case {i}");
        }
        // Erased here: whatever the source holds, no sync writes it back; as intended (exit 0).
        let e = erased().await;
        assert_eq!(judge(Some(&e), &found(11, 200, b)), (Erased, w(Suppressed)));
        assert_eq!(
            judge(Some(&e), &Live::Gone { sent_us: 200 }),
            (Erased, SyncWould::Nothing)
        );
        assert_eq!(Erased.exit_code(), 0);
        // Nothing of an erased record is shown: no diff against the source's payload.
        let c = Comparison::new("people", "1", Some(erased().await), found(11, 200, b), 50);
        assert!(c.diff.is_none());
        assert_eq!(c.to_json()["store"]["status"], "erased");
    }

    #[test]
    fn what_a_sync_would_do_is_named_as_the_summaries_count_it() {
        use WriteOutcome::*;
        let names: Vec<String> = [Inserted, Updated, Restored, Unchanged, Stale]
            .into_iter()
            .map(|o| SyncWould::Write(o).name())
            .chain(
                [SyncWould::SoftDelete, SyncWould::Nothing, SyncWould::Reject].map(SyncWould::name),
            )
            .collect();
        assert_eq!(
            names,
            [
                "inserted",
                "updated",
                "restored",
                "unchanged",
                "stale",
                "deleted",
                "nothing",
                "rejected"
            ]
        );
        assert_eq!(
            SyncWould::Write(Stale).describe(),
            "a sync would write nothing: stale (the stored copy wins under the version rule)"
        );
        assert_eq!(
            SyncWould::Write(Unchanged).describe(),
            "a sync would write nothing: unchanged"
        );
    }

    #[tokio::test]
    async fn the_table_and_json_show_both_sides_and_the_difference() {
        let a = r#"{"id":"1","attributes":{"name":"Ann","updated_at":"2024-01-01T00:00:00Z"}}"#;
        let b = r#"{"id":"1","attributes":{"name":"Anna","nick":"A","updated_at":"2024-01-02T00:00:00Z"}}"#;
        let c = Comparison::new(
            "people",
            "1",
            Some(stored(1_704_067_200_000_000, 100, a, None).await),
            found(1_704_153_600_000_000, 200, b),
            50,
        );
        let t = c.table();
        assert!(t.starts_with("people 1: source newer"), "{t}");
        assert!(t.contains("a sync would write: updated"), "{t}");
        let row = |name: &str| -> Vec<String> {
            let line = t.lines().find(|l| l.starts_with(name)).unwrap_or_default();
            line[name.len()..]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            row("delta"),
            [
                "2024-01-01T00:00:00Z (1704067200000000)",
                "2024-01-02T00:00:00Z (1704153600000000)"
            ]
        );
        assert_eq!(row("status"), ["live", "live"]);
        assert_eq!(row("deleted at"), ["-", "-"]);
        assert_eq!(row("last action"), ["insert by delta", "-"]);
        assert_eq!(row("changed  /attributes/name"), ["\"Ann\"", "\"Anna\""]);
        assert_eq!(row("added    /attributes/nick"), ["-", "\"A\""]);
        assert!(
            t.contains(
                "3 difference(s) from the store to the source: 2 changed, 1 added, 0 removed"
            ),
            "{t}"
        );

        let j = c.to_json();
        assert_eq!(j["verdict"], "source_newer");
        assert_eq!(j["in_sync"], false);
        assert_eq!(j["sync_would"], "updated");
        assert_eq!(j["store"]["delta_us"], 1_704_067_200_000_000_i64);
        assert_eq!(j["store"]["delta"], "2024-01-01T00:00:00Z");
        assert_eq!(j["store"]["deleted_at"], Value::Null);
        assert_eq!(j["source"]["status"], "live");
        assert_eq!(j["source"]["hash"], c_hash(b));
        assert_eq!(j["diff"]["total"], 3);
        assert_eq!(
            j["diff"]["differences"][0],
            json!({"change": "changed", "pointer": "/attributes/name", "store": "Ann", "source": "Anna"})
        );
        assert_eq!(
            j["diff"]["differences"][1],
            json!({"change": "added", "pointer": "/attributes/nick", "source": "A"})
        );

        // A long value is cut, and the difference says so.
        let long = format!(r#"{{"id":"1","note":"{}"}}"#, "x".repeat(300));
        let c = Comparison::new(
            "people",
            "1",
            Some(stored(1, 100, r#"{"id":"1"}"#, None).await),
            found(2, 200, &long),
            50,
        );
        let d = &c.to_json()["diff"]["differences"][0];
        assert_eq!(d["truncated"], true, "{d}");
        assert_eq!(d["source"].as_str().unwrap().chars().count(), 201, "{d}");
    }

    fn c_hash(text: &str) -> String {
        shared::model::ContentHash::of(text.as_bytes()).to_hex()
    }

    #[test]
    fn control_characters_are_escaped_in_the_table() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("plain é"), "plain é");
        let c = Comparison::new("people", "x\u{9b}y", None, Live::Gone { sent_us: 1 }, 50);
        let t = c.table();
        assert!(t.starts_with("people x\\u{9b}y: not found"), "{t}");
        assert!(!t.contains('\u{9b}'));
    }
}

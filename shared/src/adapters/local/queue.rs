//! `Queue` on the `queue_messages` table, with SQS's semantics: a received message is invisible
//! for the visibility timeout, comes back when not deleted in time, and moves to the dead-letter
//! table when it would be received more than `max_receives` times (SQS's redrive policy).
//!
//! A receipt is `"<row>:<receive count>"`: it deletes the message only while no later receive
//! has handed it to someone else, so a worker that overran its visibility timeout cannot delete
//! a message another worker is processing (and might fail on).

use super::{Db, row_error, sql_error, sql_limit};
use crate::core::timefmt::now_us;
use crate::error::StoreError;
use crate::model::Micros;
use crate::ports::{Queue, ReceivedMessage};
use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior, params};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often an empty `receive` looks again while waiting (messages sent by this process wake
/// it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A queue's behaviour, fixed at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays invisible to other receivers.
    pub visibility_timeout: Duration,
    /// A message received this many times without being deleted goes to the dead letters
    /// instead of a further delivery (SQS `maxReceiveCount`); `None`: never.
    pub max_receives: Option<u32>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            visibility_timeout: Duration::from_secs(30),
            max_receives: Some(5),
        }
    }
}

/// A message that went to the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Position in the dead-letter table: pass it back as `after` to page.
    pub seq: i64,
    pub message_id: String,
    pub body: String,
    /// How many times it was received before it went there.
    pub receive_count: u32,
    pub sent_us: Micros,
    pub dead_at_us: Micros,
}

/// How many messages a queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Receivable now.
    pub visible: u64,
    /// Received and not yet deleted nor visible again.
    pub in_flight: u64,
    pub dead: u64,
}

type Clock = Arc<dyn Fn() -> Micros + Send + Sync>;

/// One named queue in the local database.
#[derive(Clone)]
pub struct LocalQueue {
    db: Db,
    name: String,
    options: QueueOptions,
    clock: Clock,
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("path", &self.db.path())
            .field("name", &self.name)
            .field("options", &self.options)
            .finish()
    }
}

impl LocalQueue {
    /// The queue `name` in the database file at `path` (created when missing). To share a
    /// connection with a `LocalStore` on the same file, use `LocalStore::queue`.
    pub fn open(
        path: impl AsRef<Path>,
        name: &str,
        options: QueueOptions,
    ) -> Result<Self, StoreError> {
        Ok(Self::from_db(Db::open(path.as_ref())?, name, options))
    }

    pub(crate) fn from_db(db: Db, name: &str, options: QueueOptions) -> Self {
        LocalQueue {
            db,
            name: name.to_owned(),
            options,
            clock: Arc::new(now_us),
        }
    }

    /// Replace the clock that visibility timeouts are measured on (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> Micros + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    fn visibility_us(&self) -> Micros {
        Micros::try_from(self.options.visibility_timeout.as_micros()).unwrap_or(Micros::MAX)
    }

    /// One receive attempt: dead-letter what is due, then take up to `max` visible messages.
    async fn receive_now(&self, max: usize) -> Result<Vec<ReceivedMessage>, StoreError> {
        let name = self.name.clone();
        let now = (self.clock)();
        let visible_again = now.saturating_add(self.visibility_us());
        let max_receives = self.options.max_receives;
        self.db
            .call("receive messages", move |c| {
                receive_tx(c, &name, now, visible_again, max_receives, max)
            })
            .await
    }

    /// Messages, visible and in flight, and dead letters of this queue.
    pub async fn counts(&self) -> Result<QueueCounts, StoreError> {
        let name = self.name.clone();
        let now = (self.clock)();
        self.db
            .call("count messages", move |c| {
                let op = "count messages";
                let (visible, in_flight, dead) = c
                    .query_row(
                        "SELECT \
                         (SELECT count(*) FROM queue_messages WHERE queue = ?1 AND visible_at_us <= ?2), \
                         (SELECT count(*) FROM queue_messages WHERE queue = ?1 AND visible_at_us > ?2), \
                         (SELECT count(*) FROM queue_dead_letters WHERE queue = ?1)",
                        params![name, now],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
                    )
                    .map_err(|e| sql_error(op, e))?;
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(QueueCounts {
                    visible: n(visible),
                    in_flight: n(in_flight),
                    dead: n(dead),
                })
            })
            .await
    }

    /// Dead letters in the order they died, after position `after` (`None`: from the start).
    pub async fn list_dead_letters(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let name = self.name.clone();
        self.db
            .call("list dead letters", move |c| {
                let op = "list dead letters";
                let mut st = c
                    .prepare_cached(
                        "SELECT seq, message_id, body, receive_count, sent_us, dead_at_us \
                         FROM queue_dead_letters WHERE queue = ?1 AND seq > ?2 \
                         ORDER BY seq LIMIT ?3",
                    )
                    .map_err(|e| sql_error(op, e))?;
                let rows = st
                    .query_map(
                        params![name, after.unwrap_or(i64::MIN), sql_limit(limit)],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, i64>(4)?,
                                r.get::<_, i64>(5)?,
                            ))
                        },
                    )
                    .map_err(|e| sql_error(op, e))?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, message_id, body, count, sent_us, dead_at_us) =
                        row.map_err(|e| row_error(op, &format!("dead letters of {name}"), e))?;
                    out.push(DeadLetter {
                        seq,
                        receive_count: decode_count(&message_id, count)?,
                        message_id,
                        body,
                        sent_us,
                        dead_at_us,
                    });
                }
                Ok(out)
            })
            .await
    }

    /// Put the named dead letters back on the queue (visible now, receive count reset); IDs that
    /// are not dead letters of this queue are skipped. Returns how many moved.
    pub async fn replay_dead_letters(&self, message_ids: &[String]) -> Result<u64, StoreError> {
        let name = self.name.clone();
        let ids = message_ids.to_vec();
        let now = (self.clock)();
        self.db
            .call("replay dead letters", move |c| {
                let n = move_dead(c, &name, Some(&ids), now)?;
                Ok(n)
            })
            .await
            .inspect(|n| {
                if *n > 0 {
                    self.db.sent().notify_waiters();
                }
            })
    }

    /// Put every dead letter of this queue back on it. Returns how many moved.
    pub async fn replay_all_dead_letters(&self) -> Result<u64, StoreError> {
        let name = self.name.clone();
        let now = (self.clock)();
        self.db
            .call("replay dead letters", move |c| {
                move_dead(c, &name, None, now)
            })
            .await
            .inspect(|n| {
                if *n > 0 {
                    self.db.sent().notify_waiters();
                }
            })
    }

    /// Drop the named dead letters for good. Returns how many went.
    pub async fn discard_dead_letters(&self, message_ids: &[String]) -> Result<u64, StoreError> {
        let name = self.name.clone();
        let ids = message_ids.to_vec();
        self.db
            .call("discard dead letters", move |c| {
                let op = "discard dead letters";
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error(op, e))?;
                let mut n = 0;
                {
                    let mut st = tx
                        .prepare_cached(
                            "DELETE FROM queue_dead_letters WHERE queue = ?1 AND message_id = ?2",
                        )
                        .map_err(|e| sql_error(op, e))?;
                    for id in &ids {
                        n += st
                            .execute(params![name, id])
                            .map_err(|e| sql_error(op, e))? as u64;
                    }
                }
                tx.commit().map_err(|e| sql_error(op, e))?;
                Ok(n)
            })
            .await
    }
}

fn decode_count(message_id: &str, count: i64) -> Result<u32, StoreError> {
    u32::try_from(count).map_err(|_| StoreError::Decode {
        key: format!("message {message_id}"),
        message: format!("receive count {count} out of range"),
    })
}

fn receive_tx(
    c: &mut Connection,
    name: &str,
    now: Micros,
    visible_again: Micros,
    max_receives: Option<u32>,
    max: usize,
) -> Result<Vec<ReceivedMessage>, StoreError> {
    let op = "receive messages";
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    if let Some(limit) = max_receives {
        // Due for one receive too many: dead-letter instead of delivering.
        tx.prepare_cached(
            "INSERT INTO queue_dead_letters (queue, message_id, body, sent_us, receive_count, \
             dead_at_us) SELECT queue, message_id, body, sent_us, receive_count, ?3 \
             FROM queue_messages WHERE queue = ?1 AND visible_at_us <= ?3 \
             AND receive_count >= ?2 ORDER BY seq",
        )
        .and_then(|mut st| st.execute(params![name, limit, now]))
        .map_err(|e| sql_error(op, e))?;
        tx.prepare_cached(
            "DELETE FROM queue_messages WHERE queue = ?1 AND visible_at_us <= ?3 \
             AND receive_count >= ?2",
        )
        .and_then(|mut st| st.execute(params![name, limit, now]))
        .map_err(|e| sql_error(op, e))?;
    }
    let picked = {
        let mut st = tx
            .prepare_cached(
                "SELECT seq, message_id, body, receive_count FROM queue_messages \
                 WHERE queue = ?1 AND visible_at_us <= ?2 ORDER BY visible_at_us, seq LIMIT ?3",
            )
            .map_err(|e| sql_error(op, e))?;
        let rows = st
            .query_map(params![name, now, sql_limit(max)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| sql_error(op, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| row_error(op, &format!("queue {name}"), e))?
    };
    let mut out = Vec::with_capacity(picked.len());
    {
        let mut st = tx
            .prepare_cached(
                "UPDATE queue_messages SET receive_count = ?2, visible_at_us = ?3 WHERE seq = ?1",
            )
            .map_err(|e| sql_error(op, e))?;
        for (seq, message_id, body, count) in picked {
            let receive_count = decode_count(&message_id, count)?.saturating_add(1);
            st.execute(params![seq, receive_count, visible_again])
                .map_err(|e| sql_error(op, e))?;
            out.push(ReceivedMessage {
                message_id,
                receipt: format!("{seq}:{receive_count}"),
                body,
                receive_count,
            });
        }
    }
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(out)
}

/// Move dead letters (the named ones, or all) back to the end of the queue.
fn move_dead(
    c: &mut Connection,
    name: &str,
    ids: Option<&[String]>,
    now: Micros,
) -> Result<u64, StoreError> {
    let op = "replay dead letters";
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(op, e))?;
    let mut moved = 0u64;
    {
        const COPY: &str = "INSERT INTO queue_messages (queue, message_id, body, sent_us, \
             visible_at_us, receive_count) SELECT queue, message_id, body, sent_us, ?2, 0 \
             FROM queue_dead_letters WHERE queue = ?1";
        const DROP: &str = "DELETE FROM queue_dead_letters WHERE queue = ?1";
        match ids {
            None => {
                moved += tx
                    .execute(&format!("{COPY} ORDER BY seq"), params![name, now])
                    .map_err(|e| sql_error(op, e))? as u64;
                tx.execute(DROP, params![name])
                    .map_err(|e| sql_error(op, e))?;
            }
            Some(ids) => {
                let mut copy = tx
                    .prepare_cached(&format!("{COPY} AND message_id = ?3"))
                    .map_err(|e| sql_error(op, e))?;
                let mut drop = tx
                    .prepare_cached(&format!("{DROP} AND message_id = ?2"))
                    .map_err(|e| sql_error(op, e))?;
                for id in ids {
                    let n = copy
                        .execute(params![name, now, id])
                        .map_err(|e| sql_error(op, e))?;
                    if n > 0 {
                        drop.execute(params![name, id])
                            .map_err(|e| sql_error(op, e))?;
                        moved += n as u64;
                    }
                }
            }
        }
    }
    tx.commit().map_err(|e| sql_error(op, e))?;
    Ok(moved)
}

/// Parse a receipt `"<row>:<receive count>"`.
fn parse_receipt(receipt: &str) -> Option<(i64, i64)> {
    let (seq, count) = receipt.split_once(':')?;
    Some((seq.parse().ok()?, count.parse().ok()?))
}

#[async_trait]
impl Queue for LocalQueue {
    /// All in one transaction: every body is sent, or the call fails.
    #[tracing::instrument(level = "debug", skip_all, fields(queue = %self.name, count = bodies.len()))]
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<usize>, StoreError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let name = self.name.clone();
        let bodies = bodies.to_vec();
        let now = (self.clock)();
        self.db
            .call("send messages", move |c| {
                let op = "send messages";
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error(op, e))?;
                {
                    let mut st = tx
                        .prepare_cached(
                            "INSERT INTO queue_messages (queue, message_id, body, sent_us, \
                             visible_at_us, receive_count) VALUES (?1, ?2, ?3, ?4, ?4, 0)",
                        )
                        .map_err(|e| sql_error(op, e))?;
                    for body in &bodies {
                        let id = uuid::Uuid::new_v4().to_string();
                        st.execute(params![name, id, body, now])
                            .map_err(|e| sql_error(op, e))?;
                    }
                }
                tx.commit().map_err(|e| sql_error(op, e))
            })
            .await?;
        self.db.sent().notify_waiters();
        Ok(Vec::new())
    }

    /// Up to `max` messages visible now; when there are none, waits up to `wait_ms` for some.
    #[tracing::instrument(level = "debug", skip_all, fields(queue = %self.name, max = max))]
    async fn receive(&self, max: usize, wait_ms: u64) -> Result<Vec<ReceivedMessage>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            // Registered before looking, so that a send between the look and the wait wakes us.
            let sent = self.db.sent().notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            let got = self.receive_now(max).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let pause = POLL_INTERVAL.min(deadline - now);
            tokio::select! {
                () = &mut sent => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Delete the message this receipt was handed out for; a stale receipt (the message was
    /// received again since, or is gone) deletes nothing, as SQS does.
    #[tracing::instrument(level = "debug", skip_all, fields(queue = %self.name))]
    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let (seq, count) = parse_receipt(receipt).ok_or_else(|| StoreError::Decode {
            key: format!("receipt {receipt:?}"),
            message: "not a receipt of the local queue (\"<row>:<receive count>\")".into(),
        })?;
        let name = self.name.clone();
        self.db
            .call("delete message", move |c| {
                c.prepare_cached(
                    "DELETE FROM queue_messages WHERE seq = ?1 AND receive_count = ?2 \
                     AND queue = ?3",
                )
                .and_then(|mut st| st.execute(params![seq, count, name]))
                .map(drop)
                .map_err(|e| sql_error("delete message", e))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local::LocalStore;
    use crate::adapters::local::testutil::TempDir;
    use std::sync::atomic::{AtomicI64, Ordering};

    const VT: Duration = Duration::from_secs(30);

    /// A queue on a manual clock (`clock.store(t)` moves time).
    fn queue(max_receives: Option<u32>) -> (LocalQueue, Arc<AtomicI64>) {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let c = clock.clone();
        let q = LocalStore::in_memory()
            .expect("open")
            .queue(
                "work",
                QueueOptions {
                    visibility_timeout: VT,
                    max_receives,
                },
            )
            .with_clock(move || c.load(Ordering::SeqCst));
        (q, clock)
    }

    fn bodies(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
    }

    #[tokio::test]
    async fn send_then_receive_in_order_and_delete() {
        let (q, _) = queue(Some(3));
        assert_eq!(q.send_batch(&bodies(3)).await.unwrap(), Vec::<usize>::new());
        let got = q.receive(10, 0).await.unwrap();
        let b: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(b, ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
        assert!(got.iter().all(|m| m.receive_count == 1));
        let mut ids: Vec<&str> = got.iter().map(|m| m.message_id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3, "message IDs are distinct");
        for m in &got {
            q.delete(&m.receipt).await.unwrap();
        }
        assert_eq!(q.counts().await.unwrap(), QueueCounts::default());
    }

    #[tokio::test]
    async fn receive_respects_max() {
        let (q, _) = queue(None);
        q.send_batch(&bodies(5)).await.unwrap();
        assert_eq!(q.receive(2, 0).await.unwrap().len(), 2);
        assert_eq!(q.receive(10, 0).await.unwrap().len(), 3);
        assert!(q.receive(0, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn invisible_until_the_timeout_then_redelivered_with_a_higher_count() {
        let (q, clock) = queue(None);
        q.send_batch(&bodies(1)).await.unwrap();
        let first = q.receive(10, 0).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(q.receive(10, 0).await.unwrap().is_empty(), "in flight");
        assert_eq!(
            q.counts().await.unwrap(),
            QueueCounts {
                visible: 0,
                in_flight: 1,
                dead: 0
            }
        );
        clock.fetch_add(VT.as_micros() as i64 - 1, Ordering::SeqCst);
        assert!(q.receive(10, 0).await.unwrap().is_empty(), "1 µs early");
        clock.fetch_add(1, Ordering::SeqCst);
        let second = q.receive(10, 0).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].message_id, first[0].message_id);
        assert_eq!(second[0].body, first[0].body);
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(second[0].receipt, first[0].receipt);
    }

    #[tokio::test]
    async fn a_stale_receipt_deletes_nothing_the_current_one_does() {
        let (q, clock) = queue(None);
        q.send_batch(&bodies(1)).await.unwrap();
        let first = q.receive(1, 0).await.unwrap().remove(0);
        clock.fetch_add(VT.as_micros() as i64, Ordering::SeqCst);
        let second = q.receive(1, 0).await.unwrap().remove(0);
        q.delete(&first.receipt).await.unwrap();
        assert_eq!(q.counts().await.unwrap().in_flight, 1, "still there");
        q.delete(&second.receipt).await.unwrap();
        assert_eq!(q.counts().await.unwrap(), QueueCounts::default());
        // Deleting again is a no-op, as in SQS.
        q.delete(&second.receipt).await.unwrap();
    }

    #[tokio::test]
    async fn a_malformed_receipt_is_a_typed_error() {
        let (q, _) = queue(None);
        for bad in ["", "12", "a:1", "1:b", "1:2:3"] {
            assert!(
                matches!(q.delete(bad).await, Err(StoreError::Decode { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn dead_letter_after_max_receives_then_replay() {
        let (q, clock) = queue(Some(2));
        q.send_batch(&["poison".to_owned(), "fine".to_owned()])
            .await
            .unwrap();
        let vt = VT.as_micros() as i64;
        for round in 1..=2u32 {
            let got = q.receive(10, 0).await.unwrap();
            assert_eq!(got.len(), 2, "round {round}");
            assert!(got.iter().all(|m| m.receive_count == round));
            if round == 2 {
                let fine = got.iter().find(|m| m.body == "fine").unwrap();
                q.delete(&fine.receipt).await.unwrap();
            }
            clock.fetch_add(vt, Ordering::SeqCst);
        }
        // Third receive attempt: received twice already, so it is dead-lettered, not delivered.
        assert!(q.receive(10, 0).await.unwrap().is_empty());
        assert_eq!(
            q.counts().await.unwrap(),
            QueueCounts {
                visible: 0,
                in_flight: 0,
                dead: 1
            }
        );
        let dead = q.list_dead_letters(None, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
        assert_eq!(dead[0].receive_count, 2);
        assert_eq!(dead[0].dead_at_us, clock.load(Ordering::SeqCst));

        // Unknown IDs are skipped; the real one moves back with a fresh count.
        let n = q
            .replay_dead_letters(&["nope".to_owned(), dead[0].message_id.clone()])
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(q.list_dead_letters(None, 10).await.unwrap().is_empty());
        let again = q.receive(10, 0).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message_id, dead[0].message_id);
        assert_eq!(again[0].body, "poison");
        assert_eq!(again[0].receive_count, 1);
    }

    #[tokio::test]
    async fn dead_letters_page_replay_all_and_discard() {
        let (q, clock) = queue(Some(1));
        q.send_batch(&bodies(5)).await.unwrap();
        assert_eq!(q.receive(10, 0).await.unwrap().len(), 5);
        clock.fetch_add(VT.as_micros() as i64, Ordering::SeqCst);
        assert!(q.receive(10, 0).await.unwrap().is_empty());
        let page1 = q.list_dead_letters(None, 2).await.unwrap();
        let page2 = q.list_dead_letters(Some(page1[1].seq), 2).await.unwrap();
        let page3 = q.list_dead_letters(Some(page2[1].seq), 2).await.unwrap();
        let all: Vec<String> = [page1, page2, page3.clone()]
            .concat()
            .into_iter()
            .map(|d| d.body)
            .collect();
        assert_eq!(all, bodies(5), "dead letters page in order, each once");
        assert_eq!(
            q.discard_dead_letters(&[page3[0].message_id.clone()])
                .await
                .unwrap(),
            1
        );
        assert_eq!(q.replay_all_dead_letters().await.unwrap(), 4);
        assert_eq!(q.counts().await.unwrap().visible, 4);
        assert_eq!(q.counts().await.unwrap().dead, 0);
        let bodies_back: Vec<String> = q
            .receive(10, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies_back, bodies(4));
    }

    #[tokio::test]
    async fn queues_with_different_names_are_separate() {
        let store = LocalStore::in_memory().unwrap();
        let a = store.queue("a", QueueOptions::default());
        let b = store.queue("b", QueueOptions::default());
        a.send_batch(&bodies(2)).await.unwrap();
        assert!(b.receive(10, 0).await.unwrap().is_empty());
        let got = a.receive(10, 0).await.unwrap();
        assert_eq!(got.len(), 2);
        // B cannot delete A's message with A's receipt.
        b.delete(&got[0].receipt).await.unwrap();
        assert_eq!(a.counts().await.unwrap().in_flight, 2);
    }

    #[tokio::test]
    async fn receive_waits_for_a_send() {
        let (q, _) = queue(None);
        let sender = q.clone();
        let send = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send_batch(&bodies(1)).await.unwrap();
        });
        let got = q.receive(10, 10_000).await.unwrap();
        assert_eq!(got.len(), 1, "a message sent during the wait is received");
        send.await.unwrap();
    }

    #[tokio::test]
    async fn receive_on_an_empty_queue_returns_empty_after_the_wait() {
        let (q, _) = queue(None);
        let start = std::time::Instant::now();
        assert!(q.receive(10, 120).await.unwrap().is_empty());
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn messages_survive_reopening_the_file() {
        let dir = TempDir::new();
        let path = dir.path().join("q.sqlite");
        let opts = QueueOptions::default();
        {
            let q = LocalQueue::open(&path, "work", opts.clone()).unwrap();
            q.send_batch(&bodies(2)).await.unwrap();
            assert_eq!(q.receive(1, 0).await.unwrap().len(), 1);
        }
        let q = LocalQueue::open(&path, "work", opts).unwrap();
        let c = q.counts().await.unwrap();
        assert_eq!((c.visible, c.in_flight), (1, 1));
    }
}

//! [`Queue`] on Amazon SQS (standard queue; the worker's queue, with a DLQ redrive policy).
//!
//! Sending: groups of at most 10 entries and [`MAX_BATCH_BYTES`] (SendMessageBatch's limits),
//! up to [`SEND_CONCURRENCY`] calls in flight (a delivery of 1,000 events is 100 calls: one
//! after another they outlast the ingest's timeout).
//! - An entry SQS rejects as the sender's fault (too large for the queue, invalid characters)
//!   is reported at once as a failed index; an entry that failed on SQS's side is retried, a
//!   bounded number of rounds with backoff, then reported.
//! - A whole batch refused for one entry's sake (`BatchRequestTooLong`, `InvalidParameterValue`:
//!   SQS validates every entry before sending any) is split in halves until the culprit stands
//!   alone, so that one bad body never holds back the good ones.
//! - Any other failure of a call (missing queue, access denied, throttled beyond the SDK's
//!   retries) starts no further call; once the calls in flight have answered, it is an `Err`
//!   when nothing was sent, else the unsent indices are reported as failed, so that the caller
//!   never resends what already went.
//!
//! Receiving: at most 10 messages a call, long polling for `wait_ms` rounded up to whole
//! seconds (at most 20), each with its `ApproximateReceiveCount`.
//! SQS delivers at least once: a send that timed out after SQS took it is resent by the caller,
//! so consumers must be idempotent (the worker is, through the version rule).

use crate::adapters::aws::{sdk_config, sqs_client, store_error};
use crate::config::Env;
use crate::error::{ConfigError, StoreError};
use crate::ports::{Queue, ReceivedMessage};
use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Entries per SendMessageBatch call (SQS's limit).
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Total body bytes per SendMessageBatch call (SQS's limit: 1 MiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Rounds of sending for entries that failed on SQS's side (the first included).
pub const ENTRY_ATTEMPTS: u32 = 4;
/// Messages per ReceiveMessage call (SQS's limit).
pub const MAX_RECEIVE: usize = 10;
/// Longest long poll SQS allows.
pub const MAX_WAIT_SECONDS: u64 = 20;
/// SendMessageBatch calls in flight by default (see [`SqsQueue::with_send_concurrency`]).
pub const SEND_CONCURRENCY: usize = 8;

/// Error codes by which SQS refuses a whole batch because of some of its entries.
const ENTRY_SCOPED_CODES: &[&str] = &[
    "BatchRequestTooLong",
    "InvalidParameterValue",
    "InvalidMessageContents",
    "InvalidAttributeValue",
    "InvalidAttributeName",
    "MissingParameter",
];

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    entry_backoff: Duration,
    send_concurrency: usize,
    /// SendMessageBatch calls in flight, now and at most (tests read it).
    #[cfg(any(test, feature = "testing"))]
    sends: std::sync::Arc<InFlight>,
}

/// A gauge of calls in flight and its high-water mark.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

/// One call counted in an [`InFlight`] while it lives.
#[cfg(any(test, feature = "testing"))]
struct Counted<'a>(&'a InFlight);

#[cfg(any(test, feature = "testing"))]
impl<'a> Counted<'a> {
    fn new(g: &'a InFlight) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = g.now.fetch_add(1, SeqCst) + 1;
        g.max.fetch_max(now, SeqCst);
        Counted(g)
    }
}

#[cfg(any(test, feature = "testing"))]
impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
            entry_backoff: Duration::from_millis(200),
            send_concurrency: SEND_CONCURRENCY,
            #[cfg(any(test, feature = "testing"))]
            sends: Default::default(),
        }
    }

    /// SendMessageBatch calls in flight at most (at least 1); [`SEND_CONCURRENCY`] unless
    /// changed.
    pub fn with_send_concurrency(mut self, calls: usize) -> Self {
        self.send_concurrency = calls.max(1);
        self
    }

    /// The most SendMessageBatch calls this queue (and its clones) had in flight at once (for
    /// tests only).
    #[cfg(any(test, feature = "testing"))]
    pub fn max_sends_in_flight(&self) -> usize {
        self.sends.max.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A client built from a shared SDK configuration (one per cold start).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::new(sqs_client(sdk), queue_url)
    }

    /// Region, credentials and endpoint from the usual AWS settings
    /// (`AWS_ENDPOINT_URL_SQS` for an emulator).
    pub async fn from_env(queue_url: impl Into<String>) -> Self {
        Self::from_sdk(&sdk_config().await, queue_url)
    }

    /// The queue URL from the environment variable `var` (`QUEUE_URL` in the template),
    /// failing at cold start, naming the variable, when it is missing or blank.
    pub fn from_env_var(
        sdk: &aws_config::SdkConfig,
        env: Env<'_>,
        var: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Self::from_sdk(sdk, env.required(var)?))
    }

    /// Pause between rounds of resending entries that failed on SQS's side (doubled each round,
    /// with jitter). 200 ms unless changed.
    pub fn with_entry_backoff(mut self, backoff: Duration) -> Self {
        self.entry_backoff = backoff;
        self
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Make received messages visible again now (ChangeMessageVisibilityBatch to 0), in groups
    /// of 10; returns how many could not be released (they come back after their visibility
    /// timeout anyway).
    pub async fn release(&self, receipts: &[&str]) -> Result<usize, StoreError> {
        let mut failed = 0;
        for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*r)
                        .visibility_timeout(0)
                        .build()
                        .map_err(|e| StoreError::backend("sqs:ChangeMessageVisibilityBatch", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| store_error("sqs:ChangeMessageVisibilityBatch", e))?;
            failed += out.failed().len();
        }
        Ok(failed)
    }

    /// One SendMessageBatch call for the entries `group` (indices into `bodies`).
    async fn send_group(
        &self,
        bodies: &[String],
        group: &[usize],
    ) -> Result<GroupResult, CallError> {
        #[cfg(any(test, feature = "testing"))]
        let _counted = Counted::new(&self.sends);
        let mut entries = Vec::with_capacity(group.len());
        for &i in group {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(bodies[i].as_str())
                .build()
                .map_err(|e| CallError::Other(StoreError::backend("sqs:SendMessageBatch", e)))?;
            entries.push(entry);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                let scoped = e
                    .code()
                    .is_some_and(|c| ENTRY_SCOPED_CODES.contains(&short_code(c)));
                let err = store_error("sqs:SendMessageBatch", e);
                if scoped {
                    CallError::EntryScoped(err)
                } else {
                    CallError::Other(err)
                }
            })?;

        let ok: HashSet<&str> = out.successful().iter().map(|s| s.id()).collect();
        let failed: HashMap<&str, &aws_sdk_sqs::types::BatchResultErrorEntry> =
            out.failed().iter().map(|f| (f.id(), f)).collect();
        let mut result = GroupResult::default();
        for &i in group {
            let id = i.to_string();
            if ok.contains(id.as_str()) {
                result.sent += 1;
            } else if let Some(f) = failed.get(id.as_str()) {
                if f.sender_fault() {
                    tracing::warn!(
                        index = i,
                        code = f.code(),
                        message = f.message(),
                        "SQS refused a message"
                    );
                    result.rejected.push(i);
                } else {
                    tracing::debug!(
                        index = i,
                        code = f.code(),
                        "SQS failed a message; will resend"
                    );
                    result.retry.push(i);
                }
            } else {
                // Neither sent nor failed in the answer: resend rather than assume.
                result.retry.push(i);
            }
        }
        Ok(result)
    }
}

#[derive(Debug, Default)]
struct GroupResult {
    sent: usize,
    /// The sender's fault: resending cannot help.
    rejected: Vec<usize>,
    /// Failed on SQS's side: resend.
    retry: Vec<usize>,
}

#[derive(Debug)]
enum CallError {
    /// The whole call was refused because of (some of) its entries.
    EntryScoped(StoreError),
    Other(StoreError),
}

/// `AWS.SimpleQueueService.NonExistentQueue` → `NonExistentQueue`; `ns#Code` → `Code`.
fn short_code(code: &str) -> &str {
    code.rsplit(['.', '#']).next().unwrap_or(code)
}

/// Groups of indices in order: at most [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_BYTES`] of bodies
/// each (a body larger than the limit alone in its group, for SQS to judge).
fn groups(bodies: &[String], indices: impl IntoIterator<Item = usize>) -> VecDeque<Vec<usize>> {
    let mut out = VecDeque::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for i in indices {
        let len = bodies[i].len();
        if !cur.is_empty() && (cur.len() == MAX_BATCH_ENTRIES || bytes + len > MAX_BATCH_BYTES) {
            out.push_back(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.push(i);
        bytes += len;
    }
    if !cur.is_empty() {
        out.push_back(cur);
    }
    out
}

fn backoff(base: Duration, round: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << round.min(6));
    // Full jitter between half and all of it.
    exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
}

#[async_trait]
impl Queue for SqsQueue {
    #[tracing::instrument(level = "debug", skip_all, fields(queue = %self.queue_url, count = bodies.len()))]
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<usize>, StoreError> {
        let mut failed: Vec<usize> = Vec::new();
        let mut sent = 0usize;
        let mut pending = groups(bodies, 0..bodies.len());
        for round in 0..ENTRY_ATTEMPTS {
            let mut retry: Vec<usize> = Vec::new();
            // The first failure of a whole call that is not about its entries: no new call
            // starts, the ones in flight are awaited (they may have sent).
            let mut broken: Option<StoreError> = None;
            let mut in_flight = FuturesUnordered::new();
            loop {
                while broken.is_none() && in_flight.len() < self.send_concurrency {
                    let Some(group) = pending.pop_front() else {
                        break;
                    };
                    in_flight.push(async move {
                        let r = self.send_group(bodies, &group).await;
                        (group, r)
                    });
                }
                let Some((group, r)) = in_flight.next().await else {
                    break;
                };
                match r {
                    Ok(r) => {
                        sent += r.sent;
                        failed.extend(r.rejected);
                        retry.extend(r.retry);
                    }
                    Err(CallError::EntryScoped(e)) if group.len() == 1 => {
                        tracing::warn!(index = group[0], error = %e, "SQS refused a message");
                        failed.push(group[0]);
                    }
                    Err(CallError::EntryScoped(_)) => {
                        let (a, b) = group.split_at(group.len() / 2);
                        pending.push_front(b.to_vec());
                        pending.push_front(a.to_vec());
                    }
                    Err(CallError::Other(e)) => {
                        failed.extend(group);
                        broken.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = broken {
                if sent == 0 {
                    return Err(e);
                }
                tracing::warn!(error = %e, sent, "SQS send failed part-way; reporting the rest as failed");
                failed.extend(pending.drain(..).flatten());
                failed.extend(retry);
                failed.sort_unstable();
                return Ok(failed);
            }
            if retry.is_empty() {
                break;
            }
            if round + 1 == ENTRY_ATTEMPTS {
                failed.extend(retry);
                break;
            }
            tokio::time::sleep(backoff(self.entry_backoff, round)).await;
            pending = groups(bodies, retry);
        }
        failed.sort_unstable();
        Ok(failed)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(queue = %self.queue_url))]
    async fn receive(&self, max: usize, wait_ms: u64) -> Result<Vec<ReceivedMessage>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(MAX_RECEIVE) as i32;
        let wait_s = wait_ms.div_ceil(1000).min(MAX_WAIT_SECONDS) as i32;
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_s)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| store_error("sqs:ReceiveMessage", e))?;
        out.messages().iter().map(decode_message).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(queue = %self.queue_url))]
    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| store_error("sqs:DeleteMessage", e))?;
        Ok(())
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redriven {
    pub moved: u64,
    /// Sends to the work queue that failed (those messages stay in the DLQ).
    pub failed: u64,
    /// Requested message IDs that were not found in the DLQ.
    pub not_found: Vec<String>,
}

/// Long-poll wait of each DLQ receive (long polling asks every SQS server, so an empty answer
/// means empty).
const DLQ_WAIT_MS: u64 = 1_000;

/// Up to `limit` messages of a dead-letter queue, left in it: received, then made visible
/// again at once (so each look adds one to their receive counts).
pub async fn peek_dead_letters(
    dlq: &SqsQueue,
    limit: usize,
) -> Result<Vec<ReceivedMessage>, StoreError> {
    let mut held: Vec<ReceivedMessage> = Vec::new();
    let mut seen = HashSet::new();
    let outcome = async {
        while held.len() < limit {
            let got = dlq
                .receive((limit - held.len()).min(MAX_RECEIVE), DLQ_WAIT_MS)
                .await?;
            if got.is_empty() {
                break;
            }
            for m in got {
                if seen.insert(m.message_id.clone()) {
                    held.push(m);
                }
            }
        }
        Ok::<(), StoreError>(())
    }
    .await;
    let receipts: Vec<&str> = held.iter().map(|m| m.receipt.as_str()).collect();
    if let Err(e) = dlq.release(&receipts).await {
        tracing::warn!(error = %e, "dead letters stay invisible until the DLQ's visibility timeout");
    }
    outcome?;
    Ok(held)
}

/// Move dead letters back onto the work queue (`ids`: those message IDs; `None`: all): receive
/// from the DLQ, send to `work`, and only then delete from the DLQ, so that a failure in between
/// duplicates at worst (the worker's dedup absorbs it) and never loses a message. Messages not
/// asked for are made visible again. (SQS's own message-move task is not in moto.)
pub async fn redrive_dead_letters(
    work: &SqsQueue,
    dlq: &SqsQueue,
    ids: Option<&[String]>,
) -> Result<Redriven, StoreError> {
    let mut wanted: Option<HashSet<String>> = ids.map(|i| i.iter().cloned().collect());
    let mut kept: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut r = Redriven::default();
    let outcome = async {
        loop {
            if wanted.as_ref().is_some_and(HashSet::is_empty) {
                break;
            }
            let got = dlq.receive(MAX_RECEIVE, DLQ_WAIT_MS).await?;
            // Empty, or only messages seen already (failed sends that came back): done.
            let fresh: Vec<ReceivedMessage> = got
                .into_iter()
                .filter(|m| seen.insert(m.message_id.clone()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            let (take, keep): (Vec<_>, Vec<_>) = fresh
                .into_iter()
                .partition(|m| wanted.as_ref().is_none_or(|w| w.contains(&m.message_id)));
            kept.extend(keep.into_iter().map(|m| m.receipt));
            if take.is_empty() {
                continue;
            }
            let bodies: Vec<String> = take.iter().map(|m| m.body.clone()).collect();
            let failed: HashSet<usize> = work.send_batch(&bodies).await?.into_iter().collect();
            for (i, m) in take.into_iter().enumerate() {
                if let Some(w) = wanted.as_mut() {
                    w.remove(&m.message_id);
                }
                if failed.contains(&i) {
                    r.failed += 1;
                    kept.push(m.receipt);
                    continue;
                }
                dlq.delete(&m.receipt).await?;
                r.moved += 1;
            }
        }
        Ok::<(), StoreError>(())
    }
    .await;
    let receipts: Vec<&str> = kept.iter().map(String::as_str).collect();
    if let Err(e) = dlq.release(&receipts).await {
        tracing::warn!(error = %e, "dead letters stay invisible until the DLQ's visibility timeout");
    }
    outcome?;
    if let Some(w) = wanted {
        let mut rest: Vec<String> = w.into_iter().collect();
        rest.sort();
        r.not_found = rest;
    }
    Ok(r)
}

fn decode_message(m: &aws_sdk_sqs::types::Message) -> Result<ReceivedMessage, StoreError> {
    let message_id = m.message_id().ok_or_else(|| StoreError::Decode {
        key: "sqs message".into(),
        message: "no MessageId".into(),
    })?;
    let receipt = m.receipt_handle().ok_or_else(|| StoreError::Decode {
        key: format!("sqs message {message_id}"),
        message: "no ReceiptHandle".into(),
    })?;
    let receive_count = match m
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
    {
        Some(v) => v.parse::<u32>().map_err(|e| StoreError::Decode {
            key: format!("sqs message {message_id}"),
            message: format!("ApproximateReceiveCount {v:?}: {e}"),
        })?,
        // Asked for, so always there; had it been left out, this is at least a first receipt.
        None => 1,
    };
    Ok(ReceivedMessage {
        message_id: message_id.to_owned(),
        receipt: receipt.to_owned(),
        body: m.body().unwrap_or_default().to_owned(),
        receive_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_url_comes_from_its_variable_named_when_missing() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        crate::config::env::with(&[("Q", " https://sqs/q ")], |env| {
            let q = SqsQueue::from_env_var(&sdk, env, "Q").unwrap();
            assert_eq!(q.queue_url(), "https://sqs/q");
            let e = SqsQueue::from_env_var(&sdk, env, "QUEUE_URL").unwrap_err();
            assert!(
                matches!(&e, ConfigError::MissingEnv(n) if n == "QUEUE_URL"),
                "{e}"
            );
        });
    }

    fn bodies(sizes: &[usize]) -> Vec<String> {
        sizes.iter().map(|&n| "x".repeat(n)).collect()
    }

    #[test]
    fn groups_hold_at_most_ten_entries() {
        let b = bodies(&[1; 25]);
        let g: Vec<Vec<usize>> = groups(&b, 0..b.len()).into_iter().collect();
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(g.concat(), (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn groups_respect_the_byte_limit() {
        let b = bodies(&[600 * 1024, 600 * 1024, 10, 2 * 1024 * 1024, 10]);
        let g: Vec<Vec<usize>> = groups(&b, 0..b.len()).into_iter().collect();
        assert_eq!(g, vec![vec![0], vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn short_codes() {
        assert_eq!(
            short_code("AWS.SimpleQueueService.NonExistentQueue"),
            "NonExistentQueue"
        );
        assert_eq!(
            short_code("com.amazonaws.sqs#InvalidParameterValue"),
            "InvalidParameterValue"
        );
        assert_eq!(short_code("BatchRequestTooLong"), "BatchRequestTooLong");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let base = Duration::from_millis(200);
        let b0 = backoff(base, 0);
        assert!(b0 >= Duration::from_millis(100) && b0 <= base);
        let b3 = backoff(base, 3);
        assert!(b3 >= Duration::from_millis(800) && b3 <= Duration::from_millis(1600));
        assert!(backoff(base, 40) <= base * 64);
    }
}

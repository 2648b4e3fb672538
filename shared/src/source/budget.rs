//! The shared rate budget, caller's side: every request of this process takes a token of the
//! account's budget (`ports::BudgetStore`, `core::budget`) after the local floor
//! (`ratelimit::SlidingWindow`). Tokens come in slices, one store write per slice, kept per
//! lane and shared by the lane's tasks in this process.
//!
//! - A background token (delta, reconciliation) is spent at its nominal time; a targeted one at
//!   once. A token whose time is past by more than the plan's lateness expires unspent.
//! - Slices grow (doubling to the plan's largest) while every token of the last one was spent,
//!   and shrink (halving) when some expired or were left at the end of a batch or run: a
//!   trickle of webhooks takes one token per write, a backfill the largest slices.
//! - A wait for a slice that would pass the invocation's stop instant ends the request at once
//!   (`BudgetShort`); so does a pause, which a source's `Retry-After` sets for every caller.
//! - The source's rate-limit headers replace the configured limit ([`Budget::observe`]);
//!   another process's learning arrives with the next slice.
//! - A store that cannot be reached: counted, logged, and the process goes on alone at a
//!   quarter of the budget's pace per lane (after three failed tries, each waited), so a few
//!   callers together stay inside the limit; past the stop instant the request stops instead.

use crate::core::budget::{Lane, Limit, Plan, Shape, SliceAnswer, SliceAsk};
use crate::core::timefmt::now_us;
use crate::model::Micros;
use crate::ports::BudgetStore;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most one write of a higher learned limit per this interval per process (a source whose
/// headers flap between two limits costs one write a minute, not one per request).
const LEARN_INTERVAL: Duration = Duration::from_secs(60);

/// Counters (run summaries, the benchmark).
#[derive(Debug, Default)]
struct Counters {
    slices: AtomicU64,
    store_calls: AtomicU64,
    store_errors: AtomicU64,
    waits: AtomicU64,
    tokens: AtomicU64,
    expired: AtomicU64,
    returned: AtomicU64,
    pauses: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetStats {
    /// Slices granted.
    pub slices: u64,
    /// Store writes (slices asked, pauses, learned limits, give-backs).
    pub store_calls: u64,
    /// Store calls that failed (the local floor then stands alone).
    pub store_errors: u64,
    /// Answers to wait.
    pub waits: u64,
    /// Tokens spent (requests sent under the budget).
    pub tokens: u64,
    /// Tokens that expired unspent.
    pub expired: u64,
    /// Tokens handed back.
    pub returned: u64,
    /// Pauses written after a 429.
    pub pauses: u64,
}

/// Why no token: the wait that would pass the stop instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetShort {
    pub wait: Duration,
    /// The wait is a pause after a source's 429.
    pub paused: bool,
}

#[derive(Debug, Default)]
struct Slot {
    next_us: Micros,
    left: u32,
    interval_us: Micros,
    /// The schedule's end after this slice (for a give-back).
    end_us: Micros,
    /// The size of the next slice asked (0: not yet set).
    size: u32,
    /// Tokens of the current slice that expired.
    expired: u32,
    /// Since when a caller of this lane has been told to wait (a reconciliation caller waiting
    /// two background slices ages: `Plan::lookahead_us`).
    waiting_since: Option<Instant>,
    /// When this lane last asked for a token after running out: a caller that comes back
    /// less often than a slice's tokens expire gains nothing from a larger slice.
    last_ask: Option<Instant>,
}

pub struct Budget {
    store: Arc<dyn BudgetStore>,
    account: String,
    shape: Shape,
    plan: Mutex<Plan>,
    learned_written: Mutex<Option<(Limit, Instant)>>,
    lanes: [tokio::sync::Mutex<Slot>; 3],
    counters: Counters,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("account", &self.account)
            .field("plan", &self.plan())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn passes(stop: Option<Instant>, wait: Duration) -> bool {
    stop.is_some_and(|t| Instant::now() + wait > t)
}

fn micros(d: Micros) -> Duration {
    Duration::from_micros(d.max(0) as u64)
}

impl Budget {
    /// The budget of `account` in `store`, planned for `limit` until the source says otherwise.
    pub fn new(
        store: Arc<dyn BudgetStore>,
        account: impl Into<String>,
        limit: Limit,
        shape: Shape,
    ) -> Budget {
        Budget {
            store,
            account: account.into(),
            shape,
            plan: Mutex::new(Plan::new(limit, shape)),
            learned_written: Mutex::new(None),
            lanes: Default::default(),
            counters: Counters::default(),
        }
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn plan(&self) -> Plan {
        *lock(&self.plan)
    }

    pub fn stats(&self) -> BudgetStats {
        let c = &self.counters;
        BudgetStats {
            slices: c.slices.load(Relaxed),
            store_calls: c.store_calls.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            waits: c.waits.load(Relaxed),
            tokens: c.tokens.load(Relaxed),
            expired: c.expired.load(Relaxed),
            returned: c.returned.load(Relaxed),
            pauses: c.pauses.load(Relaxed),
        }
    }

    /// Adopt `limit` (from the store or the source's headers) when it differs from the plan's.
    fn adopt(&self, limit: Option<Limit>) -> bool {
        let Some(limit) = limit else { return false };
        let mut plan = lock(&self.plan);
        if plan.limit == limit {
            return false;
        }
        tracing::info!(account = %self.account, requests = limit.requests, per_us = limit.per_us, "the rate budget follows the source's limit");
        *plan = Plan::new(limit, self.shape);
        true
    }

    fn store_failed(&self, op: &str, e: &crate::error::StoreError) {
        self.counters.store_errors.fetch_add(1, Relaxed);
        tracing::warn!(account = %self.account, error = %e, "rate budget: {op} failed; the local limiter alone paces this request");
    }

    /// The lane's slot, waited for no later than `stop` (another task of the lane may hold it
    /// while it waits for a slice).
    async fn slot(
        &self,
        lane: Lane,
        stop: Option<Instant>,
    ) -> Result<tokio::sync::MutexGuard<'_, Slot>, BudgetShort> {
        let lock = self.lanes[lane.index()].lock();
        match stop {
            None => Ok(lock.await),
            Some(t) => tokio::time::timeout_at(t.into(), lock)
                .await
                .map_err(|_| BudgetShort {
                    wait: Duration::ZERO,
                    paused: false,
                }),
        }
    }

    /// Wait for a token of `lane`, never past `stop`.
    pub async fn acquire(&self, lane: Lane, stop: Option<Instant>) -> Result<(), BudgetShort> {
        let mut slot = self.slot(lane, stop).await?;
        let mut store_failures = 0u32;
        loop {
            let plan = self.plan();
            let now = now_us();
            // Half the lateness is spent here; the other half is left for the network's jitter
            // and the callers' clocks (the plan's interval pays for the whole).
            let spend_by = plan.lateness_us / 2;
            while slot.left > 0 && slot.next_us + spend_by < now {
                slot.next_us += slot.interval_us;
                slot.left -= 1;
                slot.expired += 1;
                self.counters.expired.fetch_add(1, Relaxed);
            }
            if slot.left > 0 {
                // A targeted token is spent at once (the plan's reach pays for it), a
                // background one at its time.
                let wait = match lane {
                    Lane::Targeted => Duration::ZERO,
                    _ => micros(slot.next_us - now),
                };
                if passes(stop, wait) {
                    return Err(BudgetShort {
                        wait,
                        paused: false,
                    });
                }
                let at = slot.next_us;
                slot.next_us += slot.interval_us;
                slot.left -= 1;
                if wait.is_zero() {
                    self.counters.tokens.fetch_add(1, Relaxed);
                    return Ok(());
                }
                drop(slot);
                tokio::time::sleep(wait).await;
                // Woken too late (a busy machine): the token has expired; take the next.
                if now_us() <= at + spend_by {
                    self.counters.tokens.fetch_add(1, Relaxed);
                    return Ok(());
                }
                self.counters.expired.fetch_add(1, Relaxed);
                slot = self.slot(lane, stop).await?;
                slot.expired += 1;
                continue;
            }
            let largest = match lane {
                Lane::Targeted => plan.targeted_slice,
                _ => plan.background_slice,
            };
            // Grow only for a caller that comes back before a token of the next slice would
            // expire (a webhook every half second would waste a second token each time).
            let keeps_up = slot.last_ask.is_none_or(|t| {
                t.elapsed() <= micros(plan.interval_us * i64::from(slot.size.max(1)) + spend_by)
            });
            slot.size = match (slot.size, slot.expired) {
                (0, _) if lane == Lane::Targeted => 1,
                (0, _) => largest,
                (s, 0) if keeps_up => (s * 2).min(largest),
                (s, 0) => s,
                (s, _) => (s / 2).max(1),
            }
            .min(largest);
            slot.expired = 0;
            slot.last_ask = Some(Instant::now());
            let aged = slot
                .waiting_since
                .is_some_and(|t| t.elapsed() >= micros(plan.aging_us()));
            let ask = SliceAsk {
                now_us: now,
                tokens: slot.size,
                interval_us: plan.interval_us,
                lookahead_us: plan.lookahead_us(lane, aged),
            };
            self.counters.store_calls.fetch_add(1, Relaxed);
            match self.store.take_slice(&self.account, ask).await {
                Ok(SliceAnswer::Granted { first_us, learned }) => {
                    self.counters.slices.fetch_add(1, Relaxed);
                    self.adopt(learned);
                    slot.next_us = first_us;
                    slot.left = ask.tokens;
                    slot.interval_us = ask.interval_us;
                    slot.end_us = first_us + ask.span_us();
                    slot.waiting_since = None;
                }
                Ok(SliceAnswer::Wait {
                    until_us,
                    paused,
                    learned,
                }) => {
                    self.counters.waits.fetch_add(1, Relaxed);
                    self.adopt(learned);
                    let wait = micros(until_us - now_us()).max(Duration::from_millis(1));
                    if passes(stop, wait) {
                        return Err(BudgetShort { wait, paused });
                    }
                    let since = *slot.waiting_since.get_or_insert_with(Instant::now);
                    // A reconciliation caller that has not aged yet would only lose the race
                    // at every background slice's end: it asks again once it has aged.
                    let aging = micros(plan.aging_us()).saturating_sub(since.elapsed());
                    let wait = match lane {
                        Lane::Reconcile if !passes(stop, aging) => wait.max(aging),
                        _ => wait,
                    };
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    // No token without the store: this process alone goes on at a quarter of
                    // the budget's pace per lane (a few callers together stay inside it), and
                    // stops when even that would pass its stop instant.
                    self.store_failed("taking a slice", &e);
                    store_failures += 1;
                    let backoff = Duration::from_millis(50 << store_failures.min(6));
                    let wait = micros(4 * plan.interval_us).max(backoff);
                    if passes(stop, wait) {
                        return Err(BudgetShort {
                            wait,
                            paused: false,
                        });
                    }
                    tokio::time::sleep(wait).await;
                    if store_failures >= 3 {
                        self.counters.tokens.fetch_add(1, Relaxed);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A source's 429 with `Retry-After`: hold every caller of the account until then, and
    /// drop this process's unspent tokens (they would meet the same 429).
    pub async fn pause(&self, retry_after: Duration) {
        let until = now_us() + i64::try_from(retry_after.as_micros()).unwrap_or(i64::MAX / 2);
        // A lane held by a caller waiting for a slice has no token in hand: skip it rather
        // than wait for it.
        for lane in &self.lanes {
            if let Ok(mut s) = lane.try_lock() {
                s.left = 0;
            }
        }
        self.counters.store_calls.fetch_add(1, Relaxed);
        self.counters.pauses.fetch_add(1, Relaxed);
        if let Err(e) = self.store.pause_budget(&self.account, until).await {
            self.store_failed("writing a pause", &e);
        }
    }

    /// The limit the source announced in a response's headers: adopted at once here, written
    /// for the other callers: a lower rate at once, a higher one at most once a minute per
    /// process (a source whose headers flap between two limits costs few writes).
    pub async fn observe(&self, limit: Limit) {
        self.adopt(Some(limit));
        let rate = |l: Limit| f64::from(l.requests) / l.per_us.max(1) as f64;
        let due = {
            let mut w = lock(&self.learned_written);
            let due = match *w {
                None => true,
                Some((l, at)) => {
                    l != limit && (rate(limit) < rate(l) || at.elapsed() >= LEARN_INTERVAL)
                }
            };
            if due {
                *w = Some((limit, Instant::now()));
            }
            due
        };
        if due {
            self.counters.store_calls.fetch_add(1, Relaxed);
            if let Err(e) = self.store.learn_limit(&self.account, limit).await {
                self.store_failed("recording the source's limit", &e);
            }
        }
    }

    /// Hand back the background lanes' unspent tokens (the end of a run or a step). Those of a
    /// slice another caller has cut after are left to expire. A targeted slice is small and
    /// expires within the lateness (the next batch may still spend it): handing it back would
    /// cost a write per batch, and once expired its tokens shrink the lane's next slice.
    pub async fn give_back(&self) {
        for lane in [Lane::Delta, Lane::Reconcile] {
            // A lane held by a caller waiting for a slice has no token in hand.
            let Ok(mut s) = self.lanes[lane.index()].try_lock() else {
                continue;
            };
            if s.left == 0 {
                continue;
            }
            let (end, back, left) = (s.end_us, s.next_us.max(now_us()), s.left);
            s.left = 0;
            s.expired += left;
            if back >= end {
                continue;
            }
            self.counters.store_calls.fetch_add(1, Relaxed);
            match self.store.give_back(&self.account, end, back).await {
                Ok(true) => {
                    self.counters.returned.fetch_add(u64::from(left), Relaxed);
                }
                Ok(false) => {}
                Err(e) => self.store_failed("handing back tokens", &e),
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The budget's pacing over an in-memory store (`core::budget::decide` under a mutex, as the
//! SQLite store applies it). Several `Budget`s on one store stand for several processes. These
//! run in real time (the schedule is wall-clock microseconds) over limits of a second or two.

use super::*;
use crate::core::budget::{BudgetState, decide};
use crate::error::StoreError;
use async_trait::async_trait;
use std::collections::HashMap;

#[derive(Default)]
struct MemStore {
    state: Mutex<HashMap<String, BudgetState>>,
}

#[async_trait]
impl BudgetStore for MemStore {
    async fn take_slice(&self, account: &str, ask: SliceAsk) -> Result<SliceAnswer, StoreError> {
        let mut m = lock(&self.state);
        let s = m.entry(account.to_owned()).or_default();
        let (answer, tat) = decide(s, &ask);
        if let Some(t) = tat {
            s.tat_us = Some(t);
        }
        Ok(answer)
    }
    async fn pause_budget(&self, account: &str, until_us: Micros) -> Result<(), StoreError> {
        let mut m = lock(&self.state);
        let s = m.entry(account.to_owned()).or_default();
        s.paused_until_us = Some(s.paused_until_us.unwrap_or(0).max(until_us));
        Ok(())
    }
    async fn learn_limit(&self, account: &str, limit: Limit) -> Result<(), StoreError> {
        lock(&self.state)
            .entry(account.to_owned())
            .or_default()
            .learned = Some(limit);
        Ok(())
    }
    async fn give_back(
        &self,
        account: &str,
        end: Micros,
        back: Micros,
    ) -> Result<bool, StoreError> {
        let mut m = lock(&self.state);
        let s = m.entry(account.to_owned()).or_default();
        if s.tat_us == Some(end) {
            s.tat_us = Some(back);
            return Ok(true);
        }
        Ok(false)
    }
}

/// 50 requests per second: small enough to saturate in a test, large enough for real slices.
const LIMIT: Limit = Limit {
    requests: 50,
    per_us: 1_000_000,
};

fn budget(store: &Arc<MemStore>) -> Arc<Budget> {
    Arc::new(Budget::new(
        store.clone(),
        "acct",
        LIMIT,
        // Room for a busy machine's scheduling between a token's check and the test's record
        // of its send time (the plan pays for it in the interval).
        Shape {
            lateness_us: 200_000,
            ..Shape::default()
        },
    ))
}

/// Spend tokens of `lane` until `until`, one every `every` (as fast as they come when zero),
/// recording each send time.
fn hammer(
    b: Arc<Budget>,
    lane: Lane,
    until: Instant,
    every: Duration,
    sent: Arc<Mutex<Vec<(Micros, Lane)>>>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0;
        while Instant::now() < until {
            if b.acquire(lane, Some(until)).await.is_err() {
                break;
            }
            lock(&sent).push((now_us(), lane));
            n += 1;
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
        n
    })
}

/// The most sends any window of the limit's length holds.
fn busiest_window(sent: &[(Micros, Lane)]) -> usize {
    let mut t: Vec<Micros> = sent.iter().map(|(t, _)| *t).collect();
    t.sort_unstable();
    let mut most = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= LIMIT.per_us {
            lo += 1;
        }
        most = most.max(hi - lo + 1);
    }
    most
}

/// Three "processes" (budgets on one store): a backfill (two delta tasks), a reconciliation
/// (two tasks) and webhooks (two tasks, one fetch each per 100 ms): no window ever holds more
/// than the limit, and every lane is served.
async fn three_processes_every_lane(stores: [Arc<MemStore>; 3]) -> (usize, Vec<u64>) {
    let until = Instant::now() + Duration::from_millis(2_500);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, (lane, every)) in [
        (Lane::Delta, Duration::ZERO),
        (Lane::Reconcile, Duration::ZERO),
        (Lane::Targeted, Duration::from_millis(100)),
    ]
    .into_iter()
    .enumerate()
    {
        let b = budget(&stores[i]);
        for _ in 0..2 {
            tasks.push(hammer(b.clone(), lane, until, every, sent.clone()));
        }
    }
    let mut per = Vec::new();
    for t in tasks {
        per.push(t.await.unwrap());
    }
    let sent = lock(&sent).clone();
    (busiest_window(&sent), per)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_sharing_one_store_never_exceed_the_limit_in_any_window_and_every_lane_is_served() {
    let shared = Arc::new(MemStore::default());
    let (most, per) =
        three_processes_every_lane([shared.clone(), shared.clone(), shared.clone()]).await;
    assert!(most <= LIMIT.requests as usize, "busiest window {most}");
    assert!(per.iter().all(|n| *n > 0), "every lane progresses: {per:?}");
    // The limit is used, not merely kept: 2.5 s at 50 per second is 125.
    let total: u64 = per.iter().sum();
    assert!(total >= 60, "{total} requests in 2.5 s: {per:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_budgets_that_do_not_share_a_store_exceed_the_limit() {
    let (most, _) = three_processes_every_lane([
        Arc::new(MemStore::default()),
        Arc::new(MemStore::default()),
        Arc::new(MemStore::default()),
    ])
    .await;
    assert!(most > LIMIT.requests as usize, "busiest window {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_caller_is_never_told_to_wait_behind_a_saturating_backfill() {
    let store = Arc::new(MemStore::default());
    let until = Instant::now() + Duration::from_millis(2_000);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let backfill = budget(&store);
    let tasks: Vec<_> = [Lane::Delta, Lane::Delta, Lane::Reconcile]
        .into_iter()
        .map(|l| hammer(backfill.clone(), l, until, Duration::ZERO, sent.clone()))
        .collect();
    let webhooks = budget(&store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fetched = 0;
    while Instant::now() + Duration::from_millis(150) < until {
        webhooks.acquire(Lane::Targeted, Some(until)).await.unwrap();
        lock(&sent).push((now_us(), Lane::Targeted));
        fetched += 1;
        // A webhook every 150 ms: well within what the limit leaves.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let w = webhooks.stats();
    assert_eq!(w.waits, 0, "{w:?}");
    assert!(fetched >= 8, "{fetched}");
    assert!(
        backfill.stats().waits > 0,
        "the backfill saturated the budget"
    );
    assert!(busiest_window(&lock(&sent)) <= LIMIT.requests as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_every_other_caller_until_it_ends() {
    let store = Arc::new(MemStore::default());
    let a = budget(&store);
    let b = budget(&store);
    b.acquire(Lane::Delta, None).await.unwrap();
    a.pause(Duration::from_millis(600)).await;
    let paused_at = now_us();
    let far = Some(Instant::now() + Duration::from_secs(5));
    // b's slice was cut before the pause; once it is spent, b waits for the pause to end.
    let mut after = Vec::new();
    for _ in 0..(b.plan().background_slice + 2) {
        b.acquire(Lane::Delta, far).await.unwrap();
        after.push(now_us() - paused_at);
    }
    let last = *after.last().unwrap();
    assert!(last >= 590_000, "{after:?}");
    assert!(b.stats().waits >= 1);
    // A caller whose stop comes before the pause ends is refused at once, saying so.
    a.pause(Duration::from_secs(3)).await;
    let short = a
        .acquire(
            Lane::Targeted,
            Some(Instant::now() + Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(short.paused, "{short:?}");
}

#[tokio::test]
async fn a_limit_one_caller_learns_reaches_the_others_with_their_next_slice() {
    let store = Arc::new(MemStore::default());
    let a = budget(&store);
    let b = budget(&store);
    let lower = Limit {
        requests: 20,
        per_us: 1_000_000,
    };
    a.observe(lower).await;
    assert_eq!(a.plan().limit, lower);
    assert_eq!(b.plan().limit, LIMIT);
    b.acquire(Lane::Targeted, None).await.unwrap();
    assert_eq!(b.plan().limit, lower);
    // Seeing it again writes nothing.
    let calls = a.stats().store_calls;
    a.observe(lower).await;
    assert_eq!(a.stats().store_calls, calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_caller_lets_tokens_expire_and_takes_smaller_slices_and_gives_back_the_rest() {
    let store = Arc::new(MemStore::default());
    let b = budget(&store);
    let first = b.plan().background_slice;
    for _ in 0..3 {
        b.acquire(Lane::Delta, None).await.unwrap();
        // Slower than the interval plus the lateness: the slice's later tokens expire.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s = b.stats();
    assert!(s.expired > 0, "{s:?}");
    assert!(lock(&store.state)["acct"].tat_us.is_some());
    assert!(b.lanes[Lane::Delta.index()].lock().await.size < first);
    // Fresh slice, one token spent, the rest handed back: the schedule moves back.
    let c = budget(&store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.acquire(Lane::Delta, None).await.unwrap();
    let end = lock(&store.state)["acct"].tat_us.unwrap();
    c.give_back().await;
    let back = lock(&store.state)["acct"].tat_us.unwrap();
    assert!(back < end, "{back} < {end}");
    assert_eq!(c.stats().returned, u64::from(c.plan().background_slice - 1));
    // Handed-back tokens count as unspent: the next slice is smaller.
    assert!(c.lanes[Lane::Delta.index()].lock().await.expired > 0);
}

/// A store that refuses every call.
struct Broken;

#[async_trait]
impl BudgetStore for Broken {
    async fn take_slice(&self, _: &str, _: SliceAsk) -> Result<SliceAnswer, StoreError> {
        Err(StoreError::Decode {
            key: "budget#acct".into(),
            message: "unreachable".into(),
        })
    }
    async fn pause_budget(&self, _: &str, _: Micros) -> Result<(), StoreError> {
        Ok(())
    }
    async fn learn_limit(&self, _: &str, _: Limit) -> Result<(), StoreError> {
        Ok(())
    }
    async fn give_back(&self, _: &str, _: Micros, _: Micros) -> Result<bool, StoreError> {
        Ok(false)
    }
}

#[tokio::test]
async fn without_its_store_a_caller_goes_on_slowly_and_stops_before_its_stop_instant() {
    let b = Budget::new(Arc::new(Broken), "acct", LIMIT, Shape::default());
    // Three waited tries (at least four intervals, then 100, 200 and 400 ms of backoff),
    // then one token: never a request at once.
    let started = Instant::now();
    b.acquire(Lane::Delta, None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.stats().store_errors, 3);
    // A stop instant sooner than the next wait: refused at once.
    let short = b
        .acquire(
            Lane::Targeted,
            Some(Instant::now() + Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert!(short.wait >= Duration::from_millis(50), "{short:?}");
}

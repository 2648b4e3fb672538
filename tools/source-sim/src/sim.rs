//! The simulator's shared state and its in-process admin interface.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::{Chaos, Corruption, Entity, Misbehave, RateLimit, SimConfig};
use crate::data::{RenderCtx, write_record};
use crate::faults::{ChaosState, Fault, RateState};
use crate::json::FieldSet;
use crate::store::{PageOut, PageReq, Rec, Table};
use crate::timefmt::format_timestamp;
use crate::webhooks::{Change, ChangeKind, WebhookState};

/// The version of one record at the source: what reconciliation compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RecordVersion {
    /// Numeric ID (served as the string `"12"`).
    pub id: u64,
    /// `updated_at` in Unix microseconds, already floored to the run's granularity.
    pub updated_at_us: i64,
    /// How many times the record was updated; the generated content depends on it.
    pub mutation: u32,
}

impl RecordVersion {
    fn of(id: u64, r: &Rec) -> RecordVersion {
        RecordVersion {
            id,
            updated_at_us: r.updated_us,
            mutation: r.mutation,
        }
    }
}

/// Request counters since start or the last [`Sim::reset_stats`]. Admin requests are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Every API request (anything outside `/__admin/`).
    pub requests: u64,
    /// Requests for a collection path (`GET /people/v2/people`), whatever their outcome.
    pub list_requests: u64,
    /// Requests for a record path (`GET /people/v2/people/12`), whatever their outcome.
    pub get_requests: u64,
    /// Requests for any other path (answered with an HTML 404 unless a fault came first).
    pub unknown_path: u64,
    /// JSON 404s for records that do not exist.
    pub not_found: u64,
    /// 429s served (rate limit and scripted).
    pub rate_limited: u64,
    /// Scripted and random faults served (a `Delay` counts; a chaos 429 does not exist).
    pub faults_served: u64,
    /// 401s served.
    pub unauthorized: u64,
    /// 400s served for bad query parameters.
    pub bad_requests: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub list_requests: AtomicU64,
    pub get_requests: AtomicU64,
    pub unknown_path: AtomicU64,
    pub not_found: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults_served: AtomicU64,
    pub unauthorized: AtomicU64,
    pub bad_requests: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: g(&self.requests),
            list_requests: g(&self.list_requests),
            get_requests: g(&self.get_requests),
            unknown_path: g(&self.unknown_path),
            not_found: g(&self.not_found),
            rate_limited: g(&self.rate_limited),
            faults_served: g(&self.faults_served),
            unauthorized: g(&self.unauthorized),
            bad_requests: g(&self.bad_requests),
        }
    }

    fn reset(&self) {
        for c in [
            &self.requests,
            &self.list_requests,
            &self.get_requests,
            &self.unknown_path,
            &self.not_found,
            &self.rate_limited,
            &self.faults_served,
            &self.unauthorized,
            &self.bad_requests,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A rejected setting (chaos rates out of range, an invalid configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid simulator setting: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Inner {
    pub cfg: SimConfig,
    pub base_url: String,
    tables: [RwLock<Table>; 2],
    skew_ms: AtomicI64,
    pub faults: Mutex<VecDeque<Fault>>,
    pub chaos: Mutex<ChaosState>,
    pub rate: Mutex<RateState>,
    pub stats: Counters,
    changes: broadcast::Sender<Change>,
    pub webhooks: WebhookState,
    misbehave: Mutex<Misbehave>,
    /// Records served broken, per entity (by [`Entity::index`]).
    corrupt: RwLock<[HashMap<u64, Corruption>; 2]>,
    /// The `Authorization` value every API request must carry (`SimConfig::auth` at start;
    /// [`Sim::set_auth`] rotates it).
    auth: RwLock<Option<String>>,
}

/// The simulator's state and admin interface. Cheap to clone (an `Arc`); every clone controls
/// the same source. Obtained from [`crate::SimHandle::sim`] (or through `SimHandle`'s `Deref`).
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("base_url", &self.inner.base_url)
            .field("people", &self.len(Entity::People))
            .field("donations", &self.len(Entity::Donations))
            .finish()
    }
}

impl Sim {
    /// Builds the data set (no server). `base_url` is what links are built from.
    pub(crate) fn new(cfg: SimConfig, base_url: String) -> Sim {
        let table = |e: Entity| {
            RwLock::new(Table::generate(
                cfg.size(e),
                cfg.base_time_us,
                cfg.step_us,
                cfg.tie_group,
                cfg.granularity,
            ))
        };
        let (changes, _) = broadcast::channel(4096);
        Sim {
            inner: Arc::new(Inner {
                tables: [table(Entity::People), table(Entity::Donations)],
                skew_ms: AtomicI64::new(cfg.clock_skew_ms),
                faults: Mutex::new(VecDeque::new()),
                chaos: Mutex::new(ChaosState::new(cfg.chaos(), cfg.seed)),
                rate: Mutex::new(RateState::new(cfg.rate_limit)),
                stats: Counters::default(),
                changes,
                webhooks: WebhookState::new(cfg.webhook.clone()),
                misbehave: Mutex::new(Misbehave::default()),
                corrupt: RwLock::new([HashMap::new(), HashMap::new()]),
                auth: RwLock::new(cfg.auth.clone()),
                base_url,
                cfg,
            }),
        }
    }

    pub(crate) fn read(&self, e: Entity) -> RwLockReadGuard<'_, Table> {
        self.inner.tables[e.index()]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, e: Entity) -> RwLockWriteGuard<'_, Table> {
        self.inner.tables[e.index()]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn publish(
        &self,
        entity: Entity,
        id: u64,
        kind: ChangeKind,
        updated_at_us: i64,
        mutation: u32,
    ) {
        // No subscriber is fine.
        let _ = self.inner.changes.send(Change {
            entity,
            id,
            kind,
            updated_at_us,
            mutation,
        });
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The full collection URL of an entity, e.g. `http://127.0.0.1:PORT/people/v2/people`.
    pub fn url(&self, entity: Entity) -> String {
        format!("{}{}", self.inner.base_url, entity.path())
    }

    /// The configuration the run started with (run-time changes such as skew or chaos are not
    /// reflected here).
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The simulator's clock in Unix microseconds: the real clock plus the skew (not truncated).
    pub fn now_us(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        real.saturating_add(self.clock_skew_ms().saturating_mul(1_000))
    }

    /// The simulator's clock as a `SystemTime` (what the `Date` header shows).
    pub fn now_system_time(&self) -> SystemTime {
        let skew = self.clock_skew_ms();
        let now = SystemTime::now();
        let d = Duration::from_millis(skew.unsigned_abs());
        let t = if skew >= 0 {
            now.checked_add(d)
        } else {
            now.checked_sub(d)
        };
        t.unwrap_or(now)
    }

    /// Sets the signed offset of the simulator's clock from the real clock, in milliseconds.
    pub fn set_clock_skew_ms(&self, skew_ms: i64) {
        self.inner.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    /// The current clock skew in milliseconds.
    pub fn clock_skew_ms(&self) -> i64 {
        self.inner.skew_ms.load(Ordering::Relaxed)
    }

    fn stamp(&self, at: Option<i64>) -> i64 {
        self.inner
            .cfg
            .granularity
            .truncate(at.unwrap_or_else(|| self.now_us()))
    }

    /// Formats a timestamp the way this run writes it in records (and as a filter value).
    pub fn format_timestamp(&self, us: i64) -> String {
        format_timestamp(
            us,
            self.inner.cfg.timestamp_format,
            self.inner.cfg.granularity,
        )
    }

    /// Creates one record with `updated_at = created_at = at` (or the simulator's now), floored
    /// to the granularity. IDs continue after the largest ever issued.
    pub fn create(&self, entity: Entity, updated_at_us: Option<i64>) -> RecordVersion {
        let ts = self.stamp(updated_at_us);
        let id = self.write(entity).insert(ts);
        self.publish(entity, id, ChangeKind::Created, ts, 0);
        RecordVersion {
            id,
            updated_at_us: ts,
            mutation: 0,
        }
    }

    /// Creates `count` consecutive records sharing one timestamp (`at`, or the simulator's now).
    pub fn create_many(
        &self,
        entity: Entity,
        count: usize,
        updated_at_us: Option<i64>,
    ) -> Vec<RecordVersion> {
        let ts = self.stamp(updated_at_us);
        let ids: Vec<u64> = {
            let mut t = self.write(entity);
            (0..count).map(|_| t.insert(ts)).collect()
        };
        ids.into_iter()
            .map(|id| {
                self.publish(entity, id, ChangeKind::Created, ts, 0);
                RecordVersion {
                    id,
                    updated_at_us: ts,
                    mutation: 0,
                }
            })
            .collect()
    }

    /// Updates a live record: bumps its mutation counter (so its content changes) and sets
    /// `updated_at` to `at` (or the simulator's now), floored to the granularity. `None` if the
    /// record does not exist.
    pub fn update(
        &self,
        entity: Entity,
        id: u64,
        updated_at_us: Option<i64>,
    ) -> Option<RecordVersion> {
        let ts = self.stamp(updated_at_us);
        let rec = self.write(entity).update(id, ts)?;
        self.publish(entity, id, ChangeKind::Updated, ts, rec.mutation);
        Some(RecordVersion::of(id, &rec))
    }

    /// Re-creates a deleted record under its old ID (stamped `at`, or now); `None` when the ID
    /// is live or was never used.
    pub fn recreate(
        &self,
        entity: Entity,
        id: u64,
        updated_at_us: Option<i64>,
    ) -> Option<RecordVersion> {
        let ts = self.stamp(updated_at_us);
        let rec = self.write(entity).revive(id, ts)?;
        self.publish(entity, id, ChangeKind::Created, ts, rec.mutation);
        Some(RecordVersion::of(id, &rec))
    }

    /// Deletes a live record; `false` if it did not exist.
    pub fn delete(&self, entity: Entity, id: u64) -> bool {
        let (deleted, ts, mutation) = {
            let mut t = self.write(entity);
            let (ts, m) = t
                .get(id)
                .map(|r| (r.updated_us, r.mutation))
                .unwrap_or_default();
            (t.delete(id), ts, m)
        };
        if deleted {
            self.publish(entity, id, ChangeKind::Deleted, ts, mutation);
        }
        deleted
    }

    /// The version of one live record.
    pub fn get(&self, entity: Entity, id: u64) -> Option<RecordVersion> {
        self.read(entity).get(id).map(|r| RecordVersion::of(id, &r))
    }

    /// Number of live records.
    pub fn len(&self, entity: Entity) -> usize {
        self.read(entity).len()
    }

    /// True when the entity has no live record.
    pub fn is_empty(&self, entity: Entity) -> bool {
        self.len(entity) == 0
    }

    /// Every live `(id, updated_at_us)`, ascending by ID: the source side of a store comparison.
    pub fn versions(&self, entity: Entity) -> Vec<(u64, i64)> {
        self.read(entity).versions()
    }

    /// The full JSON document `GET <path>/<id>` serves (in the run's envelope, every field), or
    /// `None` if the record does not exist.
    pub fn record_json(&self, entity: Entity, id: u64) -> Option<String> {
        let rec = self.read(entity).get(id)?;
        Some(self.render_single(entity, id, &rec, &FieldSet::All))
    }

    /// Approximate bytes held by the record stores (both entities).
    pub fn memory_bytes(&self) -> usize {
        Entity::ALL
            .iter()
            .map(|&e| self.read(e).memory_bytes())
            .sum()
    }

    /// Queues one scripted fault (FIFO, one per API request).
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.inner.faults).push_back(fault);
    }

    /// Queues several scripted faults, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.inner.faults).extend(faults);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Number of queued faults not yet served.
    pub fn pending_faults(&self) -> usize {
        lock(&self.inner.faults).len()
    }

    /// Replaces the random chaos settings (the RNG keeps its state).
    pub fn set_chaos(&self, chaos: Chaos) -> Result<(), ConfigError> {
        chaos.validate().map_err(ConfigError)?;
        lock(&self.inner.chaos).chaos = chaos;
        Ok(())
    }

    /// The current chaos settings.
    pub fn chaos(&self) -> Chaos {
        lock(&self.inner.chaos).chaos
    }

    /// Replaces the rate limit (`None` disables it) and starts a fresh window.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) -> Result<(), ConfigError> {
        if let Some(rl) = &limit
            && (rl.requests == 0 || rl.period.is_zero())
        {
            return Err(ConfigError(
                "rate limit requests and period must be positive".into(),
            ));
        }
        let mut r = lock(&self.inner.rate);
        r.limit = limit;
        r.reset();
        Ok(())
    }

    /// Starts a fresh rate-limit window (count 0).
    pub fn reset_rate_limit(&self) {
        lock(&self.inner.rate).reset();
    }

    /// The request counters.
    /// Rotate the credential: from now on every API request must carry this `Authorization`
    /// value (`None`: no auth), as a source does once its owner rotates an API token.
    pub fn set_auth(&self, auth: Option<String>) {
        *self.inner.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
    }

    /// The `Authorization` value API requests must carry now.
    pub fn auth(&self) -> Option<String> {
        self.inner
            .auth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// Zeroes the request counters.
    pub fn reset_stats(&self) {
        self.inner.stats.reset();
    }

    /// Replaces the misbehaviour flags (see [`Misbehave`]); they apply from the next request.
    pub fn set_misbehave(&self, m: Misbehave) {
        *lock(&self.inner.misbehave) = m;
    }

    /// The current misbehaviour flags.
    pub fn misbehave(&self) -> Misbehave {
        *lock(&self.inner.misbehave)
    }

    /// Serves record `id` broken from now on (listings and `GET <path>/<id>`), or as it is with
    /// `None`. The record need not exist yet; the setting survives updates (see [`Corruption`]).
    pub fn corrupt(&self, entity: Entity, id: u64, c: Option<Corruption>) {
        let mut all = self
            .inner
            .corrupt
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let map = &mut all[entity.index()];
        match c {
            Some(c) => {
                map.insert(id, c);
            }
            None => {
                map.remove(&id);
            }
        }
    }

    /// The corruption of record `id`, if any.
    pub fn corruption(&self, entity: Entity, id: u64) -> Option<Corruption> {
        self.corruptions(entity).get(&id).copied()
    }

    /// The corruption table of one entity, read-locked (one lock per rendered page).
    pub(crate) fn corruptions(&self, entity: Entity) -> Corruptions<'_> {
        Corruptions {
            guard: self.inner.corrupt.read().unwrap_or_else(|p| p.into_inner()),
            index: entity.index(),
        }
    }

    /// Receives every later mutation (see [`crate::webhooks`]). A slow receiver may lag and miss
    /// changes (`RecvError::Lagged`), as with any `broadcast` channel.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    pub(crate) fn page(&self, entity: Entity, req: &PageReq) -> PageOut {
        self.read(entity).page(req)
    }

    pub(crate) fn render_ctx<'a>(&'a self, fields: &'a FieldSet) -> RenderCtx<'a> {
        let cfg = &self.inner.cfg;
        RenderCtx {
            seed: cfg.seed,
            format: cfg.timestamp_format,
            granularity: cfg.granularity,
            envelope: cfg.envelope,
            fields,
            base_url: &self.inner.base_url,
            people_hint: cfg.people,
            record_bytes: cfg.record_bytes,
        }
    }

    pub(crate) fn render_single(
        &self,
        entity: Entity,
        id: u64,
        rec: &Rec,
        fields: &FieldSet,
    ) -> String {
        let ctx = self.render_ctx(fields);
        let bad = self.corruption(entity, id);
        let mut out = String::with_capacity(1_400);
        match ctx.envelope {
            crate::config::Envelope::JsonApi => {
                out.push_str("{\"data\":");
                write_record(&mut out, &ctx, entity, id, rec, bad);
                out.push_str(",\"included\":[],\"meta\":{}}");
            }
            crate::config::Envelope::Bare => write_record(&mut out, &ctx, entity, id, rec, bad),
        }
        out
    }

    pub(crate) fn get_rec(&self, entity: Entity, id: u64) -> Option<Rec> {
        self.read(entity).get(id)
    }
}

/// The corrupted records of one entity, read-locked.
pub(crate) struct Corruptions<'a> {
    guard: RwLockReadGuard<'a, [HashMap<u64, Corruption>; 2]>,
    index: usize,
}

impl Corruptions<'_> {
    pub(crate) fn get(&self, id: &u64) -> Option<&Corruption> {
        self.guard[self.index].get(id)
    }
}

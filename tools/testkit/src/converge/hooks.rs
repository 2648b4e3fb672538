//! The crash points: hooks on the record and control stores that fail one call when armed.

use super::schedule::CrashPoint;
use super::schedule::FaultKind;
use crate::forward::{ControlHooks, RecordHooks, SourceHooks};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use shared::model::Fetched;
use shared::model::{Micros, Record, Strategy, WriteOutcome};
use shared::ports::{ControlStore, IdPage, JobKind, LeaseOutcome, RecordStore, SourceApi};
use shared::{SourceError, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// The armed crash points, shared by both hooks and the harness, and the gate that holds a
/// delta run's next page write back (an interleaving inside the run).
#[derive(Default, Clone)]
pub struct Crashes {
    armed: Arc<Mutex<Vec<CrashPoint>>>,
    gate: Arc<Mutex<Option<Gate>>>,
    /// Negative control: every lease taken whoever holds it (see [`Crashes::without_leases`]).
    steal: bool,
}

/// Holds the next delta page write: `reached` is sent (with the page's IDs) once the run has
/// read the page and is about to write it; the write waits for `release`.
pub struct Gate {
    pub reached: oneshot::Sender<Vec<String>>,
    pub release: oneshot::Receiver<()>,
}

impl Crashes {
    pub fn arm(&self, p: CrashPoint) {
        let mut v = self.armed.lock().expect("crash points");
        if !v.contains(&p) {
            v.push(p);
        }
    }

    /// True (and disarmed) when `p` was armed.
    pub fn take(&self, p: CrashPoint) -> bool {
        let mut v = self.armed.lock().expect("crash points");
        match v.iter().position(|&q| q == p) {
            Some(i) => {
                v.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn clear(&self) {
        self.armed.lock().expect("crash points").clear();
    }

    /// Negative control for the leases: every `acquire_lease` succeeds (a lease another run
    /// holds is taken over) and every `save_cursor` too, whoever holds the lease then: runs of
    /// one job overlap, as without a lease.
    pub fn without_leases(mut self) -> Self {
        self.steal = true;
        self
    }

    /// Hold the next delta page write at `gate`.
    pub fn hold(&self, gate: Gate) {
        *self.gate.lock().expect("gate") = Some(gate);
    }

    /// Take the gate back if no write reached it.
    pub fn unhold(&self) {
        self.gate.lock().expect("gate").take();
    }
}

/// Take the lease for `holder`, whoever holds it (or none).
async fn steal<S: ControlStore + ?Sized>(
    inner: &S,
    entity: &str,
    kind: JobKind,
    holder: &str,
    now_us: Micros,
    ttl_us: Micros,
) -> Result<(), StoreError> {
    let st = inner.job_state(entity, kind).await?;
    if st.lease_holder.as_deref() != Some(holder) {
        if let Some(h) = &st.lease_holder {
            inner.release_lease(entity, kind, h).await?;
        }
        inner
            .acquire_lease(entity, kind, holder, now_us, ttl_us)
            .await?;
    }
    Ok(())
}

fn crash(at: &'static str) -> StoreError {
    StoreError::backend(at, std::io::Error::other("injected crash"))
}

#[async_trait]
impl<S: RecordStore + ?Sized> RecordHooks<S> for Crashes {
    async fn upsert_many(
        &self,
        inner: &S,
        records: &[Record],
        by: Strategy,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if by == Strategy::Delta {
            let gate = self.gate.lock().expect("gate").take();
            if let Some(g) = gate {
                let _ = g
                    .reached
                    .send(records.iter().map(|r| r.id.clone()).collect());
                let _ = g.release.await;
            }
        }
        if self.take(CrashPoint::RecordWrite) {
            return Err(crash("crash point: record write"));
        }
        inner.upsert_many(records, by).await
    }
}

#[async_trait]
impl<S: ControlStore + ?Sized> ControlHooks<S> for Crashes {
    async fn save_cursor(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
        cursor: &str,
    ) -> Result<(), StoreError> {
        if self.take(CrashPoint::BeforeCheckpoint) {
            return Err(crash("crash point: before the checkpoint"));
        }
        if self.steal {
            steal(inner, entity, kind, holder, now_us, ttl_us).await?;
        }
        inner
            .save_cursor(entity, kind, holder, now_us, ttl_us, cursor)
            .await
    }

    async fn acquire_lease(
        &self,
        inner: &S,
        entity: &str,
        kind: JobKind,
        holder: &str,
        now_us: Micros,
        ttl_us: Micros,
    ) -> Result<LeaseOutcome, StoreError> {
        if self.steal {
            steal(inner, entity, kind, holder, now_us, ttl_us).await?;
        }
        inner
            .acquire_lease(entity, kind, holder, now_us, ttl_us)
            .await
    }

    async fn processed_events(
        &self,
        inner: &S,
        event_ids: &[&str],
        now_us: Micros,
    ) -> Result<HashSet<String>, StoreError> {
        if self.take(CrashPoint::BeforeDedupRead) {
            return Err(crash("crash point: before the dedup read"));
        }
        inner.processed_events(event_ids, now_us).await
    }

    async fn complete_event(
        &self,
        inner: &S,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        if self.take(CrashPoint::AfterWork) {
            return Err(crash(
                "crash point: after the work, before completing the event",
            ));
        }
        inner.complete_event(event_id, retain_until_us).await
    }
}

/// How a source lies to one entity's reconciliation run until the run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lie {
    /// The listing leaves out one record (the first it serves; `None` until then) and counts
    /// one fewer: a record the listing hides while `get_by_id` has it.
    Hide(Option<String>),
    /// The listing is empty with a total of 0 and every `get_by_id` answers 404: an API key
    /// that now reads another (empty) account.
    Emptied,
}

#[derive(Default)]
struct ListingState {
    armed: Option<FaultKind>,
    lies: std::collections::BTreeMap<String, Lie>,
}

/// The listing faults armed for the next ID listing (`FaultKind::ListingCut`,
/// `ListingEmptied`, `ListingHidesOne`, `SourceEmptied`; the last two last until the entity's
/// run ends: [`Listings::end_run`]); the other faults are the simulator's. Only the
/// reconciliation's client goes through it (`World::recon_client`).
#[derive(Default, Clone)]
pub struct Listings(Arc<Mutex<ListingState>>);

impl Listings {
    pub fn arm(&self, kind: FaultKind) {
        self.0.lock().expect("listing fault").armed = Some(kind);
    }

    pub fn clear(&self) {
        *self.0.lock().expect("listing fault") = ListingState::default();
    }

    /// The entity's reconciliation run ended: its listing tells the truth again.
    pub fn end_run(&self, entity: &str) {
        self.0.lock().expect("listing fault").lies.remove(entity);
    }

    /// The armed fault this listing takes, and the lie it is under.
    fn take(&self, entity: &str) -> (Option<FaultKind>, Option<Lie>) {
        let mut st = self.0.lock().expect("listing fault");
        let armed = st.armed.take();
        match armed {
            Some(FaultKind::ListingHidesOne) => {
                st.lies.insert(entity.to_owned(), Lie::Hide(None));
            }
            Some(FaultKind::SourceEmptied) => {
                st.lies.insert(entity.to_owned(), Lie::Emptied);
            }
            _ => {}
        }
        (armed, st.lies.get(entity).cloned())
    }

    /// The page as the lying source serves it.
    fn hide(&self, entity: &str, mut page: IdPage) -> IdPage {
        let mut st = self.0.lock().expect("listing fault");
        let Some(Lie::Hide(hidden)) = st.lies.get_mut(entity) else {
            return page;
        };
        if hidden.is_none() {
            *hidden = page.ids.first().map(|i| i.id.clone());
        }
        page.ids.retain(|i| Some(&i.id) != hidden.as_ref());
        page.total_count = page.total_count.map(|t| t.saturating_sub(1));
        page
    }

    fn emptied(&self, entity: &str) -> bool {
        self.0.lock().expect("listing fault").lies.get(entity) == Some(&Lie::Emptied)
    }
}

fn empty_listing<'a>() -> BoxStream<'a, Result<IdPage, SourceError>> {
    futures::stream::once(async {
        Ok(IdPage {
            ids: Vec::new(),
            rejected: Vec::new(),
            total_count: Some(0),
            resume: None,
        })
    })
    .boxed()
}

#[async_trait]
impl<S: SourceApi + ?Sized> SourceHooks<S> for Listings {
    fn stream_ids_from<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        match self.take(entity) {
            (_, Some(Lie::Emptied)) | (Some(FaultKind::ListingEmptied), _) => empty_listing(),
            (_, Some(Lie::Hide(_))) => inner
                .stream_ids_from(entity, resume)
                .map(move |p| p.map(|p| self.hide(entity, p)))
                .boxed(),
            (Some(FaultKind::ListingCut), _) => inner
                .stream_ids_from(entity, resume)
                .take(1)
                .map(|p| {
                    p.map(|mut p| {
                        p.resume = None;
                        p
                    })
                })
                .boxed(),
            _ => inner.stream_ids_from(entity, resume),
        }
    }

    async fn get_by_id(
        &self,
        inner: &S,
        entity: &str,
        id: &str,
    ) -> Result<Option<Record>, SourceError> {
        if self.emptied(entity) {
            return Ok(None);
        }
        inner.get_by_id(entity, id).await
    }

    /// The inner source's own answer and send time (the worker's evidence rule uses it).
    async fn fetch_by_id(&self, inner: &S, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        if self.emptied(entity) {
            return Ok(Fetched {
                record: None,
                sent_us: shared::core::timefmt::now_us(),
            });
        }
        inner.fetch_by_id(entity, id).await
    }
}

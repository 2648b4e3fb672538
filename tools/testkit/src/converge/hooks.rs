//! The crash points: hooks on the record and control stores that fail one call when armed.

use super::schedule::CrashPoint;
use super::schedule::FaultKind;
use crate::forward::{ControlHooks, RecordHooks, SourceHooks};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use shared::model::Fetched;
use shared::model::{Micros, Record, Strategy, WriteOutcome};
use shared::ports::{ControlStore, EventClaim, IdPage, JobKind, RecordStore, SourceApi};
use shared::{SourceError, StoreError};
use std::sync::Arc;
use std::sync::Mutex;

/// The armed crash points, shared by both hooks and the harness, and the events whose
/// completion a crash prevented (their claims stay in progress until they expire).
#[derive(Default, Clone)]
pub struct Crashes(Arc<Mutex<Vec<CrashPoint>>>, Arc<Mutex<Vec<String>>>);

impl Crashes {
    pub fn arm(&self, p: CrashPoint) {
        let mut v = self.0.lock().expect("crash points");
        if !v.contains(&p) {
            v.push(p);
        }
    }

    /// True (and disarmed) when `p` was armed.
    pub fn take(&self, p: CrashPoint) -> bool {
        let mut v = self.0.lock().expect("crash points");
        match v.iter().position(|&q| q == p) {
            Some(i) => {
                v.remove(i);
                true
            }
            None => false,
        }
    }

    /// The events a crash after the work left claimed.
    pub fn left_claimed(&self) -> Vec<String> {
        self.1.lock().expect("claimed events").clone()
    }

    pub fn clear(&self) {
        self.0.lock().expect("crash points").clear();
    }
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
        inner
            .save_cursor(entity, kind, holder, now_us, ttl_us, cursor)
            .await
    }

    async fn claim_event(
        &self,
        inner: &S,
        event_id: &str,
        now_us: Micros,
        in_progress_ttl_us: Micros,
    ) -> Result<EventClaim, StoreError> {
        if self.take(CrashPoint::BeforeClaim) {
            return Err(crash("crash point: before the dedup claim"));
        }
        inner
            .claim_event(event_id, now_us, in_progress_ttl_us)
            .await
    }

    async fn complete_event(
        &self,
        inner: &S,
        event_id: &str,
        retain_until_us: Micros,
    ) -> Result<(), StoreError> {
        if self.take(CrashPoint::AfterWork) {
            self.1
                .lock()
                .expect("claimed events")
                .push(event_id.to_owned());
            return Err(crash(
                "crash point: after the work, before completing the event",
            ));
        }
        inner.complete_event(event_id, retain_until_us).await
    }
}

/// The listing faults armed for the next ID listing (`FaultKind::ListingCut`,
/// `FaultKind::ListingEmptied`); the other faults are the simulator's.
#[derive(Default, Clone)]
pub struct Listings(Arc<Mutex<Option<FaultKind>>>);

impl Listings {
    pub fn arm(&self, kind: FaultKind) {
        *self.0.lock().expect("listing fault") = Some(kind);
    }

    pub fn clear(&self) {
        *self.0.lock().expect("listing fault") = None;
    }

    fn take(&self) -> Option<FaultKind> {
        self.0.lock().expect("listing fault").take()
    }
}

#[async_trait]
impl<S: SourceApi + ?Sized> SourceHooks<S> for Listings {
    fn stream_ids_from<'a>(
        &'a self,
        inner: &'a S,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        match self.take() {
            Some(FaultKind::ListingCut) => inner
                .stream_ids_from(entity, resume)
                .take(1)
                .map(|p| {
                    p.map(|mut p| {
                        p.resume = None;
                        p
                    })
                })
                .boxed(),
            Some(FaultKind::ListingEmptied) => futures::stream::once(async {
                Ok(IdPage {
                    ids: Vec::new(),
                    rejected: Vec::new(),
                    total_count: Some(0),
                    resume: None,
                })
            })
            .boxed(),
            _ => inner.stream_ids_from(entity, resume),
        }
    }

    /// The inner source's own answer and send time (the worker's evidence rule uses it).
    async fn fetch_by_id(&self, inner: &S, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        inner.fetch_by_id(entity, id).await
    }
}

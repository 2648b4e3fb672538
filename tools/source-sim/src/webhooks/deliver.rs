//! The delivery subscriber: turns each [`Change`] into signed `POST`s, with faults and retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout, timeout_at};

use super::config::{WebhookScheme, WebhookTarget};
use super::sign::{self, PCO_HEADER};
use super::{Change, ChangeKind};
use crate::config::{Entity, Envelope};
use crate::data::write_record;
use crate::json::FieldSet;
use crate::sim::{Sim, lock};
use crate::store::Rec;

/// How long a reordered delivery waits for a next one before it is sent anyway.
pub(crate) const HOLD_MAX: Duration = Duration::from_millis(500);

macro_rules! webhook_counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Webhook delivery counters since start or the last [`Sim::reset_webhook_stats`]
        /// (`pending` is a gauge and is never reset). A "delivery" is one body (one or more
        /// events); a duplicate is a second send of the same delivery.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct WebhookStats {
            $($(#[$doc])* pub $name: u64,)*
            /// Sends (deliveries and duplicates) not finished yet: waiting, in flight or between
            /// retries; dropped deliveries are never pending.
            pub pending: u64,
        }

        #[derive(Default)]
        pub(crate) struct Counters {
            $($name: AtomicU64,)*
            pending: AtomicU64,
        }

        impl Counters {
            fn snapshot(&self) -> WebhookStats {
                WebhookStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    pending: self.pending.load(Ordering::Relaxed),
                }
            }

            fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

webhook_counters! {
    /// Changes seen while a target was set.
    changes,
    /// Changes lost because the subscriber lagged behind the broadcast channel.
    missed,
    /// Delivery bodies built (duplicates not counted).
    deliveries,
    /// Events put in those bodies.
    events,
    /// HTTP attempts made (first attempts and retries, duplicates included).
    attempts,
    /// Attempts answered 200: the send is done.
    delivered,
    /// Attempts answered with anything other than 200.
    non_200,
    /// Attempts without an answer (connection error or timeout).
    connection_errors,
    /// Attempts after the first.
    retries,
    /// Sends whose retry schedule ran out.
    given_up,
    /// Deliveries never sent (drop fault).
    dropped,
    /// Deliveries sent twice (duplicate fault).
    duplicated,
    /// Deliveries held back and sent after the next one (reorder fault).
    reordered,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Webhook state shared by the simulator, the subscriber and the admin API.
#[derive(Default)]
pub(crate) struct WebhookState {
    /// The target and a generation number bumped by every change of it.
    target: std::sync::Mutex<(u64, Option<WebhookTarget>)>,
    pub(crate) counters: Counters,
}

impl WebhookState {
    pub(crate) fn new(target: Option<WebhookTarget>) -> WebhookState {
        WebhookState {
            target: std::sync::Mutex::new((0, target)),
            counters: Counters::default(),
        }
    }

    pub(crate) fn target(&self) -> Option<WebhookTarget> {
        lock(&self.target).1.clone()
    }

    pub(crate) fn set_target(&self, target: Option<WebhookTarget>) {
        let mut t = lock(&self.target);
        t.0 += 1;
        t.1 = target;
    }

    /// Applies `f` to the current target; `false` when there is none.
    pub(crate) fn update_target(&self, f: impl FnOnce(&mut WebhookTarget)) -> bool {
        let mut t = lock(&self.target);
        let Some(target) = t.1.as_mut() else {
            return false;
        };
        f(target);
        t.0 += 1;
        true
    }

    fn snapshot(&self) -> (u64, Option<WebhookTarget>) {
        lock(&self.target).clone()
    }

    pub(crate) fn stats(&self) -> WebhookStats {
        self.counters.snapshot()
    }

    pub(crate) fn reset_stats(&self) {
        self.counters.reset();
    }
}

/// The Planning Center event name of a change, e.g. `people.v2.events.person.created` or
/// `giving.v2.events.donation.destroyed`.
pub fn event_name(entity: Entity, kind: ChangeKind) -> &'static str {
    use ChangeKind::{Created, Deleted, Updated};
    match (entity, kind) {
        (Entity::People, Created) => "people.v2.events.person.created",
        (Entity::People, Updated) => "people.v2.events.person.updated",
        (Entity::People, Deleted) => "people.v2.events.person.destroyed",
        (Entity::Donations, Created) => "giving.v2.events.donation.created",
        (Entity::Donations, Updated) => "giving.v2.events.donation.updated",
        (Entity::Donations, Deleted) => "giving.v2.events.donation.destroyed",
    }
}

/// One event of a delivery body.
struct Event {
    id: String,
    name: &'static str,
    payload: String,
}

/// One delivery body, rendered per attempt.
#[derive(Clone)]
struct Message(Arc<[Event]>);

impl Message {
    /// The delivery ID: the first event's ID (`webhook-id` in Standard Webhooks).
    fn id(&self) -> &str {
        self.0.first().map_or("", |e| e.id.as_str())
    }

    fn body(&self, attempt: u32) -> String {
        let data: Vec<_> = self
            .0
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "type": "EventDelivery",
                    "attributes": {"name": e.name, "attempt": attempt, "payload": e.payload},
                })
            })
            .collect();
        json!({ "data": data }).to_string()
    }
}

/// A UUID v4-shaped ID from the seeded RNG, so that a seed gives the same IDs.
fn delivery_id(rng: &mut fastrand::Rng) -> String {
    let (a, b) = (rng.u64(..), rng.u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The payload of a change: the record as it was right after it (attributes included), or
/// only `id` and `type` for a deletion.
fn payload(sim: &Sim, c: &Change) -> String {
    let ty = c.entity.json_type();
    let created_us = sim.read(c.entity).get_any(c.id).map(|r| r.created_us);
    match (c.kind, created_us) {
        (ChangeKind::Deleted, _) | (_, None) => {
            format!("{{\"data\":{{\"id\":\"{}\",\"type\":\"{ty}\"}}}}", c.id)
        }
        (_, Some(created_us)) => {
            let rec = Rec {
                updated_us: c.updated_at_us,
                created_us,
                mutation: c.mutation,
                alive: true,
            };
            let fields = FieldSet::All;
            let mut ctx = sim.render_ctx(&fields);
            ctx.envelope = Envelope::JsonApi;
            let mut out = String::with_capacity(1_400);
            out.push_str("{\"data\":");
            write_record(&mut out, &ctx, c.entity, c.id, &rec, None);
            out.push('}');
            out
        }
    }
}

/// What deliveries of one target share.
struct Ctx {
    sim: Sim,
    client: reqwest::Client,
    target: WebhookTarget,
    key: Vec<u8>,
    permits: Semaphore,
}

/// A delivery ready to go: `copies` sends (2 when duplicated) after `delay`.
struct Outgoing {
    ctx: Arc<Ctx>,
    msg: Message,
    delay: Duration,
    copies: u8,
}

/// Runs until aborted (by [`crate::SimHandle`]) or until the change channel closes.
pub(crate) async fn run(sim: Sim, mut rx: broadcast::Receiver<Change>) {
    let seed = sim.config().seed;
    let mut ids = fastrand::Rng::with_seed(seed ^ 0x3EB0_0C5E_1D5E_ED00);
    let mut dice = fastrand::Rng::with_seed(seed ^ 0xFA17_5EED_0000_0001);
    let state = &sim.inner.webhooks;
    let mut tasks = JoinSet::new();
    let mut client: Option<reqwest::Client> = None;
    let mut ctx: Option<(u64, Arc<Ctx>)> = None;
    let mut held: Option<Outgoing> = None;
    loop {
        while tasks.try_join_next().is_some() {}
        let next = match held.is_some() {
            true => tokio::select! {
                r = rx.recv() => r,
                () = sleep(HOLD_MAX) => {
                    if let Some(h) = held.take() {
                        spawn(&mut tasks, h, None, None);
                    }
                    continue;
                }
            },
            false => rx.recv().await,
        };
        let first = match next {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                state.counters.missed.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let (generation, Some(target)) = state.snapshot() else {
            continue;
        };
        let mut batch = vec![first];
        if target.max_events_per_delivery > 1 {
            let deadline = Instant::now() + target.batch_window;
            while batch.len() < target.max_events_per_delivery {
                match timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(c)) => batch.push(c),
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        state.counters.missed.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
        }
        let c = &state.counters;
        c.changes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let ctx = match &ctx {
            Some((g, cx)) if *g == generation => cx.clone(),
            _ => {
                let Ok(key) = target.key() else {
                    // Validated when set; an invalid target delivers nothing.
                    continue;
                };
                let client = client.get_or_insert_with(reqwest::Client::new).clone();
                let cx = Arc::new(Ctx {
                    sim: sim.clone(),
                    client,
                    permits: Semaphore::new(target.max_in_flight.max(1)),
                    target,
                    key,
                });
                ctx = Some((generation, cx.clone()));
                cx
            }
        };
        let msg = Message(
            batch
                .iter()
                .map(|ch| Event {
                    id: delivery_id(&mut ids),
                    name: event_name(ch.entity, ch.kind),
                    payload: payload(&sim, ch),
                })
                .collect(),
        );
        bump(&c.deliveries);
        c.events.fetch_add(batch.len() as u64, Ordering::Relaxed);

        let f = ctx.target.faults;
        let (drop, dup, reorder) = (dice.f64(), dice.f64(), dice.f64());
        let jitter_ms = u64::try_from(f.jitter.as_millis()).unwrap_or(u64::MAX);
        let delay = f.delay + Duration::from_millis(dice.u64(0..=jitter_ms));
        if drop < f.drop_rate {
            bump(&c.dropped);
            continue;
        }
        let copies = if dup < f.duplicate_rate {
            bump(&c.duplicated);
            2
        } else {
            1
        };
        c.pending.fetch_add(u64::from(copies), Ordering::Relaxed);
        let out = Outgoing {
            ctx,
            msg,
            delay,
            copies,
        };
        if reorder < f.reorder_rate && held.is_none() {
            bump(&c.reordered);
            held = Some(out);
            continue;
        }
        let (done_tx, done_rx) = watch::channel(false);
        spawn(&mut tasks, out, None, Some(done_tx));
        if let Some(h) = held.take() {
            spawn(&mut tasks, h, Some(done_rx), None);
        }
    }
}

/// Spawns every copy of `out`. The first copy reports the end of its first attempt on `done`;
/// every copy first waits for `after` (at most [`HOLD_MAX`]).
fn spawn(
    tasks: &mut JoinSet<()>,
    out: Outgoing,
    after: Option<watch::Receiver<bool>>,
    mut done: Option<watch::Sender<bool>>,
) {
    for _ in 0..out.copies {
        tasks.spawn(send(
            out.ctx.clone(),
            out.msg.clone(),
            out.delay,
            after.clone(),
            done.take(),
        ));
    }
}

/// One send of a delivery with its retries.
async fn send(
    ctx: Arc<Ctx>,
    msg: Message,
    delay: Duration,
    after: Option<watch::Receiver<bool>>,
    mut done: Option<watch::Sender<bool>>,
) {
    if let Some(mut rx) = after {
        let _ = timeout(HOLD_MAX, rx.wait_for(|d| *d)).await;
    }
    if !delay.is_zero() {
        sleep(delay).await;
    }
    let c = &ctx.sim.inner.webhooks.counters;
    let t = &ctx.target;
    for attempt in 1..=t.retry.max_attempts() {
        if let Some(wait) = attempt
            .checked_sub(2)
            .and_then(|i| t.retry.delays.get(i as usize))
        {
            sleep(*wait).await;
            bump(&c.retries);
        }
        let status = {
            let _permit = ctx.permits.acquire().await.ok();
            bump(&c.attempts);
            attempt_once(&ctx, &msg, attempt).await
        };
        if let Some(tx) = done.take() {
            let _ = tx.send(true);
        }
        match status {
            Some(200) => {
                bump(&c.delivered);
                c.pending.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Some(code) => {
                bump(&c.non_200);
                tracing::debug!(id = msg.id(), attempt, code, "webhook answered non-200");
            }
            None => bump(&c.connection_errors),
        }
    }
    bump(&c.given_up);
    c.pending.fetch_sub(1, Ordering::Relaxed);
}

/// Signs and posts one attempt: the status, or `None` without an answer.
async fn attempt_once(ctx: &Ctx, msg: &Message, attempt: u32) -> Option<u16> {
    let t = &ctx.target;
    let body = msg.body(attempt);
    let mut req = ctx
        .client
        .post(&t.url)
        .timeout(t.timeout)
        .header("content-type", "application/json")
        .header("user-agent", "source-sim-webhooks");
    match t.scheme {
        WebhookScheme::Pco { encoding } => {
            req = req.header(PCO_HEADER, sign::pco(&ctx.key, body.as_bytes(), encoding));
        }
        WebhookScheme::Standard => {
            let ts = ctx.sim.now_us().div_euclid(1_000_000);
            let sig = sign::standard(&ctx.key, msg.id(), ts, body.as_bytes());
            req = req
                .header("webhook-id", msg.id())
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig);
        }
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            Some(status)
        }
        Err(e) => {
            tracing::debug!(id = msg.id(), attempt, error = %e, "webhook attempt failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_uuid_shaped_and_seeded() {
        let mut a = fastrand::Rng::with_seed(7);
        let mut b = fastrand::Rng::with_seed(7);
        let id = delivery_id(&mut a);
        assert_eq!(id, delivery_id(&mut b));
        let parts: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, delivery_id(&mut a));
    }

    #[test]
    fn bodies_carry_the_attempt_and_the_payload_as_a_string() {
        let msg = Message(Arc::from(vec![Event {
            id: "d1".into(),
            name: "people.v2.events.person.created",
            payload: r#"{"data":{"id":"1","type":"Person"}}"#.into(),
        }]));
        let v: serde_json::Value = serde_json::from_str(&msg.body(3)).unwrap();
        let e = &v["data"][0];
        assert_eq!(e["id"], "d1");
        assert_eq!(e["type"], "EventDelivery");
        assert_eq!(e["attributes"]["attempt"], 3);
        let p: serde_json::Value =
            serde_json::from_str(e["attributes"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(p["data"]["type"], "Person");
    }

    #[test]
    fn payloads_carry_sized_people() {
        let cfg = crate::SimConfig {
            record_bytes: Some(1024),
            ..crate::SimConfig::default()
        };
        let sim = Sim::new(cfg, "http://127.0.0.1:54321".into());
        for id in [1, 2, 3, 50] {
            let v = sim.update(Entity::People, id, None).unwrap();
            let change = Change {
                entity: Entity::People,
                id,
                kind: ChangeKind::Updated,
                updated_at_us: v.updated_at_us,
                mutation: v.mutation,
            };
            let doc = payload(&sim, &change);
            let p: serde_json::Value = serde_json::from_str(&doc).unwrap();
            assert_eq!(p["data"].to_string().len(), 1024, "{doc}");
        }
    }
}

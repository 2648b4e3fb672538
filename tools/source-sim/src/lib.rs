//! The third-party API simulator: a real HTTP server that behaves like Planning Center's
//! JSON:API, for tests, the local demo and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use source_sim::{Entity, Fault, SimConfig};
//! let sim = source_sim::start(SimConfig { people: 1_000, ..SimConfig::default() }).await?;
//! let url = sim.url(Entity::People); // http://127.0.0.1:PORT/people/v2/people
//! sim.update(Entity::People, 12, None); // bumps the version, updated_at = simulator now
//! sim.push_fault(Fault::Status(503)); // the next API request gets a 503
//! let source_side = sim.versions(Entity::People); // [(id, updated_at_us)] by id
//! sim.shutdown().await;
//! # let _ = (url, source_side); Ok(()) }
//! ```
//!
//! # What is served
//!
//! Entities (see [`Entity`]): `people` at `/people/v2/people` (type `Person`) and `donations` at
//! `/giving/v2/donations` (type `Donation`). IDs are numeric strings ordered numerically.
//!
//! `GET <path>` lists records. Query parameters (all styles accepted at once; repeated filters
//! intersect):
//! - filters on `updated_at`: `where[updated_at][gt|gte|lt|lte]=T`, `where[updated_at]=T`
//!   (equality), `updated_at_gt|_gte|_lt|_lte=T`, `updated_since=T` (gte). `T` is RFC 3339 with
//!   any offset, or epoch seconds or milliseconds (a number; see [`parse_timestamp`]);
//! - filters on the ID (numeric): `where[id][gt|gte|lt|lte]=N`, `where[id]=N`, `id_gt=N`, ...;
//! - `order=id` (default), `order=updated_at` (ties broken by ID), `-id`, `-updated_at`;
//! - `per_page` (default 25, larger than 100 is clamped to 100), and one of `offset=K`,
//!   `page=P` (1-based) or `cursor=C` (opaque keyset token from `meta.next_cursor`);
//! - `fields[Person]=a,b` (or `fields[people]=...`): sparse fieldset of attributes.
//!
//! Bad values give a JSON 400 naming the parameter in `errors[0].source.parameter`.
//!
//! A JSON:API page:
//! `{"data":[{"type":"Person","id":"12","attributes":{"created_at":..,"updated_at":..,...},"links":{"self":..}}],
//! "included":[],"links":{"self":<url>,"next":<url>},"meta":{"total_count":N,"count":n,
//! "next":{"offset":K},"next_cursor":C,"can_order_by":[..],"can_query_by":[..]}}`.
//! `links.next`, `meta.next` and `meta.next_cursor` are absent on the last page; `meta.next`
//! is absent in cursor mode. The next link keeps every parameter and continues in the client's
//! own style (offset, page or cursor), and the same URL is in the `Link: <url>; rel="next"`
//! header. `X-Total-Count` carries `total_count`. Donations also carry
//! `relationships.person`. A person is about 1.1 KB of JSON, or exactly
//! [`SimConfig::record_bytes`] when set (its `notes` sized). Offsets are resolved on the live ordered set at request time, so a
//! mutation mid-scan shifts later pages exactly as on a real API; cursors are keyset positions
//! and are stable under mutations.
//!
//! With [`Envelope::Bare`] a page is a bare array of flat objects (`{"id":"12","updated_at":..,
//! ...,"person_id":"3"}`) and pagination is only in the `Link` header.
//!
//! `GET <path>/<id>` gives `{"data":{..},"included":[],"meta":{}}` (bare: the object), or a JSON
//! 404 `{"errors":[{"status":"404","title":"Not Found"}]}`. Any other path is an HTML 404
//! (`text/html`), so clients can tell "record gone" from "wrong base path".
//!
//! Every response has a `Date` from the simulator's (skewable) clock; with a rate limit every
//! API response has `X-PCO-API-Request-Rate-Limit`, `-Period` and `-Count`, and a 429 has
//! `Retry-After`. The admin interface is described in [`Sim`] (in process) and in the `admin`
//! module docs (HTTP, under `/__admin/`).
//!
//! # Misbehaviour and broken records
//!
//! For hostile-source tests the simulator can disobey its own API ([`Misbehave`], set with
//! [`Sim::set_misbehave`] or `PUT /__admin/misbehave`): ignore the delta filter, the ID filter,
//! `order` (ascending ID), `offset` or `page` (the first page, with links computed from the asked
//! position), `cursor` (the first page and the same next cursor every time) or `per_page` (the
//! default size), and serve the last page for any offset or page number past the end. An
//! ignored parameter is not validated either, like one a server does not know.
//!
//! It can also serve one record broken ([`Corruption`], set with [`Sim::corrupt`] or
//! `PUT /__admin/{entity}/records/{id}/corrupt`): a null, missing or unparseable `updated_at`, a
//! timestamp without an offset, an empty or overlong ID, or a lone surrogate escape in a string
//! attribute. The record keeps its place in every ordering and filter; only its JSON in listings
//! and `GET <path>/<id>` is broken (webhook payloads stay intact).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use source_sim::{Corruption, Entity, Misbehave, SimConfig};
//! let sim = source_sim::start(SimConfig::default()).await?;
//! sim.set_misbehave(Misbehave { ignore_order: true, ..Misbehave::default() });
//! sim.corrupt(Entity::People, 7, Some(Corruption::NullDelta)); // None clears
//! # Ok(()) }
//! ```
//!
//! # Webhooks
//!
//! With [`SimConfig::webhook`] set (or [`Sim::set_webhook_target`], `PUT /__admin/webhooks`, or
//! `source-sim --webhook-url URL --webhook-secret S --webhook-scheme pco-hex|pco-base64|standard`)
//! every mutation is also delivered as a signed Planning Center-shaped webhook, with retries and
//! seeded faults; see [`webhooks`] for the body, headers, retries and faults.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use source_sim::{Entity, RetrySchedule, SimConfig, WebhookScheme, WebhookTarget};
//! let target = WebhookTarget::new("http://127.0.0.1:9000/webhooks", WebhookScheme::Standard,
//!     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").with_retry(RetrySchedule::fast());
//! let sim = source_sim::start(SimConfig { webhook: Some(target), ..SimConfig::default() }).await?;
//! sim.update(Entity::People, 3, None);
//! let stats = sim.wait_webhooks(Duration::from_secs(5), |s| s.delivered == 1).await;
//! # let _ = stats; Ok(()) }
//! ```

mod admin;
mod config;
mod data;
mod faults;
mod json;
mod query;
mod server;
mod sim;
mod store;
mod timefmt;
pub mod webhooks;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    Chaos, Corruption, Entity, Envelope, Granularity, Misbehave, RateLimit, SimConfig,
    TimestampFormat,
};
pub use faults::Fault;
pub use sim::{ConfigError, RecordVersion, Sim, Stats};
pub use timefmt::{format_timestamp, parse_timestamp};
pub use webhooks::{
    Change, ChangeKind, PcoEncoding, RetrySchedule, WebhookFaults, WebhookScheme, WebhookStats,
    WebhookTarget,
};

/// Generates the data set, binds `cfg.addr` (default `127.0.0.1:0`) and serves in a background
/// task of the current Tokio runtime. An invalid configuration is an `InvalidInput` error.
pub async fn start(cfg: SimConfig) -> io::Result<SimHandle> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, ConfigError(e)))?;
    let addr = cfg
        .addr
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let sim = Sim::new(cfg, format!("http://{local}"));
    // Subscribed before the first request, so no change is missed; idle without a target.
    let webhooks = tokio::spawn(webhooks::run(sim.clone(), sim.subscribe_changes()));
    let app = admin::router(sim.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tracing::debug!(%local, "source-sim listening");
    Ok(SimHandle {
        sim,
        addr: local,
        shutdown: Some(tx),
        task: Some(task),
        webhooks,
    })
}

/// A running simulator. Derefs to [`Sim`] for the admin methods. Dropping it stops the server
/// (without waiting); [`SimHandle::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct SimHandle {
    sim: Sim,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
    /// The webhook subscriber; aborting it aborts every send in progress.
    webhooks: JoinHandle<()>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.sim.base_url()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A clonable controller of this simulator, e.g. to mutate it from another task.
    pub fn sim(&self) -> Sim {
        self.sim.clone()
    }

    /// Stops webhook delivery (sends in progress are abandoned) and accepting, lets in-flight
    /// requests finish (at most 5 seconds), then returns.
    pub async fn shutdown(mut self) {
        self.webhooks.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Deref for SimHandle {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.webhooks.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

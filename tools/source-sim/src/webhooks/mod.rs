//! Change notifications and their delivery as signed webhooks.
//!
//! Every mutation made through the admin interface ([`crate::Sim::create`],
//! [`crate::Sim::update`], [`crate::Sim::delete`], and their HTTP forms) publishes a [`Change`]
//! on a broadcast channel ([`crate::Sim::subscribe_changes`]). When a [`WebhookTarget`] is set
//! ([`crate::SimConfig::webhook`], [`crate::Sim::set_webhook_target`], `PUT /__admin/webhooks`
//! or the `--webhook-*` flags), a subscriber started by [`crate::start`] turns each change into
//! a Planning Center-shaped delivery:
//!
//! ```text
//! POST <url>
//! content-type: application/json
//! {"data":[{"id":"<delivery id>","type":"EventDelivery",
//!           "attributes":{"name":"people.v2.events.person.updated","attempt":1,
//!                         "payload":"{\"data\":{\"type\":\"Person\",\"id\":\"12\",\"attributes\":{..}}}"}}]}
//! ```
//!
//! - Event names ([`event_name`]): `people.v2.events.person.{created,updated,destroyed}` and
//!   `giving.v2.events.donation.{created,updated,destroyed}`.
//! - `payload` is a JSON *string*: `{"data":{"type":..,"id":"12","attributes":{..},..}}`, the
//!   record as it was right after the change (every attribute, `updated_at` included, in the
//!   run's timestamp format, always in the JSON:API shape); for a deletion
//!   `{"data":{"id":"12","type":"Person"}}`.
//! - The delivery `id` is UUID-shaped, drawn from an RNG seeded from [`crate::SimConfig::seed`],
//!   and stays the same across retries and duplicates; `attempt` counts from 1.
//! - With [`WebhookTarget::max_events_per_delivery`] above 1, the changes arriving within
//!   [`WebhookTarget::batch_window`] share one body (several `data[]` entries, each with its own
//!   ID); the first one's ID is the delivery ID.
//!
//! Signatures are recomputed per attempt (the body changes with `attempt`):
//! - [`WebhookScheme::Pco`]: `X-PCO-Webhooks-Authenticity: HMAC-SHA256(secret bytes, body)` in
//!   lowercase hex or standard base64.
//! - [`WebhookScheme::Standard`] ([Standard Webhooks](https://www.standardwebhooks.com/)):
//!   `webhook-id: <delivery id>`, `webhook-timestamp: <unix seconds of this attempt, from the
//!   simulator's skewable clock>`, `webhook-signature: v1,<base64 HMAC-SHA256(key,
//!   "{id}.{timestamp}.{body}")>` with the secret `whsec_<base64 key>`.
//!
//! Any answer other than 200, a connection error or a timeout is retried after the next wait
//! of the [`RetrySchedule`] (Planning Center-like by default: 16 attempts over about 5 days;
//! [`RetrySchedule::fast`] for tests). Each send is its own task, so a slow receiver holds up
//! nobody else; at most [`WebhookTarget::max_in_flight`] requests are in flight. Faults
//! ([`WebhookFaults`]: drop, duplicate, reorder, delay and jitter) are drawn from a seeded RNG.
//! Counters are in [`WebhookStats`] ([`crate::Sim::webhook_stats`],
//! `GET /__admin/webhooks/stats`).

mod config;
mod deliver;
pub mod sign;

use std::time::Duration;

pub use config::{PcoEncoding, RetrySchedule, WebhookFaults, WebhookScheme, WebhookTarget};
pub(crate) use deliver::{WebhookState, run};
pub use deliver::{WebhookStats, event_name};

use crate::config::Entity;
use crate::sim::{ConfigError, Sim};

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The record was created.
    Created,
    /// The record was updated (its mutation counter and `updated_at` moved).
    Updated,
    /// The record was deleted (its ID is never reused).
    Deleted,
}

/// One mutation at the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The entity of the record.
    pub entity: Entity,
    /// The record's ID.
    pub id: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The record's `updated_at` after the change (for a deletion: the last one it had).
    pub updated_at_us: i64,
    /// The record's mutation counter after the change (its content depends on it).
    pub mutation: u32,
}

impl Sim {
    /// The current webhook target, if any.
    pub fn webhook_target(&self) -> Option<WebhookTarget> {
        self.inner.webhooks.target()
    }

    /// Replaces the webhook target (`None` stops delivering later changes; sends already
    /// started finish with the target they started with).
    pub fn set_webhook_target(&self, target: Option<WebhookTarget>) -> Result<(), ConfigError> {
        if let Some(t) = &target {
            t.validate().map_err(ConfigError)?;
        }
        self.inner.webhooks.set_target(target);
        Ok(())
    }

    /// Replaces the faults of the current target (an error when there is none).
    pub fn set_webhook_faults(&self, faults: WebhookFaults) -> Result<(), ConfigError> {
        faults.validate().map_err(ConfigError)?;
        if self.inner.webhooks.update_target(|t| t.faults = faults) {
            Ok(())
        } else {
            Err(ConfigError("no webhook target is set".into()))
        }
    }

    /// The webhook delivery counters.
    pub fn webhook_stats(&self) -> WebhookStats {
        self.inner.webhooks.stats()
    }

    /// Zeroes the webhook delivery counters (except the `pending` gauge).
    pub fn reset_webhook_stats(&self) {
        self.inner.webhooks.reset_stats();
    }

    /// Polls the webhook counters every 5 ms until `done` holds, for at most `timeout`:
    /// `Ok(stats)` when it held, `Err(last stats)` on timeout.
    pub async fn wait_webhooks(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&WebhookStats) -> bool,
    ) -> Result<WebhookStats, WebhookStats> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.webhook_stats();
            if done(&s) {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(s);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

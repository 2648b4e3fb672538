//! The ingest handler's logic, independent of how the request arrived (API Gateway through
//! `lambda_http`, or `syncctl serve`'s local server): size, signature, events, queue, answer.
//!
//! Answers: 200 once queued (also for ignored events); 401 bad or missing signature or a stale
//! timestamp; 400 malformed after a valid signature (the well-formed events of the delivery are
//! still queued); 413 too large (bytes, before the signature is checked; or more events than
//! `[webhooks] max_events`, after it: nothing queued); 503 only when we could not queue, or not
//! before the invocation's stop instant (`core::deadline::within`, set by the handler a margin
//! before the Lambda's deadline: an answer the sender retries beats a timeout it also retries,
//! later). Never 410. Nothing of the payload is logged.

use crate::config::reload::REREAD_INTERVAL;
use crate::config::{
    Config, Reloading, SecretProvider, SignatureScheme, WebhookAction, WebhookConfig,
};
use crate::error::ConfigError;
use crate::model::Micros;
use crate::ports::Queue;
use crate::webhook::extract::{EventMap, Extracted, IgnoreReason, Malformed, extract};
use crate::webhook::signature::{SignatureError, Verifier, split_secrets};
use crate::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use http::HeaderMap;
use std::sync::Arc;

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every recognised event is on the queue (`queued` may be 0 when all were ignored).
    Queued {
        queued: usize,
        ignored: usize,
    },
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    /// Signed, but more events than `[webhooks] max_events`: nothing queued.
    TooManyEvents {
        events: usize,
        limit: usize,
    },
    Unauthorized(SignatureError),
    /// Signed, but the body (or some events) malformed; `queued` well-formed events were queued.
    Malformed {
        errors: Vec<Malformed>,
        queued: usize,
    },
    /// Some events could not be queued: the sender must retry (dedup absorbs the repeats).
    QueueFailed {
        failed: usize,
        of: usize,
    },
    /// The queue had not taken the events by the stop instant: the sender must retry (some may
    /// have been queued; dedup absorbs the repeats).
    QueueTimedOut {
        of: usize,
    },
}

/// The HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// A small JSON object, safe to return to the sender.
    pub body: String,
    pub outcome: Outcome,
}

impl Answer {
    fn new(status: u16, body: serde_json::Value, outcome: Outcome) -> Self {
        Answer {
            status,
            body: body.to_string(),
            outcome,
        }
    }

    /// Events queued, events ignored, and the outcome's name.
    fn counts(&self) -> (usize, usize, &'static str) {
        match &self.outcome {
            Outcome::Queued { queued, ignored } => (*queued, *ignored, "queued"),
            Outcome::TooLarge { .. } | Outcome::TooManyEvents { .. } => (0, 0, "too_large"),
            Outcome::Unauthorized(_) => (0, 0, "unauthorized"),
            Outcome::Malformed { queued, .. } => (*queued, 0, "malformed"),
            Outcome::QueueFailed { .. } | Outcome::QueueTimedOut { .. } => (0, 0, "queue_failed"),
        }
    }

    /// The request's metrics as one EMF line (the handler publishes it with
    /// `telemetry::publish`): counts and outcome flags, no dimensions, zeros left out
    /// (`telemetry::emf_counts`).
    pub fn metrics(&self) -> String {
        let (queued, ignored, kind) = self.counts();
        let flag = |k: &str| if k == kind { 1.0 } else { 0.0 };
        crate::telemetry::emf_counts(
            &[],
            &[
                ("WebhookEventsQueued", queued as f64, "Count"),
                ("WebhookEventsIgnored", ignored as f64, "Count"),
                ("WebhookUnauthorized", flag("unauthorized"), "Count"),
                ("WebhookMalformed", flag("malformed"), "Count"),
                ("WebhookTooLarge", flag("too_large"), "Count"),
                ("WebhookQueueFailed", flag("queue_failed"), "Count"),
            ],
        )
    }
}

/// The ingest handler: built once per cold start.
pub struct Ingest {
    cfg: WebhookConfig,
    map: EventMap,
    /// The verifier over the signing secrets, rebuilt from a fresh read when a signature
    /// matches none of them (`with_secret_provider`).
    verifier: Reloading<Verifier>,
    queue: Arc<dyn Queue>,
    /// Negative control: wait for the queue past the stop instant.
    #[cfg(any(test, feature = "testing"))]
    ignore_deadline: bool,
}

impl Ingest {
    /// `secrets`: the signing secrets (rotation: all accepted).
    pub fn new(
        config: &Config,
        secrets: &[&str],
        queue: Arc<dyn Queue>,
    ) -> Result<Self, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            file: config.file.clone(),
            entity: "-".into(),
            field: field.into(),
            message,
        };
        let cfg = config.webhooks()?.clone();
        let verifier = Verifier::new(cfg.scheme.clone(), secrets)
            .map_err(|e| invalid("webhooks.secrets", e.to_string()))?;
        let scheme = cfg.scheme.clone();
        let verifier = Reloading::fixed(
            verifier,
            Box::new(move |s| {
                Verifier::new(scheme.clone(), &split_secrets(s.expose())).map_err(|e| e.to_string())
            }),
        );
        Ok(Ingest {
            map: EventMap::new(config),
            cfg,
            verifier,
            queue,
            #[cfg(any(test, feature = "testing"))]
            ignore_deadline: false,
        })
    }

    /// Read the signing secrets again from `provider` when a delivery's signature matches none
    /// of them (a rotation at the sender), at most once per `config::reload::REREAD_INTERVAL`
    /// whatever the number of such deliveries, before answering 401.
    pub fn with_secret_provider(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.verifier = self.verifier.with_provider(provider, REREAD_INTERVAL);
        self
    }

    /// Re-reads of the signing secrets so far.
    pub fn secret_rereads(&self) -> u64 {
        self.verifier.rereads()
    }

    /// Negative control for tests only: wait for the queue however long it takes, past the
    /// stop instant (a Lambda would time out, and the sender retry later).
    #[cfg(any(test, feature = "testing"))]
    pub fn ignoring_deadline(mut self) -> Self {
        self.ignore_deadline = true;
        self
    }

    /// The instant by which the events must be queued, or the answer is 503.
    fn stop_at(&self) -> Option<std::time::Instant> {
        #[cfg(any(test, feature = "testing"))]
        if self.ignore_deadline {
            return None;
        }
        crate::core::deadline::current()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }

    pub fn scheme(&self) -> &SignatureScheme {
        &self.cfg.scheme
    }

    /// Handle one delivery. `now_us`: the current time (the evidence time of the events).
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8], now_us: Micros) -> Answer {
        let answer = self.answer(headers, body, now_us).await;
        log(&answer, body.len());
        answer
    }

    async fn answer(&self, headers: &HeaderMap, body: &[u8], now_us: Micros) -> Answer {
        let limit = self.cfg.max_body_bytes;
        if body.len() > limit {
            return Answer::new(
                413,
                serde_json::json!({"error": "payload too large", "limit_bytes": limit}),
                Outcome::TooLarge {
                    bytes: body.len(),
                    limit,
                },
            );
        }
        let now_s = now_us.div_euclid(1_000_000);
        let (seen, verifier) = self.verifier.current();
        let verified = match verifier.verify(headers, body, now_s) {
            // A signature no secret we hold matches: the sender may sign with a secret rotated
            // in since the cold start. Read them again (gated) and check once more.
            Err(SignatureError::Mismatch) => match self.verifier.refresh(seen).await {
                Some((_, fresh)) => fresh.verify(headers, body, now_s),
                None => Err(SignatureError::Mismatch),
            },
            other => other,
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                return Answer::new(
                    401,
                    serde_json::json!({"error": "invalid signature"}),
                    Outcome::Unauthorized(e),
                );
            }
        };
        let extracted = match extract(&self.cfg, &self.map, body, verified.webhook_id.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                return Answer::new(
                    400,
                    serde_json::json!({"error": e.to_string()}),
                    Outcome::Malformed {
                        errors: vec![e],
                        queued: 0,
                    },
                );
            }
        };
        let Extracted {
            events,
            ignored,
            malformed,
        } = extracted;
        let count = events.len() + ignored.len() + malformed.len();
        if count > self.cfg.max_events {
            return Answer::new(
                413,
                serde_json::json!({
                    "error": "too many events in one delivery; send fewer per delivery",
                    "events": count,
                    "limit_events": self.cfg.max_events,
                }),
                Outcome::TooManyEvents {
                    events: count,
                    limit: self.cfg.max_events,
                },
            );
        }
        let bodies: Vec<String> = events
            .iter()
            .map(|e| {
                let env = QueueEnvelope {
                    v: ENVELOPE_VERSION,
                    kind: MessageKind::Webhook,
                    entity: e.entity.clone(),
                    id: e.id.clone(),
                    event_id: Some(e.event_id.clone()),
                    action: Some(match e.action {
                        WebhookAction::Upsert => EnvelopeAction::Upsert,
                        WebhookAction::Delete => EnvelopeAction::Delete,
                    }),
                    reason: Some(e.name.clone()),
                    received_at: now_us,
                };
                env.to_body()
            })
            .collect();
        if !bodies.is_empty() {
            let send = self.queue.send_batch(&bodies);
            let sent = match self.stop_at() {
                Some(t) => tokio::time::timeout_at(t.into(), send).await,
                None => Ok(send.await),
            };
            let Ok(sent) = sent else {
                return Answer::new(
                    503,
                    serde_json::json!({"error": "could not queue in time; retry"}),
                    Outcome::QueueTimedOut { of: bodies.len() },
                );
            };
            let failed = match sent {
                Ok(failed) => failed.len(),
                Err(e) => {
                    tracing::error!(error = %e, "webhook: cannot queue");
                    bodies.len()
                }
            };
            if failed > 0 {
                return Answer::new(
                    503,
                    serde_json::json!({"error": "could not queue; retry"}),
                    Outcome::QueueFailed {
                        failed,
                        of: bodies.len(),
                    },
                );
            }
        }
        if !malformed.is_empty() {
            let errors: Vec<String> = malformed.iter().map(ToString::to_string).collect();
            return Answer::new(
                400,
                serde_json::json!({"error": "malformed events", "events": errors, "queued": bodies.len()}),
                Outcome::Malformed {
                    errors: malformed,
                    queued: bodies.len(),
                },
            );
        }
        for i in &ignored {
            tracing::info!(
                event = %i.name,
                reason = match i.reason {
                    IgnoreReason::UnknownEvent => "unknown event",
                    IgnoreReason::WebhooksDisabled => "entity has supports_webhooks = false",
                },
                "webhook event ignored"
            );
        }
        Answer::new(
            200,
            serde_json::json!({"queued": bodies.len(), "ignored": ignored.len()}),
            Outcome::Queued {
                queued: bodies.len(),
                ignored: ignored.len(),
            },
        )
    }
}

/// One log line per request: counts and reasons, never the payload.
fn log(a: &Answer, bytes: usize) {
    let (queued, ignored, _) = a.counts();
    match &a.outcome {
        Outcome::Unauthorized(e) => {
            tracing::warn!(status = a.status, reason = %e, bytes, "webhook refused")
        }
        Outcome::Malformed { errors, queued } => tracing::warn!(
            status = a.status,
            errors = ?errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            queued,
            bytes,
            "webhook malformed"
        ),
        Outcome::QueueFailed { failed, of } => {
            tracing::error!(status = a.status, failed, of, bytes, "webhook not queued")
        }
        Outcome::TooLarge { limit, .. } => {
            tracing::warn!(status = a.status, bytes, limit, "webhook too large")
        }
        Outcome::TooManyEvents { events, limit } => {
            tracing::warn!(
                status = a.status,
                events,
                limit,
                bytes,
                "webhook with too many events"
            )
        }
        Outcome::QueueTimedOut { of } => {
            tracing::error!(
                status = a.status,
                of,
                bytes,
                "webhook not queued before the deadline"
            )
        }
        Outcome::Queued { .. } => {
            tracing::info!(
                status = a.status,
                queued,
                ignored,
                bytes,
                "webhook accepted"
            )
        }
    }
}

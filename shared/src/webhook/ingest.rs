//! The ingest handler's logic, independent of how the request arrived (API Gateway through
//! `lambda_http`, or `syncctl serve`'s local server): size, signature, events, queue, answer.
//!
//! Answers: 200 once queued (also for ignored events); 401 bad or missing signature or a stale
//! timestamp; 400 malformed after a valid signature (the well-formed events of the delivery are
//! still queued); 413 too large; 503 only when we could not queue. Never 410. Nothing of the
//! payload is logged.

use crate::config::{Config, SignatureScheme, WebhookAction, WebhookConfig};
use crate::error::ConfigError;
use crate::model::Micros;
use crate::ports::Queue;
use crate::webhook::extract::{EventMap, Extracted, IgnoreReason, Malformed, extract};
use crate::webhook::signature::{SignatureError, Verifier};
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
            Outcome::TooLarge { .. } => (0, 0, "too_large"),
            Outcome::Unauthorized(_) => (0, 0, "unauthorized"),
            Outcome::Malformed { queued, .. } => (*queued, 0, "malformed"),
            Outcome::QueueFailed { .. } => (0, 0, "queue_failed"),
        }
    }

    /// The request's metrics as one EMF line (the handler publishes it with
    /// `telemetry::publish`): counts and outcome flags, no dimensions.
    pub fn metrics(&self) -> String {
        let (queued, ignored, kind) = self.counts();
        let flag = |k: &str| if k == kind { 1.0 } else { 0.0 };
        crate::telemetry::emf(
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
    verifier: Verifier,
    queue: Arc<dyn Queue>,
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
        Ok(Ingest {
            map: EventMap::new(config),
            cfg,
            verifier,
            queue,
        })
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
        let verified = match self
            .verifier
            .verify(headers, body, now_us.div_euclid(1_000_000))
        {
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
            let failed = match self.queue.send_batch(&bodies).await {
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

//! Queue envelopes: any envelope's body (`QueueEnvelope::to_body`) is printable ASCII that reads
//! back to the same envelope; any body, however damaged, is either decoded by the worker's
//! `decode` into an envelope it can act on (the version it reads, an ID `validate_id` takes,
//! re-encoding to the same envelope) or refused with a reason, never a panic.

use super::steps::json_value;
use super::{Budget, Outcome, drive, re};
use crate::sync::worker::decode;
use crate::wire::{ENVELOPE_VERSION, EnvelopeAction, MessageKind, QueueEnvelope};
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Case {
    Envelope(QueueEnvelope),
    /// A valid envelope's JSON with fields set to arbitrary values (`None`: removed).
    Edited(QueueEnvelope, Vec<(String, Option<Value>)>),
    Text(String),
}

fn envelope() -> impl Strategy<Value = QueueEnvelope> {
    let text = || prop_oneof![3 => re("[a-z0-9-]{1,12}"), 1 => any::<String>(), 1 => re("[\u{0}-\u{1f}\u{fffe}\u{ffff}\u{d7ff}\u{e000}]{0,4}")];
    (
        prop_oneof![4 => Just(ENVELOPE_VERSION), 1 => any::<u32>()],
        prop::sample::select(&[MessageKind::Webhook, MessageKind::Targeted][..]),
        text(),
        text(),
        prop::option::of(text()),
        prop::option::of(prop::sample::select(
            &[EnvelopeAction::Upsert, EnvelopeAction::Delete][..],
        )),
        prop::option::of(text()),
        any::<i64>(),
    )
        .prop_map(
            |(v, kind, entity, id, event_id, action, reason, received_at)| QueueEnvelope {
                v,
                kind,
                entity,
                id,
                event_id,
                action,
                reason,
                received_at,
            },
        )
}

pub fn cases() -> impl Strategy<Value = Case> {
    let key = prop_oneof![
        4 => prop::sample::select(
            &["v", "kind", "entity", "id", "event_id", "action", "reason", "received_at"][..]
        )
        .prop_map(str::to_owned),
        1 => re("[a-z_]{0,6}"),
    ];
    prop_oneof![
        2 => envelope().prop_map(Case::Envelope),
        3 => (envelope(), prop::collection::vec((key, prop::option::of(json_value())), 1..4))
            .prop_map(|(e, edits)| Case::Edited(e, edits)),
        1 => any::<String>().prop_map(Case::Text),
    ]
}

fn check_body(body: &str) -> Result<(), String> {
    match decode(body) {
        Ok(env) => {
            if env.v != ENVELOPE_VERSION {
                return Err(format!("decoded version {}", env.v));
            }
            crate::source::validate_id(&env.id)
                .map_err(|e| format!("decoded an ID the source client refuses: {e}"))?;
            match decode(&env.to_body()) {
                Ok(again) if again == env => Ok(()),
                other => Err(format!("re-encoded, it decodes to {other:?}")),
            }
        }
        Err(reason) if reason.is_empty() => Err("refused with no reason".into()),
        Err(_) => Ok(()),
    }
}

/// The property of one case.
pub fn check(case: Case) -> Result<(), String> {
    match case {
        Case::Envelope(env) => {
            let body = env.to_body();
            if !body.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(format!("body not printable ASCII: {body:?}"));
            }
            let back: QueueEnvelope =
                serde_json::from_str(&body).map_err(|e| format!("body does not read back: {e}"))?;
            if back != env {
                return Err(format!("read back as {back:?}"));
            }
            let acceptable =
                env.v == ENVELOPE_VERSION && crate::source::validate_id(&env.id).is_ok();
            match decode(&body) {
                Ok(d) if acceptable && d == env => Ok(()),
                Err(_) if !acceptable => Ok(()),
                other => Err(format!("decode says {other:?} (acceptable: {acceptable})")),
            }
        }
        Case::Edited(env, edits) => {
            let mut v = serde_json::to_value(&env).map_err(|e| e.to_string())?;
            for (k, x) in edits {
                let obj = v.as_object_mut().expect("an envelope is an object");
                match x {
                    Some(x) => obj.insert(k, x),
                    None => obj.remove(&k),
                };
            }
            check_body(&v.to_string())
        }
        Case::Text(t) => check_body(&t),
    }
}

pub fn run(budget: Budget) -> Outcome {
    drive("envelope", budget, cases(), check)
}

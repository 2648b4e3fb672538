//! Finding the events in a verified delivery: entity, action, record ID and event ID, located by
//! the `[webhooks]` JSON pointers and mapped by each entity's `webhook_events`.

use crate::config::{Config, WebhookAction, WebhookConfig};
use serde_json::Value;
use std::collections::HashMap;

/// Longest event ID accepted (it becomes a dedup key in the control table).
pub const MAX_EVENT_ID: usize = 256;

/// One event to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub name: String,
    pub entity: String,
    pub id: String,
    pub event_id: String,
    pub action: WebhookAction,
}

/// Why an event was not queued although the delivery was fine (answered 200, counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// No entity maps this event name.
    UnknownEvent,
    /// The entity has `supports_webhooks = false`.
    WebhooksDisabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The event name as sent, cut to 128 characters (never the payload).
    pub name: String,
    pub reason: IgnoreReason,
}

/// A signed but malformed delivery (answered 400). Names where, never shows the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("no events array at {0}")]
    NoEvents(String),
    #[error("event #{index}: {field}: {reason}")]
    Event {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

/// The events of one delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    pub events: Vec<WebhookEvent>,
    pub ignored: Vec<Ignored>,
    /// Events that were recognised but malformed; the others are still queued.
    pub malformed: Vec<Malformed>,
}

#[derive(Debug, Clone)]
enum Target {
    Entity {
        entity: String,
        action: WebhookAction,
    },
    Disabled,
}

/// Event name → what it means, built once from the configuration.
#[derive(Debug, Clone)]
pub struct EventMap {
    by_name: HashMap<String, Target>,
}

impl EventMap {
    pub fn new(config: &Config) -> Self {
        let mut by_name = HashMap::new();
        for e in &config.entities {
            for (name, action) in &e.webhook_events {
                let t = if e.supports_webhooks {
                    Target::Entity {
                        entity: e.name.clone(),
                        action: *action,
                    }
                } else {
                    Target::Disabled
                };
                by_name.insert(name.clone(), t);
            }
        }
        EventMap { by_name }
    }
}

/// Extract the events of `body` (already verified). `webhook_id`: Standard Webhooks' header,
/// the event ID when no `event_id_pointer` is configured.
pub fn extract(
    cfg: &WebhookConfig,
    map: &EventMap,
    body: &[u8],
    webhook_id: Option<&str>,
) -> Result<Extracted, Malformed> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let events: Vec<&Value> = if cfg.events_pointer.is_empty() {
        vec![&root]
    } else {
        match root.pointer(&cfg.events_pointer) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => return Err(Malformed::NoEvents(cfg.events_pointer.clone())),
        }
    };
    let several = events.len() > 1;
    let mut out = Extracted::default();
    for (index, ev) in events.into_iter().enumerate() {
        let bad = |field: &'static str, reason: String| Malformed::Event {
            index,
            field,
            reason,
        };
        let name = match ev.pointer(&cfg.event_name_pointer) {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                out.malformed
                    .push(bad("event_name_pointer", "no event name (a string)".into()));
                continue;
            }
        };
        let (entity, action) = match map.by_name.get(name) {
            Some(Target::Entity { entity, action }) => (entity, *action),
            other => {
                out.ignored.push(Ignored {
                    name: name.chars().take(128).collect(),
                    reason: if other.is_some() {
                        IgnoreReason::WebhooksDisabled
                    } else {
                        IgnoreReason::UnknownEvent
                    },
                });
                continue;
            }
        };
        let event_id = if cfg.event_id_pointer.is_empty() {
            match webhook_id {
                Some(w) if several => Ok(format!("{w}#{index}")),
                Some(w) => Ok(w.to_owned()),
                None => Err(bad("event_id_pointer", "no event ID".into())),
            }
        } else {
            scalar(ev.pointer(&cfg.event_id_pointer)).ok_or_else(|| {
                bad(
                    "event_id_pointer",
                    "no event ID (a string or number)".into(),
                )
            })
        }
        .and_then(|id| {
            if id.is_empty() || id.len() > MAX_EVENT_ID || id.chars().any(char::is_control) {
                Err(bad(
                    "event_id_pointer",
                    "empty, longer than 256 bytes or with control characters".into(),
                ))
            } else {
                Ok(id)
            }
        });
        let event_id = match event_id {
            Ok(id) => id,
            Err(e) => {
                out.malformed.push(e);
                continue;
            }
        };
        let id = payload(ev, &cfg.payload_pointer)
            .map_err(|reason| bad("payload_pointer", reason))
            .and_then(|p| {
                scalar(p.pointer(&cfg.record_id_pointer)).ok_or_else(|| {
                    bad(
                        "record_id_pointer",
                        "no record ID (a string or number)".into(),
                    )
                })
            })
            .and_then(|id| {
                crate::source::validate_id(&id)
                    .map(|()| id)
                    .map_err(|e| bad("record_id_pointer", e.to_string()))
            });
        match id {
            Ok(id) => out.events.push(WebhookEvent {
                name: name.to_owned(),
                entity: entity.clone(),
                id,
                event_id,
                action,
            }),
            Err(e) => out.malformed.push(e),
        }
    }
    Ok(out)
}

/// The payload of an event: an object, or a string holding JSON (Planning Center).
fn payload<'a>(ev: &'a Value, pointer: &str) -> Result<std::borrow::Cow<'a, Value>, String> {
    use std::borrow::Cow;
    let v = if pointer.is_empty() {
        Some(ev)
    } else {
        ev.pointer(pointer)
    };
    match v {
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Cow::Owned)
            .map_err(|e| format!("the payload string is not JSON: {e}")),
        Some(v @ Value::Object(_)) => Ok(Cow::Borrowed(v)),
        _ => Err("no payload (an object or a JSON string)".into()),
    }
}

/// A string or a number as a string.
fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = crate::config::EMBEDDED.replace(
            "name = \"donations\"\npath = \"/giving/v2/donations\"\nid_pointer = \"/id\"\ndelta_sync_field = \"updated_at\"\ndelta_pointer = \"/attributes/updated_at\"\nsupports_webhooks = true",
            "name = \"donations\"\npath = \"/giving/v2/donations\"\nid_pointer = \"/id\"\ndelta_sync_field = \"updated_at\"\ndelta_pointer = \"/attributes/updated_at\"\nsupports_webhooks = false",
        );
        assert_ne!(text, crate::config::EMBEDDED, "the replacement must apply");
        Config::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn delivery(id: &str, name: &str, payload: &str) -> Value {
        serde_json::json!({"id": id, "type": "EventDelivery",
            "attributes": {"name": name, "attempt": 1, "payload": payload}})
    }

    fn run(body: &Value) -> Result<Extracted, Malformed> {
        let c = config();
        extract(
            c.webhooks.as_ref().unwrap(),
            &EventMap::new(&c),
            body.to_string().as_bytes(),
            None,
        )
    }

    #[test]
    fn planning_center_batch_with_string_payloads() {
        let body = serde_json::json!({"data": [
            delivery("d1", "people.v2.events.person.created", r#"{"data":{"id":"7","type":"Person"}}"#),
            delivery("d2", "people.v2.events.person.destroyed", r#"{"data":{"id":8,"type":"Person"}}"#),
            delivery("d3", "people.v2.events.email.created", r#"{"data":{"id":"1"}}"#),
            delivery("d4", "giving.v2.events.donation.refunded", r#"{"data":{"id":"5"}}"#),
        ]});
        let x = run(&body).unwrap();
        assert_eq!(
            x.events,
            vec![
                WebhookEvent {
                    name: "people.v2.events.person.created".into(),
                    entity: "people".into(),
                    id: "7".into(),
                    event_id: "d1".into(),
                    action: WebhookAction::Upsert
                },
                WebhookEvent {
                    name: "people.v2.events.person.destroyed".into(),
                    entity: "people".into(),
                    id: "8".into(),
                    event_id: "d2".into(),
                    action: WebhookAction::Delete
                },
            ]
        );
        assert_eq!(
            x.ignored.iter().map(|i| &i.reason).collect::<Vec<_>>(),
            vec![&IgnoreReason::UnknownEvent, &IgnoreReason::WebhooksDisabled]
        );
        assert!(x.malformed.is_empty());
    }

    #[test]
    fn malformed_bodies_and_events_are_named() {
        let c = config();
        let w = c.webhooks.as_ref().unwrap();
        let m = EventMap::new(&c);
        assert!(matches!(
            extract(w, &m, b"{not json", None),
            Err(Malformed::NotJson(_))
        ));
        assert!(matches!(
            extract(w, &m, br#"{"data": 3}"#, None),
            Err(Malformed::NoEvents(_))
        ));
        let body = serde_json::json!({"data": [
            delivery("d1", "people.v2.events.person.updated", "not json"),
            delivery("d2", "people.v2.events.person.updated", r#"{"data":{}}"#),
            delivery("d3", "people.v2.events.person.updated", r#"{"data":{"id":".."}}"#),
            {"id": "d4", "attributes": {"payload": "{}"}},
            {"attributes": {"name": "people.v2.events.person.updated", "payload": "{\"data\":{\"id\":\"1\"}}"}},
            delivery("d6", "people.v2.events.person.updated", r#"{"data":{"id":"9"}}"#),
        ]});
        let x = run(&body).unwrap();
        let fields: Vec<_> = x
            .malformed
            .iter()
            .map(|m| match m {
                Malformed::Event { index, field, .. } => (*index, *field),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                (0, "payload_pointer"),
                (1, "record_id_pointer"),
                (2, "record_id_pointer"),
                (3, "event_name_pointer"),
                (4, "event_id_pointer"),
            ]
        );
        // The well-formed event is still there.
        assert_eq!(x.events.len(), 1);
        assert_eq!(x.events[0].id, "9");
        // Nothing of the payload leaks into the messages.
        for m in &x.malformed {
            assert!(!m.to_string().contains("not json"), "{m}");
        }
    }

    #[test]
    fn standard_webhooks_ids_come_from_the_header() {
        let text = crate::config::EMBEDDED
            .replace(
                r#"scheme = { kind = "hmac_header", header = "X-PCO-Webhooks-Authenticity", encoding = "hex" }"#,
                r#"scheme = { kind = "standard_webhooks" }"#,
            )
            .replace("event_id_pointer = \"/id\"\n", "");
        let c = Config::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap();
        let w = c.webhooks.as_ref().unwrap();
        assert!(w.event_id_pointer.is_empty());
        let m = EventMap::new(&c);
        let one = serde_json::json!({"data": [delivery("x", "people.v2.events.person.updated", r#"{"data":{"id":"1"}}"#)]});
        let x = extract(w, &m, one.to_string().as_bytes(), Some("msg_1")).unwrap();
        assert_eq!(x.events[0].event_id, "msg_1");
        let two = serde_json::json!({"data": [
            delivery("x", "people.v2.events.person.updated", r#"{"data":{"id":"1"}}"#),
            delivery("y", "people.v2.events.person.updated", r#"{"data":{"id":"2"}}"#),
        ]});
        let x = extract(w, &m, two.to_string().as_bytes(), Some("msg_2")).unwrap();
        assert_eq!(
            x.events
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            vec!["msg_2#0", "msg_2#1"]
        );
    }
}

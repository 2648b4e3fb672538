//! Explicit, versioned wire structs for what crosses the work queue (`QueueEnvelope`). The other
//! boundaries have theirs beside their code: the state machine's step inputs and outputs in
//! `sync::reconcile::wire`, the spill store's run format in `setdiff::runs`. Domain types never
//! derive `Serialize` for these boundaries.

use serde::{Deserialize, Serialize};

/// Version of `QueueEnvelope` this build writes.
pub const ENVELOPE_VERSION: u32 = 1;

/// One message on the work queue: "sync this record".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEnvelope {
    pub v: u32,
    pub kind: MessageKind,
    pub entity: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<EnvelopeAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When we received the event (epoch microseconds): the evidence time of a delete.
    pub received_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Webhook,
    Targeted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeAction {
    Upsert,
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_unknown_versions_fields() {
        let e = QueueEnvelope {
            v: ENVELOPE_VERSION,
            kind: MessageKind::Webhook,
            entity: "people".into(),
            id: "42".into(),
            event_id: Some("evt_1".into()),
            action: Some(EnvelopeAction::Upsert),
            reason: None,
            received_at: 1,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"v":1,"kind":"webhook","entity":"people","id":"42","event_id":"evt_1","action":"upsert","received_at":1}"#
        );
        assert_eq!(serde_json::from_str::<QueueEnvelope>(&s).unwrap(), e);
        assert!(
            serde_json::from_str::<QueueEnvelope>(
                r#"{"v":1,"kind":"webhook","entity":"p","id":"1","received_at":1,"extra":1}"#
            )
            .is_err()
        );
    }
}

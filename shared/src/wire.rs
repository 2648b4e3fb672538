//! Explicit, versioned wire structs for what crosses the work queue (`QueueEnvelope`). The other
//! boundaries have theirs beside their code: the state machine's step inputs and outputs in
//! `sync::reconcile::wire`, the spill store's run format in `setdiff::runs`. Domain types never
//! derive `Serialize` for these boundaries.
//!
//! A body is written by [`QueueEnvelope::to_body`] only: printable ASCII, every other character
//! a `\uXXXX` escape (a surrogate pair beyond U+FFFF). SQS refuses bodies holding characters
//! outside `#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF` (U+FFFE, U+FFFF,
//! most control characters), and IDs are the source's: any ID a store takes can be queued.

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

impl QueueEnvelope {
    /// The message body: this envelope's JSON in printable ASCII (U+0020 to U+007E), every
    /// other character escaped, so that SQS takes it whatever the ID holds. `serde_json`
    /// reads it back to the same envelope.
    pub fn to_body(&self) -> String {
        let mut out = Vec::with_capacity(128);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiOnly);
        self.serialize(&mut ser)
            .expect("an envelope serialises into memory");
        // Only ASCII is written.
        String::from_utf8(out).expect("ASCII")
    }
}

/// `serde_json`'s compact format with every character outside printable ASCII escaped
/// (`serde_json` escapes `"`, `\` and the control characters below U+0020 itself).
struct AsciiOnly;

impl serde_json::ser::Formatter for AsciiOnly {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
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

    /// SQS's documented message-body characters: `#x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to
    /// #xFFFD | #x10000 to #x10FFFF` (moto accepts anything, so this is checked here).
    fn sqs_allows(body: &str) -> bool {
        body.chars().all(|c| {
            matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        })
    }

    fn targeted(id: &str) -> QueueEnvelope {
        QueueEnvelope {
            v: ENVELOPE_VERSION,
            kind: MessageKind::Targeted,
            entity: "people".into(),
            id: id.into(),
            event_id: Some(format!("evt-{id}")),
            action: None,
            reason: Some("reconcile: é".into()),
            received_at: 1,
        }
    }

    #[test]
    fn bodies_are_printable_ascii_that_sqs_takes_and_read_back_to_the_same_envelope() {
        let hostile = [
            "\u{fffe}\u{1}😀",
            "\u{ffff}",
            "a\u{0}b\u{1f}\u{7f}\u{80}",
            "\u{d7ff}\u{e000}\u{fffd}\u{10000}\u{10ffff}",
            "\"quoted\\slash/\n\t",
            "plain-42",
        ];
        for id in hostile {
            let e = targeted(id);
            let body = e.to_body();
            assert!(
                body.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                "{id:?}: {body}"
            );
            assert!(sqs_allows(&body));
            assert_eq!(serde_json::from_str::<QueueEnvelope>(&body).unwrap(), e);
        }
        // Astral characters as surrogate pairs; plain IDs unchanged.
        assert!(targeted("😀").to_body().contains(r#""id":"\ud83d\ude00""#));
        assert_eq!(
            targeted("42").to_body(),
            serde_json::to_string(&targeted("42"))
                .unwrap()
                .replace('é', "\\u00e9")
        );
    }

    #[test]
    fn negative_control_serde_json_bodies_hold_characters_sqs_refuses() {
        // The same envelopes written by serde_json as they are: U+FFFE, U+FFFF and U+0001
        // stay raw or become escapes SQS cannot see through; the raw ones are refused.
        for id in ["\u{fffe}\u{1}😀", "\u{ffff}", "a\u{7f}\u{fffe}"] {
            let body = serde_json::to_string(&targeted(id)).unwrap();
            assert!(!sqs_allows(&body), "{id:?}: {body}");
        }
    }

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

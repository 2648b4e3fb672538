//! Change notifications: the seam where webhook delivery will plug in.
//!
//! Every mutation made through the admin interface ([`crate::Sim::create`],
//! [`crate::Sim::update`], [`crate::Sim::delete`], and their HTTP forms) publishes a [`Change`]
//! on a broadcast channel ([`crate::Sim::subscribe_changes`]). Webhook delivery is not built yet;
//! when it is, it belongs in this module as a subscriber that turns each `Change` into a
//! Planning Center style delivery (`person.created`, `donation.updated`, ..., the payload as a
//! JSON string in `data[].attributes.payload`, signed with `X-PCO-Webhooks-Authenticity`) or a
//! Standard Webhooks one, with its own scripted faults (duplicates, reordering, delays).

use crate::config::Entity;

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
}

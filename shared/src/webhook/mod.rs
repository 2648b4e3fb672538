//! Webhook ingest: signature verification ([`signature`]), event extraction ([`extract`]) and the
//! handler logic that queues one [`crate::wire::QueueEnvelope`] per event ([`ingest`]).

pub mod extract;
pub mod ingest;
pub mod signature;

pub use ingest::{Answer, Ingest, Outcome};
pub use signature::{SignatureError, Verifier};

//! The set difference under reconciliation (the steps are `sync::reconcile`): spilled
//! runs of `(id, version)` pairs and the streaming diff of a source listing against the
//! destination's live IDs.
//!
//! - [`runs`]: the run format (a versioned, checksummed binary object), [`RunWriter`] for input
//!   in any order (sorted in memory, at most `run_size` pairs at a time), [`SortedRunWriter`] for
//!   input that is already sorted (the destination's index shards; checked), [`RunReader`] that
//!   streams pairs back through [`SpillStore::open`](crate::ports::SpillStore::open).
//! - [`merge`]: [`RunMerge`], a k-way merge over sequences of runs (a sequence: runs whose
//!   concatenation is sorted, read one after another), [`merge_runs`] to merge some into one
//!   chained sequence, and [`diff`], which merges each side (at most `max_fan_in` inputs at
//!   once), folds duplicate IDs (highest version wins) and writes four sorted lists (to delete,
//!   to fetch, stale, newer at the destination) back to the spill store in chunks, returning a
//!   small [`DiffSummary`].
//!
//! Invariants:
//! - IDs are compared **bytewise** (`&[u8]` order, as DynamoDB and SQLite's BINARY collation sort
//!   them) everywhere, never numerically: `"10" < "9"`, `"B" < "a"`.
//! - Every run is checked while it is read: a pair out of bytewise order is
//!   [`SetDiffError::Unsorted`], a cut-off object [`SetDiffError::Truncated`], a damaged one
//!   [`SetDiffError::Corrupt`]; nothing panics on stored bytes. A diff that returns `Err` has
//!   proven nothing: its partial outputs are to be discarded (delete the output prefixes).
//! - Memory is bounded by the run size (writers) or by the fan-in times one read buffer (merge,
//!   diff), never by the number of pairs or runs.

pub mod merge;
pub mod runs;

#[cfg(test)]
mod tests;

pub use merge::{
    DEFAULT_MAX_FAN_IN, DiffOutputs, DiffSummary, ListSummary, MergeOptions, RunMerge, SideCounts,
    UNKNOWN_VERSION, diff, diff_with, merge_runs,
};
pub use runs::{
    MAX_ID_BYTES, RUN_FORMAT_VERSION, RunInfo, RunReader, RunWriter, RunsWritten, SortedRunWriter,
    list_runs, run_key,
};

use crate::error::StoreError;

/// Reconciliation's data core failed: the spill store, or a run object that cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum SetDiffError {
    /// The spill store itself failed (put, open, list).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading an opened object failed (a cut network stream, a disk error).
    #[error("reading spill object {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// The object ended before its header, its pairs or its trailer did.
    #[error("spill object {key} is truncated: {message}")]
    Truncated { key: String, message: String },
    /// The object is not a run, or its bytes do not decode or do not match their checksum.
    #[error("spill object {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// A run written by another version of the format.
    #[error("spill object {key} has run format version {found}; this build reads {expected}")]
    UnsupportedFormat {
        key: String,
        found: u8,
        expected: u8,
    },
    /// Pairs out of bytewise ID order: in a run being read, or given to [`SortedRunWriter`].
    #[error("{context}: IDs out of bytewise order: {previous:?} came before {next:?}")]
    Unsorted {
        context: String,
        previous: String,
        next: String,
    },
    /// An ID a run cannot hold (empty, or longer than [`MAX_ID_BYTES`]).
    #[error("rejected id {id:?}: {reason}")]
    BadId { id: String, reason: &'static str },
    /// A caller's argument out of range (a zero run size, say).
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: &'static str, message: String },
}

impl SetDiffError {
    /// Whether a later attempt may succeed: store failures as the store says, read failures
    /// (a cut stream) yes; a truncated, corrupt or unsorted object stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            SetDiffError::Store(e) => e.is_retryable(),
            SetDiffError::Read { .. } => true,
            SetDiffError::Truncated { .. }
            | SetDiffError::Corrupt { .. }
            | SetDiffError::UnsupportedFormat { .. }
            | SetDiffError::Unsorted { .. }
            | SetDiffError::BadId { .. }
            | SetDiffError::InvalidArgument { .. } => false,
        }
    }
}

/// An ID for an error message: lossy UTF-8, at most 64 characters.
fn shown(id: &[u8]) -> String {
    String::from_utf8_lossy(id).chars().take(64).collect()
}

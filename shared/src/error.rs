//! One error type per layer; `is_retryable` tells the handler edge what to do.

use crate::core::json::{JsonKind, PathsError, ScanError};
use std::path::PathBuf;
use std::time::Duration;

/// A configuration mistake, found at start-up. Names the file, the entity and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: entity `{entity}`, field `{field}`: {message}")]
    Invalid {
        file: PathBuf,
        entity: String,
        field: String,
        message: String,
    },
    #[error("missing environment variable {0}")]
    MissingEnv(String),
    #[error("environment variable {name}: {message}")]
    BadEnv { name: String, message: String },
    #[error("secret {name} could not be loaded: {message}")]
    Secret { name: String, message: String },
    /// The source's HTTP client cannot be built from the `[source]` settings and the secret.
    #[error("{file}: the source client cannot be built: {source}")]
    SourceClient {
        file: PathBuf,
        #[source]
        source: crate::source::http::SetupError,
    },
}

/// A field of a source's answer, or of stored state, that a parse looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The records array of a page, or the record of a single-record answer.
    Records,
    Id,
    /// The delta value (the record's change timestamp).
    Delta,
    TotalCount,
    NextLink,
    NextCursor,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Records => "records",
            Field::Id => "ID",
            Field::Delta => "delta value",
            Field::TotalCount => "total count",
            Field::NextLink => "next link",
            Field::NextCursor => "next cursor",
        })
    }
}

/// Text (a source's answer, a timestamp, a stored cursor) that does not read as expected. Each
/// variant says what was wrong and where (byte offset, JSON pointer, field, record position);
/// a value is described by its kind, never echoed, since it may be part of a payload.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON we can read (truncated, malformed, nested too deep): what and at which byte.
    #[error("invalid JSON: {0}")]
    Json(#[from] ScanError),
    /// The configured pointers cannot be read in one pass (a configuration mistake).
    #[error("the configured pointers cannot be read together: {0}")]
    Pointers(#[from] PathsError),
    /// The body is not UTF-8 (the source says from which byte on).
    #[error("the body is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// A JSON 404 where only a found resource makes sense (a listing, not a single record).
    #[error("the listing answered 404")]
    ListingNotFound,
    /// Nothing (or `null`) at the pointer.
    #[error("no {field} at {pointer}")]
    Missing { field: Field, pointer: String },
    /// A value of the wrong kind at the pointer.
    #[error("{field} at {pointer} is {found}, not {expected}")]
    WrongKind {
        field: Field,
        pointer: String,
        found: JsonKind,
        expected: &'static str,
    },
    /// A value of the right kind at the pointer that does not read (a timestamp in another
    /// format, a string whose escapes do not decode).
    #[error("{field} at {pointer}: {source}")]
    Value {
        field: Field,
        pointer: String,
        #[source]
        source: Box<ParseError>,
    },
    /// A record of a page (its position in the records array; its ID once that was read).
    #[error("record {index} of the page{}: {source}", .id.as_ref().map(|id| format!(" (ID {id:?})")).unwrap_or_default())]
    Record {
        index: usize,
        id: Option<String>,
        #[source]
        source: Box<ParseError>,
    },
    /// A single-record answer for another ID than the one asked for.
    #[error("asked for ID {asked:?}, got {got:?}")]
    WrongRecord { asked: String, got: String },
    /// A JSON string whose escapes do not decode.
    #[error("not a string we can read: {0}")]
    BadString(#[source] serde_json::Error),
    #[error("not RFC 3339: {0}")]
    NotRfc3339(#[source] time::error::Parse),
    /// Neither an integer nor a decimal count of `unit` since the epoch.
    #[error("not a count of {unit} since the epoch: {source}")]
    NotEpoch {
        unit: &'static str,
        #[source]
        source: std::num::ParseFloatError,
    },
    /// A timestamp outside what epoch microseconds in an `i64` can hold.
    #[error("timestamp out of range")]
    OutOfRange,
    /// An RFC 3339 date and time without a UTC offset, and no `source.timestamp_offset` to
    /// read it with.
    #[error("a timestamp without a UTC offset (set source.timestamp_offset)")]
    NoOffset,
    /// Stored text that is not a delta cursor (serde's error says where).
    #[error("not a delta cursor: {0}")]
    NotCursor(#[source] serde_json::Error),
    #[error("cursor version {0} is not supported")]
    CursorVersion(u32),
}

/// A listing broke an assumption the walk rests on. Each says what to check (a configuration
/// field where one is likely wrong); the run fails and its cursor stays at its last checkpoint.
/// Values shown are delta values and IDs (at most 64 characters), never payloads.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(
        "delta values go backwards on page {page} ({later} after {earlier}): the source does not \
         sort by the delta field; check `source.order_param` and the entity's `delta_sync_field`"
    )]
    DeltaOrder {
        page: u64,
        earlier: String,
        later: String,
    },
    #[error(
        "the source counts {counted} records from {from} up to {to} but page {page} served \
         {served} of them: it did not serve the lowest delta values first, so the next page \
         would skip the rest; check `source.order_param` and the entity's `delta_sync_field` \
         (records deleted between the two requests can explain one such failure: the next run \
         reads the page again)"
    )]
    Skipped {
        page: u64,
        from: String,
        to: String,
        counted: u64,
        served: u64,
    },
    #[error(
        "page {page} holds delta value {found}, below the lower bound {bound} the query asked \
         for: the source ignores the filter; check `source.filter` and the entity's \
         `delta_sync_field`"
    )]
    BelowBound {
        page: u64,
        bound: String,
        found: String,
    },
    #[error(
        "IDs out of {order} order on page {page} ({later:?} after {earlier:?}): check the \
         entity's `id_order` and `source.order_param`"
    )]
    IdOrder {
        page: u64,
        order: &'static str,
        earlier: String,
        later: String,
    },
    #[error(
        "ID {id:?} on page {page} is not a decimal integer, so the listing cannot be in numeric \
         order: set the entity's `id_order = \"bytewise\"` if the source sorts IDs as text"
    )]
    NotNumeric { page: u64, id: String },
    #[error(
        "page {page} starts at ID {first:?}, not after {after:?}: the source ignores the ID \
         filter; check the entity's `id_filter` and `source.filter`"
    )]
    IdFilterIgnored {
        page: u64,
        after: String,
        first: String,
    },
    #[error(
        "page {page} is full but adds no record the walk had not read: the source ignores the \
         pagination parameter or serves a page past the end again; check `source.pagination`"
    )]
    NoProgress { page: u64 },
    #[error(
        "page {page} repeats page {first} exactly: the source serves the same page again (an \
         ignored pagination parameter, or the last page for every page past the end); check \
         `source.pagination`"
    )]
    RepeatedPage { page: u64, first: u64 },
    #[error("the next link repeats a link already followed; check `source.pagination`")]
    LinkRepeats,
    #[error("the next link is not a URL: {0}")]
    NextNotUrl(#[source] url::ParseError),
    #[error("the next link leaves the source's origin (`source.base_url`) for {origin}")]
    ForeignOrigin { origin: String },
    /// A resume token's next URL points outside `source.base_url`'s origin: refused before any
    /// request (it would carry the source credential there).
    #[error(
        "the resume token's next URL points at {origin}, outside the origin of \
         `source.base_url`; refused (the request would carry the source credential)"
    )]
    ForeignResume { origin: String },
    #[error("a full page held no record inside the filter")]
    EmptyFullPage,
    #[error(
        "records kept leaving the tie group at {at} while it was read ({passes} passes); the \
         next run retries"
    )]
    TieUnstable { at: String, passes: usize },
    #[error(
        "the listing shifted by more than a page while it was read (many deletions); the next \
         run retries"
    )]
    Shifted,
    #[error("the resume token cannot be read: {0}")]
    BadResume(String),
    #[error("this source cannot resume an ID listing")]
    CannotResume,
}

impl WalkError {
    /// Whether a later run may succeed: the source's data moved under the walk, or it served a
    /// page again. The order, the filters and the links are the configuration's or the
    /// source's to fix: running again changes nothing.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WalkError::NoProgress { .. }
                | WalkError::RepeatedPage { .. }
                | WalkError::LinkRepeats
                | WalkError::EmptyFullPage
                | WalkError::TieUnstable { .. }
                | WalkError::Shifted
                | WalkError::Skipped { .. }
        )
    }

    /// An ID or value as shown in an error: at most 64 characters.
    pub fn shown(s: &str) -> String {
        s.chars().take(64).collect()
    }
}

/// The source API failed, after the retry policy gave up (or at once, when retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown entity `{0}`")]
    UnknownEntity(String),
    #[error("rejected id {id:?}: {reason}")]
    BadId { id: String, reason: &'static str },
    /// `get_by_id` found the record, but it cannot be synced (a null or unreadable delta value,
    /// an ID the store cannot hold, an unpaired surrogate escape): retrying cannot help until
    /// the source fixes it. Never "gone": the source has the record.
    #[error("record {id:?} from {url} cannot be synced: {reason}")]
    Rejected {
        url: String,
        id: String,
        reason: crate::model::RejectReason,
    },
    #[error("rate limited by {url} (retry after {retry_after:?}) after {attempts} attempts")]
    RateLimited {
        url: String,
        retry_after: Option<Duration>,
        attempts: u32,
    },
    #[error("server error {status} from {url} after {attempts} attempts")]
    Server {
        status: u16,
        url: String,
        attempts: u32,
    },
    #[error("client error {status} from {url}")]
    Client { status: u16, url: String },
    /// 401: the source refused the credential, also after the secret was read again once
    /// (`reread`; never the credential itself). Fix the source secret (`SOURCE_SECRET_ID`, or
    /// the variable `source.auth` names); a rotation needs no cold start.
    #[error(
        "the source refused the credential (401) at {url}{}; check the source secret \
         (SOURCE_SECRET_ID, or the variable `source.auth` names)",
        if *.reread { " also after reading the secret again" } else { "" }
    )]
    Unauthorized { url: String, reread: bool },
    #[error(
        "not JSON from {url} (status {status}, content-type {content_type:?}) after {attempts} attempts"
    )]
    NotJson {
        status: u16,
        url: String,
        content_type: Option<String>,
        attempts: u32,
    },
    #[error("cannot decode the answer from {url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: ParseError,
    },
    #[error("timed out calling {url} after {attempts} attempts")]
    Timeout { url: String, attempts: u32 },
    #[error("cannot reach {url} after {attempts} attempts: {source}")]
    Connect {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// The listing broke an assumption the walk rests on (order, progress, continuity).
    #[error("listing {url}: {source}")]
    Walk {
        url: String,
        #[source]
        source: WalkError,
    },
    /// The invocation's stop instant (`core::deadline::within`) comes before the next request
    /// could be answered: a wait the source asked for (`Retry-After`), a backoff, or the next
    /// page. Not a failure of the source: delta stops `partial` at its checkpoint, the worker
    /// fails the message for SQS to retry, reconciliation's Source step resumes.
    #[error("stopping before the invocation's deadline: {url} would need {wait:?} more ({cause})")]
    Deadline {
        url: String,
        wait: Duration,
        cause: WaitCause,
    },
}

/// What a request would have waited for past the stop instant (`SourceError::Deadline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCause {
    /// The stop instant has passed before the next page.
    StopInstant,
    /// This process's own rate limiter (the local floor), or an entity's.
    RateLimit,
    /// The source's `Retry-After`.
    RetryAfter,
    /// The backoff before a retry.
    Backoff,
    /// The shared rate budget: the account's requests are spoken for by higher lanes, or a
    /// `Retry-After` pauses every caller. Delta and reconciliation stop `partial` with
    /// `stopped_by = "budget"`.
    Budget,
}

impl WaitCause {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitCause::StopInstant => "stop instant",
            WaitCause::RateLimit => "rate limit",
            WaitCause::RetryAfter => "retry-after",
            WaitCause::Backoff => "backoff",
            WaitCause::Budget => "budget",
        }
    }
}

impl std::fmt::Display for WaitCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SourceError {
    /// Whether a later attempt (a new invocation, a redelivery) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::RateLimited { .. }
                | SourceError::Server { .. }
                | SourceError::NotJson { .. }
                | SourceError::Timeout { .. }
                | SourceError::Connect { .. }
                | SourceError::Decode { .. }
                | SourceError::Deadline { .. }
        ) || matches!(self, SourceError::Walk { source, .. } if source.is_retryable())
    }
}

/// A store (records, control, queue, spill) failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller does not hold the lease it claims: another run took it, or it expired.
    #[error("lease on {scope} is not held by run {holder}")]
    LeaseLost { scope: String, holder: String },
    /// Throttled still after the client's own retries (or a batch left partly unprocessed).
    #[error("throttled by the store: {operation}: {source}")]
    Throttled {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error("cannot decode stored item {key}: {message}")]
    Decode { key: String, message: String },
    #[error("item {key} is too large to store ({bytes} bytes, even compressed)")]
    TooLarge { key: String, bytes: usize },
    #[error("{operation} failed: {source}")]
    Backend {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StoreError {
    pub fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            operation,
            source: Box::new(source),
        }
    }
    pub fn throttled(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Throttled {
            operation,
            source: Box::new(source),
        }
    }
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled { .. } | StoreError::Backend { .. }
        )
    }
}

/// A batch call that kept leaving part of its batch unprocessed (DynamoDB's `UnprocessedKeys`),
/// the cause of a [`StoreError::Throttled`].
#[derive(Debug, thiserror::Error)]
#[error("part of the batch was left unprocessed {rounds} times")]
pub struct Unprocessed {
    pub rounds: u32,
}

/// A sync run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored state (the entity's delta cursor) that does not read.
    #[error("stored state of `{entity}` is unreadable: {source}")]
    State {
        entity: String,
        #[source]
        source: ParseError,
    },
    /// An operator's change (a cursor moved, a re-sync asked for) found the job's lease held
    /// by a run: it changes nothing; try again once the run has stopped.
    #[error("{scope} is busy: run {holder} holds its lease until {until}; try again after it")]
    LeaseHeld {
        scope: String,
        holder: String,
        /// RFC 3339.
        until: String,
    },
    /// An operator's change that would break the sync (a cursor in the future): refused,
    /// nothing changed.
    #[error("refused: {0}")]
    InvalidChange(String),
}

impl SyncError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Source(e) => e.is_retryable(),
            SyncError::Store(e) => e.is_retryable(),
            SyncError::State { .. } => false,
            SyncError::LeaseHeld { .. } => true,
            SyncError::InvalidChange(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn throttled_keeps_its_cause_and_is_retryable() {
        let e = StoreError::throttled("BatchGetItem", Unprocessed { rounds: 8 });
        assert!(e.is_retryable());
        let cause = e.source().expect("a cause");
        assert_eq!(
            cause.downcast_ref::<Unprocessed>().map(|u| u.rounds),
            Some(8)
        );
        assert_eq!(
            e.to_string(),
            "throttled by the store: BatchGetItem: part of the batch was left unprocessed 8 times"
        );
    }

    #[test]
    fn a_decode_error_keeps_the_parse_error_as_its_source() {
        let e = SourceError::Decode {
            url: "http://h/people".into(),
            source: ParseError::Json(ScanError {
                offset: 17,
                what: "unexpected end",
            }),
        };
        assert!(e.is_retryable(), "a truncated body may be whole next time");
        let parse = e.source().and_then(|s| s.downcast_ref::<ParseError>());
        assert!(
            matches!(parse, Some(ParseError::Json(ScanError { offset: 17, .. }))),
            "{parse:?}"
        );
        assert_eq!(
            e.to_string(),
            "cannot decode the answer from http://h/people: invalid JSON: unexpected end at byte 17"
        );
    }
}

//! Page parsing without building a DOM: one pass of `core::json` over a page body validates it
//! and finds its metadata and, for each record, the record's raw text and its ID and delta
//! value (by JSON pointer). We hash the raw bytes and keep the raw JSON as the payload; nothing
//! else of a record is parsed.
//!
//! Two kinds of failure, kept apart so that one bad record never stops an entity:
//! - the page: text that is not JSON (truncated, say), no records array, metadata of the wrong
//!   kind. A [`ParseError`] naming the field and its pointer (or the byte offset): the page
//!   fails and is retried;
//! - a record: no usable ID (missing, not a string or an integer, empty, longer than the store
//!   takes), no readable delta value (missing, `null`, not in the configured format, RFC 3339
//!   without an offset when `source.timestamp_offset` is unset), or an unpaired surrogate
//!   escape anywhere in it (no string-decoding reader can read it back). The record is taken
//!   out of the page as a [`Rejected`] (its ID when that reads, a [`RejectReason`]; never a
//!   value), and the rest of the page is read.

use crate::core::json::{JsonKind, Paths, PathsError, RawJson, Span};
use crate::core::size::MAX_ID_BYTES;
use crate::core::timefmt::TimestampFormat;
use crate::error::{Field, ParseError};
use crate::model::{IdVersion, Micros, Record, RejectReason, Rejected};

/// How to read records out of a page, from the configuration.
#[derive(Debug, Clone)]
pub struct RecordShape {
    /// Pointer to the records array of a page, or to the record of a single-record answer.
    pub records_pointer: Vec<String>,
    pub id_pointer: Vec<String>,
    pub delta_pointer: Vec<String>,
    pub total_count_pointer: Option<Vec<String>>,
    pub next_link_pointer: Option<Vec<String>>,
    pub next_cursor_pointer: Option<Vec<String>>,
    pub timestamp_format: TimestampFormat,
    /// `source.timestamp_offset`: the offset of RFC 3339 delta values written without one.
    pub timestamp_offset: Option<time::UtcOffset>,
}

/// Split a JSON pointer (RFC 6901) into unescaped segments.
pub fn pointer_segments(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    // One leading `/` only: `//` is the key "" inside the key "" (RFC 6901), as `serde_json`'s
    // `Value::pointer` reads it (found by `fuzz::json`).
    pointer
        .strip_prefix('/')
        .unwrap_or(pointer)
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// A pointer's segments as RFC 6901 text (escapes restored), for errors.
fn pointer_text(path: &[String]) -> String {
    if path.is_empty() {
        return "(root)".into();
    }
    path.iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// The value at `path` inside `raw`, as raw JSON text; `Ok(None)` when absent or `null`.
pub fn pluck<'a>(raw: &'a str, path: &[String]) -> Result<Option<&'a str>, ParseError> {
    Ok(pluck_many(raw, &[path])?.pop().flatten())
}

/// Several pointers into one document in a single pass over it (which validates it whole).
pub fn pluck_many<'a>(
    raw: &'a str,
    paths: &[&[String]],
) -> Result<Vec<Option<&'a str>>, ParseError> {
    let found = Paths::new(paths)?.scan(raw)?;
    Ok(found.slots.iter().map(|s| text_at(raw, s)).collect())
}

/// The text of a found value; `null` counts as absent.
fn text_at<'a>(raw: &'a str, span: &Option<Span>) -> Option<&'a str> {
    raw_at(raw, span).filter(|t| *t != "null")
}

/// The text of a found value, `null` included.
fn raw_at<'a>(raw: &'a str, span: &Option<Span>) -> Option<&'a str> {
    span.clone().map(|r| &raw[r])
}

/// A JSON string, unescaped. `t` comes from a scan (a valid JSON value) of `path`.
fn string_of(field: Field, path: &[String], t: &str) -> Result<String, ParseError> {
    let Some(inner) = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return Err(ParseError::WrongKind {
            field,
            pointer: pointer_text(path),
            found: JsonKind::of(t),
            expected: "a string",
        });
    };
    // Scanned already: without a backslash, the text between the quotes is the string.
    if !inner.contains('\\') {
        return Ok(inner.to_owned());
    }
    serde_json::from_str::<String>(t).map_err(|e| ParseError::Value {
        field,
        pointer: pointer_text(path),
        source: Box::new(ParseError::BadString(e)),
    })
}

/// How much of an over-long ID a rejection shows.
const SHOWN_ID_CHARS: usize = 64;

/// A record as one pass found it: its text, whether that holds an unpaired surrogate escape,
/// and the texts of its ID and delta value (`null` included).
#[derive(Debug, Clone, Copy)]
struct RecordView<'a> {
    raw: &'a str,
    lone_surrogate: bool,
    id: Option<&'a str>,
    delta: Option<&'a str>,
}

impl<'a> RecordView<'a> {
    /// The ID, or why it is unusable.
    fn id(&self, shape: &RecordShape) -> Result<String, Rejected> {
        let reject = |id: Option<String>, reason| Rejected { id, reason };
        let t = match self.id {
            None | Some("null") => return Err(reject(None, RejectReason::MissingId)),
            Some(t) => t,
        };
        let id = match JsonKind::of(t) {
            JsonKind::String => string_of(Field::Id, &shape.id_pointer, t)
                .map_err(|_| reject(None, RejectReason::BadId))?,
            JsonKind::Number if t.bytes().all(|b| b.is_ascii_digit() || b == b'-') => t.to_owned(),
            _ => return Err(reject(None, RejectReason::BadId)),
        };
        if id.is_empty() {
            return Err(reject(Some(id), RejectReason::EmptyId));
        }
        if id.len() > MAX_ID_BYTES {
            let shown = id.chars().take(SHOWN_ID_CHARS).chain(['…']).collect();
            return Err(reject(Some(shown), RejectReason::LongId));
        }
        Ok(id)
    }

    /// `(id, delta)`, or the record's rejection: the first of an unpaired surrogate escape
    /// anywhere in it, an unusable ID, a missing or unreadable delta value.
    fn id_and_delta(&self, shape: &RecordShape) -> Result<(String, Micros), Rejected> {
        if self.lone_surrogate {
            return Err(Rejected {
                id: self.id(shape).ok(),
                reason: RejectReason::LoneSurrogate,
            });
        }
        let id = self.id(shape)?;
        let reason = match self.delta {
            None => RejectReason::MissingDelta,
            Some("null") => RejectReason::NullDelta,
            Some(t) if !matches!(JsonKind::of(t), JsonKind::String | JsonKind::Number) => {
                RejectReason::BadDelta
            }
            Some(t) => match shape
                .timestamp_format
                .parse_json_with(t, shape.timestamp_offset)
            {
                Ok(delta) => return Ok((id, delta)),
                Err(ParseError::NoOffset) => RejectReason::NaiveTimestamp,
                Err(_) => RejectReason::BadDelta,
            },
        };
        Err(Rejected {
            id: Some(id),
            reason,
        })
    }

    fn record(
        &self,
        entity: &str,
        shape: &RecordShape,
        fetched_at_us: Micros,
    ) -> Result<Record, Rejected> {
        let (id, delta_us) = self.id_and_delta(shape)?;
        // The scan that found this record validated it whole, and found no unpaired surrogate.
        Ok(Record::new(
            entity,
            id,
            delta_us,
            fetched_at_us,
            RawJson::scanned(self.raw),
        ))
    }
}

/// A parsed page of full records.
#[derive(Debug)]
pub struct ParsedPage {
    pub records: Vec<Record>,
    /// The page's records that cannot be synced, taken out (in page order).
    pub rejected: Vec<Rejected>,
    pub total_count: Option<u64>,
    pub next_link: Option<String>,
    pub next_cursor: Option<String>,
}

impl ParsedPage {
    /// Elements of the page's records array, rejected ones included: whether a page is full
    /// (more may follow) is decided on this, never on the records kept.
    pub fn elements(&self) -> usize {
        self.records.len() + self.rejected.len()
    }
}

/// A parsed page of `(id, version)` pairs.
#[derive(Debug)]
pub struct ParsedIds {
    pub ids: Vec<IdVersion>,
    /// The page's records that cannot be synced, taken out (in page order).
    pub rejected: Vec<Rejected>,
    /// The usable ID of the page's last element that has one, rejected or not: where a keyset
    /// listing by ID continues (the last kept ID may come before rejected ones).
    pub last_id: Option<String>,
    pub total_count: Option<u64>,
    pub next_link: Option<String>,
    pub next_cursor: Option<String>,
}

impl ParsedIds {
    /// Elements of the page's records array, rejected ones included (see
    /// [`ParsedPage::elements`]).
    pub fn elements(&self) -> usize {
        self.ids.len() + self.rejected.len()
    }
}

/// Total count, next link and next cursor of a page, where the source has them.
type PageMeta = (Option<u64>, Option<String>, Option<String>);

/// The records and the metadata of a page, from one pass over its body.
fn page_view<'a>(
    body: &'a str,
    shape: &RecordShape,
) -> Result<(Vec<RecordView<'a>>, PageMeta), ParseError> {
    let optional = [
        &shape.total_count_pointer,
        &shape.next_link_pointer,
        &shape.next_cursor_pointer,
    ];
    let mut paths: Vec<&[String]> = vec![&shape.records_pointer];
    paths.extend(optional.iter().filter_map(|p| p.as_deref()));
    let per_record: [&[String]; 2] = [&shape.id_pointer, &shape.delta_pointer];
    let (found, records_text, elements) =
        match Paths::with_elements(&paths, &shape.records_pointer, &per_record) {
            Ok(p) => (p.scan(body)?, body, None),
            // A metadata pointer into the records array: two passes.
            Err(PathsError::ThroughElements) => {
                let found = Paths::new(&paths)?.scan(body)?;
                let arr = text_at(body, &found.slots[0]).unwrap_or("null");
                let all: &[String] = &[];
                let elements = Paths::with_elements(&[all], all, &per_record)?.scan(arr)?;
                (found, arr, Some(elements))
            }
            Err(e) => return Err(e.into()),
        };
    let records_at = || pointer_text(&shape.records_pointer);
    match text_at(body, &found.slots[0]) {
        None => {
            return Err(ParseError::Missing {
                field: Field::Records,
                pointer: records_at(),
            });
        }
        Some(t) if !t.starts_with('[') => {
            return Err(ParseError::WrongKind {
                field: Field::Records,
                pointer: records_at(),
                found: JsonKind::of(t),
                expected: "an array",
            });
        }
        Some(_) => {}
    }
    let el = elements.as_ref().unwrap_or(&found);
    let records = (0..el.elements.len())
        .map(|i| {
            let f = el.element(i);
            let span = &el.elements[i];
            RecordView {
                raw: &records_text[span.clone()],
                lone_surrogate: el.lone_surrogate_in(span),
                id: raw_at(records_text, &f[0]),
                delta: raw_at(records_text, &f[1]),
            }
        })
        .collect();
    let mut meta = found.slots[1..].iter().map(|s| text_at(body, s));
    let mut meta = optional.map(|p| {
        if p.is_some() {
            meta.next().flatten()
        } else {
            None
        }
    });
    fn pointer(p: &Option<Vec<String>>) -> &[String] {
        p.as_deref().unwrap_or_default()
    }
    let total = match meta[0].take() {
        Some(v) => Some(v.parse::<u64>().map_err(|_| ParseError::WrongKind {
            field: Field::TotalCount,
            pointer: pointer_text(pointer(&shape.total_count_pointer)),
            found: JsonKind::of(v),
            expected: "a non-negative integer",
        })?),
        None => None,
    };
    let string = |field, p: &Option<Vec<String>>, v: Option<&str>| {
        v.map(|v| string_of(field, pointer(p), v)).transpose()
    };
    let next_link = string(Field::NextLink, &shape.next_link_pointer, meta[1])?;
    let next_cursor = string(Field::NextCursor, &shape.next_cursor_pointer, meta[2])?;
    Ok((records, (total, next_link, next_cursor)))
}

/// A page of full records: the records that read, and the rejected ones (per record: an
/// unusable ID, a missing or unreadable delta value, an unpaired surrogate escape). What is
/// wrong with the page itself (not JSON, no records array, bad metadata) is a `ParseError`.
pub fn parse_record_page(
    entity: &str,
    body: &str,
    shape: &RecordShape,
    fetched_at_us: Micros,
) -> Result<ParsedPage, ParseError> {
    let (raws, (total_count, next_link, next_cursor)) = page_view(body, shape)?;
    let mut records = Vec::with_capacity(raws.len());
    let mut rejected = Vec::new();
    for r in raws {
        match r.record(entity, shape, fetched_at_us) {
            Ok(rec) => records.push(rec),
            Err(x) => rejected.push(x),
        }
    }
    Ok(ParsedPage {
        records,
        rejected,
        total_count,
        next_link,
        next_cursor,
    })
}

/// A page of `(id, version)` pairs, records rejected as in [`parse_record_page`].
pub fn parse_id_page(body: &str, shape: &RecordShape) -> Result<ParsedIds, ParseError> {
    let (raws, (total_count, next_link, next_cursor)) = page_view(body, shape)?;
    let mut ids = Vec::with_capacity(raws.len());
    let mut rejected = Vec::new();
    let mut last_id = None;
    for r in raws {
        match r.id_and_delta(shape) {
            Ok((id, delta_us)) => {
                last_id = Some(id.clone());
                ids.push(IdVersion { id, delta_us });
            }
            Err(x) => {
                if let Some(id) = x.usable_id() {
                    last_id = Some(id.to_owned());
                }
                rejected.push(x);
            }
        }
    }
    Ok(ParsedIds {
        ids,
        rejected,
        last_id,
        total_count,
        next_link,
        next_cursor,
    })
}

/// The single record of a `get_by_id` answer: `Ok(Err(_))` when the source has it but it
/// cannot be synced (rejected as in [`parse_record_page`]).
pub fn parse_single(
    entity: &str,
    body: &str,
    shape: &RecordShape,
    fetched_at_us: Micros,
) -> Result<Result<Record, Rejected>, ParseError> {
    let below =
        |p: &[String]| -> Vec<String> { shape.records_pointer.iter().chain(p).cloned().collect() };
    let (id, delta) = (below(&shape.id_pointer), below(&shape.delta_pointer));
    let found = Paths::new(&[&shape.records_pointer, &id, &delta])?.scan(body)?;
    let Some(span) = found.slots[0]
        .clone()
        .filter(|s| text_at(body, &Some(s.clone())).is_some())
    else {
        return Err(ParseError::Missing {
            field: Field::Records,
            pointer: pointer_text(&shape.records_pointer),
        });
    };
    Ok(RecordView {
        raw: &body[span.clone()],
        lone_surrogate: found.lone_surrogate_in(&span),
        id: raw_at(body, &found.slots[1]),
        delta: raw_at(body, &found.slots[2]),
    }
    .record(entity, shape, fetched_at_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> RecordShape {
        RecordShape {
            records_pointer: pointer_segments("/data"),
            id_pointer: pointer_segments("/id"),
            delta_pointer: pointer_segments("/attributes/updated_at"),
            total_count_pointer: Some(pointer_segments("/meta/total_count")),
            next_link_pointer: Some(pointer_segments("/links/next")),
            next_cursor_pointer: None,
            timestamp_format: TimestampFormat::Rfc3339,
            timestamp_offset: None,
        }
    }

    const PAGE: &str = r#"{"data":[
        {"type":"Person","id":"2","attributes":{"name":"A \"q\"","nested":{"updated_at":"x"},"updated_at":"2024-05-01T12:00:00Z"}},
        {"type":"Person","attributes":{"updated_at":"2024-05-01T12:00:01.5Z"},"id":10}
      ],"links":{"next":"http://h/p?offset=2"},"meta":{"total_count":7}}"#;

    #[test]
    fn parses_ids_versions_and_meta_without_a_dom() {
        let p = parse_record_page("people", PAGE, &shape(), 99).unwrap();
        assert_eq!(p.records.len(), 2);
        assert!(p.rejected.is_empty());
        assert_eq!(p.records[0].id, "2");
        assert_eq!(p.records[0].version.delta_us, 1_714_564_800_000_000);
        assert_eq!(p.records[1].id, "10");
        assert_eq!(p.records[1].version.delta_us, 1_714_564_801_500_000);
        assert_eq!(p.records[1].version.fetched_at_us, 99);
        assert!(p.records[0].payload.get().contains("A \\\"q\\\""));
        assert_ne!(p.records[0].version.hash, p.records[1].version.hash);
        assert_eq!(p.total_count, Some(7));
        assert_eq!(p.next_link.as_deref(), Some("http://h/p?offset=2"));
    }

    #[test]
    fn bare_arrays_and_escaped_pointers() {
        let mut s = shape();
        s.records_pointer = vec![];
        s.delta_pointer = pointer_segments("/a~1b");
        let p = parse_id_page(r#"[{"id":"x","a/b":"2024-05-01T12:00:00Z"}]"#, &s).unwrap();
        assert_eq!(
            p.ids,
            vec![IdVersion {
                id: "x".into(),
                delta_us: 1_714_564_800_000_000
            }]
        );
        assert_eq!(p.last_id.as_deref(), Some("x"));
    }

    fn page_error(body: &str) -> ParseError {
        parse_record_page("people", body, &shape(), 0).unwrap_err()
    }

    #[test]
    fn what_is_wrong_with_the_page_is_an_error() {
        let cut = &PAGE[..PAGE.len() / 2];
        match page_error(cut) {
            ParseError::Json(e) => assert_eq!(e.offset, cut.len(), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            page_error(r#"{"data":{}}"#),
            ParseError::WrongKind {
                field: Field::Records,
                found: JsonKind::Object,
                ..
            }
        ));
        match page_error(r#"{"errors":[]}"#) {
            ParseError::Missing {
                field: Field::Records,
                pointer,
            } => assert_eq!(pointer, "/data"),
            other => panic!("{other:?}"),
        }
        let e = page_error(r#"{"data":[],"meta":{"total_count":"secret"}}"#);
        assert!(matches!(
            e,
            ParseError::WrongKind {
                field: Field::TotalCount,
                found: JsonKind::String,
                ..
            }
        ));
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(matches!(
            page_error(r#"{"data":[],"links":{"next":7}}"#),
            ParseError::WrongKind {
                field: Field::NextLink,
                found: JsonKind::Number,
                ..
            }
        ));
        // An unpaired surrogate in the page's metadata (not in a record) fails the page.
        assert!(matches!(
            page_error(r#"{"data":[],"links":{"next":"http://h/\ud800"}}"#),
            ParseError::Value {
                field: Field::NextLink,
                ..
            }
        ));
    }

    /// A page whose second record is `bad` (the text of a `{...}` record) between two good ones.
    fn page_with(bad: &str) -> String {
        format!(
            r#"{{"data":[
            {{"id":"1","attributes":{{"updated_at":"2024-05-01T12:00:00Z"}}}},
            {bad},
            {{"id":"3","attributes":{{"updated_at":"2024-05-01T12:00:02Z"}}}}
          ],"meta":{{"total_count":3}}}}"#
        )
    }

    #[test]
    fn a_bad_record_is_taken_out_with_its_id_and_reason_and_the_rest_read() {
        let long = "7".repeat(MAX_ID_BYTES + 1);
        let at_limit = "7".repeat(MAX_ID_BYTES);
        let cases: Vec<(String, Option<String>, RejectReason)> = vec![
            (
                r#"{"id":"2","attributes":{"updated_at":null}}"#.into(),
                Some("2".into()),
                RejectReason::NullDelta,
            ),
            (
                r#"{"id":"2","attributes":{}}"#.into(),
                Some("2".into()),
                RejectReason::MissingDelta,
            ),
            (
                r#"{"id":"2","attributes":{"updated_at":"private note"}}"#.into(),
                Some("2".into()),
                RejectReason::BadDelta,
            ),
            (
                r#"{"id":"2","attributes":{"updated_at":{"at":1}}}"#.into(),
                Some("2".into()),
                RejectReason::BadDelta,
            ),
            (
                r#"{"id":"2","attributes":{"updated_at":"2024-05-01T12:00:01.25"}}"#.into(),
                Some("2".into()),
                RejectReason::NaiveTimestamp,
            ),
            (
                r#"{"id":"","attributes":{"updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                Some(String::new()),
                RejectReason::EmptyId,
            ),
            (
                format!(r#"{{"id":"{long}","attributes":{{"updated_at":"2024-05-01T12:00:01Z"}}}}"#),
                Some(format!("{}…", &long[..64])),
                RejectReason::LongId,
            ),
            (
                r#"{"attributes":{"updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                None,
                RejectReason::MissingId,
            ),
            (
                r#"{"id":null,"attributes":{"updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                None,
                RejectReason::MissingId,
            ),
            (
                r#"{"id":{"a":1},"attributes":{"updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                None,
                RejectReason::BadId,
            ),
            (
                r#"{"id":2.5,"attributes":{"updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                None,
                RejectReason::BadId,
            ),
            ("7".into(), None, RejectReason::MissingId),
            (
                r#"{"id":"2","attributes":{"name":"Ann \ud800","updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                Some("2".into()),
                RejectReason::LoneSurrogate,
            ),
            (
                r#"{"id":"2\udc00","attributes":{"updated_at":"2024-05-01T12:00:01Z"}}"#.into(),
                None,
                RejectReason::LoneSurrogate,
            ),
        ];
        for (bad, id, reason) in cases {
            let body = page_with(&bad);
            let p = parse_record_page("people", &body, &shape(), 0).unwrap();
            let kept: Vec<&str> = p.records.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(kept, ["1", "3"], "{bad}");
            assert_eq!(
                p.rejected,
                [Rejected {
                    id: id.clone(),
                    reason
                }],
                "{bad}"
            );
            assert_eq!(p.elements(), 3);
            assert_eq!(p.total_count, Some(3));
            // The ID listing takes the same record out, for the same reason.
            let ids = parse_id_page(&body, &shape()).unwrap();
            assert_eq!(ids.ids.len(), 2, "{bad}");
            assert_eq!(ids.rejected, p.rejected, "{bad}");
            assert_eq!(ids.elements(), 3);
            // Reasons name what is wrong, never the value.
            let shown = format!("{}", p.rejected[0].reason);
            assert!(
                !shown.contains("private") && !shown.contains("Ann"),
                "{shown}"
            );
        }
        // At the store's limit, an ID is kept.
        let body = page_with(&format!(
            r#"{{"id":"{at_limit}","attributes":{{"updated_at":"2024-05-01T12:00:01Z"}}}}"#
        ));
        let p = parse_record_page("people", &body, &shape(), 0).unwrap();
        assert_eq!((p.records.len(), p.rejected.len()), (3, 0));
    }

    #[test]
    fn zone_less_timestamps_read_at_the_configured_offset() {
        let body = page_with(r#"{"id":"2","attributes":{"updated_at":"2024-05-01T13:00:01"}}"#);
        let mut s = shape();
        s.timestamp_offset = Some(crate::core::timefmt::parse_offset("+01:00").unwrap());
        let p = parse_record_page("people", &body, &s, 0).unwrap();
        assert!(p.rejected.is_empty());
        assert_eq!(p.records[1].version.delta_us, 1_714_564_801_000_000);
        let ids = parse_id_page(&body, &s).unwrap();
        assert_eq!(ids.ids[1].delta_us, 1_714_564_801_000_000);
    }

    #[test]
    fn a_keyset_listing_continues_after_the_last_usable_id_rejected_or_not() {
        let body = r#"{"data":[
            {"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}},
            {"id":"2","attributes":{"updated_at":null}}
          ]}"#;
        let p = parse_id_page(body, &shape()).unwrap();
        assert_eq!(p.ids.len(), 1);
        assert_eq!(p.last_id.as_deref(), Some("2"));
        // An element without a usable ID does not move it.
        let body = r#"{"data":[
            {"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}},
            {"id":"","attributes":{"updated_at":"2024-05-01T12:00:00Z"}}
          ]}"#;
        let p = parse_id_page(body, &shape()).unwrap();
        assert_eq!(p.last_id.as_deref(), Some("1"));
    }

    #[test]
    fn a_single_record_is_a_record_a_rejection_or_an_error() {
        let one = |body: &str| parse_single("people", body, &shape(), 1);
        let r = one(r#"{"data":{"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.id, "1");
        let x = one(r#"{"data":{"id":"1","attributes":{"updated_at":null}}}"#)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            x,
            Rejected {
                id: Some("1".into()),
                reason: RejectReason::NullDelta
            }
        );
        let x = one(r#"{"data":{"id":"1","n":"\ud800","attributes":{"updated_at":"2024-05-01T12:00:00Z"}}}"#)
            .unwrap()
            .unwrap_err();
        assert_eq!(x.reason, RejectReason::LoneSurrogate);
        // No record at all: the answer is wrong, not the record.
        assert!(matches!(
            one(r#"{"data":null}"#),
            Err(ParseError::Missing {
                field: Field::Records,
                ..
            })
        ));
        assert!(matches!(
            one(r#"{"data":{"id":"1""#),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn same_bytes_same_hash() {
        let body = r#"{"data":{"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}}}"#;
        let a = parse_single("people", body, &shape(), 1).unwrap().unwrap();
        let b = parse_single("people", body, &shape(), 2).unwrap().unwrap();
        assert_eq!(a.version.hash, b.version.hash);
    }
}

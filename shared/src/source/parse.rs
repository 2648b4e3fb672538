//! Page parsing without building a DOM: one pass of `core::json` over a page body validates it
//! and finds its metadata and, for each record, the record's raw text and its ID and delta
//! value (by JSON pointer). We hash the raw bytes and keep the raw JSON as the payload; nothing
//! else of a record is parsed. What does not read is a [`ParseError`] naming the field, its
//! pointer and the record's position (or the byte offset, for text that is not JSON).

use crate::core::json::{JsonKind, Paths, PathsError, RawJson, Span};
use crate::core::timefmt::TimestampFormat;
use crate::error::{Field, ParseError};
use crate::model::{IdVersion, Micros, Record};

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
}

/// Split a JSON pointer (RFC 6901) into unescaped segments.
pub fn pointer_segments(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .trim_start_matches('/')
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
    span.clone().map(|r| &raw[r]).filter(|t| *t != "null")
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

/// ID as a string: JSON strings unescaped, integers as written. `t` comes from a scan (a valid
/// JSON value) of `path`.
fn id_of(path: &[String], t: &str) -> Result<String, ParseError> {
    match JsonKind::of(t) {
        JsonKind::String => string_of(Field::Id, path, t),
        JsonKind::Number if t.bytes().all(|b| b.is_ascii_digit() || b == b'-') => Ok(t.to_owned()),
        found => Err(ParseError::WrongKind {
            field: Field::Id,
            pointer: pointer_text(path),
            found,
            expected: "a string or an integer",
        }),
    }
}

/// A record as one pass found it: its position in the page's records array (none for a
/// single-record answer), its text, and the texts of its ID and delta value.
#[derive(Debug, Clone, Copy)]
struct RecordView<'a> {
    index: Option<usize>,
    raw: &'a str,
    id: Option<&'a str>,
    delta: Option<&'a str>,
}

impl<'a> RecordView<'a> {
    /// `(id, delta)`, or what is missing or malformed (with the record's position in a page).
    fn id_and_delta(&self, shape: &RecordShape) -> Result<(String, Micros), ParseError> {
        let in_record = |e: ParseError, id: Option<&str>| match self.index {
            Some(index) => ParseError::Record {
                index,
                id: id.map(str::to_owned),
                source: Box::new(e),
            },
            None => e,
        };
        let id = match self.id {
            None => Err(ParseError::Missing {
                field: Field::Id,
                pointer: pointer_text(&shape.id_pointer),
            }),
            Some(t) => id_of(&shape.id_pointer, t),
        }
        .map_err(|e| in_record(e, None))?;
        let delta_at = || pointer_text(&shape.delta_pointer);
        let delta = match self.delta {
            None => Err(ParseError::Missing {
                field: Field::Delta,
                pointer: delta_at(),
            }),
            Some(t) if !matches!(JsonKind::of(t), JsonKind::String | JsonKind::Number) => {
                Err(ParseError::WrongKind {
                    field: Field::Delta,
                    pointer: delta_at(),
                    found: JsonKind::of(t),
                    expected: "a string or a number",
                })
            }
            Some(t) => shape
                .timestamp_format
                .parse_json(t)
                .map_err(|e| ParseError::Value {
                    field: Field::Delta,
                    pointer: delta_at(),
                    source: Box::new(e),
                }),
        }
        .map_err(|e| in_record(e, Some(&id)))?;
        Ok((id, delta))
    }

    fn record(
        &self,
        entity: &str,
        shape: &RecordShape,
        fetched_at_us: Micros,
    ) -> Result<Record, ParseError> {
        let (id, delta_us) = self.id_and_delta(shape)?;
        // The scan that found this record validated it whole.
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
    pub total_count: Option<u64>,
    pub next_link: Option<String>,
    pub next_cursor: Option<String>,
}

/// A parsed page of `(id, version)` pairs.
#[derive(Debug)]
pub struct ParsedIds {
    pub ids: Vec<IdVersion>,
    pub total_count: Option<u64>,
    pub next_link: Option<String>,
    pub next_cursor: Option<String>,
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
            RecordView {
                index: Some(i),
                raw: &records_text[el.elements[i].clone()],
                id: text_at(records_text, &f[0]),
                delta: text_at(records_text, &f[1]),
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

pub fn parse_record_page(
    entity: &str,
    body: &str,
    shape: &RecordShape,
    fetched_at_us: Micros,
) -> Result<ParsedPage, ParseError> {
    let (raws, (total_count, next_link, next_cursor)) = page_view(body, shape)?;
    let mut records = Vec::with_capacity(raws.len());
    for r in raws {
        records.push(r.record(entity, shape, fetched_at_us)?);
    }
    Ok(ParsedPage {
        records,
        total_count,
        next_link,
        next_cursor,
    })
}

pub fn parse_id_page(body: &str, shape: &RecordShape) -> Result<ParsedIds, ParseError> {
    let (raws, (total_count, next_link, next_cursor)) = page_view(body, shape)?;
    let mut ids = Vec::with_capacity(raws.len());
    for r in raws {
        let (id, delta_us) = r.id_and_delta(shape)?;
        ids.push(IdVersion { id, delta_us });
    }
    Ok(ParsedIds {
        ids,
        total_count,
        next_link,
        next_cursor,
    })
}

/// The single record of a `get_by_id` answer.
pub fn parse_single(
    entity: &str,
    body: &str,
    shape: &RecordShape,
    fetched_at_us: Micros,
) -> Result<Record, ParseError> {
    let below =
        |p: &[String]| -> Vec<String> { shape.records_pointer.iter().chain(p).cloned().collect() };
    let (id, delta) = (below(&shape.id_pointer), below(&shape.delta_pointer));
    let found = pluck_many(body, &[&shape.records_pointer, &id, &delta])?;
    let raw = found[0].ok_or_else(|| ParseError::Missing {
        field: Field::Records,
        pointer: pointer_text(&shape.records_pointer),
    })?;
    RecordView {
        index: None,
        raw,
        id: found[1],
        delta: found[2],
    }
    .record(entity, shape, fetched_at_us)
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
    }

    fn page_error(body: &str) -> ParseError {
        parse_record_page("people", body, &shape(), 0).unwrap_err()
    }

    #[test]
    fn truncated_or_wrong_shapes_are_errors() {
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
        match page_error(r#"{"data":[{"id":"1"}]}"#) {
            ParseError::Record { index, id, source } => {
                assert_eq!((index, id.as_deref()), (0, Some("1")));
                assert!(matches!(
                    *source,
                    ParseError::Missing {
                        field: Field::Delta,
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
        match page_error(
            r#"{"data":[{"id":{"a":1},"attributes":{"updated_at":"2024-05-01T12:00:00Z"}}]}"#,
        ) {
            ParseError::Record { index, id, source } => {
                assert_eq!((index, id), (0, None));
                assert!(matches!(
                    *source,
                    ParseError::WrongKind {
                        field: Field::Id,
                        found: JsonKind::Object,
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_say_which_record_and_field_but_never_echo_a_value() {
        let body = r#"{"data":[
            {"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}},
            {"id":"2","attributes":{"updated_at":"private note"}}
          ],"meta":{"total_count":2}}"#;
        let e = page_error(body);
        match &e {
            ParseError::Record { index, id, source } => {
                assert_eq!((*index, id.as_deref()), (1, Some("2")));
                match &**source {
                    ParseError::Value {
                        field: Field::Delta,
                        pointer,
                        source,
                    } => {
                        assert_eq!(pointer, "/attributes/updated_at");
                        assert!(matches!(**source, ParseError::NotRfc3339(_)), "{source:?}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        let shown = e.to_string();
        assert!(shown.starts_with("record 1 of the page (ID \"2\"): delta value at /attributes/updated_at: not RFC 3339"), "{shown}");
        assert!(!shown.contains("private"), "{shown}");
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
    }

    #[test]
    fn same_bytes_same_hash() {
        let a = parse_single(
            "people",
            r#"{"data":{"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}}}"#,
            &shape(),
            1,
        )
        .unwrap();
        let b = parse_single(
            "people",
            r#"{"data":{"id":"1","attributes":{"updated_at":"2024-05-01T12:00:00Z"}}}"#,
            &shape(),
            2,
        )
        .unwrap();
        assert_eq!(a.version.hash, b.version.hash);
    }
}

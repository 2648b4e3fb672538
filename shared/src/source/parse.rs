//! Page parsing without building a DOM: the records of a page are located by a JSON pointer as
//! raw slices; from each we extract the ID and the delta field (by pointer), hash the raw bytes
//! and keep the raw JSON as the payload. Nothing else of a record is parsed.

use crate::core::timefmt::TimestampFormat;
use crate::model::{ContentHash, IdVersion, Micros, Record, Version};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

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

/// The value at `path` inside `raw`, as a raw slice; `Ok(None)` when absent or `null`.
pub fn pluck<'a>(raw: &'a str, path: &[String]) -> Result<Option<&'a RawValue>, String> {
    let Some((first, rest)) = path.split_first() else {
        let whole: &'a RawValue = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        return Ok(if whole.get() == "null" {
            None
        } else {
            Some(whole)
        });
    };
    // The first step scans (and so validates) the whole text, trailing bytes included.
    let mut de = serde_json::Deserializer::from_str(raw);
    let Some(mut cur) = Child { key: first }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    de.end().map_err(|e| e.to_string())?;
    for seg in rest {
        let mut de = serde_json::Deserializer::from_str(cur.get());
        match (Child { key: seg })
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?
        {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    if cur.get() == "null" {
        return Ok(None);
    }
    Ok(Some(cur))
}

/// Deserialize only the child `key` of an object (or index of an array), skipping the rest.
struct Child<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for Child<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Child<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or an array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_key) = map.next_key_seed(KeyIs(self.key))? {
            if is_key && found.is_none() {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let want: Option<usize> = self.key.parse().ok();
        let mut found = None;
        let mut i = 0usize;
        while found.is_none() {
            if Some(i) == want {
                found = seq.next_element::<&'de RawValue>()?;
                if found.is_none() {
                    return Ok(None);
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(None);
            }
            i += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(found)
    }
    // Scalars have no children.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A map key compared with the wanted one without allocating (escaped keys are unescaped by
/// serde_json into a scratch buffer and still compared).
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// The records of a page, as raw slices.
pub fn page_records<'a>(body: &'a str, shape: &RecordShape) -> Result<Vec<&'a RawValue>, String> {
    records_array(pluck(body, &shape.records_pointer)?, shape)
}

fn records_array<'a>(
    arr: Option<&'a RawValue>,
    shape: &RecordShape,
) -> Result<Vec<&'a RawValue>, String> {
    let Some(arr) = arr else {
        return Err(format!(
            "no records at /{}",
            shape.records_pointer.join("/")
        ));
    };
    serde_json::from_str::<Vec<&RawValue>>(arr.get()).map_err(|e| {
        format!(
            "records at /{} are not an array: {e}",
            shape.records_pointer.join("/")
        )
    })
}

/// ID as a string: JSON strings unescaped, numbers as written.
pub fn id_of(raw: &RawValue) -> Result<String, String> {
    let t = raw.get();
    if t.starts_with('"') {
        return serde_json::from_str::<String>(t).map_err(|e| e.to_string());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !t.is_empty() {
        return Ok(t.to_owned());
    }
    Err(format!("ID is neither a string nor an integer: {t}"))
}

/// Extract `(id, delta)` of one record.
pub fn id_and_delta(rec: &RawValue, shape: &RecordShape) -> Result<(String, Micros), String> {
    let found = pluck_many(rec.get(), &[&shape.id_pointer, &shape.delta_pointer])?;
    let (id_raw, delta_raw) = (found[0], found[1]);
    let id_raw =
        id_raw.ok_or_else(|| format!("record has no ID at /{}", shape.id_pointer.join("/")))?;
    let id = id_of(id_raw)?;
    let delta_raw = delta_raw.ok_or_else(|| {
        format!(
            "record {id} has no delta field at /{}",
            shape.delta_pointer.join("/")
        )
    })?;
    let delta = shape
        .timestamp_format
        .parse_json(delta_raw.get())
        .map_err(|e| format!("record {id}: {e}"))?;
    Ok((id, delta))
}

/// Several pointers into one document in a single scan of it: the wanted paths form a tree, and
/// the scan descends into each wanted child instead of capturing it and scanning it again (a
/// record's `/id` and `/attributes/updated_at` cost one pass over the record).
pub fn pluck_many<'a>(
    raw: &'a str,
    paths: &[&[String]],
) -> Result<Vec<Option<&'a RawValue>>, String> {
    if paths.iter().any(|p| p.is_empty()) {
        return paths.iter().map(|p| pluck(raw, p)).collect();
    }
    let mut root: Vec<Node> = Vec::new();
    for (slot, p) in paths.iter().enumerate() {
        insert(&mut root, p, slot);
    }
    let mut out: Vec<Option<&'a RawValue>> = vec![None; paths.len()];
    let mut de = serde_json::Deserializer::from_str(raw);
    (Descend {
        nodes: &root,
        out: &mut out,
    })
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(out
        .into_iter()
        .map(|v| v.filter(|v| v.get() != "null"))
        .collect())
}

/// One step of the wanted paths: a key, the slots that end there, the steps below it.
struct Node<'p> {
    key: &'p str,
    slots: Vec<usize>,
    children: Vec<Node<'p>>,
}

fn insert<'p>(nodes: &mut Vec<Node<'p>>, path: &'p [String], slot: usize) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let i = match nodes.iter().position(|n| n.key == first.as_str()) {
        Some(i) => i,
        None => {
            nodes.push(Node {
                key: first,
                slots: Vec::new(),
                children: Vec::new(),
            });
            nodes.len() - 1
        }
    };
    if rest.is_empty() {
        nodes[i].slots.push(slot);
    } else {
        insert(&mut nodes[i].children, rest, slot);
    }
}

/// Visits one value: fills the slots of the wanted keys found in it, skipping everything else.
struct Descend<'n, 'o, 'de> {
    nodes: &'n [Node<'n>],
    out: &'o mut Vec<Option<&'de RawValue>>,
}

impl<'de> Descend<'_, '_, 'de> {
    /// The value of a wanted child: captured when paths end at it (and looked into from the
    /// capture when others go deeper), else descended into.
    fn child<E>(
        node: &Node<'_>,
        out: &mut [Option<&'de RawValue>],
        value: impl FnOnce(ValueMode<'_, '_, 'de>) -> Result<Option<&'de RawValue>, E>,
    ) -> Result<(), E> {
        if node.slots.is_empty() {
            value(ValueMode::Descend(&node.children, out))?;
            return Ok(());
        }
        let raw = value(ValueMode::Capture)?;
        for &s in &node.slots {
            if out[s].is_none() {
                out[s] = raw;
            }
        }
        if let Some(raw) = raw {
            for c in &node.children {
                fill_from(raw, c, out);
            }
        }
        Ok(())
    }
}

/// How a wanted child is read.
enum ValueMode<'n, 'o, 'de> {
    Capture,
    Descend(&'n [Node<'n>], &'o mut [Option<&'de RawValue>]),
}

/// Fill the slots below `node` from an already captured value (a path that is a prefix of
/// another): a second scan of that value only.
fn fill_from<'de>(raw: &'de RawValue, node: &Node<'_>, out: &mut [Option<&'de RawValue>]) {
    let Ok(Some(v)) = pluck(raw.get(), &[node.key.to_owned()]) else {
        return;
    };
    for &s in &node.slots {
        if out[s].is_none() {
            out[s] = Some(v);
        }
    }
    for c in &node.children {
        fill_from(v, c, out);
    }
}

impl<'de> DeserializeSeed<'de> for Descend<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A slice of slots handed down to a nested `Descend`.
struct SliceDescend<'n, 'o, 'de> {
    nodes: &'n [Node<'n>],
    out: &'o mut [Option<&'de RawValue>],
}

impl<'de> DeserializeSeed<'de> for SliceDescend<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(DescendVisitor {
            nodes: self.nodes,
            out: self.out,
        })
    }
}

impl<'de> Visitor<'de> for Descend<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        DescendVisitor {
            nodes: self.nodes,
            out: self.out.as_mut_slice(),
        }
        .visit_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        DescendVisitor {
            nodes: self.nodes,
            out: self.out.as_mut_slice(),
        }
        .visit_seq(seq)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

struct DescendVisitor<'n, 'o, 'de> {
    nodes: &'n [Node<'n>],
    out: &'o mut [Option<&'de RawValue>],
}

impl<'de> Visitor<'de> for DescendVisitor<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let keys: Vec<&str> = self.nodes.iter().map(|n| n.key).collect();
        let mut seen = vec![false; self.nodes.len()];
        while let Some(k) = map.next_key_seed(KeyIndex(&keys))? {
            match k {
                Some(i) if !seen[i] => {
                    seen[i] = true;
                    Descend::child(&self.nodes[i], self.out, |mode| match mode {
                        ValueMode::Capture => map.next_value::<&'de RawValue>().map(Some),
                        ValueMode::Descend(nodes, out) => map
                            .next_value_seed(SliceDescend { nodes, out })
                            .map(|()| None),
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let idx = i.to_string();
            let found = self.nodes.iter().position(|n| n.key == idx);
            match found {
                Some(n) => {
                    let mut more = true;
                    Descend::child(&self.nodes[n], self.out, |mode| match mode {
                        ValueMode::Capture => {
                            let v = seq.next_element::<&'de RawValue>()?;
                            more = v.is_some();
                            Ok(v)
                        }
                        ValueMode::Descend(nodes, out) => {
                            more = seq
                                .next_element_seed(SliceDescend { nodes, out })?
                                .is_some();
                            Ok(None)
                        }
                    })?;
                    if !more {
                        return Ok(());
                    }
                }
                None => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(());
                    }
                }
            }
            i += 1;
        }
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The position of a map key among the wanted ones.
struct KeyIndex<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// A full record from its raw JSON.
pub fn record(
    entity: &str,
    rec: &RawValue,
    shape: &RecordShape,
    fetched_at_us: Micros,
) -> Result<Record, String> {
    let (id, delta_us) = id_and_delta(rec, shape)?;
    Ok(Record {
        entity: entity.to_owned(),
        id,
        version: Version {
            delta_us,
            fetched_at_us,
            hash: ContentHash::of(rec.get().as_bytes()),
        },
        payload: rec.to_owned(),
    })
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

/// The records and the metadata of a page, from one scan of its body.
fn page_view<'a>(
    body: &'a str,
    shape: &RecordShape,
) -> Result<(Vec<&'a RawValue>, PageMeta), String> {
    let optional = [
        &shape.total_count_pointer,
        &shape.next_link_pointer,
        &shape.next_cursor_pointer,
    ];
    let mut paths: Vec<&[String]> = vec![&shape.records_pointer];
    paths.extend(optional.iter().filter_map(|p| p.as_deref()));
    let mut found = pluck_many(body, &paths)?.into_iter();
    let records = records_array(found.next().flatten(), shape)?;
    let mut meta = optional.map(|p| {
        if p.is_some() {
            found.next().flatten()
        } else {
            None
        }
    });
    let total = match meta[0].take() {
        Some(v) => Some(
            v.get()
                .parse::<u64>()
                .map_err(|_| format!("total count is not a count: {}", v.get()))?,
        ),
        None => None,
    };
    let string = |v: Option<&RawValue>| -> Result<Option<String>, String> {
        v.map(|v| serde_json::from_str::<String>(v.get()).map_err(|e| e.to_string()))
            .transpose()
    };
    Ok((records, (total, string(meta[1])?, string(meta[2])?)))
}

pub fn parse_record_page(
    entity: &str,
    body: &str,
    shape: &RecordShape,
    fetched_at_us: Micros,
) -> Result<ParsedPage, String> {
    let (raws, (total_count, next_link, next_cursor)) = page_view(body, shape)?;
    let mut records = Vec::with_capacity(raws.len());
    for r in raws {
        records.push(record(entity, r, shape, fetched_at_us)?);
    }
    Ok(ParsedPage {
        records,
        total_count,
        next_link,
        next_cursor,
    })
}

pub fn parse_id_page(body: &str, shape: &RecordShape) -> Result<ParsedIds, String> {
    let (raws, (total_count, next_link, next_cursor)) = page_view(body, shape)?;
    let mut ids = Vec::with_capacity(raws.len());
    for r in raws {
        let (id, delta_us) = id_and_delta(r, shape)?;
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
) -> Result<Record, String> {
    let raw = pluck(body, &shape.records_pointer)?
        .ok_or_else(|| format!("no record at /{}", shape.records_pointer.join("/")))?;
    record(entity, raw, shape, fetched_at_us)
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

    #[test]
    fn truncated_or_wrong_shapes_are_errors() {
        let cut = &PAGE[..PAGE.len() / 2];
        assert!(parse_record_page("people", cut, &shape(), 0).is_err());
        assert!(parse_record_page("people", r#"{"data":{}}"#, &shape(), 0).is_err());
        assert!(parse_record_page("people", r#"{"errors":[]}"#, &shape(), 0).is_err());
        assert!(parse_record_page("people", r#"{"data":[{"id":"1"}]}"#, &shape(), 0).is_err());
        assert!(
            parse_record_page(
                "people",
                r#"{"data":[{"id":{"a":1},"attributes":{"updated_at":"2024-05-01T12:00:00Z"}}]}"#,
                &shape(),
                0
            )
            .is_err()
        );
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

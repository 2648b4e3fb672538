//! The field-level difference of two JSON documents (the stored payload and the source's live
//! record), as JSON pointers: pure, bounded in what it keeps whatever the payloads' size.
//!
//! Objects are compared key by key (in key order), arrays index by index (an element inserted
//! at the front shows as every later index changed, and the tail added), anything else by
//! value; a value whose type differs is one change at its pointer. Numbers compare by value
//! (`1.0` and `1` are equal when either is a float: DynamoDB keeps the number, not its text).
//! "Added" is at the source and not in the store (what a sync would add), "removed" the other
//! way round. Every difference is counted; the first `max` are kept, each side's value as
//! compact JSON cut at [`VALUE_CHARS`] characters.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;

/// The longest value text shown, in characters; a longer one is cut and marked.
pub const VALUE_CHARS: usize = 200;

/// What happened at a pointer, from the store's copy to the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// At the source, not in the store.
    Added,
    /// In the store, no longer at the source.
    Removed,
    /// At both, with different values.
    Changed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }
}

/// One side's value at a pointer, as shown: the value itself when its JSON text is short,
/// otherwise the first [`VALUE_CHARS`] characters of the text.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    Whole(Value),
    /// The beginning of the value's compact JSON text (never the whole value).
    Cut(String),
}

impl Shown {
    fn of(v: &Value) -> Shown {
        let mut w = Bounded::default();
        // `Bounded` refuses bytes past its limit, so serialising stops early on a large value.
        let complete = serde_json::to_writer(&mut w, v).is_ok();
        // The limit may cut a multi-byte character: keep the valid beginning.
        let text = match std::str::from_utf8(&w.bytes) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&w.bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        if complete && text.chars().count() <= VALUE_CHARS {
            return Shown::Whole(v.clone());
        }
        Shown::Cut(text.chars().take(VALUE_CHARS).collect())
    }

    /// Compact JSON text; a cut value ends in `…`.
    pub fn text(&self) -> String {
        match self {
            Shown::Whole(v) => v.to_string(),
            Shown::Cut(t) => format!("{t}…"),
        }
    }

    /// For `--json`: the value, or the cut text (ending in `…`) as a string.
    pub fn to_json(&self) -> Value {
        match self {
            Shown::Whole(v) => v.clone(),
            Shown::Cut(_) => Value::String(self.text()),
        }
    }

    pub fn is_cut(&self) -> bool {
        matches!(self, Shown::Cut(_))
    }
}

/// A writer that keeps the first bytes of what is written and then refuses more.
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Four bytes per character at most: enough bytes for VALUE_CHARS characters, and one
        // more character to know the text is longer.
        let room = (VALUE_CHARS + 1) * 4 - self.bytes.len();
        if buf.len() > room {
            self.bytes.extend_from_slice(&buf[..room]);
            return Err(std::io::Error::other("value text over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One difference: where, what, and both sides' values (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub change: Change,
    /// RFC 6901 JSON pointer (`""` is the whole document).
    pub pointer: String,
    pub store: Option<Shown>,
    pub source: Option<Shown>,
}

/// Every difference counted, the first `max` kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    /// The first differences, in document order (keys sorted, then indexes).
    pub listed: Vec<Difference>,
}

impl Diff {
    pub fn total(&self) -> usize {
        self.added + self.removed + self.changed
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Differences counted but not listed.
    pub fn unlisted(&self) -> usize {
        self.total() - self.listed.len()
    }

    fn push(
        &mut self,
        max: usize,
        change: Change,
        pointer: &str,
        a: Option<&Value>,
        b: Option<&Value>,
    ) {
        match change {
            Change::Added => self.added += 1,
            Change::Removed => self.removed += 1,
            Change::Changed => self.changed += 1,
        }
        if self.listed.len() < max {
            self.listed.push(Difference {
                change,
                pointer: pointer.to_owned(),
                store: a.map(Shown::of),
                source: b.map(Shown::of),
            });
        }
    }
}

/// The differences from `store` to `source`, at most `max` listed (all counted).
pub fn diff(store: &Value, source: &Value, max: usize) -> Diff {
    let mut out = Diff::default();
    let mut pointer = String::new();
    walk(store, source, &mut pointer, max, &mut out);
    out
}

fn walk(a: &Value, b: &Value, pointer: &mut String, max: usize, out: &mut Diff) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let len = pointer.len();
                push_token(pointer, k);
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => walk(u, v, pointer, max, out),
                    (Some(u), None) => out.push(max, Change::Removed, pointer, Some(u), None),
                    (None, Some(v)) => out.push(max, Change::Added, pointer, None, Some(v)),
                    (None, None) => {}
                }
                pointer.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                match (x.get(i), y.get(i)) {
                    (Some(u), Some(v)) => walk(u, v, pointer, max, out),
                    (Some(u), None) => out.push(max, Change::Removed, pointer, Some(u), None),
                    (None, Some(v)) => out.push(max, Change::Added, pointer, None, Some(v)),
                    (None, None) => {}
                }
                pointer.truncate(len);
            }
        }
        (Value::Number(x), Value::Number(y)) if same_number(x, y) => {}
        _ if a == b => {}
        _ => out.push(max, Change::Changed, pointer, Some(a), Some(b)),
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    x == y || ((x.is_f64() || y.is_f64()) && x.as_f64().is_some() && x.as_f64() == y.as_f64())
}

/// Appends `/token`, escaped as RFC 6901 says (`~` is `~0`, `/` is `~1`).
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `(change, pointer, store text, source text)` of every listed difference.
    fn rows(d: &Diff) -> Vec<(&'static str, String, Option<String>, Option<String>)> {
        d.listed
            .iter()
            .map(|x| {
                (
                    x.change.as_str(),
                    x.pointer.clone(),
                    x.store.as_ref().map(Shown::text),
                    x.source.as_ref().map(Shown::text),
                )
            })
            .collect()
    }

    fn s(t: &str) -> Option<String> {
        Some(t.to_owned())
    }

    #[test]
    fn equal_documents_have_no_difference() {
        let v = json!({"id": "1", "attributes": {"a": [1, {"b": null}], "c": 1.5}});
        let d = diff(&v, &v.clone(), 50);
        assert!(d.is_empty() && d.listed.is_empty(), "{d:?}");
    }

    #[test]
    fn added_removed_and_changed_fields_by_pointer() {
        let store =
            json!({"id": "1", "attributes": {"name": "Ann", "old": true, "tags": ["a", "b"]}});
        let source = json!({"id": "1", "attributes": {"name": "Anna", "new": 3, "tags": ["a"]}});
        let d = diff(&store, &source, 50);
        assert_eq!(
            rows(&d),
            [
                (
                    "changed",
                    "/attributes/name".into(),
                    s("\"Ann\""),
                    s("\"Anna\"")
                ),
                ("added", "/attributes/new".into(), None, s("3")),
                ("removed", "/attributes/old".into(), s("true"), None),
                ("removed", "/attributes/tags/1".into(), s("\"b\""), None),
            ]
        );
        assert_eq!((d.added, d.removed, d.changed, d.total()), (1, 2, 1, 4));
    }

    #[test]
    fn a_type_change_is_one_change_at_its_pointer() {
        let d = diff(&json!({"a": {"x": 1, "y": 2}}), &json!({"a": [1, 2]}), 50);
        assert_eq!(
            rows(&d),
            [("changed", "/a".into(), s(r#"{"x":1,"y":2}"#), s("[1,2]"))]
        );
        // The whole document.
        let d = diff(&json!(1), &json!("1"), 50);
        assert_eq!(rows(&d), [("changed", String::new(), s("1"), s("\"1\""))]);
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        let d = diff(
            &json!({"a/b": 1, "c~d": 1}),
            &json!({"a/b": 2, "c~d": 2}),
            50,
        );
        let pointers: Vec<&str> = d.listed.iter().map(|x| x.pointer.as_str()).collect();
        assert_eq!(pointers, ["/a~1b", "/c~0d"]);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(diff(&json!({"n": 1.0}), &json!({"n": 1}), 50).is_empty());
        assert!(diff(&json!({"n": 2.5}), &json!({"n": 2.5}), 50).is_empty());
        assert_eq!(diff(&json!({"n": 1.5}), &json!({"n": 1}), 50).changed, 1);
        assert_eq!(diff(&json!({"n": -1}), &json!({"n": 1}), 50).changed, 1);
    }

    #[test]
    fn every_difference_is_counted_and_the_first_max_listed() {
        let store = json!((0..120).collect::<Vec<i32>>());
        let source = json!((0..120).map(|i| i + 1).collect::<Vec<i32>>());
        let d = diff(&store, &source, 50);
        assert_eq!((d.total(), d.listed.len(), d.unlisted()), (120, 50, 70));
        assert_eq!(d.listed[0].pointer, "/0");
        assert_eq!(d.listed[49].pointer, "/49");
        let none = diff(&store, &source, 0);
        assert_eq!((none.total(), none.listed.len()), (120, 0));
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(1000);
        let d = diff(&json!({"a": long}), &json!({"a": "short"}), 50);
        let x = &d.listed[0];
        let shown = x.store.as_ref().unwrap();
        assert!(shown.is_cut());
        let text = shown.text();
        assert_eq!(text.chars().count(), VALUE_CHARS + 1, "{text}");
        assert!(text.starts_with("\"éé") && text.ends_with('…'), "{text}");
        assert_eq!(shown.to_json(), Value::String(text));
        assert_eq!(x.source.as_ref().unwrap(), &Shown::Whole(json!("short")));

        // Exactly at the limit: whole. One more character: cut.
        let at = "x".repeat(VALUE_CHARS - 2); // and its two quotes
        assert!(!Shown::of(&json!(at)).is_cut());
        assert!(Shown::of(&json!(format!("{at}x"))).is_cut());

        // A large subtree is cut too, not serialised whole.
        let big = json!({"rows": (0..100_000).collect::<Vec<i32>>()});
        let shown = Shown::of(&big);
        assert!(shown.is_cut() && shown.text().starts_with("{\"rows\":[0,1,2"));
    }
}

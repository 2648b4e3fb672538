//! A tiny, allocation-light JSON writer: pages are written straight into one `String` in a fixed
//! key order, so that the same seed gives the same bytes and a page of 100 people costs little
//! more than copying its bytes.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Which attributes a response carries (JSON:API sparse fieldsets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum FieldSet {
    /// Every attribute.
    #[default]
    All,
    /// Only the listed attributes (`id` and `type` are always written).
    Only(Vec<String>),
}

impl FieldSet {
    pub(crate) fn wants(&self, name: &str) -> bool {
        match self {
            FieldSet::All => true,
            FieldSet::Only(list) => list.iter().any(|f| f == name),
        }
    }
}

/// Writes the members of one JSON object, skipping attributes the field set excludes.
pub(crate) struct ObjWriter<'a> {
    pub out: &'a mut String,
    fields: &'a FieldSet,
    first: bool,
}

impl<'a> ObjWriter<'a> {
    /// Starts writing members into an object whose `{` the caller has written. `first` is false
    /// when members were already written.
    pub(crate) fn new(out: &'a mut String, fields: &'a FieldSet, first: bool) -> Self {
        ObjWriter { out, fields, first }
    }

    /// Writes `"name":` when the field is wanted; the caller then writes the value.
    pub(crate) fn key(&mut self, name: &str) -> bool {
        if !self.fields.wants(name) {
            return false;
        }
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
        true
    }

    pub(crate) fn str(&mut self, name: &str, v: &str) {
        if self.key(name) {
            push_str(self.out, v);
        }
    }

    pub(crate) fn opt_str(&mut self, name: &str, v: Option<&str>) {
        if self.key(name) {
            match v {
                Some(v) => push_str(self.out, v),
                None => self.out.push_str("null"),
            }
        }
    }

    pub(crate) fn int(&mut self, name: &str, v: i64) {
        if self.key(name) {
            let _ = write!(self.out, "{v}");
        }
    }

    pub(crate) fn opt_int(&mut self, name: &str, v: Option<i64>) {
        if self.key(name) {
            match v {
                Some(v) => {
                    let _ = write!(self.out, "{v}");
                }
                None => self.out.push_str("null"),
            }
        }
    }

    pub(crate) fn bool(&mut self, name: &str, v: bool) {
        if self.key(name) {
            self.out.push_str(if v { "true" } else { "false" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings_like_serde_json() {
        for s in [
            "plain",
            "quote\" back\\ slash",
            "line\nfeed\ttab\r",
            "\u{1}ctl",
            "ünï ✓",
        ] {
            let mut out = String::new();
            push_str(&mut out, s);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn object_writer_skips_unwanted_fields() {
        let fields = FieldSet::Only(vec!["b".into(), "d".into()]);
        let mut out = String::from("{");
        let mut w = ObjWriter::new(&mut out, &fields, true);
        w.str("a", "x");
        w.int("b", 7);
        w.bool("c", true);
        w.opt_str("d", None);
        out.push('}');
        assert_eq!(out, r#"{"b":7,"d":null}"#);
    }
}

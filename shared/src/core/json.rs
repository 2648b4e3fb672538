//! A validating JSON scanner that finds values by JSON pointer in one pass over the text and
//! builds nothing: what it returns are byte ranges of the input. `RawJson`, a record's payload,
//! is text such a scan accepted.
//!
//! A page of records is scanned once: the scan validates the whole body (RFC 8259, as strictly
//! as `serde_json`), finds the page's metadata (total count, next link, cursor), and, for each
//! element of the records array, the element's range and the ranges of its wanted fields (ID,
//! delta value). Everything it is not asked for is skipped by a loop that keeps no more than a
//! bit per open container.
//!
//! Semantics the callers rely on:
//! - a pointer segment names an object key (compared after unescaping) or an array index
//!   (written without leading zeros, as in RFC 6901);
//! - the first occurrence of a duplicated key wins (as `serde_json` reading into a map would
//!   keep, and as our earlier parser did);
//! - a value `null` is found like any other; callers decide what it means;
//! - nesting deeper than `MAX_DEPTH` containers is an error, never a stack overflow;
//! - a `\u` escape of an unpaired UTF-16 surrogate (`"\ud800"`) is valid JSON text (RFC 8259
//!   allows it, and so does `serde_json` when it skips a value), but no reader that decodes
//!   strings can read it (`serde_json` into a `String` or a `Value` fails): a scan accepts it
//!   and records where it is ([`Found::lone_surrogates`]), so that the caller can reject the one
//!   record holding it; [`RawJson::parse`] refuses it.

use std::fmt;
use std::ops::Range;

/// Nesting of arrays and objects from which on a text is refused (`serde_json`'s recursion
/// limit for values: 127 levels are read, 128 are not).
pub const MAX_DEPTH: usize = 128;

/// Wanted paths per element of the records array, at most (the ID and the delta value are two).
pub const MAX_ELEMENT_PATHS: usize = 8;

/// Why a text is not the JSON we can read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

impl std::error::Error for ScanError {}

/// A byte range of the scanned text.
pub type Span = Range<usize>;

/// One step of the wanted paths: the key (or index), the slots that end here, the steps below,
/// and, for the records array, the paths wanted inside each of its elements.
#[derive(Debug)]
struct Node<'p> {
    key: &'p str,
    index: Option<usize>,
    slots: Vec<usize>,
    children: Vec<Node<'p>>,
    each: Option<Box<Node<'p>>>,
}

impl<'p> Node<'p> {
    fn root() -> Node<'p> {
        Node {
            key: "",
            index: None,
            slots: Vec::new(),
            children: Vec::new(),
            each: None,
        }
    }

    /// The node at `path` below this one, created as needed.
    fn at(&mut self, path: &'p [String]) -> &mut Node<'p> {
        let Some((first, rest)) = path.split_first() else {
            return self;
        };
        let i = match self.children.iter().position(|n| n.key == first.as_str()) {
            Some(i) => i,
            None => {
                // RFC 6901: an index is digits without a leading zero ("0" itself allowed).
                let index = first
                    .parse::<usize>()
                    .ok()
                    .filter(|i| i.to_string() == *first);
                self.children.push(Node {
                    key: first,
                    index,
                    slots: Vec::new(),
                    children: Vec::new(),
                    each: None,
                });
                self.children.len() - 1
            }
        };
        self.children[i].at(rest)
    }

    fn wants_inside(&self) -> bool {
        !self.children.is_empty() || self.each.is_some()
    }
}

/// The paths one scan looks for: document-level ones, and optionally an array whose elements
/// are each scanned for their own paths.
#[derive(Debug)]
pub struct Paths<'p> {
    root: Node<'p>,
    slots: usize,
    element_slots: usize,
}

/// Paths that cannot be scanned together in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathsError {
    /// Another wanted path goes through, or into, the array whose elements are scanned.
    ThroughElements,
    /// More per-element paths than `MAX_ELEMENT_PATHS`, or more keys at one level than 64.
    TooMany,
}

impl fmt::Display for PathsError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            PathsError::ThroughElements => "a path goes through the array whose elements are read",
            PathsError::TooMany => "too many paths (per element, or keys at one level)",
        })
    }
}

impl std::error::Error for PathsError {}

/// What a JSON value is, named without its text: errors about a value say its kind, never
/// echo it (it may be part of a payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    String,
    Number,
    Object,
    Array,
    Bool,
    Null,
}

impl JsonKind {
    /// The kind of a value from its text (a value a scan accepted: the first byte decides).
    pub fn of(text: &str) -> JsonKind {
        match text.trim_start().as_bytes().first() {
            Some(b'"') => JsonKind::String,
            Some(b'{') => JsonKind::Object,
            Some(b'[') => JsonKind::Array,
            Some(b't' | b'f') => JsonKind::Bool,
            Some(b'n') | None => JsonKind::Null,
            Some(_) => JsonKind::Number,
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            JsonKind::String => "a string",
            JsonKind::Number => "a number",
            JsonKind::Object => "an object",
            JsonKind::Array => "an array",
            JsonKind::Bool => "a boolean",
            JsonKind::Null => "null",
        })
    }
}

impl<'p> Paths<'p> {
    /// Document-level paths; slot `i` of the result is `paths[i]`.
    pub fn new(paths: &[&'p [String]]) -> Result<Paths<'p>, PathsError> {
        let mut root = Node::root();
        for (slot, p) in paths.iter().enumerate() {
            root.at(p).slots.push(slot);
        }
        let out = Paths {
            root,
            slots: paths.len(),
            element_slots: 0,
        };
        out.check(&out.root)?;
        Ok(out)
    }

    /// Also scan each element of the array at `array` for `element_paths` (relative to the
    /// element). Another path may name the array itself (its slot then holds the whole array,
    /// or whatever else is there), but none may go through it or end above it.
    pub fn with_elements(
        paths: &[&'p [String]],
        array: &'p [String],
        element_paths: &[&'p [String]],
    ) -> Result<Paths<'p>, PathsError> {
        if element_paths.len() > MAX_ELEMENT_PATHS {
            return Err(PathsError::TooMany);
        }
        let overlaps = |p: &[String]| p != array && (p.starts_with(array) || array.starts_with(p));
        if paths.iter().any(|p| overlaps(p)) {
            return Err(PathsError::ThroughElements);
        }
        let mut out = Paths::new(paths)?;
        let mut element = Node::root();
        for (slot, p) in element_paths.iter().enumerate() {
            element.at(p).slots.push(slot);
        }
        out.check(&element)?;
        out.root.at(array).each = Some(Box::new(element));
        out.element_slots = element_paths.len();
        Ok(out)
    }

    fn check(&self, node: &Node<'_>) -> Result<(), PathsError> {
        if node.children.len() > 64 {
            return Err(PathsError::TooMany);
        }
        node.children.iter().try_for_each(|c| self.check(c))
    }

    /// Scan `text` (the whole of it must be one JSON value).
    pub fn scan(&self, text: &str) -> Result<Found, ScanError> {
        let mut s = Scanner {
            b: text.as_bytes(),
            pos: 0,
            element_slots: self.element_slots,
            found: Found {
                slots: vec![None; self.slots],
                elements: Vec::new(),
                element_slots: Vec::new(),
                stride: self.element_slots,
                lone_surrogates: Vec::new(),
            },
        };
        let mut slots = std::mem::take(&mut s.found.slots);
        s.value(Some(&self.root), 0, &mut slots)?;
        s.found.slots = slots;
        s.ws();
        if s.pos != s.b.len() {
            return Err(s.err("trailing characters"));
        }
        Ok(s.found)
    }
}

/// What a scan found: ranges into the scanned text.
#[derive(Debug, Default)]
pub struct Found {
    /// Per document-level path: the range of its value, if present.
    pub slots: Vec<Option<Span>>,
    /// Per element of the scanned array: its range.
    pub elements: Vec<Span>,
    /// Per element, `stride` entries: the ranges of the per-element paths.
    pub element_slots: Vec<Option<Span>>,
    pub stride: usize,
    /// Byte offsets (ascending) of the `\u` escapes of unpaired surrogates, in keys and values.
    pub lone_surrogates: Vec<usize>,
}

impl Found {
    /// The per-element path ranges of element `i`.
    pub fn element(&self, i: usize) -> &[Option<Span>] {
        &self.element_slots[i * self.stride..(i + 1) * self.stride]
    }

    /// Whether a `\u` escape of an unpaired surrogate lies in `span`.
    pub fn lone_surrogate_in(&self, span: &Span) -> bool {
        let first = self.lone_surrogates.partition_point(|&o| o < span.start);
        self.lone_surrogates
            .get(first)
            .is_some_and(|&o| o < span.end)
    }
}

/// One JSON value as raw text, known to be valid: checked by a validating scan when built, and
/// never rebuilt from a DOM. Its `Debug` shows the length only, so that a record printed in a
/// log does not carry its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// Check `text` as one JSON value (surrounding whitespace included, as in the source's
    /// bytes) whose strings all decode: an escape of an unpaired surrogate is refused.
    pub fn parse(text: impl Into<String>) -> Result<RawJson, ScanError> {
        let text = text.into();
        let found = Paths::new(&[])
            .expect("no paths cannot clash")
            .scan(&text)?;
        if let Some(&offset) = found.lone_surrogates.first() {
            return Err(ScanError {
                offset,
                what: LONE_SURROGATE,
            });
        }
        Ok(RawJson(text.into_boxed_str()))
    }

    /// A copy of text that a scan of this module has already accepted as one whole value (a
    /// record's range found by `Paths::scan`, holding no unpaired surrogate escape): not
    /// checked again.
    pub(crate) fn scanned(text: &str) -> RawJson {
        RawJson(text.into())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RawJson(<{} bytes>)", self.0.len())
    }
}

/// What [`RawJson::parse`] says of an unpaired surrogate escape.
const LONE_SURROGATE: &str = "escape of an unpaired UTF-16 surrogate";

/// Validate `text` as one JSON value (unpaired surrogate escapes allowed, as `serde_json`
/// allows them in a value it skips).
pub fn validate(text: &str) -> Result<(), ScanError> {
    let mut s = Scanner {
        b: text.as_bytes(),
        pos: 0,
        element_slots: 0,
        found: Found::default(),
    };
    s.value(None, 0, &mut [])?;
    s.ws();
    if s.pos != s.b.len() {
        return Err(s.err("trailing characters"));
    }
    Ok(())
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    element_slots: usize,
    found: Found,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is `"`, `\` or a control character; the lowest set bit
/// always marks a real one (borrows only travel upwards from a marked byte).
#[inline]
fn string_specials(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

impl Scanner<'_> {
    fn err(&self, what: &'static str) -> ScanError {
        ScanError {
            offset: self.pos,
            what,
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// One value, with the wanted paths below `node`; fills the slots that end at `node`.
    fn value(
        &mut self,
        node: Option<&Node<'_>>,
        depth: usize,
        slots: &mut [Option<Span>],
    ) -> Result<(), ScanError> {
        self.ws();
        let start = self.pos;
        match node {
            Some(n) if n.wants_inside() => match self.peek() {
                Some(b'{') if !n.children.is_empty() => self.object(n, depth + 1, slots)?,
                Some(b'[') => match &n.each {
                    Some(each) => self.elements(each, depth + 1)?,
                    None => self.array(n, depth + 1, slots)?,
                },
                _ => self.skip(depth)?,
            },
            _ => self.skip(depth)?,
        }
        if let Some(n) = node {
            for &s in &n.slots {
                if slots[s].is_none() {
                    slots[s] = Some(start..self.pos);
                }
            }
        }
        Ok(())
    }

    /// Enter a container at its opening bracket; `true` when it is empty (and so closed
    /// already).
    fn enter(&mut self, depth: usize, close: u8) -> Result<bool, ScanError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// After an element or member: `true` at the next one, `false` past the closing bracket.
    fn next_or_close(&mut self, close: u8) -> Result<bool, ScanError> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(false)
            }
            None => Err(self.err("unexpected end of input")),
            Some(_) if close == b']' => Err(self.err("expected `,` or `]`")),
            Some(_) => Err(self.err("expected `,` or `}`")),
        }
    }

    /// A member's key and the colon after it; the key's text between the quotes.
    fn key(&mut self) -> Result<(usize, usize, bool), ScanError> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(self.err(if self.peek().is_none() {
                "unexpected end of input"
            } else {
                "expected a string key"
            }));
        }
        let start = self.pos + 1;
        let escaped = self.string()?;
        let end = self.pos - 1;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.err("expected `:`"));
        }
        self.pos += 1;
        Ok((start, end, escaped))
    }

    fn object(
        &mut self,
        node: &Node<'_>,
        depth: usize,
        slots: &mut [Option<Span>],
    ) -> Result<(), ScanError> {
        if self.enter(depth, b'}')? {
            return Ok(());
        }
        let mut seen = 0u64;
        loop {
            let (ks, ke, escaped) = self.key()?;
            let raw = &self.b[ks..ke];
            let found = if escaped {
                // Rare: compare the unescaped key. One that does not unescape (a lone
                // surrogate) matches nothing.
                let quoted = &self.b[ks - 1..ke + 1];
                std::str::from_utf8(quoted)
                    .ok()
                    .and_then(|q| serde_json::from_str::<String>(q).ok())
                    .and_then(|k| node.children.iter().position(|c| c.key == k))
            } else {
                node.children.iter().position(|c| c.key.as_bytes() == raw)
            };
            match found {
                Some(i) if seen & (1 << i) == 0 => {
                    seen |= 1 << i;
                    self.value(Some(&node.children[i]), depth, slots)?;
                }
                _ => self.value(None, depth, slots)?,
            }
            if !self.next_or_close(b'}')? {
                return Ok(());
            }
        }
    }

    fn array(
        &mut self,
        node: &Node<'_>,
        depth: usize,
        slots: &mut [Option<Span>],
    ) -> Result<(), ScanError> {
        if self.enter(depth, b']')? {
            return Ok(());
        }
        let mut i = 0usize;
        loop {
            let child = node.children.iter().find(|c| c.index == Some(i));
            self.value(child, depth, slots)?;
            if !self.next_or_close(b']')? {
                return Ok(());
            }
            i += 1;
        }
    }

    /// The records array: each element's range and its wanted paths.
    fn elements(&mut self, each: &Node<'_>, depth: usize) -> Result<(), ScanError> {
        if self.enter(depth, b']')? {
            return Ok(());
        }
        let mut tmp: [Option<Span>; MAX_ELEMENT_PATHS] = Default::default();
        let stride = self.element_slots;
        loop {
            tmp[..stride].fill(None);
            self.ws();
            let start = self.pos;
            self.value(Some(each), depth, &mut tmp[..stride])?;
            self.found.elements.push(start..self.pos);
            self.found
                .element_slots
                .extend(tmp[..stride].iter_mut().map(Option::take));
            if !self.next_or_close(b']')? {
                return Ok(());
            }
        }
    }

    /// Skip one value, validating it, without recursion: one bit per open container (1 for an
    /// object) records what closes it.
    fn skip(&mut self, depth: usize) -> Result<(), ScanError> {
        let mut stack: u128 = 0;
        let mut open = 0usize;
        'value: loop {
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    if !self.enter(depth + open + 1, b'}')? {
                        stack = (stack << 1) | 1;
                        open += 1;
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    if !self.enter(depth + open + 1, b']')? {
                        stack <<= 1;
                        open += 1;
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                None => return Err(self.err("unexpected end of input")),
                Some(_) => return Err(self.err("expected a value")),
            }
            // After a complete value: close containers until one continues.
            loop {
                if open == 0 {
                    return Ok(());
                }
                let in_object = stack & 1 == 1;
                if self.next_or_close(if in_object { b'}' } else { b']' })? {
                    if in_object {
                        self.key()?;
                    }
                    continue 'value;
                }
                stack >>= 1;
                open -= 1;
            }
        }
    }

    /// A string from its opening quote; `true` when it holds an escape.
    fn string(&mut self) -> Result<bool, ScanError> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            while let Some(chunk) = self.b.get(self.pos..self.pos + 8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                let m = string_specials(u64::from_le_bytes(w));
                if m != 0 {
                    self.pos += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                self.pos += 8;
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in a string")),
                Some(_) => self.pos += 1,
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn escape(&mut self) -> Result<(), ScanError> {
        match self.b.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'u') => {
                let Some(unit) = self.hex4(self.pos + 2) else {
                    self.pos += 2;
                    return Err(self.err("invalid \\u escape"));
                };
                match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate pairs with an escaped low one right after it.
                        let low = (self.b.get(self.pos + 6..self.pos + 8) == Some(b"\\u"))
                            .then(|| self.hex4(self.pos + 8))
                            .flatten();
                        if let Some(0xDC00..=0xDFFF) = low {
                            self.pos += 12;
                        } else {
                            self.found.lone_surrogates.push(self.pos);
                            self.pos += 6;
                        }
                    }
                    0xDC00..=0xDFFF => {
                        self.found.lone_surrogates.push(self.pos);
                        self.pos += 6;
                    }
                    _ => self.pos += 6,
                }
                Ok(())
            }
            None => Err(self.err("unterminated string")),
            Some(_) => {
                self.pos += 1;
                Err(self.err("invalid escape"))
            }
        }
    }

    /// The four hex digits at `at`, as a number.
    fn hex4(&self, at: usize) -> Option<u16> {
        let h = self.b.get(at..at + 4)?;
        h.iter().try_fold(0u16, |acc, &c| {
            Some(acc << 4 | (c as char).to_digit(16)? as u16)
        })
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.b.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse::pointer_segments;
    use serde::de::IgnoredAny;

    fn segs(ps: &[&str]) -> Vec<Vec<String>> {
        ps.iter().map(|p| pointer_segments(p)).collect()
    }

    fn pluck_all<'t>(text: &'t str, ps: &[&str]) -> Result<Vec<Option<&'t str>>, ScanError> {
        let owned = segs(ps);
        let refs: Vec<&[String]> = owned.iter().map(Vec::as_slice).collect();
        let found = Paths::new(&refs).expect("paths").scan(text)?;
        Ok(found
            .slots
            .into_iter()
            .map(|s| s.map(|r| &text[r]))
            .collect())
    }

    /// What `serde_json` finds at a pointer (first occurrence of duplicate keys is not
    /// expressible with `Value`, so the documents below have none).
    fn serde_at(text: &str, p: &str) -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        v.pointer(p).cloned()
    }

    #[test]
    fn finds_values_by_pointer_as_serde_json_does() {
        let doc = r#" {"data":[{"id":"1","attributes":{"updated_at":"t1","n":[1,2.5e3,-0,true,null]}},
            {"id":22,"attributes":{"updated_at":null}}],
            "links":{"next":"http://h/p?x=\"1\""},"meta":{"total_count":7,"a/b":{"c~d":[false]}},
            "e\u0073c":"x", "arr":[[0,[1,{"k":"deep"}]]]} "#;
        let ps = [
            "/data/0/id",
            "/data/1/id",
            "/data/0/attributes/updated_at",
            "/data/0/attributes/n/1",
            "/data/1/attributes/updated_at",
            "/links/next",
            "/meta/total_count",
            "/meta/a~1b/c~0d/0",
            "/esc",
            "/arr/0/1/1/k",
            "/data/2",
            "/data/01",
            "/missing/x",
            "/links",
        ];
        let got = pluck_all(doc, &ps).unwrap();
        for (p, g) in ps.iter().zip(&got) {
            let want = serde_at(doc, p);
            let got = g.map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
            assert_eq!(got, want, "pointer {p}");
        }
        assert_eq!(got[4], Some("null"));
    }

    #[test]
    fn elements_and_their_fields_in_one_pass() {
        let doc = r#"{"meta":{"total_count":3},"data":[
            {"id":"a","attributes":{"updated_at":"1"}} ,{"attributes":{"updated_at":"2"},"id":"b","id":"dup"},
            {"x":{"id":"not this"}}],"links":{}}"#;
        let (data, id, upd, total) = (
            pointer_segments("/data"),
            pointer_segments("/id"),
            pointer_segments("/attributes/updated_at"),
            pointer_segments("/meta/total_count"),
        );
        let paths = Paths::with_elements(&[&total], &data, &[&id, &upd]).unwrap();
        let f = paths.scan(doc).unwrap();
        assert_eq!(f.elements.len(), 3);
        let text = |s: &Option<Span>| s.clone().map(|r| &doc[r]);
        assert_eq!(text(&f.slots[0]), Some("3"));
        assert!(doc[f.elements[0].clone()].starts_with("{\"id\":\"a\""));
        assert!(doc[f.elements[1].clone()].ends_with("\"dup\"}"));
        assert_eq!(
            f.element(0).iter().map(text).collect::<Vec<_>>(),
            [Some("\"a\""), Some("\"1\"")]
        );
        assert_eq!(
            f.element(1).iter().map(text).collect::<Vec<_>>(),
            [Some("\"b\""), Some("\"2\"")]
        );
        assert_eq!(
            f.element(2).iter().map(text).collect::<Vec<_>>(),
            [None, None]
        );

        let paths = Paths::with_elements(&[&data], &data, &[&id]).unwrap();
        let f = paths.scan(r#"{"data":{"id":"1"}}"#).unwrap();
        assert!(f.elements.is_empty());
        assert_eq!(f.slots[0], Some(8..18));
        let f = paths.scan(r#"{"data":[{"id":"1"}]}"#).unwrap();
        assert_eq!((f.elements.len(), f.slots[0].clone()), (1, Some(8..20)));
        assert!(Paths::with_elements(&[&id], &data, &[&id]).is_ok());
        let below = pointer_segments("/data/0/id");
        assert_eq!(
            Paths::with_elements(&[&below], &data, &[&id]).unwrap_err(),
            PathsError::ThroughElements
        );
        let root: &[String] = &[];
        assert_eq!(
            Paths::with_elements(&[root], &data, &[&id]).unwrap_err(),
            PathsError::ThroughElements
        );
        let bare = Paths::with_elements(&[], &[], &[&id]).unwrap();
        let f = bare.scan(r#"[{"id":1},{"id":2}]"#).unwrap();
        assert_eq!(f.elements.len(), 2);
    }

    /// A tiny deterministic generator of JSON-like text: valid documents, then mutated.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn value(&mut self, depth: u32, out: &mut String) {
            let pick = if depth > 4 {
                self.below(5)
            } else {
                self.below(8)
            };
            match pick {
                0 => out.push_str(["true", "false", "null"][self.below(3) as usize]),
                1 => out.push_str(
                    [
                        "0",
                        "-12",
                        "3.25",
                        "1e9",
                        "-0.5E-3",
                        "12345678901234567890",
                        "7",
                    ][self.below(7) as usize],
                ),
                2..=4 => {
                    out.push('"');
                    for _ in 0..self.below(12) {
                        out.push_str(
                            [
                                "a",
                                "é",
                                "\\n",
                                "\\\"",
                                "\\u00e9",
                                "\\ud83d\\ude00",
                                " ",
                                "\\\\",
                                "\\/",
                                "x",
                                "id",
                                "日本",
                            ][self.below(12) as usize],
                        );
                    }
                    out.push('"');
                }
                5 | 6 => {
                    // Distinct keys ("i\u0064" is "id"), so that serde_json's `Value` (which
                    // keeps the last of duplicates) can be compared with the first we keep.
                    out.push('{');
                    let keys = [
                        "\"id\"",
                        "\"a\"",
                        "\"updated_at\"",
                        "\"i\\u0064\"",
                        "\"b c\"",
                    ];
                    let same = [0, 1, 2, 0, 4];
                    let mut used = 0u8;
                    for i in 0..self.below(5) {
                        let k = self.below(5) as usize;
                        if used & (1 << same[k]) != 0 {
                            continue;
                        }
                        used |= 1 << same[k];
                        if i > 0 && !out.ends_with('{') {
                            out.push(',');
                        }
                        out.push_str(keys[k]);
                        out.push_str([":", " : ", ":\n"][self.below(3) as usize]);
                        self.value(depth + 1, out);
                    }
                    out.push('}');
                }
                _ => {
                    out.push('[');
                    for i in 0..self.below(5) {
                        if i > 0 {
                            out.push_str([",", " , "][self.below(2) as usize]);
                        }
                        self.value(depth + 1, out);
                    }
                    out.push(']');
                }
            }
        }
        fn mutate(&mut self, s: &str) -> String {
            let mut b: Vec<char> = s.chars().collect();
            for _ in 0..=self.below(3) {
                let at = self.below(b.len() as u64 + 1) as usize;
                match self.below(4) {
                    0 if at < b.len() => {
                        b.remove(at);
                    }
                    1 => b.insert(
                        at,
                        [
                            '"', '\\', ',', ':', '{', '}', '[', ']', '0', '-', '.', 'e', '\u{1}',
                            'n', ' ',
                        ][self.below(15) as usize],
                    ),
                    2 => b.truncate(at),
                    _ if at < b.len() => {
                        b[at] = ['x', '"', '1', '}', '\u{7f}'][self.below(5) as usize]
                    }
                    _ => {}
                }
            }
            b.into_iter().collect()
        }
    }

    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let mut g = Gen(0x9E37_79B9_7F4A_7C15);
        let ps = ["/id", "/0", "/a/updated_at", "/1/id"];
        let (mut valid, mut invalid) = (0, 0);
        for round in 0..20_000 {
            let mut doc = String::new();
            g.value(0, &mut doc);
            let doc = if round % 2 == 0 { doc } else { g.mutate(&doc) };
            let serde_ok = serde_json::from_str::<IgnoredAny>(&doc).is_ok();
            let ours = pluck_all(&doc, &ps);
            assert_eq!(
                validate(&doc).is_ok(),
                serde_ok,
                "validate disagrees on {doc:?}"
            );
            assert_eq!(
                ours.is_ok(),
                serde_ok,
                "scan disagrees on {doc:?}: {ours:?}"
            );
            let Ok(found) = ours else {
                invalid += 1;
                continue;
            };
            valid += 1;
            // A mutation may have made duplicate keys; compare values on generated ones only.
            if round % 2 == 0 {
                let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
                for (p, f) in ps.iter().zip(found) {
                    let got = f.map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
                    assert_eq!(got.as_ref(), v.pointer(p), "{p} in {doc:?}");
                }
            }
        }
        assert!(
            valid > 5_000 && invalid > 5_000,
            "{valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(validate(&deep).is_err());
        assert!(pluck_all(&deep, &["/0/0"]).is_err());
        let obj = "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000);
        assert!(validate(&obj).is_err());
        assert!(pluck_all(&obj, &["/a/a/a"]).is_err());
        // As deep as serde_json reads into values, and no deeper (its skipping has no limit).
        for n in [127, 128, 129] {
            let nested = "[".repeat(n) + &"]".repeat(n);
            let serde_ok = serde_json::from_str::<serde_json::Value>(&nested).is_ok();
            assert_eq!(validate(&nested).is_ok(), serde_ok, "{n} levels");
            assert_eq!(serde_ok, n < MAX_DEPTH, "{n} levels");
        }
    }

    #[test]
    fn raw_json_is_checked_and_not_shown() {
        let ok = RawJson::parse(r#" {"secret":"s3cr3t"} "#).unwrap();
        assert_eq!(ok.get(), r#" {"secret":"s3cr3t"} "#);
        assert_eq!(format!("{ok:?}"), "RawJson(<21 bytes>)");
        assert!(RawJson::parse("{\"a\":").is_err());
        assert!(RawJson::parse("").is_err());
        assert!(RawJson::parse("1 2").is_err());
    }

    #[test]
    fn unpaired_surrogate_escapes_are_found_where_serde_json_cannot_decode() {
        // Each string alone: the scan accepts it (as serde_json skipping it does); it finds an
        // unpaired surrogate exactly when serde_json cannot decode the string.
        let units = [
            "\\ud83d", "\\ude00", "\\uD800", "\\uDFFF", "\\udbff", "\\udc00", "\\u0041", "\\ud7ff",
            "\\ue000", "a", "\\n", "é", "\\\\u", "u",
        ];
        let mut g = Gen(0x51_7CC1_B727_220A);
        for _ in 0..20_000 {
            let mut doc = String::from("\"");
            for _ in 0..g.below(6) {
                doc.push_str(units[g.below(units.len() as u64) as usize]);
            }
            doc.push('"');
            assert!(serde_json::from_str::<IgnoredAny>(&doc).is_ok(), "{doc}");
            let found = Paths::new(&[]).unwrap().scan(&doc).unwrap();
            let decodes = serde_json::from_str::<String>(&doc).is_ok();
            assert_eq!(found.lone_surrogates.is_empty(), decodes, "{doc}");
            assert_eq!(RawJson::parse(doc.as_str()).is_ok(), decodes, "{doc}");
        }
        // Where: the offset of the escape; in keys too; per element of a records array.
        let doc =
            r#"{"data":[{"id":"1","n":"ok \ud83d\ude00"},{"id":"2","n":"x\ud800"},{"\udc00":3}]}"#;
        let (data, id) = (pointer_segments("/data"), pointer_segments("/id"));
        let f = Paths::with_elements(&[], &data, &[&id])
            .unwrap()
            .scan(doc)
            .unwrap();
        assert_eq!(f.lone_surrogates.len(), 2);
        assert_eq!(
            &doc[f.lone_surrogates[0]..f.lone_surrogates[0] + 6],
            "\\ud800"
        );
        let flagged: Vec<bool> = f.elements.iter().map(|e| f.lone_surrogate_in(e)).collect();
        assert_eq!(flagged, [false, true, true]);
        let e = RawJson::parse(r#"{"n":"x\ud800"}"#).unwrap_err();
        assert_eq!((e.offset, e.what), (7, LONE_SURROGATE));
        validate(r#"{"n":"x\ud800"}"#).expect("valid JSON text");
    }

    #[test]
    fn errors_say_where() {
        let e = validate(r#"{"a":[1,2,}"#).unwrap_err();
        assert_eq!(e.offset, 10);
        assert!(e.to_string().contains("at byte 10"), "{e}");
        assert!(validate("").is_err());
        assert!(validate("  ").is_err());
        assert!(validate("\"a\u{1}\"").is_err());
        assert!(validate(r#""\x""#).is_err());
        assert!(validate(r#""\u12""#).is_err());
        assert!(validate("1 2").is_err());
        assert!(validate("[1,]").is_err());
        assert!(validate("{\"a\":1,}").is_err());
        assert!(validate("01").is_err());
        assert!(validate("-").is_err());
        assert!(validate("1.").is_err());
        assert!(validate("1e+").is_err());
        assert!(validate("nul").is_err());
        assert!(validate(" {\"a\" : [ 1 , -0.0e-0 , \"\\u00E9\\/\" ] } ").is_ok());
    }
}

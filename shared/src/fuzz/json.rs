//! The page scanner (`core::json`) against `serde_json`: the same verdict on every text (valid
//! or not), and the same value at every pointer of a valid document. Documents are generated
//! nasty: nesting around `MAX_DEPTH`, long strings, every escape (lone surrogates included),
//! numbers at the edges of `i64`, `u64` and `f64` and beyond, odd whitespace; then mutated.

use super::{Budget, Outcome, drive, re};
use crate::core::json::{Paths, RawJson, validate};
use crate::source::parse::pointer_segments;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::IgnoredAny;
use serde_json::Value;

/// A generated JSON value, rendered to text by [`render`].
#[derive(Debug, Clone)]
pub enum Doc {
    Lit(&'static str),
    Num(String),
    Str(Vec<Piece>),
    Arr(Vec<Doc>, &'static str),
    Obj(Vec<(Vec<Piece>, Doc)>, &'static str),
    /// `depth` arrays (or objects under key "k") around a value.
    Deep(usize, bool, Box<Doc>),
}

/// One piece of a string's text.
#[derive(Debug, Clone)]
pub enum Piece {
    Char(char),
    Escape(&'static str),
    Unicode(u16),
    Run(char, usize),
}

/// One edit of a rendered document.
#[derive(Debug, Clone)]
pub enum Edit {
    Remove(Index),
    Insert(Index, char),
    Truncate(Index),
    Replace(Index, char),
}

/// A document and the edits made to it (none: compare values too).
#[derive(Debug, Clone)]
pub struct Case {
    pub doc: Doc,
    pub edits: Vec<Edit>,
}

const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "0e0",
    "0E-0",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "1e309",
    "-1e400",
    "5e-324",
    "2.4703282292062328e-324",
    "1e-400",
    "123456789012345678901234567890123456789",
    "0.000000000000000000000000000000000000001",
    "1E+2",
    "1e00000000000000000000000000000000000001",
    "01",
    "1.",
    ".5",
    "+1",
    "-",
    "1e",
    "0x10",
    "NaN",
    "Infinity",
    "-Infinity",
];

const ESCAPES: &[&str] = &[
    "\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r", "\\x", "\\u12", "\\U0041", "\\",
];

const SPACES: &[&str] = &["", " ", "\n", "\t\r ", "  \n  ", "\u{a0}", "\u{b}", "\u{c}"];

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => prop::char::range('a', 'z').prop_map(Piece::Char),
        2 => any::<char>().prop_map(Piece::Char),
        1 => prop::char::range('\u{0}', '\u{1f}').prop_map(Piece::Char),
        2 => prop::sample::select(ESCAPES).prop_map(Piece::Escape),
        2 => any::<u16>().prop_map(Piece::Unicode),
        1 => (0xd800u16..0xe000).prop_map(Piece::Unicode),
        1 => (prop::sample::select(&['x', 'é', '😀', '"'][..]), 1usize..6000)
            .prop_map(|(c, n)| Piece::Run(c, n)),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(EDGE_NUMBERS).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        2 => (
            any::<bool>(),
            re("0|[1-9][0-9]{0,40}"),
            prop::option::of(re("[0-9]{1,40}")),
            prop::option::of((re("[eE]"), re("[+-]?"), re("[0-9]{1,6}"))),
        )
            .prop_map(|(neg, int, frac, exp)| {
                let mut s = if neg { "-".to_owned() } else { String::new() };
                s.push_str(&int);
                if let Some(f) = frac {
                    s.push('.');
                    s.push_str(&f);
                }
                if let Some((e, sign, digits)) = exp {
                    s.push_str(&e);
                    s.push_str(&sign);
                    s.push_str(&digits);
                }
                s
            }),
    ]
}

fn space() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just(""), 1 => prop::sample::select(SPACES)]
}

fn doc() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        prop::sample::select(&["true", "false", "null", "nul", "True", "[]", "{}"][..])
            .prop_map(Doc::Lit),
        number().prop_map(Doc::Num),
        prop::collection::vec(piece(), 0..12).prop_map(Doc::Str),
    ];
    let value = leaf.prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..6), space()).prop_map(|(v, s)| Doc::Arr(v, s)),
            (
                prop::collection::vec((prop::collection::vec(piece(), 0..4), inner), 0..6),
                space()
            )
                .prop_map(|(v, s)| Doc::Obj(v, s)),
        ]
    });
    prop_oneof![
        6 => value.clone(),
        1 => (120usize..136, any::<bool>(), value.clone())
            .prop_map(|(d, obj, v)| Doc::Deep(d, obj, Box::new(v))),
        1 => (0usize..2000, any::<bool>(), value)
            .prop_map(|(d, obj, v)| Doc::Deep(d, obj, Box::new(v))),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop::sample::select(
        &[
            '"', '\\', ',', ':', '{', '}', '[', ']', '0', '-', '.', 'e', '\u{1}', 'n', ' ', 'u',
            '\u{d7ff}', 'é',
        ][..],
    );
    prop_oneof![
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), byte.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), byte).prop_map(|(i, c)| Edit::Replace(i, c)),
    ]
}

/// Documents, half of them edited.
pub fn cases() -> impl Strategy<Value = Case> {
    (
        doc(),
        prop_oneof![Just(Vec::new()), prop::collection::vec(edit(), 1..4)],
    )
        .prop_map(|(doc, edits)| Case { doc, edits })
}

fn render_str(pieces: &[Piece], out: &mut String) {
    out.push('"');
    for p in pieces {
        match p {
            Piece::Char(c) => out.push(*c),
            Piece::Escape(e) => out.push_str(e),
            Piece::Unicode(u) => out.push_str(&format!("\\u{u:04x}")),
            Piece::Run(c, n) => out.extend(std::iter::repeat_n(*c, *n)),
        }
    }
    out.push('"');
}

/// The text of a document. Object keys that decode to one already used are dropped, so that
/// `serde_json`'s `Value` (the last duplicate wins) compares with the scan (the first wins).
pub fn render(doc: &Doc, out: &mut String) {
    match doc {
        Doc::Lit(s) => out.push_str(s),
        Doc::Num(n) => out.push_str(n),
        Doc::Str(p) => render_str(p, out),
        Doc::Arr(items, ws) => {
            out.push('[');
            for (i, d) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                render(d, out);
            }
            out.push(']');
        }
        Doc::Obj(members, ws) => {
            out.push('{');
            let mut seen = std::collections::HashSet::new();
            for (key, d) in members {
                let mut k = String::new();
                render_str(key, &mut k);
                let decoded = serde_json::from_str::<String>(&k).unwrap_or_else(|_| k.clone());
                if !seen.insert(decoded) {
                    continue;
                }
                if seen.len() > 1 {
                    out.push(',');
                }
                out.push_str(ws);
                out.push_str(&k);
                out.push(':');
                out.push_str(ws);
                render(d, out);
            }
            out.push('}');
        }
        Doc::Deep(depth, obj, inner) => {
            for _ in 0..*depth {
                out.push_str(if *obj { "{\"k\":" } else { "[" });
            }
            render(inner, out);
            for _ in 0..*depth {
                out.push(if *obj { '}' } else { ']' });
            }
        }
    }
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match e {
            Edit::Remove(i) if !chars.is_empty() => {
                let at = i.index(chars.len());
                chars.remove(at);
            }
            Edit::Insert(i, c) => {
                let at = at(i, chars.len());
                chars.insert(at, *c);
            }
            Edit::Truncate(i) => {
                let at = at(i, chars.len());
                chars.truncate(at);
            }
            Edit::Replace(i, c) if !chars.is_empty() => {
                let at = i.index(chars.len());
                chars[at] = *c;
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Up to `max` pointers of values present in `v` (RFC 6901 escapes included), depth first.
fn pointers(v: &Value, at: String, max: usize, out: &mut Vec<String>) {
    if out.len() >= max {
        return;
    }
    out.push(at.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), max, out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(x, format!("{at}/{k}"), max, out);
            }
        }
        _ => {}
    }
}

/// The deepest nesting of arrays and objects in `text` (strings skipped), for valid text.
fn depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in text.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                max = max.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// What `serde_json` says of `text`: valid JSON text (`IgnoredAny` skips any number and any
/// escape), nested no deeper than its recursion limit (which reading a `Value` applies, but a
/// number out of `f64`'s range may stop that read first: the depth is counted here); and the
/// value when it decodes.
fn serde_verdict(text: &str) -> (bool, Option<Value>) {
    let skips = serde_json::from_str::<IgnoredAny>(text).is_ok();
    match serde_json::from_str::<Value>(text) {
        Ok(v) => (true, Some(v)),
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => (false, None),
        Err(_) => (skips && depth(text) < crate::core::json::MAX_DEPTH, None),
    }
}

/// The property of one case.
pub fn check(case: Case) -> Result<(), String> {
    let mut text = String::new();
    render(&case.doc, &mut text);
    let text = apply(&text, &case.edits);
    let (serde_ok, value) = serde_verdict(&text);
    let ours = validate(&text);
    if ours.is_ok() != serde_ok {
        return Err(format!(
            "validate says {ours:?}, serde_json says valid={serde_ok}"
        ));
    }
    let raw = RawJson::parse(text.as_str());
    if value.is_some() && raw.is_err() {
        return Err(format!(
            "serde_json decodes it, RawJson::parse says {raw:?}"
        ));
    }
    if raw.is_ok() && !serde_ok {
        return Err("RawJson::parse accepts what serde_json refuses".into());
    }
    // Values at pointers: every pointer of the document (and some absent ones), in one scan.
    let mut ps = vec![
        "/missing".to_owned(),
        "/0/zz".to_owned(),
        "/k/k/k".to_owned(),
    ];
    if let (Some(v), true) = (&value, case.edits.is_empty()) {
        pointers(v, String::new(), 48, &mut ps);
    }
    let segs: Vec<Vec<String>> = ps.iter().map(|p| pointer_segments(p)).collect();
    let refs: Vec<&[String]> = segs.iter().map(Vec::as_slice).collect();
    let paths = Paths::new(&refs).map_err(|e| format!("paths {ps:?}: {e}"))?;
    let found = match (paths.scan(&text), serde_ok) {
        (Ok(f), true) => f,
        (Err(_), false) => return Ok(()),
        (got, _) => {
            return Err(format!(
                "scan says {:?}, serde_json says valid={serde_ok}",
                got.map(|_| "ok")
            ));
        }
    };
    let (Some(v), true) = (value, case.edits.is_empty()) else {
        return Ok(());
    };
    for (p, slot) in ps.iter().zip(&found.slots) {
        let got = slot
            .clone()
            .map(|r| serde_json::from_str::<Value>(&text[r]))
            .transpose()
            .map_err(|e| format!("{p}: the scan's range does not parse: {e}"))?;
        if got.as_ref() != v.pointer(p) {
            return Err(format!(
                "{p}: scan found {got:?}, serde_json {:?}",
                v.pointer(p)
            ));
        }
    }
    Ok(())
}

pub fn run(budget: Budget) -> Outcome {
    drive("json_scan", budget, cases(), check)
}

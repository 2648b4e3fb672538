//! Query-string parsing of list and get requests, cursors, and next-page links.

use std::fmt::Write as _;

use crate::config::{Entity, Misbehave, TimestampFormat};
use crate::json::FieldSet;
use crate::store::{Bounds, Key, Order, SortKey};
use crate::timefmt::parse_instant;

/// A 400: which parameter, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueryError {
    pub parameter: String,
    pub detail: String,
}

fn bad(parameter: &str, detail: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_owned(),
        detail: detail.into(),
    }
}

/// How the client asked for its position, which is also the style of the next link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Paging {
    Offset(usize),
    /// 1-based page number.
    Page(usize),
    Cursor(Key),
}

#[derive(Clone, Debug)]
pub(crate) struct ListQuery {
    pub order: Order,
    pub bounds: Bounds,
    pub per_page: usize,
    pub paging: Paging,
    pub fields: FieldSet,
    /// The decoded query pairs, in order, to build the next link from.
    pub pairs: Vec<(String, String)>,
}

impl ListQuery {
    /// The offset the page starts at (offset and page styles).
    pub(crate) fn offset(&self) -> Option<usize> {
        match self.paging {
            Paging::Offset(o) => Some(o),
            Paging::Page(p) => Some((p - 1).saturating_mul(self.per_page)),
            Paging::Cursor(_) => None,
        }
    }
}

/// Limits and hints the parser needs from the run configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParseCfg {
    pub hint: TimestampFormat,
    pub default_per_page: usize,
    pub max_per_page: usize,
    /// Parameters to ignore (filters, order, per_page) or not to check (cursor).
    pub misbehave: Misbehave,
}

pub(crate) fn decode_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
}

fn op_from(s: &str) -> Option<Op> {
    match s {
        "gt" => Some(Op::Gt),
        "gte" => Some(Op::Gte),
        "lt" => Some(Op::Lt),
        "lte" => Some(Op::Lte),
        "eq" => Some(Op::Eq),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    UpdatedAt,
    Id,
}

/// Recognises a filter parameter: `where[attr][op]`, `where[attr]`, `attr_op`, `updated_since`.
/// `Ok(None)` means "not a filter parameter".
fn filter_param(key: &str) -> Result<Option<(Attr, Op)>, QueryError> {
    if let Some(rest) = key.strip_prefix("where[") {
        let (attr, tail) = rest
            .split_once(']')
            .ok_or_else(|| bad(key, "malformed where parameter"))?;
        let attr = match attr {
            "updated_at" => Attr::UpdatedAt,
            "id" => Attr::Id,
            other => {
                return Err(bad(
                    key,
                    format!("cannot filter on {other:?}; filterable: updated_at, id"),
                ));
            }
        };
        let op = if tail.is_empty() {
            Op::Eq
        } else {
            tail.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(op_from)
                .ok_or_else(|| bad(key, "unknown operator; use gt, gte, lt, lte or eq"))?
        };
        return Ok(Some((attr, op)));
    }
    if key == "updated_since" {
        return Ok(Some((Attr::UpdatedAt, Op::Gte)));
    }
    for (prefix, attr) in [("updated_at_", Attr::UpdatedAt), ("id_", Attr::Id)] {
        if let Some(op) = key.strip_prefix(prefix) {
            return match op_from(op) {
                Some(Op::Eq) | None => Err(bad(key, "unknown operator; use gt, gte, lt or lte")),
                Some(op) => Ok(Some((attr, op))),
            };
        }
    }
    Ok(None)
}

fn apply_ts(
    b: &mut Bounds,
    op: Op,
    key: &str,
    value: &str,
    hint: TimestampFormat,
) -> Result<(), QueryError> {
    let inst = parse_instant(value, hint).ok_or_else(|| {
        bad(
            key,
            format!("{value:?} is not a timestamp (RFC 3339, epoch seconds or epoch milliseconds)"),
        )
    })?;
    let f = inst.floor_us;
    let (lo, hi) = match op {
        Op::Gt => (Some(f.saturating_add(1)), None),
        Op::Gte => (
            Some(if inst.inexact { f.saturating_add(1) } else { f }),
            None,
        ),
        Op::Lt => (
            None,
            Some(if inst.inexact { f } else { f.saturating_sub(1) }),
        ),
        Op::Lte => (None, Some(f)),
        Op::Eq if inst.inexact => (Some(i64::MAX), Some(i64::MIN)),
        Op::Eq => (Some(f), Some(f)),
    };
    if let Some(lo) = lo {
        b.ts_lo = b.ts_lo.max(lo);
    }
    if let Some(hi) = hi {
        b.ts_hi = b.ts_hi.min(hi);
    }
    Ok(())
}

fn apply_id(b: &mut Bounds, op: Op, key: &str, value: &str) -> Result<(), QueryError> {
    let v: u64 = value
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("{value:?} is not a numeric id")))?;
    // Impossible bounds (lo > hi) give an empty result.
    let (lo, hi) = match op {
        Op::Gt => match v.checked_add(1) {
            Some(l) => (l, u64::MAX),
            None => (1, 0),
        },
        Op::Gte => (v, u64::MAX),
        Op::Lt => match v.checked_sub(1) {
            Some(h) => (0, h),
            None => (1, 0),
        },
        Op::Lte => (0, v),
        Op::Eq => (v, v),
    };
    b.id_lo = b.id_lo.max(lo);
    b.id_hi = b.id_hi.min(hi);
    Ok(())
}

fn parse_usize(key: &str, value: &str) -> Result<usize, QueryError> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("{value:?} is not a non-negative integer")))
}

/// The sparse fieldset for `entity` (`fields[Person]=a,b` or `fields[people]=a,b`).
pub(crate) fn parse_fields(pairs: &[(String, String)], entity: Entity) -> FieldSet {
    let mut out = FieldSet::All;
    for (k, v) in pairs {
        let Some(t) = k.strip_prefix("fields[").and_then(|r| r.strip_suffix(']')) else {
            continue;
        };
        if t == entity.json_type() || t == entity.name() {
            out = FieldSet::Only(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    out
}

pub(crate) fn parse_list(
    pairs: Vec<(String, String)>,
    entity: Entity,
    cfg: ParseCfg,
) -> Result<ListQuery, QueryError> {
    let mut bounds = Bounds::default();
    let mut order = Order {
        key: SortKey::Id,
        desc: false,
    };
    let mut per_page = cfg.default_per_page;
    let mut offset = None;
    let mut page = None;
    let mut cursor = None;
    let m = cfg.misbehave;
    for (k, v) in &pairs {
        if let Some((attr, op)) = filter_param(k)? {
            match attr {
                Attr::UpdatedAt if m.ignore_filter => {}
                Attr::Id if m.ignore_id_filter => {}
                Attr::UpdatedAt => apply_ts(&mut bounds, op, k, v, cfg.hint)?,
                Attr::Id => apply_id(&mut bounds, op, k, v)?,
            }
            continue;
        }
        match k.as_str() {
            "order" if m.ignore_order => {}
            "per_page" if m.ignore_per_page => {}
            "order" => {
                let (desc, name) = match v.strip_prefix('-') {
                    Some(n) => (true, n),
                    None => (false, v.as_str()),
                };
                let key = match name {
                    "id" => SortKey::Id,
                    "updated_at" => SortKey::UpdatedAt,
                    _ => {
                        return Err(bad(
                            k,
                            format!(
                                "cannot order by {v:?}; use id, updated_at, -id or -updated_at"
                            ),
                        ));
                    }
                };
                order = Order { key, desc };
            }
            "per_page" => {
                let n = parse_usize(k, v)?;
                if n == 0 {
                    return Err(bad(k, "per_page must be at least 1"));
                }
                per_page = n.min(cfg.max_per_page);
            }
            "offset" => offset = Some(parse_usize(k, v)?),
            "page" => {
                let n = parse_usize(k, v)?;
                if n == 0 {
                    return Err(bad(k, "page numbers start at 1"));
                }
                page = Some(n);
            }
            "cursor" => cursor = Some(v.clone()),
            _ => {}
        }
    }
    if m.reverse_order {
        order.desc = !order.desc;
    }
    let paging = match (offset, page, cursor) {
        (None, None, None) => Paging::Offset(0),
        (Some(o), None, None) => Paging::Offset(o),
        (None, Some(p), None) => Paging::Page(p),
        // An ignored cursor is not checked either; the page starts at the beginning anyway.
        (None, None, Some(c)) if m.ignore_cursor => {
            Paging::Cursor(decode_cursor(&c, order).unwrap_or(Key::Id(0)))
        }
        (None, None, Some(c)) => Paging::Cursor(decode_cursor(&c, order)?),
        (_, _, Some(_)) => {
            return Err(bad(
                "cursor",
                "cursor cannot be combined with offset or page",
            ));
        }
        (Some(_), Some(_), None) => return Err(bad("page", "use either offset or page, not both")),
    };
    let fields = parse_fields(&pairs, entity);
    Ok(ListQuery {
        order,
        bounds,
        per_page,
        paging,
        fields,
        pairs,
    })
}

/// Encodes a keyset position as an opaque hex token: `v1.<i|t>.<a|d>.<ts>.<id>` in hex.
pub(crate) fn encode_cursor(order: Order, key: Key) -> String {
    let dir = if order.desc { 'd' } else { 'a' };
    let text = match key {
        Key::Id(id) => format!("v1.i.{dir}.0.{id}"),
        Key::Ts(ts, id) => format!("v1.t.{dir}.{ts}.{id}"),
    };
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub(crate) fn decode_cursor(token: &str, order: Order) -> Result<Key, QueryError> {
    let invalid = || bad("cursor", "invalid cursor");
    let t = token.trim().as_bytes();
    if t.is_empty() || !t.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let mut bytes = Vec::with_capacity(t.len() / 2);
    for pair in t.chunks(2) {
        let s = std::str::from_utf8(pair).map_err(|_| invalid())?;
        bytes.push(u8::from_str_radix(s, 16).map_err(|_| invalid())?);
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts: Vec<&str> = text.split('.').collect();
    let [v, kind, dir, ts, id] = parts.as_slice() else {
        return Err(invalid());
    };
    if *v != "v1" {
        return Err(invalid());
    }
    let desc = match *dir {
        "a" => false,
        "d" => true,
        _ => return Err(invalid()),
    };
    let ts: i64 = ts.parse().map_err(|_| invalid())?;
    let id: u64 = id.parse().map_err(|_| invalid())?;
    let key = match *kind {
        "i" => Key::Id(id),
        "t" => Key::Ts(ts, id),
        _ => return Err(invalid()),
    };
    let key_matches = matches!(
        (order.key, key),
        (SortKey::Id, Key::Id(_)) | (SortKey::UpdatedAt, Key::Ts(..))
    );
    if !key_matches || desc != order.desc {
        return Err(bad(
            "cursor",
            "this cursor was issued for a different order; send the same order parameter",
        ));
    }
    Ok(key)
}

/// The query string of the next page, in the client's own paging style.
pub(crate) fn next_query(q: &ListQuery, count: usize, next_cursor: Option<&str>) -> Option<String> {
    let style: (&str, String) = match q.paging {
        Paging::Cursor(_) => ("cursor", next_cursor?.to_owned()),
        Paging::Page(p) => ("page", (p + 1).to_string()),
        Paging::Offset(o) => ("offset", (o + count).to_string()),
    };
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &q.pairs {
        if !matches!(k.as_str(), "offset" | "page" | "cursor") {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair(style.0, &style.1);
    Some(ser.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: ParseCfg = ParseCfg {
        hint: TimestampFormat::Rfc3339,
        default_per_page: 25,
        max_per_page: 100,
        misbehave: Misbehave {
            ignore_filter: false,
            ignore_id_filter: false,
            ignore_order: false,
            ignore_offset: false,
            ignore_page: false,
            ignore_cursor: false,
            clamp_last_page: false,
            ignore_per_page: false,
            reverse_order: false,
        },
    };

    fn parse(q: &str) -> Result<ListQuery, QueryError> {
        parse_list(decode_pairs(Some(q)), Entity::People, CFG)
    }

    #[test]
    fn every_filter_style_sets_the_same_bounds() {
        let t = "2024-01-01T00:00:00Z";
        let us = 1_704_067_200_000_000;
        for (q, lo, hi) in [
            (format!("where[updated_at][gt]={t}"), us + 1, i64::MAX),
            (format!("where[updated_at][gte]={t}"), us, i64::MAX),
            (format!("where[updated_at][lt]={t}"), i64::MIN, us - 1),
            (format!("where[updated_at][lte]={t}"), i64::MIN, us),
            (format!("where[updated_at]={t}"), us, us),
            (format!("updated_at_gt={t}"), us + 1, i64::MAX),
            (format!("updated_at_gte={t}"), us, i64::MAX),
            (format!("updated_at_lt={t}"), i64::MIN, us - 1),
            (format!("updated_at_lte={t}"), i64::MIN, us),
            (format!("updated_since={t}"), us, i64::MAX),
        ] {
            let b = parse(&q).unwrap().bounds;
            assert_eq!((b.ts_lo, b.ts_hi), (lo, hi), "{q}");
        }
        for (q, lo, hi) in [
            ("where[id][gt]=9", 10, u64::MAX),
            ("where[id][gte]=9", 9, u64::MAX),
            ("where[id][lt]=9", 0, 8),
            ("where[id][lte]=9", 0, 9),
            ("id_gt=9&id_lte=20", 10, 20),
            ("id_lt=0", 1, 0),
        ] {
            let b = parse(q).unwrap().bounds;
            assert_eq!((b.id_lo, b.id_hi), (lo, hi), "{q}");
        }
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (q, param) in [
            ("where[updated_at][gt]=yesterday", "where[updated_at][gt]"),
            ("updated_at_gte=", "updated_at_gte"),
            ("where[name][gt]=a", "where[name][gt]"),
            ("where[updated_at][after]=1", "where[updated_at][after]"),
            ("updated_at_after=1", "updated_at_after"),
            ("id_gt=abc", "id_gt"),
            ("order=name", "order"),
            ("per_page=abc", "per_page"),
            ("per_page=0", "per_page"),
            ("offset=-1", "offset"),
            ("page=0", "page"),
            ("cursor=zz", "cursor"),
            ("cursor=abcd&offset=3", "cursor"),
            ("offset=1&page=2", "page"),
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e.parameter, param, "{q}: {e:?}");
        }
    }

    #[test]
    fn per_page_clamps_and_defaults() {
        assert_eq!(parse("").unwrap().per_page, 25);
        assert_eq!(parse("per_page=500").unwrap().per_page, 100);
        assert_eq!(parse("per_page=7").unwrap().per_page, 7);
    }

    #[test]
    fn cursor_round_trips_and_checks_order() {
        let asc_ts = Order {
            key: SortKey::UpdatedAt,
            desc: false,
        };
        let tok = encode_cursor(asc_ts, Key::Ts(-5, 12));
        assert_eq!(decode_cursor(&tok, asc_ts), Ok(Key::Ts(-5, 12)));
        let asc_id = Order {
            key: SortKey::Id,
            desc: false,
        };
        assert!(decode_cursor(&tok, asc_id).is_err());
        let desc_ts = Order {
            key: SortKey::UpdatedAt,
            desc: true,
        };
        assert!(decode_cursor(&tok, desc_ts).is_err());
    }

    #[test]
    fn next_query_keeps_the_style_and_filters() {
        let q = parse("where[updated_at][gt]=5&per_page=10&offset=20").unwrap();
        assert_eq!(
            next_query(&q, 10, Some("ab")).unwrap(),
            "where%5Bupdated_at%5D%5Bgt%5D=5&per_page=10&offset=30"
        );
        let q = parse("page=2&per_page=10").unwrap();
        assert_eq!(q.offset(), Some(10));
        assert_eq!(next_query(&q, 10, None).unwrap(), "per_page=10&page=3");
    }

    #[test]
    fn fields_accept_type_or_entity_name() {
        let p = decode_pairs(Some("fields[Person]=updated_at,name&fields[Donation]=x"));
        assert_eq!(
            parse_fields(&p, Entity::People),
            FieldSet::Only(vec!["updated_at".into(), "name".into()])
        );
        let p = decode_pairs(Some("fields[people]="));
        assert_eq!(parse_fields(&p, Entity::People), FieldSet::Only(vec![]));
        assert_eq!(parse_fields(&p, Entity::Donations), FieldSet::All);
    }
}

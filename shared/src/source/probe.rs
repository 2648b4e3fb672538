//! Probes of the configured source (`syncctl check-source`): does the source honour what the
//! configuration says it does? Each entity gets a handful of GETs (through the client's rate
//! limiters and retry policy) and a verdict per check, in plain words, naming the configuration
//! field to fix when a check fails:
//!
//! | Check | Asks | Passes when |
//! |---|---|---|
//! | `listing` | one delta-ordered page of `page_size` | it answers a page of records |
//! | `order` | the same page | delta values are non-decreasing (and the page is not merely the ID-ordered one) |
//! | `id_order` | one ID-ordered page of `source.max_page_size` | IDs come in the entity's [`IdOrder`] |
//! | `filter` | the delta page from a later lower bound | fewer records, none before the bound |
//! | `page_size` | the pages above and one small page | no page larger than asked; no page smaller while more exist |
//! | `pagination` | two small pages, and (by position) one past the end | page 2 continues page 1 (no repeat, order continues); past the end is empty |
//! | `id_filter` | (only with `id_filter = true`) an ID-ordered page after a listed ID | it starts right after that ID |
//! | `get_by_id` | `GET <path>/<id>` of a listed ID | the same ID and delta value come back |
//! | `not_found` | `GET <path>/<id>` of a surely missing ID | a JSON 404 (a deletion is recognisable) |
//!
//! A check the data cannot decide (too few records, every record on one delta value, delta
//! order equal to ID order) is [`Verdict::CannotCheck`], never a pass.

use super::{Body, EntityRt, SourceClient, http, parse};
use crate::config::{FilterOp, IdOrder, Pagination};
use crate::core::timefmt::format_rfc3339;
use crate::error::{Field, ParseError, SourceError};
use crate::model::{IdVersion, Micros, RejectReason, Rejected};
use crate::ports::SourceApi;
use std::cmp::Ordering;
use url::Url;

/// Records per page of the pagination probes: small, so that they are cheap and decide on
/// small entities too.
const PROBE_PAGE: u32 = 10;
/// An ID no numeric source holds (the largest 18-digit number).
const MISSING_NUMERIC_ID: &str = "999999999999999999";
/// An ID no bytewise source holds.
const MISSING_TEXT_ID: &str = "sync-engine-check-source-missing-id";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The data cannot decide (too few records, ...): not a pass.
    CannotCheck,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::CannotCheck => "cannot_check",
        }
    }
}

/// One check of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `listing`, `order`, `id_order`, `filter`, `page_size`, `pagination`, `id_filter`,
    /// `get_by_id` or `not_found`.
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was asked and what came back, in plain words.
    pub detail: String,
    /// The configuration field to fix, when the check failed (`source.order_param`, `path`,
    /// `[[entity]] page_size` is `page_size`, ...).
    pub field: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Pass,
            detail: detail.into(),
            field: None,
        }
    }

    fn fail(name: &'static str, field: &str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Fail,
            detail: detail.into(),
            field: Some(field.to_owned()),
        }
    }

    fn cannot(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::CannotCheck,
            detail: detail.into(),
            field: None,
        }
    }

    /// A request of this check failed: the error in words, and the field it most likely points
    /// at (`field` when nothing more precise is known).
    fn error(name: &'static str, field: &str, err: &SourceError) -> Check {
        let field = match err {
            SourceError::Client {
                status: 401 | 403, ..
            }
            | SourceError::Unauthorized { .. } => "source.auth",
            SourceError::Client { status: 404, .. }
            | SourceError::NotJson { .. }
            | SourceError::Decode {
                source: ParseError::ListingNotFound,
                ..
            } => "path",
            SourceError::RateLimited { .. } => "source.rate_limit",
            SourceError::Server { .. }
            | SourceError::Timeout { .. }
            | SourceError::Connect { .. } => "source.base_url",
            SourceError::Decode { source, .. } => parse_field(source).unwrap_or(field),
            _ => field,
        };
        Check::fail(name, field, err.to_string())
    }
}

/// The configuration field a parse error points at, when it names one.
fn parse_field(e: &ParseError) -> Option<&'static str> {
    match e {
        ParseError::Missing { field, .. }
        | ParseError::WrongKind { field, .. }
        | ParseError::Value { field, .. } => Some(match field {
            Field::Records => "source.records_pointer",
            Field::Id => "id_pointer",
            Field::Delta => "delta_pointer",
            Field::TotalCount => "source.total_count_pointer",
            Field::NextLink | Field::NextCursor => "source.pagination",
        }),
        ParseError::Record { source, .. } => parse_field(source),
        ParseError::NotRfc3339(_) | ParseError::NotEpoch { .. } => Some("source.timestamp_format"),
        _ => None,
    }
}

/// Every check of one entity, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityProbe {
    pub entity: String,
    /// The collection URL probed.
    pub url: String,
    pub checks: Vec<Check>,
}

impl EntityProbe {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    /// Whether any check could not be decided.
    pub fn undecided(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.verdict == Verdict::CannotCheck)
    }

    /// The check called `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Why an entity could not be probed at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer from the source (connection refused, DNS, timeouts): nothing can be checked.
    #[error("the source cannot be reached (check `source.base_url` and the network): {0}")]
    Unreachable(#[source] SourceError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The delta listing from a later lower bound (the filter check; its order is checked too).
struct FilterProbe {
    /// `param=value`, as sent.
    asked: String,
    /// The delta value the bound was taken from.
    t: Micros,
    /// The lowest delta value the filter lets through.
    bound: Micros,
    page: Result<Probed, SourceError>,
}

impl FilterProbe {
    fn page(this: &Option<FilterProbe>) -> Option<(&str, &Probed)> {
        match this {
            Some(FilterProbe {
                asked, page: Ok(p), ..
            }) => Some((asked, p)),
            _ => None,
        }
    }
}

/// One probed page: `(id, delta)` pairs, the total and where the next page is.
struct Probed {
    url: Url,
    ids: Vec<IdVersion>,
    /// The page's records that do not read (`source::parse`), taken out of `ids`.
    rejected: Vec<Rejected>,
    total: Option<u64>,
    /// The next page's URL (link and cursor styles only).
    next: Option<Url>,
}

impl Probed {
    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Records the page served, those that do not read included: what page sizes and
    /// positions count.
    fn served(&self) -> usize {
        self.ids.len() + self.rejected.len()
    }

    /// Whether more records exist than this (first) page holds, when the source says so.
    fn more(&self, positional: bool) -> Option<bool> {
        match self.total {
            Some(t) => Some(t > self.served() as u64),
            None if !positional => Some(self.next.is_some()),
            None => None,
        }
    }

    fn shown(&self) -> String {
        http::redact_url(&self.url)
    }
}

fn ts(us: Micros) -> String {
    format_rfc3339(us)
}

/// The configuration field a record rejected for `reason` points at, when every record of a
/// page is rejected alike (`None`: the source's data, no field can fix it).
fn rejected_field(reason: RejectReason) -> Option<&'static str> {
    match reason {
        RejectReason::MissingId
        | RejectReason::BadId
        | RejectReason::EmptyId
        | RejectReason::LongId => Some("id_pointer"),
        RejectReason::MissingDelta | RejectReason::NullDelta => Some("delta_pointer"),
        RejectReason::BadDelta => Some("source.timestamp_format"),
        RejectReason::NaiveTimestamp => Some("source.timestamp_offset"),
        RejectReason::LoneSurrogate | RejectReason::TooLarge => None,
    }
}

/// The `listing` check: a page of records; failed when none of them reads for a reason the
/// configuration can fix (a wrong pointer, format or offset); records that do not read beside
/// readable ones are the source's data, named in the detail.
fn check_listing(a: &Probed) -> Check {
    const NAME: &str = "listing";
    let total = a.total.map(|t| format!(" of {t}")).unwrap_or_default();
    let Some(first) = a.rejected.first() else {
        return Check::pass(
            NAME,
            format!(
                "{} answers a page of {} record(s){total}",
                a.shown(),
                a.len()
            ),
        );
    };
    let why = format!(
        "{} of its {} record(s) cannot be synced (first: ID {}, {})",
        a.rejected.len(),
        a.len() + a.rejected.len(),
        first
            .id
            .as_deref()
            .map_or("unreadable".into(), |i| format!("{i:?}")),
        first.reason
    );
    match rejected_field(first.reason) {
        Some(field) if a.ids.is_empty() => Check::fail(
            NAME,
            field,
            format!(
                "{} answers a page{total} where {why}: check `{field}`",
                a.shown()
            ),
        ),
        _ => Check::pass(
            NAME,
            format!(
                "{} answers a page{total}; {why}: the source's data (they are skipped and counted)",
                a.shown()
            ),
        ),
    }
}

/// Whether `ids` are strictly ascending in `order` (`None`: an ID the order cannot compare).
fn sorted_in(order: IdOrder, ids: &[IdVersion]) -> Option<bool> {
    for w in ids.windows(2) {
        if order.compare(&w[0].id, &w[1].id)? != Ordering::Less {
            return Some(false);
        }
    }
    Some(true)
}

impl SourceClient {
    /// Probes one entity (see the module docs). `Err` only when the entity is not configured
    /// or the source cannot be reached at all; every other problem is a failed check.
    pub async fn probe(&self, entity: &str) -> Result<EntityProbe, ProbeError> {
        let e = self.entity(entity)?;
        let p = e.cfg.page_size;
        let mut checks = Vec::new();
        let report = |checks| EntityProbe {
            entity: entity.to_owned(),
            url: http::redact_url(&e.collection),
            checks,
        };

        let a = match self.probe_page(e, self.delta_params(e, p, None), p).await {
            Ok(a) => a,
            Err(err @ (SourceError::Connect { .. } | SourceError::Timeout { .. })) => {
                return Err(ProbeError::Unreachable(err));
            }
            Err(err) => {
                checks.push(Check::error("listing", "source.records_pointer", &err));
                for name in ["order", "id_order", "filter", "page_size", "pagination"] {
                    checks.push(Check::cannot(name, "the listing failed"));
                }
                if e.cfg.id_filter {
                    checks.push(Check::cannot("id_filter", "the listing failed"));
                }
                checks.push(Check::cannot("get_by_id", "the listing failed"));
                checks.push(self.check_not_found(e).await);
                return Ok(report(checks));
            }
        };
        checks.push(check_listing(&a));

        let c = self
            .probe_page(e, self.id_params(e), self.source.max_page_size)
            .await;
        let filtered = self.filter_probe(e, &a).await;
        let order = self.check_order(e, &a, FilterProbe::page(&filtered), c.as_ref().ok());
        let order_ok = order.verdict == Verdict::Pass;
        checks.push(order);
        checks.push(self.check_id_order(e, &c));
        checks.push(self.check_filter(e, &a, filtered));

        let m = p.min(PROBE_PAGE);
        let p1 = self.probe_page(e, self.delta_params(e, m, None), m).await;
        checks.push(self.check_page_size(e, &a, &c, &p1, m));
        checks.push(self.check_pagination(e, p1, m, order_ok).await);
        if e.cfg.id_filter {
            checks.push(self.check_id_filter(e, &c, m).await);
        }
        checks.push(self.check_get_by_id(e, &a).await);
        checks.push(self.check_not_found(e).await);
        Ok(report(checks))
    }

    /// The delta listing's query: ordered by the delta field, `limit` a page, at the first
    /// position (positional styles), from `lower` when given (`delta >= lower`).
    fn delta_params(
        &self,
        e: &EntityRt,
        limit: u32,
        lower: Option<Micros>,
    ) -> Vec<(String, String)> {
        let mut params = vec![
            self.order_by_delta(e),
            (
                self.source.pagination.limit_param().to_owned(),
                limit.to_string(),
            ),
        ];
        if let Some(t) = lower {
            params.push(self.delta_filter(e, t, false));
        }
        params
    }

    /// The ID listing's query, as `stream_ids` sends it.
    fn id_params(&self, e: &EntityRt) -> Vec<(String, String)> {
        let mut params = vec![
            (
                self.source.order_param.clone(),
                e.cfg.id_order_field.clone(),
            ),
            (
                self.source.pagination.limit_param().to_owned(),
                self.source.max_page_size.to_string(),
            ),
        ];
        if let (Some(param), Some(ty)) = (&self.source.sparse_fields_param, &e.cfg.sparse_type) {
            let attr = e
                .cfg
                .sparse_delta_attribute
                .clone()
                .unwrap_or_else(|| e.cfg.delta_sync_field.clone());
            params.push((param.replace("{type}", ty), attr));
        }
        params
    }

    /// GETs the first page of `params` (the first position added for positional styles).
    async fn probe_page(
        &self,
        e: &EntityRt,
        params: Vec<(String, String)>,
        limit: u32,
    ) -> Result<Probed, SourceError> {
        let mut full = params.clone();
        full.extend(self.position_param(0, limit));
        self.probe_url(e, &params, self.url(e, &full)).await
    }

    /// GETs `url`; `first` is the query without a position (cursor styles build on it).
    async fn probe_url(
        &self,
        e: &EntityRt,
        first: &[(String, String)],
        url: Url,
    ) -> Result<Probed, SourceError> {
        let ans = self
            .http
            .get(
                &url,
                e.limiter.as_ref(),
                crate::core::budget::Lane::Delta,
                |b, _| match b {
                    Body::Json(t) => parse::parse_id_page(t, &e.shape),
                    Body::NotFound => Err(ParseError::ListingNotFound),
                },
            )
            .await?;
        let page = ans.value;
        let next = if self.source.pagination.is_positional() {
            None
        } else {
            self.next_url(e, first, ans.link_next, page.next_link, page.next_cursor)?
        };
        Ok(Probed {
            url,
            ids: page.ids,
            rejected: page.rejected,
            total: page.total_count,
            next,
        })
    }

    fn order_words(&self, e: &EntityRt) -> String {
        let (k, v) = self.order_by_delta(e);
        format!("{k}={v}")
    }

    /// The delta order: both delta-ordered pages (the first, and the one from a later bound)
    /// non-decreasing, and at least one of them not merely in ID order (a source that ignores
    /// `order` and lists by ID looks right whenever the two orders agree).
    fn check_order(
        &self,
        e: &EntityRt,
        a: &Probed,
        b: Option<(&str, &Probed)>,
        by_id: Option<&Probed>,
    ) -> Check {
        const NAME: &str = "order";
        let field = &e.cfg.delta_sync_field;
        if a.len() < 2 {
            return Check::cannot(NAME, format!("only {} record(s) to compare", a.len()));
        }
        for (asked, page) in std::iter::once(("", a)).chain(b) {
            if let Some(w) = page.ids.windows(2).find(|w| w[1].delta_us < w[0].delta_us) {
                let with = if asked.is_empty() {
                    String::new()
                } else {
                    format!(" with {asked}")
                };
                return Check::fail(
                    NAME,
                    "source.order_param",
                    format!(
                        "asked {}{with}, but ID {} ({field} {}) comes after ID {} ({field} {}): \
                         the source does not order by {field}; check `source.order_param` (the \
                         parameter's name) and `delta_sync_field`",
                        self.order_words(e),
                        w[1].id,
                        ts(w[1].delta_us),
                        w[0].id,
                        ts(w[0].delta_us),
                    ),
                );
            }
        }
        let order = IdOrder::of(&e.cfg);
        let a_not_by_id = match by_id {
            Some(c) => {
                let k = a.len().min(c.len());
                k < a.len()
                    || !a.ids[..k]
                        .iter()
                        .map(|x| &x.id)
                        .eq(c.ids[..k].iter().map(|x| &x.id))
            }
            None => sorted_in(order, &a.ids) == Some(false),
        };
        let b_not_by_id = b.is_some_and(|(_, b)| sorted_in(order, &b.ids) == Some(false));
        if !a_not_by_id && !b_not_by_id {
            return Check::cannot(
                NAME,
                format!(
                    "the records read are in the same order by {field} and by {}, so whether \
                     the source honours {} cannot be told; run again once some records have \
                     changed",
                    e.cfg.id_order_field,
                    self.order_words(e)
                ),
            );
        }
        Check::pass(
            NAME,
            format!(
                "{} record(s) asked with {} come back in {field} order{}",
                a.len() + b.map_or(0, |(_, b)| b.len()),
                self.order_words(e),
                if b.is_some() {
                    " (with and without a lower bound)"
                } else {
                    ""
                }
            ),
        )
    }

    fn check_id_order(&self, e: &EntityRt, c: &Result<Probed, SourceError>) -> Check {
        const NAME: &str = "id_order";
        let c = match c {
            Ok(c) => c,
            Err(err) => return Check::error(NAME, "id_order_field", err),
        };
        if c.len() < 2 {
            return Check::cannot(NAME, format!("only {} ID(s) to compare", c.len()));
        }
        let order = IdOrder::of(&e.cfg);
        let other = match order {
            IdOrder::Numeric => IdOrder::Bytewise,
            IdOrder::Bytewise => IdOrder::Numeric,
        };
        let asked = format!("{}={}", self.source.order_param, e.cfg.id_order_field);
        let configured = if e.cfg.id_order.is_some() {
            format!("id_order = \"{}\"", order.as_str())
        } else {
            "id_order (unset: numeric)".to_owned()
        };
        for w in c.ids.windows(2) {
            match order.compare(&w[0].id, &w[1].id) {
                Some(Ordering::Less) => {}
                None => {
                    let bad = if order.compare(&w[0].id, &w[0].id).is_none() {
                        &w[0].id
                    } else {
                        &w[1].id
                    };
                    return Check::fail(
                        NAME,
                        "id_order",
                        format!(
                            "ID {bad:?} is not a decimal integer, so {configured} cannot hold: \
                             set `id_order = \"bytewise\"` if the source sorts IDs as text"
                        ),
                    );
                }
                Some(Ordering::Equal) => {
                    return Check::fail(
                        NAME,
                        "source.order_param",
                        format!("asked {asked}, and ID {} came twice in one page", w[0].id),
                    );
                }
                Some(Ordering::Greater) => {
                    let detail = format!(
                        "asked {asked}, and ID {} comes before ID {}: not in {} order ({configured})",
                        w[0].id,
                        w[1].id,
                        order.as_str()
                    );
                    return if sorted_in(other, &c.ids) == Some(true) {
                        Check::fail(
                            NAME,
                            "id_order",
                            format!(
                                "{detail}; the page is in {} order: set `id_order = \"{}\"`",
                                other.as_str(),
                                other.as_str()
                            ),
                        )
                    } else {
                        Check::fail(
                            NAME,
                            "source.order_param",
                            format!(
                                "{detail}, nor in {} order: the source does not order by \
                                 {}; check `source.order_param` and `id_order_field`",
                                other.as_str(),
                                e.cfg.id_order_field
                            ),
                        )
                    };
                }
            }
        }
        let agree = if sorted_in(other, &c.ids) == Some(true) {
            format!(
                " ({} order agrees on these IDs, so they cannot tell the two apart)",
                other.as_str()
            )
        } else {
            String::new()
        };
        Check::pass(
            NAME,
            format!(
                "{} ID(s) asked with {asked} come back in {} order{agree}",
                c.len(),
                order.as_str()
            ),
        )
    }

    /// Asks the delta listing from the lowest bound that leaves some record of the first page
    /// below it, so that a filter honoured and one ignored answer differently.
    async fn filter_probe(&self, e: &EntityRt, a: &Probed) -> Option<FilterProbe> {
        let gte = self.source.filter.supports(FilterOp::Gte);
        let fmt = self.source.timestamp_format;
        let mut deltas: Vec<Micros> = a.ids.iter().map(|x| x.delta_us).collect();
        deltas.sort_unstable();
        deltas.dedup();
        let &min = deltas.first()?;
        for &t in deltas.iter().skip(deltas.len() / 2) {
            let (param, value) = self.delta_filter(e, t, false);
            // The instant the sent value stands for (the format may drop precision).
            let Ok(sent) = fmt.parse_str(&value) else {
                continue;
            };
            let bound = if gte { sent } else { sent.saturating_add(1) };
            if min < bound && bound <= t {
                let p = e.cfg.page_size;
                let page = self
                    .probe_page(e, self.delta_params(e, p, Some(t)), p)
                    .await;
                return Some(FilterProbe {
                    asked: format!("{param}={value}"),
                    t,
                    bound,
                    page,
                });
            }
        }
        None
    }

    fn check_filter(&self, e: &EntityRt, a: &Probed, probe: Option<FilterProbe>) -> Check {
        const NAME: &str = "filter";
        let field = &e.cfg.delta_sync_field;
        let Some(FilterProbe {
            asked,
            t,
            bound,
            page,
        }) = probe
        else {
            return Check::cannot(
                NAME,
                format!(
                    "the {} record(s) read cannot be split by a lower bound on {field} (too \
                     few, or all on one value)",
                    a.len()
                ),
            );
        };
        let b = match page {
            Ok(b) => b,
            Err(err) => return Check::error(NAME, "source.filter", &err),
        };
        if let Some(x) = b.ids.iter().find(|x| x.delta_us < bound) {
            return Check::fail(
                NAME,
                "source.filter",
                format!(
                    "{asked} returned ID {} with {field} {}, before the bound: the source \
                     ignores the filter; check `source.filter` (style and operators) and \
                     `delta_sync_field`",
                    x.id,
                    ts(x.delta_us)
                ),
            );
        }
        if b.len() == 0 {
            return Check::fail(
                NAME,
                "source.filter",
                format!(
                    "{asked} returned nothing, although ID {} has {field} {}: check \
                     `source.filter` and `source.timestamp_format`",
                    a.ids
                        .iter()
                        .find(|x| x.delta_us >= bound)
                        .map_or("?", |x| &x.id),
                    ts(t)
                ),
            );
        }
        if let (Some(ta), Some(tb)) = (a.total, b.total)
            && tb >= ta
        {
            return Check::fail(
                NAME,
                "source.filter",
                format!(
                    "{asked} returned {tb} records, as many as without it ({ta}): the source \
                     ignores the filter; check `source.filter`"
                ),
            );
        }
        let counts = match (a.total, b.total) {
            (Some(ta), Some(tb)) => format!("{tb} of {ta} records"),
            _ => format!("{} record(s) in its first page", b.len()),
        };
        Check::pass(
            NAME,
            format!("{asked} returned {counts}, all at or after it"),
        )
    }

    fn check_page_size(
        &self,
        e: &EntityRt,
        a: &Probed,
        c: &Result<Probed, SourceError>,
        p1: &Result<Probed, SourceError>,
        m: u32,
    ) -> Check {
        const NAME: &str = "page_size";
        let positional = self.source.pagination.is_positional();
        let limit = self.source.pagination.limit_param();
        let p = e.cfg.page_size;
        let big = self.source.max_page_size;
        let mut problems: Vec<(&str, String)> = Vec::new();
        let mut undecided = Vec::new();
        let mut fine = Vec::new();
        let mut look = |what: &str, field: &'static str, asked: u32, page: &Probed| {
            let got = page.served();
            if got > asked as usize {
                problems.push((
                    "source.pagination",
                    format!(
                        "{what}: asked {limit}={asked}, got {got}: the source ignores `{limit}` \
                         (`source.pagination.limit_param`); if it always serves {got}, set \
                         `page_size` and `source.max_page_size` to {got}"
                    ),
                ));
            } else if got < asked as usize {
                match page.more(positional) {
                    Some(true) => problems.push((
                        field,
                        format!(
                            "{what}: asked {limit}={asked}, got {got} while more exist: the \
                             source caps pages at {got}; set `{}` to {got} or less",
                            if field == "page_size" {
                                "[[entity]] page_size"
                            } else {
                                field
                            }
                        ),
                    )),
                    Some(false) => undecided.push(format!(
                        "{what}: only {got} record(s) exist, fewer than {asked}"
                    )),
                    None => undecided.push(format!(
                        "{what}: asked {asked}, got {got}, and the source says neither a total \
                         nor whether more exist"
                    )),
                }
            } else {
                fine.push(format!("{what}: asked {asked}, got {got}"));
            }
        };
        look("page_size", "page_size", p, a);
        if let Ok(c) = c {
            look("source.max_page_size", "source.max_page_size", big, c);
        }
        if let Ok(p1) = p1 {
            look("a small page", "page_size", m, p1);
        }
        if let Err(err) = c {
            undecided.push(format!("the ID listing failed: {err}"));
        }
        if let Some((field, _)) = problems.first() {
            let field = *field;
            let detail: Vec<String> = problems.into_iter().map(|(_, d)| d).collect();
            return Check::fail(NAME, field, detail.join("; "));
        }
        if !undecided.is_empty() {
            return Check::cannot(NAME, undecided.join("; "));
        }
        Check::pass(NAME, fine.join("; "))
    }

    /// Where the next page of `p1` is asked, in words and as a URL (`None`: the source gave
    /// no next page).
    fn page_two(
        &self,
        e: &EntityRt,
        first: &[(String, String)],
        p1: &Probed,
    ) -> Option<(String, Url)> {
        let served = u32::try_from(p1.served()).unwrap_or(u32::MAX);
        match &self.source.pagination {
            Pagination::Offset { .. } | Pagination::Page { .. } => {
                let pos = self.position_param(1, served)?;
                let mut params = first.to_vec();
                params.push(pos.clone());
                Some((format!("{}={}", pos.0, pos.1), self.url(e, &params)))
            }
            Pagination::Cursor { cursor_param, .. } => p1.next.clone().map(|u| {
                let c = u
                    .query_pairs()
                    .find(|(k, _)| k == cursor_param.as_str())
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                (format!("{cursor_param}={c}"), u)
            }),
            Pagination::LinksNext { .. } | Pagination::LinkHeader { .. } => {
                p1.next.clone().map(|u| ("the next link".to_owned(), u))
            }
        }
    }

    async fn check_pagination(
        &self,
        e: &EntityRt,
        p1: Result<Probed, SourceError>,
        m: u32,
        order_ok: bool,
    ) -> Check {
        const NAME: &str = "pagination";
        let positional = self.source.pagination.is_positional();
        let p1 = match p1 {
            Ok(p) => p,
            Err(err) => return Check::error(NAME, "source.pagination", &err),
        };
        let first = self.delta_params(e, m, None);
        let more = p1.more(positional);
        if p1.len() == 0 || more == Some(false) {
            return Check::cannot(
                NAME,
                format!("only {} record(s): there is no page 2", p1.len()),
            );
        }
        let Some((where_, url)) = self.page_two(e, &first, &p1) else {
            return Check::fail(
                NAME,
                "source.pagination",
                "page 1 says more records exist but gives no way to page 2 (no next link or \
                 cursor): check `source.pagination` (its pointer)",
            );
        };
        let p2 = match self.probe_url(e, &first, url).await {
            Ok(p) => p,
            Err(err) => return Check::error(NAME, "source.pagination", &err),
        };
        if p2.len() == 0 {
            if more == Some(true) {
                return Check::fail(
                    NAME,
                    "source.pagination",
                    format!(
                        "page 2 ({where_}) is empty although more records exist: check \
                         `source.pagination`"
                    ),
                );
            }
            return Check::cannot(
                NAME,
                format!(
                    "page 2 ({where_}) is empty and the source gives no total: page 1 may have \
                     been everything"
                ),
            );
        }
        let repeated: Vec<&str> = p2
            .ids
            .iter()
            .filter(|x| p1.ids.iter().any(|y| y.id == x.id))
            .map(|x| x.id.as_str())
            .collect();
        if !repeated.is_empty() {
            return Check::fail(
                NAME,
                "source.pagination",
                format!(
                    "page 2 ({where_}) repeats {} of page 1's {} IDs (first {}): the source \
                     ignores the pagination parameter; check `source.pagination`",
                    repeated.len(),
                    p1.len(),
                    repeated[0]
                ),
            );
        }
        let field = &e.cfg.delta_sync_field;
        let last = p1.ids.iter().map(|x| x.delta_us).max();
        let back = p2.ids.iter().find(|x| last.is_some_and(|l| x.delta_us < l));
        let continues = match back {
            Some(x) if order_ok => {
                return Check::fail(
                    NAME,
                    "source.pagination",
                    format!(
                        "page 2 ({where_}) goes back: ID {} has {field} {}, before page 1's \
                         last {}; check `source.pagination`",
                        x.id,
                        ts(x.delta_us),
                        last.map(ts).unwrap_or_default()
                    ),
                );
            }
            Some(_) => ", order not compared (the order check did not pass)",
            None => ", order continues",
        };
        let mut detail = format!("page 2 ({where_}) continues page 1: no repeated ID{continues}");
        if positional {
            // A position at (or past) the end must give an empty page.
            let served = u32::try_from(p1.served()).unwrap_or(u32::MAX).max(1);
            let k = match p1.total {
                Some(t) => t.div_ceil(u64::from(served)),
                None => 100_000,
            };
            let Some(pos) = self.position_param(k, served) else {
                return Check::pass(NAME, detail);
            };
            let mut params = first.clone();
            params.push(pos.clone());
            let end = match self.probe_url(e, &first, self.url(e, &params)).await {
                Ok(p) => p,
                Err(err) => return Check::error(NAME, "source.pagination", &err),
            };
            if end.len() > 0 {
                return Check::fail(
                    NAME,
                    "source.pagination",
                    format!(
                        "a page past the end ({}={}) serves {} record(s) (first ID {}) \
                         instead of none: a walk by position would never end; check \
                         `source.pagination` (a links or cursor style, if the source has one)",
                        pos.0,
                        pos.1,
                        end.len(),
                        end.ids[0].id
                    ),
                );
            }
            detail.push_str(&format!("; past the end ({}={}) is empty", pos.0, pos.1));
        }
        Check::pass(NAME, detail)
    }

    async fn check_id_filter(
        &self,
        e: &EntityRt,
        c: &Result<Probed, SourceError>,
        m: u32,
    ) -> Check {
        const NAME: &str = "id_filter";
        let Ok(c) = c else {
            return Check::cannot(NAME, "the ID listing failed");
        };
        if c.len() < 3 {
            return Check::cannot(NAME, format!("only {} ID(s) listed", c.len()));
        }
        let f = &self.source.filter;
        let gt = f.supports(FilterOp::Gt);
        let op = if gt { FilterOp::Gt } else { FilterOp::Gte };
        let param = f.param(&e.cfg.id_order_field, op);
        let anchor = &c.ids[1].id;
        let (expected, before) = if gt {
            (&c.ids[2].id, &c.ids[..2])
        } else {
            (&c.ids[1].id, &c.ids[..1])
        };
        let mut params = vec![
            (
                self.source.order_param.clone(),
                e.cfg.id_order_field.clone(),
            ),
            (
                self.source.pagination.limit_param().to_owned(),
                m.to_string(),
            ),
            (param.clone(), anchor.clone()),
        ];
        params.extend(self.position_param(0, m));
        let asked = format!("{param}={anchor}");
        let page = match self.probe_url(e, &params, self.url(e, &params)).await {
            Ok(p) => p,
            Err(err) => return Check::error(NAME, "id_filter", &err),
        };
        if let Some(x) = page
            .ids
            .iter()
            .find(|x| before.iter().any(|b| b.id == x.id))
        {
            return Check::fail(
                NAME,
                "id_filter",
                format!(
                    "{asked} returned ID {}, which the listing has before it: the source ignores \
                     the ID filter; set `id_filter = false`",
                    x.id
                ),
            );
        }
        match page.ids.first() {
            Some(x) if &x.id == expected => Check::pass(
                NAME,
                format!("{asked} starts at ID {expected}, right after it"),
            ),
            Some(x) => Check::fail(
                NAME,
                "id_filter",
                format!(
                    "{asked} starts at ID {}, not at {expected} (the next in the listing): set \
                     `id_filter = false`",
                    x.id
                ),
            ),
            None => Check::fail(
                NAME,
                "id_filter",
                format!(
                    "{asked} returned nothing although ID {expected} follows: set `id_filter = false`"
                ),
            ),
        }
    }

    async fn check_get_by_id(&self, e: &EntityRt, a: &Probed) -> Check {
        const NAME: &str = "get_by_id";
        let Some(listed) = a.ids.first() else {
            return Check::cannot(NAME, "the listing is empty");
        };
        let id = &listed.id;
        let field = &e.cfg.delta_sync_field;
        let at = format!("{}/{id}", e.cfg.path);
        match self.get_by_id(&e.cfg.name, id).await {
            Ok(Some(r)) if r.version.delta_us == listed.delta_us => Check::pass(
                NAME,
                format!("listed ID {id} fetched back from {at} with the same ID and {field}"),
            ),
            Ok(Some(r)) => Check::fail(
                NAME,
                "delta_pointer",
                format!(
                    "listed ID {id} with {field} {}, fetched back from {at} with {}: check \
                     `delta_pointer` (or the record changed in between: run again)",
                    ts(listed.delta_us),
                    ts(r.version.delta_us)
                ),
            ),
            Ok(None) => Check::fail(
                NAME,
                "path",
                format!("{at} answers a JSON 404 for a listed ID: check `path`"),
            ),
            Err(
                err @ SourceError::Decode {
                    source: ParseError::WrongRecord { .. },
                    ..
                },
            ) => Check::fail(
                NAME,
                "id_pointer",
                format!("{err}: check `id_pointer` and `path`"),
            ),
            Err(err @ SourceError::BadId { .. }) => Check::fail(
                NAME,
                "id_pointer",
                format!("{err}: the listed ID cannot be fetched; check `id_pointer`"),
            ),
            Err(err @ SourceError::Rejected { reason, .. }) => {
                let field = rejected_field(reason).unwrap_or("delta_pointer");
                Check::fail(
                    NAME,
                    field,
                    format!("{err}: the listed ID fetched back does not read; check `{field}`"),
                )
            }
            Err(SourceError::Client { status, url }) => Check::fail(
                NAME,
                "path",
                format!(
                    "{url} answers {status}{} for a listed ID: check `path` and \
                     `source.base_url`",
                    if status == 404 { " (not JSON)" } else { "" }
                ),
            ),
            Err(err) => Check::error(NAME, "path", &err),
        }
    }

    async fn check_not_found(&self, e: &EntityRt) -> Check {
        const NAME: &str = "not_found";
        let id = match IdOrder::of(&e.cfg) {
            IdOrder::Numeric => MISSING_NUMERIC_ID,
            IdOrder::Bytewise => MISSING_TEXT_ID,
        };
        let at = format!("{}/{id}", e.cfg.path);
        match self.get_by_id(&e.cfg.name, id).await {
            Ok(None) => Check::pass(
                NAME,
                format!("{at} (surely missing) answers a JSON 404: a deleted record is recognised"),
            ),
            Ok(Some(_)) => Check::cannot(NAME, format!("{at} exists, so a 404 could not be seen")),
            Err(SourceError::Client { status: 404, url }) => Check::fail(
                NAME,
                "path",
                format!(
                    "{url} answers a 404 that is not JSON (an HTML page): the path is wrong, or \
                     a deletion would look like a wrong path; check `path` and \
                     `source.base_url`"
                ),
            ),
            Err(SourceError::Client { status, url }) => Check::fail(
                NAME,
                "path",
                format!(
                    "{url} answers {status} instead of a JSON 404: check `path` (and \
                     `id_order` if the source refuses this ID's form)"
                ),
            ),
            Err(err) => Check::error(NAME, "path", &err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<IdVersion> {
        list.iter()
            .map(|id| IdVersion {
                id: (*id).to_owned(),
                delta_us: 0,
            })
            .collect()
    }

    #[test]
    fn id_pages_are_judged_in_the_configured_order() {
        let numeric = ids(&["9", "10", "11"]);
        assert_eq!(sorted_in(IdOrder::Numeric, &numeric), Some(true));
        assert_eq!(sorted_in(IdOrder::Bytewise, &numeric), Some(false));
        let text = ids(&["a", "b"]);
        assert_eq!(sorted_in(IdOrder::Numeric, &text), None);
        assert_eq!(sorted_in(IdOrder::Bytewise, &text), Some(true));
        assert_eq!(sorted_in(IdOrder::Bytewise, &ids(&["a", "a"])), Some(false));
    }

    #[test]
    fn request_errors_name_the_likely_field() {
        let client = |status| SourceError::Client {
            status,
            url: "u".into(),
        };
        let field = |e: &SourceError| Check::error("x", "fallback", e).field;
        assert_eq!(field(&client(401)).as_deref(), Some("source.auth"));
        let refused = SourceError::Unauthorized {
            url: "u".into(),
            reread: true,
        };
        assert_eq!(field(&refused).as_deref(), Some("source.auth"));
        assert_eq!(field(&client(404)).as_deref(), Some("path"));
        assert_eq!(field(&client(400)).as_deref(), Some("fallback"));
        let decode = |source| SourceError::Decode {
            url: "u".into(),
            source,
        };
        let missing = |field| ParseError::Missing {
            field,
            pointer: "/p".into(),
        };
        assert_eq!(
            field(&decode(missing(Field::Delta))).as_deref(),
            Some("delta_pointer")
        );
        let nested = ParseError::Record {
            index: 3,
            id: None,
            source: Box::new(missing(Field::Id)),
        };
        assert_eq!(field(&decode(nested)).as_deref(), Some("id_pointer"));
        assert_eq!(
            field(&decode(ParseError::ListingNotFound)).as_deref(),
            Some("path")
        );
        assert_eq!(Check::error("x", "f", &client(404)).verdict, Verdict::Fail);
    }
}

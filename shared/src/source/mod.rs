//! The source-API client: filter styles, paginators as lazy streams (one page in memory),
//! the retry policy and auth. Implements `ports::SourceApi`.
//!
//! Positional sources (offset, page number) are paged by keyset: each query restarts from the
//! highest delta value seen (inclusive), and records of that value already yielded are skipped
//! by ID, so an update mid-scan cannot shift a record past us. A full page of one delta value
//! (a tie larger than a page) is read by position within the tie, repeated until two passes see
//! the same members, then the walk continues strictly after that value.

pub mod budget;
pub mod http;
pub mod parse;
pub mod probe;
pub mod ratelimit;
mod walk;

use crate::config::{
    AuthConfig, Config, EntityConfig, FilterOp, IdOrder, Pagination, Secret, SecretProvider,
    SourceConfig,
};
use crate::core::budget::Lane;
use crate::core::size::MAX_ID_BYTES;
use crate::core::timefmt::format_rfc3339;
use crate::error::{ConfigError, ParseError, SourceError, WalkError};
use crate::model::{Fetched, Micros, Record};
use crate::ports::{IdPage, RecordPage, SourceApi};
use async_trait::async_trait;
use futures::stream::BoxStream;
pub use http::ClientStats;
use http::{Body, Http};
use parse::{RecordShape, pointer_segments};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ratelimit::SlidingWindow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use url::Url;

/// Passes over a tie group before giving up (each pass that differs from the previous one
/// means records left the group while we read it).
const MAX_TIE_PASSES: usize = 8;
/// IDs of a page's end kept to recognise it in the next, overlapping offset page.
const ANCHORS: usize = 3;

/// Where an ID listing continues (`IdPage::resume`), opaque to callers.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdResume {
    /// Keyset: the last ID read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    /// Overlapping offsets: the next page's offset and the IDs that must reappear in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    anchors: Vec<String>,
    /// Page numbers: the next page (counted from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page: Option<u64>,
    /// Links and cursors: the next page's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// The fingerprint of the page read last, so that the next invocation recognises it served
    /// again (a source serving its last page for every page past the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fp: Option<u64>,
}

/// Characters kept as they are in a path segment (RFC 3986 unreserved); all else is encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

struct EntityRt {
    cfg: EntityConfig,
    shape: RecordShape,
    collection: Url,
    limiter: Option<SlidingWindow>,
}

pub struct SourceClient {
    source: SourceConfig,
    base: Url,
    entities: HashMap<String, EntityRt>,
    http: Http,
    /// Set only by `with_naive_offset_paging` (the `testing` feature).
    naive_offset: bool,
    /// The walk's order and progress checks (`walk`); off only by `without_walk_checks` (the
    /// `testing` feature).
    checks: bool,
    /// The origin check of a resumed listing's next URL; off only by
    /// `without_resume_origin_check` (the `testing` feature).
    resume_origin_check: bool,
}

impl std::fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The source secret from the environment variable the configuration names.
pub fn secret_from_env(auth: &AuthConfig) -> Result<Option<Secret>, ConfigError> {
    match auth.secret_ref() {
        None => Ok(None),
        Some(r) => match std::env::var(&r.env) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(ConfigError::MissingEnv(r.env.clone())),
        },
    }
}

impl SourceClient {
    pub fn new(cfg: &Config, secret: Option<Secret>) -> Result<Self, ConfigError> {
        let bad = |field: &str, message: String| ConfigError::Invalid {
            file: cfg.file.clone(),
            entity: "-".into(),
            field: field.into(),
            message,
        };
        let base =
            Url::parse(&cfg.source.base_url).map_err(|e| bad("source.base_url", e.to_string()))?;
        let http = Http::new(&cfg.source, secret.as_ref()).map_err(|source| {
            ConfigError::SourceClient {
                file: cfg.file.clone(),
                source,
            }
        })?;
        let (next_link_pointer, next_cursor_pointer) = match &cfg.source.pagination {
            Pagination::LinksNext { next_pointer, .. } => {
                (Some(pointer_segments(next_pointer)), None)
            }
            Pagination::Cursor {
                next_cursor_pointer,
                ..
            } => (None, Some(pointer_segments(next_cursor_pointer))),
            _ => (None, None),
        };
        let mut entities = HashMap::new();
        for e in &cfg.entities {
            let shape = RecordShape {
                records_pointer: pointer_segments(&cfg.source.records_pointer),
                id_pointer: pointer_segments(&e.id_pointer),
                delta_pointer: pointer_segments(&e.delta_pointer),
                total_count_pointer: cfg
                    .source
                    .total_count_pointer
                    .as_deref()
                    .map(pointer_segments),
                next_link_pointer: next_link_pointer.clone(),
                next_cursor_pointer: next_cursor_pointer.clone(),
                timestamp_format: cfg.source.timestamp_format,
                timestamp_offset: cfg.source.timestamp_offset,
            };
            let collection = join_path(&base, &e.path).map_err(|m| ConfigError::Invalid {
                file: cfg.file.clone(),
                entity: e.name.clone(),
                field: "path".into(),
                message: m,
            })?;
            entities.insert(
                e.name.clone(),
                EntityRt {
                    cfg: e.clone(),
                    shape,
                    collection,
                    limiter: e.rate_limit.as_ref().map(SlidingWindow::new),
                },
            );
        }
        Ok(SourceClient {
            source: cfg.source.clone(),
            base,
            entities,
            http,
            naive_offset: false,
            checks: true,
            resume_origin_check: true,
        })
    }

    /// After a 401, read the secret again from `provider` and retry once (at most one re-read
    /// per `http::REREAD_INTERVAL`, shared by every request of this client); a second 401 is
    /// `SourceError::Unauthorized`. Without a provider, the first 401 is.
    pub fn with_secret_provider(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.http = self.http.with_secret_provider(provider);
        self
    }

    /// Take every request's token from the account's shared budget in `store` (after this
    /// process's own limiter), unless `[source.rate_budget] shared = false`. Lanes follow the
    /// call: `fetch_by_id` targeted, `list_changed_since` delta, `stream_ids` reconciliation.
    pub fn with_budget_in(mut self, store: Arc<dyn crate::ports::BudgetStore>) -> Self {
        let b = &self.source.rate_budget;
        if !b.shared {
            return self;
        }
        let account = b
            .account
            .clone()
            .unwrap_or_else(|| self.base.host_str().unwrap_or("source").to_owned());
        let budget =
            budget::Budget::new(store, account, self.source.rate_limit.as_limit(), b.shape());
        self.http = self.http.with_budget(Arc::new(budget));
        self
    }

    /// The shared budget, when the client has one.
    pub fn budget(&self) -> Option<&Arc<budget::Budget>> {
        self.http.budget()
    }

    /// Re-reads of the source secret so far.
    pub fn secret_rereads(&self) -> u64 {
        self.http.secret_rereads()
    }

    /// Negative control for tests only: page positional sources by a growing offset over a
    /// fixed filter (what most clients do, and what loses a record whenever one moves).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_naive_offset_paging(mut self) -> Self {
        self.naive_offset = true;
        self
    }

    /// Negative control for tests only: trust the source's order and progress as the engine
    /// did before (no order checks, no progress guards).
    #[cfg(any(test, feature = "testing"))]
    pub fn without_walk_checks(mut self) -> Self {
        self.checks = false;
        self
    }

    /// Negative control for tests only: follow a resume token's next URL wherever it points,
    /// as the engine did before (the first page's links were checked, a resumed one was not).
    #[cfg(any(test, feature = "testing"))]
    pub fn without_resume_origin_check(mut self) -> Self {
        self.resume_origin_check = false;
        self
    }

    /// A resumed listing's next URL (from a resume token: Step Functions input, a console
    /// invoke) must have the origin of `source.base_url`, as every next link of a listing
    /// does: the request carries the source credential.
    fn resumed_next(&self, e: &EntityRt, next: &str) -> Result<Url, SourceError> {
        let url = Url::parse(next)
            .map_err(|err| self.walk_error(&e.collection, WalkError::BadResume(err.to_string())))?;
        if self.resume_origin_check && url.origin() != self.base.origin() {
            return Err(self.walk_error(
                &e.collection,
                WalkError::ForeignResume {
                    origin: url.origin().ascii_serialization(),
                },
            ));
        }
        Ok(url)
    }

    /// A walk check's verdict, as the listing's error (every check passes with the checks off).
    fn check<T: Default>(
        &self,
        url: &Url,
        verdict: Result<T, WalkError>,
    ) -> Result<T, SourceError> {
        match verdict {
            Ok(v) => Ok(v),
            Err(_) if !self.checks => Ok(T::default()),
            Err(source) => Err(self.walk_error(url, source)),
        }
    }

    fn walk_error(&self, url: &Url, source: WalkError) -> SourceError {
        SourceError::Walk {
            url: http::redact_url(url),
            source,
        }
    }

    /// Before each request of a listing but its first (so that every invocation progresses):
    /// stop once the invocation's stop instant (`core::deadline::within`) has passed, instead
    /// of reading pages the caller has no time to use.
    fn before_request(&self, url: &Url, requests: &mut u64) -> Result<(), SourceError> {
        *requests += 1;
        if *requests > 1
            && crate::core::deadline::current().is_some_and(|t| std::time::Instant::now() >= t)
        {
            return Err(SourceError::Deadline {
                url: http::redact_url(url),
                wait: std::time::Duration::ZERO,
                cause: crate::error::WaitCause::StopInstant,
            });
        }
        Ok(())
    }

    pub fn stats(&self) -> ClientStats {
        self.http.stats()
    }

    fn entity(&self, name: &str) -> Result<&EntityRt, SourceError> {
        self.entities
            .get(name)
            .ok_or_else(|| SourceError::UnknownEntity(name.to_owned()))
    }

    /// The filter parameter for "delta >= t" (`strict = false`) or "delta > t" (`strict = true`)
    /// in the source's own syntax and timestamp format.
    fn delta_filter(&self, e: &EntityRt, t: Micros, strict: bool) -> (String, String) {
        let f = &self.source.filter;
        let res = self.source.resolution_us();
        let fmt = self.source.timestamp_format;
        let field = &e.cfg.delta_sync_field;
        match (strict, f.supports(FilterOp::Gte), f.supports(FilterOp::Gt)) {
            (false, true, _) => (f.param(field, FilterOp::Gte), fmt.format(t)),
            (false, false, _) => (f.param(field, FilterOp::Gt), fmt.format(t - res)),
            (true, _, true) => (f.param(field, FilterOp::Gt), fmt.format(t)),
            (true, _, false) => (f.param(field, FilterOp::Gte), fmt.format(t + res)),
        }
    }

    fn url(&self, e: &EntityRt, params: &[(String, String)]) -> Url {
        let mut u = e.collection.clone();
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        u
    }

    fn position_param(&self, k: u64, page_size: u32) -> Option<(String, String)> {
        match &self.source.pagination {
            Pagination::Offset { offset_param, .. } => {
                Some((offset_param.clone(), (k * u64::from(page_size)).to_string()))
            }
            Pagination::Page {
                page_param,
                first_page,
                ..
            } => Some((page_param.clone(), (u64::from(*first_page) + k).to_string())),
            _ => None,
        }
    }

    /// The URL of the next page for link and cursor styles; `None` at the end.
    fn next_url(
        &self,
        e: &EntityRt,
        first: &[(String, String)],
        link_header: Option<String>,
        body_link: Option<String>,
        cursor: Option<String>,
    ) -> Result<Option<Url>, SourceError> {
        let link = match &self.source.pagination {
            Pagination::LinksNext { .. } => body_link,
            Pagination::LinkHeader { .. } => link_header,
            Pagination::Cursor { cursor_param, .. } => {
                return Ok(cursor.filter(|c| !c.is_empty()).map(|c| {
                    let mut params = first.to_vec();
                    params.push((cursor_param.clone(), c));
                    self.url(e, &params)
                }));
            }
            _ => None,
        };
        let Some(link) = link else { return Ok(None) };
        let next = self
            .base
            .join(&link)
            .map_err(|err| self.walk_error(&e.collection, WalkError::NextNotUrl(err)))?;
        // Never send our credentials to another origin.
        if next.origin() != self.base.origin() {
            return Err(self.walk_error(
                &e.collection,
                WalkError::ForeignOrigin {
                    origin: next.origin().ascii_serialization(),
                },
            ));
        }
        Ok(Some(next))
    }

    fn order_by_delta(&self, e: &EntityRt) -> (String, String) {
        (
            self.source.order_param.clone(),
            e.cfg.delta_sync_field.clone(),
        )
    }
}

fn join_path(base: &Url, path: &str) -> Result<Url, String> {
    let mut u = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    u.set_path(&joined);
    u.set_query(None);
    Ok(u)
}

/// Reject IDs that cannot become one path segment or that no store holds: empty, longer than
/// the stores take (`core::size::MAX_ID_BYTES`, the one ID limit), or a dot segment. Every
/// other character, control characters included, is percent-encoded in the path.
pub fn validate_id(id: &str) -> Result<(), SourceError> {
    let bad = |reason| {
        Err(SourceError::BadId {
            id: id.chars().take(64).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_BYTES {
        return bad(TOO_LONG);
    }
    if id == "." || id == ".." {
        return bad("a dot segment would change the path");
    }
    Ok(())
}

/// A full page of a keyset delta walk waiting for the next query's count
/// (`walk::check_skipped`): the count it was read under, its lower bound, how many of its
/// records lie below its highest value, its number.
struct HeldPage {
    page: RecordPage,
    total_from: Option<u64>,
    from: Option<Micros>,
    served: u64,
    n: u64,
}

/// [`validate_id`]'s words for an ID over [`MAX_ID_BYTES`].
const TOO_LONG: &str = "longer than the 1024 bytes the store takes";
const _: () = assert!(MAX_ID_BYTES == 1024, "TOO_LONG names the limit");

#[async_trait]
impl SourceApi for SourceClient {
    fn list_changed_since<'a>(
        &'a self,
        entity: &'a str,
        since_us: Option<Micros>,
    ) -> BoxStream<'a, Result<RecordPage, SourceError>> {
        Box::pin(async_stream::try_stream! {
            let e = self.entity(entity)?;
            let p = e.cfg.page_size;
            let res = self.source.resolution_us();
            let per_page = (self.source.pagination.limit_param().to_owned(), p.to_string());
            let mut requests = 0u64;
            let fetch = |url: Url| async move {
                self.http.get(&url, e.limiter.as_ref(), Lane::Delta, |b, at| match b {
                    Body::Json(t) => parse::parse_record_page(entity, t, &e.shape, at),
                    Body::NotFound => Err(ParseError::ListingNotFound),
                }).await
            };
            if !self.source.pagination.is_positional() {
                let mut first = vec![self.order_by_delta(e), per_page];
                if let Some(t) = since_us {
                    first.push(self.delta_filter(e, t, false));
                }
                let mut url = self.url(e, &first);
                let mut followed = HashSet::new();
                let mut walk = walk::DeltaWalk::new(since_us, res);
                loop {
                    self.before_request(&url, &mut requests)?;
                    let ans = fetch(url.clone()).await?;
                    let page = ans.value;
                    let n = page.elements();
                    let next = self.next_url(e, &first, ans.link_next, page.next_link, page.next_cursor)?;
                    let items = page.records.iter().map(|r| (r.id.as_str(), r.version.delta_us));
                    self.check(&e.collection, walk.page(items, next.is_some()))?;
                    if n > 0 {
                        yield RecordPage { records: page.records, rejected: page.rejected, source_date_us: ans.date_us };
                    }
                    match next {
                        Some(n) if !followed.insert(n.to_string()) => {
                            Err(self.walk_error(&n, WalkError::LinkRepeats))?;
                        }
                        Some(n) => url = n,
                        None => break,
                    }
                }
                return;
            }
            if self.naive_offset {
                let mut k = 0u64;
                loop {
                    let mut params = vec![self.order_by_delta(e), per_page.clone()];
                    if let Some(t) = since_us {
                        params.push(self.delta_filter(e, t, false));
                    }
                    params.extend(self.position_param(k, p));
                    let ans = fetch(self.url(e, &params)).await?;
                    let n = ans.value.elements();
                    if n > 0 {
                        yield RecordPage { records: ans.value.records, rejected: ans.value.rejected, source_date_us: ans.date_us };
                    }
                    if n < p as usize {
                        break;
                    }
                    k += 1;
                }
                return;
            }
            // Positional: keyset on the delta value. A full page is handed on only once the next
            // query's count shows that it held every record below its highest value
            // (`walk::check_skipped`): a page waits in `held`, with the count it was read
            // under, its lower bound and how many of its records lie below its highest value.
            let mut lower: Option<(Micros, bool)> = since_us.map(|t| (t, false));
            let mut cur_t: Option<Micros> = None;
            let mut seen: HashSet<String> = HashSet::new();
            let mut pages = 0u64;
            let mut held: Option<HeldPage> = None;
            let mut yielded = 0u64;
            loop {
                let mut params = vec![self.order_by_delta(e), per_page.clone()];
                if let Some((t, strict)) = lower {
                    params.push(self.delta_filter(e, t, strict));
                }
                params.extend(self.position_param(0, p));
                let url = self.url(e, &params);
                // The request that verifies the first page goes out even past the stop instant,
                // so that every invocation still hands over a page (a request's time is within
                // the stop margin). If it fails (a wait past the deadline, a fault), the held
                // page is handed over unverified, as before the count check: an interrupted
                // walk must still progress. The check covers every walk that goes on.
                let verifying_first = held.is_some() && yielded == 0;
                let asked = if verifying_first {
                    requests += 1;
                    Ok(())
                } else {
                    self.before_request(&url, &mut requests)
                };
                let ans = match asked {
                    Ok(()) => fetch(url.clone()).await,
                    Err(e) => Err(e),
                };
                let ans = match ans {
                    Ok(a) => a,
                    Err(e) => {
                        if let Some(h) = held.take() {
                            yield h.page;
                        }
                        Err(e)?;
                        break;
                    }
                };
                pages += 1;
                let deltas = ans.value.records.iter().map(|r| r.version.delta_us);
                self.check(&url, walk::check_delta_order(deltas, lower.map(|l| l.0), res, None, pages))?;
                let total = ans.value.total_count;
                if let Some(HeldPage { page, total_from, from, served, n }) = held.take() {
                    // This query's bound is the held page's highest value (`lower` below).
                    let to = lower.map_or(Micros::MIN, |l| l.0);
                    self.check(&url, walk::check_skipped(total_from, total, served, n, from, to))?;
                    yielded += 1;
                    yield page;
                }
                let full = ans.value.elements() >= p as usize;
                let rejected = ans.value.rejected;
                let from = lower.map(|l| l.0);
                let page_max = ans.value.records.iter().map(|r| r.version.delta_us).max();
                // Served below the page's highest value (a rejected record's value is unknown:
                // counted as below, so that it never raises a false alarm).
                let served = page_max.map_or(0, |m| {
                    ans.value.records.iter().filter(|r| r.version.delta_us < m).count()
                }) as u64 + rejected.len() as u64;
                let mut fresh = Vec::with_capacity(ans.value.records.len());
                for r in ans.value.records {
                    if let Some((t, strict)) = lower
                        && (r.version.delta_us < t || (strict && r.version.delta_us == t))
                    {
                        continue; // within one resolution of the bound (checked above)
                    }
                    let d = r.version.delta_us;
                    if cur_t.is_none_or(|c| d > c) {
                        cur_t = Some(d);
                        seen.clear();
                    }
                    if Some(d) == cur_t && !seen.insert(r.id.clone()) {
                        continue;
                    }
                    fresh.push(r);
                }
                let progressed = !fresh.is_empty();
                if progressed || !rejected.is_empty() {
                    let page = RecordPage { records: fresh, rejected, source_date_us: ans.date_us };
                    // A full page the walk moves past (to its highest value) waits for the
                    // next count; the last page, or one the tie passes continue, goes now.
                    if full && progressed && cur_t == page_max && self.checks {
                        held = Some(HeldPage { page, total_from: total, from, served, n: pages });
                    } else {
                        yielded += 1;
                        yield page;
                    }
                }
                if !full {
                    break;
                }
                let Some(t) = cur_t else {
                    Err(self.walk_error(&url, WalkError::EmptyFullPage))?;
                    break;
                };
                if progressed {
                    lower = Some((t, false));
                    continue;
                }
                // Tie overflow: a full page of records sharing `t`, all seen. Read the group by
                // position until two consecutive passes agree on its members. Each pass re-reads
                // the group's pages by design: progress is checked within a pass.
                let mut previous: Option<HashSet<String>> = None;
                let mut converged = false;
                for _pass in 0..MAX_TIE_PASSES {
                    let mut members = HashSet::new();
                    let mut prints = walk::Fingerprints::default();
                    let mut k = 0u64;
                    loop {
                        let mut params = vec![self.order_by_delta(e), per_page.clone(), self.delta_filter(e, t, false)];
                        params.extend(self.position_param(k, p));
                        let url = self.url(e, &params);
                        self.before_request(&url, &mut requests)?;
                        let ans = fetch(url.clone()).await?;
                        let n = ans.value.elements();
                        let rejected = ans.value.rejected;
                        let deltas = ans.value.records.iter().map(|r| r.version.delta_us);
                        self.check(&url, walk::check_delta_order(deltas, Some(t), res, None, k + 1))?;
                        let fp = (n > 0).then(|| walk::fingerprint(ans.value.records.iter().map(|r| (r.id.as_str(), r.version.delta_us))));
                        self.check(&url, prints.page(fp, k + 1))?;
                        let known = members.len();
                        let mut beyond = false;
                        let mut fresh = Vec::new();
                        for r in ans.value.records {
                            if r.version.delta_us < t {
                                continue;
                            }
                            if r.version.delta_us > t {
                                beyond = true;
                                break;
                            }
                            members.insert(r.id.clone());
                            if seen.insert(r.id.clone()) {
                                fresh.push(r);
                            }
                        }
                        if !fresh.is_empty() || !rejected.is_empty() {
                            yield RecordPage { records: fresh, rejected, source_date_us: ans.date_us };
                        }
                        if beyond || n < p as usize {
                            break;
                        }
                        // A full page of the group adding no member: the position is ignored or
                        // clamped, and the pass would never end.
                        let stuck = members.len() == known;
                        self.check(&url, if stuck { Err(WalkError::NoProgress { page: k + 1 }) } else { Ok(()) })?;
                        k += 1;
                    }
                    if previous.as_ref() == Some(&members) {
                        converged = true;
                        break;
                    }
                    previous = Some(members);
                }
                if !converged {
                    Err(self.walk_error(&e.collection, WalkError::TieUnstable { at: format_rfc3339(t), passes: MAX_TIE_PASSES }))?;
                }
                lower = Some((t, true));
            }
        })
    }

    fn stream_ids<'a>(&'a self, entity: &'a str) -> BoxStream<'a, Result<IdPage, SourceError>> {
        self.stream_ids_from(entity, None)
    }

    fn stream_ids_from<'a>(
        &'a self,
        entity: &'a str,
        resume: Option<&'a str>,
    ) -> BoxStream<'a, Result<IdPage, SourceError>> {
        Box::pin(async_stream::try_stream! {
            let e = self.entity(entity)?;
            let token = match resume {
                None => IdResume::default(),
                Some(t) => serde_json::from_str::<IdResume>(t).map_err(|err| {
                    self.walk_error(&e.collection, WalkError::BadResume(err.to_string()))
                })?,
            };
            let p = self.source.max_page_size;
            let mut first = vec![
                (self.source.order_param.clone(), e.cfg.id_order_field.clone()),
                (self.source.pagination.limit_param().to_owned(), p.to_string()),
            ];
            if let (Some(param), Some(ty)) = (&self.source.sparse_fields_param, &e.cfg.sparse_type) {
                let attr = e.cfg.sparse_delta_attribute.clone().unwrap_or_else(|| e.cfg.delta_sync_field.clone());
                first.push((param.replace("{type}", ty), attr));
            }
            let mut requests = 0u64;
            let fetch = |url: Url| async move {
                self.http.get(&url, e.limiter.as_ref(), Lane::Reconcile, |b, _| match b {
                    Body::Json(t) => parse::parse_id_page(t, &e.shape),
                    Body::NotFound => Err(ParseError::ListingNotFound),
                }).await
            };
            let positional = self.source.pagination.is_positional();
            if e.cfg.id_filter && !self.naive_offset {
                // Keyset on the ID: `where[id][gt]=<last>`, first page of each query; every page
                // checked to be in the entity's ID order and after the ID asked for.
                let f = &self.source.filter;
                let op = if f.supports(FilterOp::Gt) { FilterOp::Gt } else { FilterOp::Gte };
                let param = f.param(&e.cfg.id_order_field, op);
                let order = IdOrder::of(&e.cfg);
                let mut after = token.after;
                let mut pages = 0u64;
                loop {
                    let mut params = first.clone();
                    if let Some(a) = &after {
                        params.push((param.clone(), a.clone()));
                    }
                    params.extend(self.position_param(0, p));
                    let url = self.url(e, &params);
                    self.before_request(&url, &mut requests)?;
                    let page = fetch(url.clone()).await?.value;
                    pages += 1;
                    let n_raw = page.elements();
                    let mut ids = page.ids;
                    let mut rejected = page.rejected;
                    if op == FilterOp::Gte && let Some(a) = &after {
                        ids.retain(|x| &x.id != a);
                        rejected.retain(|x| x.usable_id() != Some(a.as_str()));
                    }
                    self.check(&url, walk::check_id_order(&ids, order, after.as_deref(), pages))?;
                    // The last usable ID, rejected records' included (a rejected one may end the
                    // page, and the next query must start after it).
                    let last = page.last_id.filter(|_| !ids.is_empty() || !rejected.is_empty());
                    let Some(last) = last else {
                        if n_raw >= p as usize {
                            // A full page of records without a usable ID: nothing to go on from.
                            Err(self.walk_error(&url, WalkError::NoProgress { page: pages }))?;
                        }
                        break;
                    };
                    if after.as_ref() == Some(&last) {
                        // Only reachable with the checks off (the order check refuses it).
                        Err(self.walk_error(&url, WalkError::IdFilterIgnored { page: pages, after: WalkError::shown(&last), first: WalkError::shown(&last) }))?;
                    }
                    let resume = serde_json::to_string(&IdResume { after: Some(last.clone()), ..IdResume::default() }).ok();
                    yield IdPage { ids, rejected, total_count: page.total_count, resume };
                    if n_raw < p as usize {
                        break;
                    }
                    after = Some(last);
                }
                return;
            }
            let mut pass = walk::IdPass::resumed(token.fp);
            if positional && !self.naive_offset
                && let Pagination::Offset { offset_param, .. } = &self.source.pagination
            {
                // Offset pages overlapping by one record; the previous page's last IDs
                // (anchors) must reappear, otherwise deletions before the position shifted
                // the listing back and we step back to find them (or fail: never skip).
                let mut offset = token.offset.unwrap_or(0);
                let mut anchors = token.anchors;
                let mut stepped_back = false;
                loop {
                    let mut params = first.clone();
                    params.push((offset_param.clone(), offset.to_string()));
                    let url = self.url(e, &params);
                    self.before_request(&url, &mut requests)?;
                    let page = fetch(url.clone()).await?.value;
                    let n_raw = page.elements();
                    let rejected = page.rejected;
                    let raw = page.ids;
                    let mut start = 0;
                    if !anchors.is_empty() && n_raw > 0 {
                        match raw.iter().rposition(|x| anchors.contains(&x.id)) {
                            Some(i) => start = i + 1,
                            None if !stepped_back && offset > 0 => {
                                offset = offset.saturating_sub(u64::from(p) - 1);
                                stepped_back = true;
                                continue;
                            }
                            None => Err(self.walk_error(&url, WalkError::Shifted))?,
                        }
                    }
                    let more = n_raw >= p as usize;
                    let fp = self.check(&url, pass.page(&raw, more))?;
                    stepped_back = false;
                    let next_offset = offset + (n_raw as u64).saturating_sub(1);
                    let new_anchors: Vec<String> = raw.iter().rev().take(ANCHORS).map(|x| x.id.clone()).collect();
                    let ids: Vec<_> = raw.into_iter().skip(start).collect();
                    let resume = more.then(|| serde_json::to_string(&IdResume {
                        offset: Some(next_offset),
                        anchors: new_anchors.clone(),
                        fp,
                        ..IdResume::default()
                    }).ok()).flatten();
                    if !ids.is_empty() || !rejected.is_empty() {
                        yield IdPage { ids, rejected, total_count: page.total_count, resume };
                    }
                    if !more {
                        break;
                    }
                    anchors = new_anchors;
                    offset = next_offset;
                }
                return;
            }
            // Page numbers (no overlap possible), links and cursors; the naive control.
            let mut k = token.page.unwrap_or(0);
            let mut url = match (&token.next, positional) {
                (Some(n), false) => self.resumed_next(e, n)?,
                _ => {
                    let mut params = first.clone();
                    params.extend(self.position_param(k, p));
                    self.url(e, &params)
                }
            };
            let mut followed = HashSet::new();
            loop {
                self.before_request(&url, &mut requests)?;
                let ans = fetch(url.clone()).await?;
                let page = ans.value;
                let n = page.elements();
                let next = if positional {
                    None
                } else {
                    self.next_url(e, &first, ans.link_next, page.next_link, page.next_cursor)?
                };
                let more = if positional { n >= p as usize } else { next.is_some() };
                let fp = if self.naive_offset { None } else { self.check(&url, pass.page(&page.ids, more))? };
                let resume = if positional {
                    more.then(|| IdResume { page: Some(k + 1), fp, ..IdResume::default() })
                } else {
                    next.as_ref().map(|u| IdResume { next: Some(u.to_string()), fp, ..IdResume::default() })
                }
                .and_then(|t| serde_json::to_string(&t).ok());
                if n > 0 {
                    yield IdPage { ids: page.ids, rejected: page.rejected, total_count: page.total_count, resume };
                }
                if positional {
                    if !more {
                        break;
                    }
                    k += 1;
                    let mut params = first.clone();
                    params.extend(self.position_param(k, p));
                    url = self.url(e, &params);
                } else {
                    match next {
                        Some(n) if !followed.insert(n.to_string()) => {
                            Err(self.walk_error(&n, WalkError::LinkRepeats))?;
                        }
                        Some(n) => url = n,
                        None => break,
                    }
                }
            }
        })
    }

    async fn get_by_id(&self, entity: &str, id: &str) -> Result<Option<Record>, SourceError> {
        Ok(self.fetch_by_id(entity, id).await?.record)
    }

    async fn release_budget(&self) {
        if let Some(b) = self.http.budget() {
            b.give_back().await;
        }
    }

    /// From the client's counters (`Stats`: one atomic add per attempt sent, one per 429).
    fn usage(&self) -> crate::model::SourceUsage {
        let s = self.stats();
        crate::model::SourceUsage {
            requests: s.requests,
            rate_limited: s.rate_limited,
        }
    }

    /// The record's `fetched_at_us` and the answer's `sent_us` are one instant: the send time
    /// of the attempt that produced the answer (`http`'s module doc).
    async fn fetch_by_id(&self, entity: &str, id: &str) -> Result<Fetched, SourceError> {
        let e = self.entity(entity)?;
        validate_id(id)?;
        let mut url = e.collection.clone();
        let path = format!("{}/{}", url.path(), utf8_percent_encode(id, PATH_SEGMENT));
        url.set_path(&path);
        let ans = self
            .http
            .get(&url, e.limiter.as_ref(), Lane::Targeted, |b, at| match b {
                Body::NotFound => Ok(None),
                Body::Json(t) => parse::parse_single(entity, t, &e.shape, at).map(Some),
            })
            .await?;
        let got = match &ans.value {
            None => None,
            Some(Ok(r)) => Some(r.id.as_str()),
            Some(Err(x)) => x.usable_id(),
        };
        if let Some(got) = got
            && got != id
        {
            return Err(SourceError::Decode {
                url: http::redact_url(&url),
                source: ParseError::WrongRecord {
                    asked: id.to_owned(),
                    got: got.to_owned(),
                },
            });
        }
        let sent_us = ans.sent_us;
        match ans.value {
            None => Ok(Fetched {
                record: None,
                sent_us,
            }),
            Some(Ok(r)) => Ok(Fetched {
                record: Some(r),
                sent_us,
            }),
            // The source has it (never "gone"), but it cannot be synced.
            Some(Err(x)) => Err(SourceError::Rejected {
                url: http::redact_url(&url),
                id: id.to_owned(),
                reason: x.reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_and_encoded() {
        assert!(validate_id("").is_err());
        assert!(validate_id("..").is_err());
        // One ID limit: the store's.
        validate_id(&"x".repeat(MAX_ID_BYTES)).unwrap();
        assert!(validate_id(&"x".repeat(MAX_ID_BYTES + 1)).is_err());
        validate_id(&"é".repeat(MAX_ID_BYTES / 2)).unwrap();
        assert!(validate_id(&"é".repeat(MAX_ID_BYTES / 2 + 1)).is_err());
        // Every ID a store takes and a queue envelope carries (control characters, U+FFFE,
        // astral characters) is encoded into one path segment.
        validate_id("a\nb\u{1}\u{fffe}😀").unwrap();
        assert_eq!(
            utf8_percent_encode("a\u{1}\u{fffe}😀", PATH_SEGMENT).to_string(),
            "a%01%EF%BF%BE%F0%9F%98%80"
        );
        validate_id("a/b?c#d").unwrap();
        assert_eq!(
            utf8_percent_encode("a/b?c#d %", PATH_SEGMENT).to_string(),
            "a%2Fb%3Fc%23d%20%25"
        );
    }

    #[test]
    fn filters_in_each_style_echo_the_source_format() {
        let mut cfg =
            Config::from_toml_str(crate::config::EMBEDDED, std::path::Path::new("t")).unwrap();
        let t = crate::core::timefmt::parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
        let c = SourceClient::new(&cfg, Some(Secret::new("u:p"))).unwrap();
        let e = c.entity("people").unwrap();
        assert_eq!(
            c.delta_filter(e, t, false),
            (
                "where[updated_at][gte]".into(),
                "2024-05-01T12:00:00Z".into()
            )
        );
        assert_eq!(
            c.delta_filter(e, t, true),
            (
                "where[updated_at][gt]".into(),
                "2024-05-01T12:00:00Z".into()
            )
        );
        cfg.source.filter = crate::config::Filter::Suffix {
            ops: vec![FilterOp::Gt],
        };
        let c = SourceClient::new(&cfg, Some(Secret::new("u:p"))).unwrap();
        let e = c.entity("people").unwrap();
        assert_eq!(
            c.delta_filter(e, t, false),
            ("updated_at_gt".into(), "2024-05-01T11:59:59Z".into())
        );
        cfg.source.filter = crate::config::Filter::Named {
            param: "updated_since".into(),
            op: FilterOp::Gte,
        };
        cfg.source.timestamp_format = crate::core::timefmt::TimestampFormat::EpochMillis;
        let c = SourceClient::new(&cfg, Some(Secret::new("u:p"))).unwrap();
        let e = c.entity("people").unwrap();
        assert_eq!(
            c.delta_filter(e, t, false),
            ("updated_since".into(), "1714564800000".into())
        );
        assert_eq!(
            c.delta_filter(e, t, true),
            ("updated_since".into(), "1714564800001".into())
        );
    }

    #[test]
    fn missing_secret_names_the_variable() {
        let auth = AuthConfig::Bearer {
            secret: crate::config::SecretRef {
                env: "SYNC_TEST_SURELY_UNSET".into(),
            },
        };
        match secret_from_env(&auth) {
            Err(ConfigError::MissingEnv(v)) => assert_eq!(v, "SYNC_TEST_SURELY_UNSET"),
            other => panic!("{other:?}"),
        }
    }
}

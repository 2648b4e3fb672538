//! One GET with the retry policy: 429 honours `Retry-After`; 5xx, connection errors, timeouts,
//! HTML error pages and undecodable bodies (truncated JSON) are retried with exponential backoff
//! and full jitter, a bounded number of times, then surface as typed errors. Other 4xx are not
//! retried. A body the caller's parser cannot read surfaces as `SourceError::Decode` with the
//! [`ParseError`] as its source.
//!
//! One clock: an answer's time (`Answer::sent_us`, the `fetched_at_us` of every record parsed
//! from it, and the evidence time of a JSON 404) is the send time of the attempt that produced
//! it, taken after the rate limiter's and the backoff's waits, immediately before the request
//! goes out. The source answered from a state at or after that instant, so a record read by a
//! request sent before another request's 404 never outranks that 404, however long its
//! response took to arrive.
//!
//! Every wait is capped at the invocation's stop instant (`core::deadline::within`): a
//! `Retry-After`, a backoff or the rate limiter's wait that would pass it ends the call at once
//! with `SourceError::Deadline` instead of sleeping (a 120 s `Retry-After` would otherwise
//! outlive a 60 s worker). A request itself is not cut: the callers' margins before the
//! deadline cover the source's timeout.

use crate::config::{AuthConfig, RateHeaders, Reloading, Secret, SecretProvider, SourceConfig};
use crate::core::budget::{Lane, Limit, parse_period};
use crate::core::timefmt::{now_us, parse_http_date};
use crate::error::{ParseError, SourceError, WaitCause};
use crate::model::Micros;
use crate::source::budget::Budget;
use crate::source::ratelimit::SlidingWindow;
use reqwest::header::{self, HeaderMap, HeaderValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Largest body we read from the source (a page of 100 large records is a few MB).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Longest `Retry-After` we honour before treating the answer as a failure of this attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// The longest pause a `Retry-After` sets for every caller of the account (a longer one is the
/// source's or a proxy's mistake more likely than its wish).
const MAX_PAUSE: Duration = Duration::from_secs(3_600);
/// At most one re-read of the source secret per this interval (shared by every request).
pub const REREAD_INTERVAL: Duration = crate::config::reload::REREAD_INTERVAL;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Counters of what the client did (for run summaries and benchmarks).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub bytes: AtomicU64,
    pub unauthorized: AtomicU64,
}

/// A snapshot of `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub bytes: u64,
    /// Calls that ended in `SourceError::Unauthorized`.
    pub unauthorized: u64,
}

/// A successful answer, decoded by the caller's parser.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub date_us: Option<Micros>,
    /// The send time of the attempt that produced this answer (see the module doc).
    pub sent_us: Micros,
    pub link_next: Option<String>,
}

/// What a parser sees.
pub enum Body<'a> {
    Json(&'a str),
    /// A JSON 404: the resource does not exist.
    NotFound,
}

/// Why the HTTP client cannot be built from the source settings and the secret. Never shows
/// the secret.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the source needs a secret and none was given")]
    NoSecret,
    #[error("invalid header name {name:?} for the API key: {source}")]
    HeaderName {
        name: String,
        #[source]
        source: header::InvalidHeaderName,
    },
    #[error("the secret holds characters not allowed in a header")]
    SecretNotHeaderSafe(#[source] header::InvalidHeaderValue),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

#[cfg(any(test, feature = "testing"))]
tokio::task_local! {
    static UNCAPPED: ();
    static STAMP_AT_END: ();
}

/// Negative control for tests only: run `work` with answers stamped when their response has
/// been read (records' `fetched_at_us` and a 404's time), as this client did before, instead
/// of with the send time of their attempt.
#[cfg(any(test, feature = "testing"))]
pub async fn stamped_at_response_end<F: std::future::Future>(work: F) -> F::Output {
    STAMP_AT_END.scope((), work).await
}

/// The time an answer is stamped with, given its attempt's send time.
fn stamp(sent_us: Micros) -> Micros {
    #[cfg(any(test, feature = "testing"))]
    if STAMP_AT_END.try_with(|_| ()).is_ok() {
        return now_us();
    }
    sent_us
}

/// Negative control for tests only: run `work` with waits that ignore the stop instant (a
/// `Retry-After` is slept in full, however little time is left), as this client did before.
#[cfg(any(test, feature = "testing"))]
pub async fn uncapped_waits<F: std::future::Future>(work: F) -> F::Output {
    UNCAPPED.scope((), work).await
}

/// The stop instant every wait of a call must respect (`core::deadline::current`).
fn stop_instant() -> Option<Instant> {
    #[cfg(any(test, feature = "testing"))]
    if UNCAPPED.try_with(|_| ()).is_ok() {
        return None;
    }
    crate::core::deadline::current()
}

/// Whether waiting `wait` from now passes `stop`.
fn passes(stop: Option<Instant>, wait: Duration) -> bool {
    stop.is_some_and(|t| Instant::now() + wait > t)
}

pub struct Http {
    client: reqwest::Client,
    /// The credential header's value, rebuilt from a fresh read of the secret after a 401
    /// (`with_secret_provider`).
    auth: Option<Reloading<HeaderValue>>,
    auth_header: header::HeaderName,
    policy: RetryPolicy,
    limiter: SlidingWindow,
    /// The account's shared budget (`source::budget`), after the local floor `limiter`.
    budget: Option<Arc<Budget>>,
    rate_headers: Option<(header::HeaderName, header::HeaderName)>,
    pub(crate) stats: Stats,
}

impl Http {
    pub fn new(cfg: &SourceConfig, secret: Option<&Secret>) -> Result<Self, SetupError> {
        let auth_header = match &cfg.auth {
            AuthConfig::ApiKey { header, .. } => header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|source| SetupError::HeaderName {
                    name: header.clone(),
                    source,
                })?,
            _ => header::AUTHORIZATION,
        };
        let auth = match (&cfg.auth, secret) {
            (AuthConfig::None, _) => None,
            (_, None) => return Err(SetupError::NoSecret),
            (a, Some(s)) => {
                let first = auth_value(a, s)?;
                let a = a.clone();
                Some(Reloading::fixed(
                    first,
                    Box::new(move |s| auth_value(&a, s).map_err(|e| e.to_string())),
                ))
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sync-engine/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SetupError::Client)?;
        Ok(Http {
            client,
            auth,
            auth_header,
            policy: RetryPolicy {
                max_attempts: cfg.max_attempts,
                base: Duration::from_millis(cfg.backoff_base_ms),
                cap: Duration::from_millis(cfg.backoff_cap_ms),
            },
            limiter: SlidingWindow::new(&cfg.rate_limit),
            budget: None,
            rate_headers: cfg.rate_headers.as_ref().and_then(header_names),
            stats: Stats::default(),
        })
    }

    /// Take every request's token from `budget` too (after this process's own limiter).
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// The limit a response's rate-limit headers announce, when both parse.
    fn announced(&self, h: &HeaderMap) -> Option<Limit> {
        let (limit, period) = self.rate_headers.as_ref()?;
        let requests: u32 = h.get(limit)?.to_str().ok()?.trim().parse().ok()?;
        let per_us = parse_period(h.get(period)?.to_str().ok()?)?;
        // Below the least the budget can keep, the configured limit (validated) stays.
        (requests >= crate::core::budget::MIN_REQUESTS).then_some(Limit { requests, per_us })
    }

    /// Read the secret again from `provider` after a 401 (at most once per
    /// [`REREAD_INTERVAL`], shared by every request), and retry the request once with it.
    pub fn with_secret_provider(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.auth = self
            .auth
            .map(|a| a.with_provider(provider, REREAD_INTERVAL));
        self
    }

    /// Re-reads of the secret so far.
    pub fn secret_rereads(&self) -> u64 {
        self.auth.as_ref().map_or(0, Reloading::rereads)
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            unauthorized: self.stats.unauthorized.load(Relaxed),
            requests: self.stats.requests.load(Relaxed),
            retries: self.stats.retries.load(Relaxed),
            rate_limited: self.stats.rate_limited.load(Relaxed),
            bytes: self.stats.bytes.load(Relaxed),
        }
    }

    /// GET `url` and decode it with `parse`, under the retry policy. `extra` is an entity's own
    /// rate limit, applied on top of the source's; `lane` the shared budget's lane.
    pub async fn get<T>(
        &self,
        url: &url::Url,
        extra: Option<&SlidingWindow>,
        lane: Lane,
        parse: impl Fn(Body<'_>, Micros) -> Result<T, ParseError>,
    ) -> Result<Answer<T>, SourceError> {
        let shown = redact_url(url);
        let stop = stop_instant();
        let deadline = |wait: Duration, cause: WaitCause| {
            tracing::info!(url = %shown, ?wait, %cause, "stopping: waiting would pass the invocation's deadline");
            SourceError::Deadline {
                url: shown.clone(),
                wait,
                cause,
            }
        };
        let mut attempt = 0u32;
        // The 401 path: the secret is read again (or another request's newer read is taken)
        // once per call, and the request retried once with it.
        let mut reread = false;
        loop {
            attempt += 1;
            let last = attempt >= self.policy.max_attempts;
            self.limiter
                .acquire_by(stop)
                .await
                .map_err(|w| deadline(w, WaitCause::RateLimit))?;
            if let Some(l) = extra {
                l.acquire_by(stop)
                    .await
                    .map_err(|w| deadline(w, WaitCause::RateLimit))?;
            }
            if let Some(b) = &self.budget {
                b.acquire(lane, stop)
                    .await
                    .map_err(|short| deadline(short.wait, WaitCause::Budget))?;
            }
            self.stats.requests.fetch_add(1, Relaxed);
            let mut req = self
                .client
                .get(url.clone())
                .header(header::ACCEPT, "application/json");
            let credential = self.auth.as_ref().map(Reloading::current);
            if let Some((_, a)) = &credential {
                req = req.header(self.auth_header.clone(), HeaderValue::clone(a));
            }
            // The answer's time: this attempt's send time, after every wait (see the module doc).
            let sent = now_us();
            let failure = match req.send().await {
                Err(e) if e.is_timeout() => SourceError::Timeout {
                    url: shown.clone(),
                    attempts: attempt,
                },
                Err(e) => SourceError::Connect {
                    url: shown.clone(),
                    attempts: attempt,
                    source: e,
                },
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let json = is_json(&headers);
                    if let (Some(b), Some(limit)) = (&self.budget, self.announced(&headers)) {
                        b.observe(limit).await;
                    }
                    if status == 429 {
                        self.stats.rate_limited.fetch_add(1, Relaxed);
                        let retry_after = retry_after(&headers);
                        // Every caller of the account waits, not only this one.
                        if let (Some(b), Some(wait)) = (&self.budget, retry_after) {
                            b.pause(wait.min(MAX_PAUSE)).await;
                        }
                        if !last && retry_after.is_some_and(|d| d <= MAX_RETRY_AFTER) {
                            let wait = retry_after.unwrap_or_default();
                            if passes(stop, wait) {
                                return Err(deadline(wait, WaitCause::RetryAfter));
                            }
                            tracing::warn!(url = %shown, ?wait, "rate limited by the source; waiting");
                            self.stats.retries.fetch_add(1, Relaxed);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        let e = SourceError::RateLimited {
                            url: shown.clone(),
                            retry_after,
                            attempts: attempt,
                        };
                        if retry_after.is_some_and(|d| d > MAX_RETRY_AFTER) {
                            // Asked to wait longer than a run should: give up now; the next
                            // run (or redelivery) comes back later.
                            return Err(e);
                        }
                        e
                    } else if status == 404 && json {
                        let at = stamp(sent);
                        let value =
                            parse(Body::NotFound, at).map_err(|source| SourceError::Decode {
                                url: shown.clone(),
                                source,
                            })?;
                        return Ok(Answer {
                            value,
                            date_us: date(&headers),
                            sent_us: at,
                            link_next: None,
                        });
                    } else if status == 401 {
                        if !reread
                            && let (Some(a), Some((seen, _))) = (&self.auth, &credential)
                            && a.refresh(*seen).await.is_some()
                        {
                            reread = true;
                            tracing::warn!(url = %shown, "the source refused the credential; retrying once with the secret read again");
                            self.stats.retries.fetch_add(1, Relaxed);
                            continue;
                        }
                        self.stats.unauthorized.fetch_add(1, Relaxed);
                        crate::telemetry::publish(&unauthorized_metric());
                        tracing::error!(url = %shown, reread, "the source refused the credential");
                        return Err(SourceError::Unauthorized { url: shown, reread });
                    } else if (400..500).contains(&status) {
                        // Not retried: a 404 that is not JSON is a wrong path, not a deletion.
                        return Err(SourceError::Client { status, url: shown });
                    } else if status >= 500 || !(200..300).contains(&status) {
                        if json {
                            SourceError::Server {
                                status,
                                url: shown.clone(),
                                attempts: attempt,
                            }
                        } else {
                            SourceError::NotJson {
                                status,
                                url: shown.clone(),
                                content_type: content_type(&headers),
                                attempts: attempt,
                            }
                        }
                    } else if !json {
                        SourceError::NotJson {
                            status,
                            url: shown.clone(),
                            content_type: content_type(&headers),
                            attempts: attempt,
                        }
                    } else {
                        match read_body(resp).await {
                            Err(e) if e.is_timeout() => SourceError::Timeout {
                                url: shown.clone(),
                                attempts: attempt,
                            },
                            Err(e) => SourceError::Connect {
                                url: shown.clone(),
                                attempts: attempt,
                                source: e,
                            },
                            Ok(None) => SourceError::Decode {
                                url: shown.clone(),
                                source: ParseError::TooLarge {
                                    limit: MAX_BODY_BYTES,
                                },
                            },
                            Ok(Some(bytes)) => {
                                self.stats.bytes.fetch_add(bytes.len() as u64, Relaxed);
                                let at = stamp(sent);
                                let decoded = std::str::from_utf8(&bytes)
                                    .map_err(ParseError::from)
                                    .and_then(|text| parse(Body::Json(text), at));
                                match decoded {
                                    Ok(value) => {
                                        return Ok(Answer {
                                            value,
                                            date_us: date(&headers),
                                            sent_us: at,
                                            link_next: link_next(&headers),
                                        });
                                    }
                                    Err(source) => SourceError::Decode {
                                        url: shown.clone(),
                                        source,
                                    },
                                }
                            }
                        }
                    }
                }
            };
            if last || !failure.is_retryable() {
                return Err(failure);
            }
            let wait = self.policy.backoff(attempt);
            if passes(stop, wait) {
                tracing::warn!(url = %shown, attempt, error = %failure, "source call failed; no time left to retry");
                return Err(deadline(wait, WaitCause::Backoff));
            }
            tracing::warn!(url = %shown, attempt, ?wait, error = %failure, "source call failed; retrying");
            self.stats.retries.fetch_add(1, Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

/// The configured rate-limit header names (checked by `config::validate`).
fn header_names(h: &RateHeaders) -> Option<(header::HeaderName, header::HeaderName)> {
    Some((
        header::HeaderName::from_bytes(h.limit.as_bytes()).ok()?,
        header::HeaderName::from_bytes(h.period.as_bytes()).ok()?,
    ))
}

/// The credential header's value for `auth` from the secret `s` (sensitive: never logged).
fn auth_value(auth: &AuthConfig, s: &Secret) -> Result<HeaderValue, SetupError> {
    let v = match auth {
        AuthConfig::None => String::new(),
        AuthConfig::Bearer { .. } => format!("Bearer {}", s.expose()),
        AuthConfig::Basic { .. } => {
            use base64::Engine;
            let enc = base64::engine::general_purpose::STANDARD.encode(s.expose());
            format!("Basic {enc}")
        }
        AuthConfig::ApiKey { .. } => s.expose().to_owned(),
    };
    let mut hv = HeaderValue::from_str(&v).map_err(SetupError::SecretNotHeaderSafe)?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// `SourceUnauthorized` (namespace `SyncEngine`, no dimensions: one alarm for every function
/// and entity), published by the client itself when a call ends in
/// `SourceError::Unauthorized`: the delta run, the worker and reconciliation all meet it here.
pub fn unauthorized_metric() -> String {
    crate::telemetry::emf(&[], &[("SourceUnauthorized", 1.0, "Count")])
}

async fn read_body(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut buf = Vec::with_capacity(
        resp.content_length()
            .unwrap_or(16 * 1024)
            .min(MAX_BODY_BYTES as u64) as usize,
    );
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

fn content_type(h: &HeaderMap) -> Option<String> {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `application/json`, `application/vnd.api+json`, `...+json`.
fn is_json(h: &HeaderMap) -> bool {
    content_type(h).is_some_and(|ct| {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        mime == "application/json" || mime.ends_with("+json")
    })
}

fn date(h: &HeaderMap) -> Option<Micros> {
    h.get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(Duration::from_micros(
        at.saturating_sub(now_us()).max(0) as u64
    ))
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
pub fn link_next(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(header::LINK) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next && target.starts_with('<') && target.ends_with('>') {
                return Some(target[1..target.len() - 1].to_owned());
            }
        }
    }
    None
}

/// A URL fit for logs: scheme, host, path, and the query with values of secret-looking keys dropped.
pub fn redact_url(u: &url::Url) -> String {
    let mut out = format!(
        "{}://{}{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.path()
    );
    if let Some(port) = u.port() {
        out = format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            port,
            u.path()
        );
    }
    let q: Vec<String> = u
        .query_pairs()
        .map(|(k, v)| {
            let lk = k.to_ascii_lowercase();
            if lk.contains("key") || lk.contains("token") || lk.contains("secret") {
                format!("{k}=<redacted>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    if !q.is_empty() {
        out.push('?');
        out.push_str(&q.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                r#"<https://a/x?page=1>; rel="prev", <https://a/x?page=3>; rel="next""#,
            ),
        );
        assert_eq!(link_next(&h).as_deref(), Some("https://a/x?page=3"));
        h.insert(
            header::LINK,
            HeaderValue::from_static(r#"<https://a/x?page=1>; rel="prev""#),
        );
        assert_eq!(link_next(&h), None);
    }

    #[test]
    fn backoff_is_bounded_full_jitter() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for attempt in 0..20 {
            let d = p.backoff(attempt);
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        let mut saw_small = false;
        for _ in 0..200 {
            saw_small |= p.backoff(10) < Duration::from_millis(500);
        }
        assert!(saw_small, "full jitter spreads over [0, cap]");
    }

    #[test]
    fn secret_query_values_never_logged() {
        let u = url::Url::parse("http://h:8/p?api_key=s3cr3t&offset=5").unwrap();
        let shown = redact_url(&u);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("offset=5"));
    }
}

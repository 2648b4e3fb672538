//! Run configuration of the simulator: sizes, timestamps, wire shapes, limits and chaos.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::webhooks::WebhookTarget;

/// The entities the simulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// `GET /people/v2/people`, JSON:API type `Person`, about 1.1 KB of JSON per record (exactly
    /// [`SimConfig::record_bytes`] when set).
    People,
    /// `GET /giving/v2/donations`, JSON:API type `Donation`, a few hundred bytes per record.
    Donations,
}

impl Entity {
    /// Every entity, in a fixed order.
    pub const ALL: [Entity; 2] = [Entity::People, Entity::Donations];

    /// The collection path, e.g. `/people/v2/people`.
    pub fn path(self) -> &'static str {
        match self {
            Entity::People => "/people/v2/people",
            Entity::Donations => "/giving/v2/donations",
        }
    }

    /// The JSON:API resource type, e.g. `Person`.
    pub fn json_type(self) -> &'static str {
        match self {
            Entity::People => "Person",
            Entity::Donations => "Donation",
        }
    }

    /// The entity name used by the admin interface, e.g. `people`.
    pub fn name(self) -> &'static str {
        match self {
            Entity::People => "people",
            Entity::Donations => "donations",
        }
    }

    /// Parses an entity name (`people`, `donations`) or JSON:API type (`Person`, `Donation`).
    pub fn from_name(s: &str) -> Option<Entity> {
        Entity::ALL
            .into_iter()
            .find(|e| e.name() == s || e.json_type() == s)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Entity::People => 0,
            Entity::Donations => 1,
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision of the timestamps the source stores (and writes on mutation).
///
/// Every stored `updated_at` is truncated (floored) to this unit, so `Seconds` makes ties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Granularity {
    /// Microseconds (six fraction digits in RFC 3339).
    #[default]
    Micros,
    /// Milliseconds (three fraction digits in RFC 3339).
    Millis,
    /// Whole seconds (no fraction in RFC 3339).
    Seconds,
}

impl Granularity {
    /// The unit in microseconds (1, 1,000 or 1,000,000).
    pub fn unit_us(self) -> i64 {
        match self {
            Granularity::Micros => 1,
            Granularity::Millis => 1_000,
            Granularity::Seconds => 1_000_000,
        }
    }

    /// Floors `us` to this granularity (saturating at the ends of the `i64` range).
    pub fn truncate(self, us: i64) -> i64 {
        let unit = self.unit_us();
        us.div_euclid(unit).saturating_mul(unit)
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "micros" | "us" | "microseconds" => Ok(Granularity::Micros),
            "millis" | "ms" | "milliseconds" => Ok(Granularity::Millis),
            "seconds" | "s" | "secs" => Ok(Granularity::Seconds),
            other => Err(format!(
                "unknown granularity {other:?} (expected micros, millis or seconds)"
            )),
        }
    }
}

/// How timestamps are written in records (filters accept all three formats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimestampFormat {
    /// RFC 3339 string in UTC with a `Z`, e.g. `"2024-01-01T00:00:00.123456Z"`; the number of
    /// fraction digits follows the [`Granularity`] (6, 3 or none).
    #[default]
    Rfc3339,
    /// Unix seconds as a JSON number. An integer at `Seconds` granularity; with a finer
    /// granularity the number carries a decimal fraction (`1704067200.123456`), so that no
    /// precision is hidden from the client.
    EpochSeconds,
    /// Unix milliseconds as a JSON number. An integer at `Millis` or `Seconds` granularity;
    /// with `Micros` it carries three fraction digits (`1704067200123.456`).
    EpochMillis,
}

impl FromStr for TimestampFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rfc3339" => Ok(TimestampFormat::Rfc3339),
            "epoch_seconds" | "epoch-seconds" | "seconds" => Ok(TimestampFormat::EpochSeconds),
            "epoch_millis" | "epoch-millis" | "millis" => Ok(TimestampFormat::EpochMillis),
            other => Err(format!(
                "unknown timestamp format {other:?} (expected rfc3339, epoch_seconds or epoch_millis)"
            )),
        }
    }
}

/// The document shape of responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Envelope {
    /// JSON:API documents: `{"data":[...],"included":[],"links":{..},"meta":{..}}`.
    #[default]
    JsonApi,
    /// A page is a bare JSON array of flat objects (`{"id":"12","updated_at":..,...}`), a single
    /// record is the bare object; pagination is only in the `Link` header (and the total in
    /// `X-Total-Count`).
    Bare,
}

impl FromStr for Envelope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonapi" | "json_api" | "json-api" => Ok(Envelope::JsonApi),
            "bare" => Ok(Envelope::Bare),
            other => Err(format!(
                "unknown envelope {other:?} (expected jsonapi or bare)"
            )),
        }
    }
}

/// Ways the simulator disobeys its own API, for hostile-source tests. All off by default; set
/// with [`crate::Sim::set_misbehave`] or `PUT /__admin/misbehave`.
///
/// An ignored parameter is not validated either, as on a server that does not know it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Misbehave {
    /// The delta filter is ignored: every filter on `updated_at`, in every style the simulator
    /// accepts (`where[updated_at][gt|gte|lt|lte]`, `where[updated_at]`, `updated_at_gt`, ...,
    /// `updated_since`).
    pub ignore_filter: bool,
    /// Every filter on the ID (`where[id][..]`, `id_gt`, ...) is ignored.
    pub ignore_id_filter: bool,
    /// `order` is ignored: ascending ID order, as when a client names a parameter the server
    /// does not know.
    pub ignore_order: bool,
    /// `offset` is ignored: every page starts at 0 (links, `meta.next` and whether there is a
    /// next page are still computed from the asked offset).
    pub ignore_offset: bool,
    /// `page` is ignored: page 1 every time (links and whether there is a next page are still
    /// computed from the asked page number).
    pub ignore_page: bool,
    /// `cursor` is ignored: the first page every time (with the same next cursor).
    pub ignore_cursor: bool,
    /// An offset or page number at or past the end serves the last non-empty page instead of an
    /// empty one (with links and `has_next` as for that last page: no next link).
    pub clamp_last_page: bool,
    /// `per_page` is ignored: [`SimConfig::default_per_page`] every time.
    pub ignore_per_page: bool,
    /// Listings come back in the reverse of the order asked (descending for ascending, by the
    /// same key), filters still honoured: a server whose sort disagrees with its filter.
    pub reverse_order: bool,
}

impl Misbehave {
    /// The flag names, as in the admin JSON and `--misbehave`.
    pub const NAMES: [&'static str; 9] = [
        "ignore_filter",
        "ignore_id_filter",
        "ignore_order",
        "ignore_offset",
        "ignore_page",
        "ignore_cursor",
        "clamp_last_page",
        "ignore_per_page",
        "reverse_order",
    ];

    /// The flag called `name`, if there is one.
    pub fn flag_mut(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "ignore_filter" => &mut self.ignore_filter,
            "ignore_id_filter" => &mut self.ignore_id_filter,
            "ignore_order" => &mut self.ignore_order,
            "ignore_offset" => &mut self.ignore_offset,
            "ignore_page" => &mut self.ignore_page,
            "ignore_cursor" => &mut self.ignore_cursor,
            "clamp_last_page" => &mut self.clamp_last_page,
            "ignore_per_page" => &mut self.ignore_per_page,
            "reverse_order" => &mut self.reverse_order,
            _ => return None,
        })
    }
}

impl FromStr for Misbehave {
    type Err = String;
    /// Parses a comma-separated list of the flags to switch on, e.g. `ignore_order,ignore_page`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut m = Misbehave::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            *m.flag_mut(name).ok_or_else(|| {
                format!(
                    "unknown misbehaviour {name:?} (expected any of {})",
                    Misbehave::NAMES.join(", ")
                )
            })? = true;
        }
        Ok(m)
    }
}

/// A record served broken (in listings and in `GET <path>/<id>`; webhook payloads stay intact),
/// for bad-record tests. The record keeps its real position in every ordering and filter (it is
/// ordered and filtered by its stored values); only the served JSON is broken. Set with
/// [`crate::Sim::corrupt`] or `PUT /__admin/{entity}/records/{id}/corrupt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// `"updated_at": null`.
    NullDelta,
    /// No `updated_at` member at all.
    MissingDelta,
    /// `"updated_at": "not a date"`.
    BadDelta,
    /// RFC 3339 without an offset, the record's real time with no `Z` (whatever the run's
    /// timestamp format): `"2024-01-01T00:00:00.123456"` (fraction digits per granularity).
    NaiveTimestamp,
    /// `"id": ""`.
    EmptyId,
    /// `"id"`: a string of that many bytes (`"9"` repeated).
    LongId(usize),
    /// A string attribute (people: `first_name`, donations: `amount_currency`) ending in the
    /// escape `\ud800`, a high surrogate not followed by a low one (invalid JSON text for
    /// strict parsers such as serde_json).
    LoneSurrogate,
}

impl Corruption {
    /// The admin name: `null_delta`, `missing_delta`, `bad_delta`, `naive_timestamp`,
    /// `empty_id`, `long_id`, `lone_surrogate`.
    pub fn name(self) -> &'static str {
        match self {
            Corruption::NullDelta => "null_delta",
            Corruption::MissingDelta => "missing_delta",
            Corruption::BadDelta => "bad_delta",
            Corruption::NaiveTimestamp => "naive_timestamp",
            Corruption::EmptyId => "empty_id",
            Corruption::LongId(_) => "long_id",
            Corruption::LoneSurrogate => "lone_surrogate",
        }
    }

    /// Parses an admin name; `long_id` takes `bytes` (required).
    pub fn from_name(kind: &str, bytes: Option<usize>) -> Result<Corruption, String> {
        let c = match kind {
            "null_delta" => Corruption::NullDelta,
            "missing_delta" => Corruption::MissingDelta,
            "bad_delta" => Corruption::BadDelta,
            "naive_timestamp" => Corruption::NaiveTimestamp,
            "empty_id" => Corruption::EmptyId,
            "long_id" => Corruption::LongId(
                bytes.ok_or_else(|| "long_id needs \"bytes\": the length of the ID".to_owned())?,
            ),
            "lone_surrogate" => Corruption::LoneSurrogate,
            other => {
                return Err(format!(
                    "unknown corruption {other:?} (expected null_delta, missing_delta, bad_delta, \
                     naive_timestamp, empty_id, long_id or lone_surrogate)"
                ));
            }
        };
        if bytes.is_some() && !matches!(c, Corruption::LongId(_)) {
            return Err(format!("\"bytes\" applies to long_id only, not {kind}"));
        }
        Ok(c)
    }
}

/// A fixed-window rate limit: `requests` per `period` (Planning Center: 100 per 20 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length. Reported in whole seconds in `X-PCO-API-Request-Rate-Period`, as
    /// Planning Center writes it (`20 seconds`).
    pub period: Duration,
}

impl RateLimit {
    /// Planning Center's documented limit: 100 requests per 20 seconds.
    pub fn pco() -> RateLimit {
        RateLimit {
            requests: 100,
            period: Duration::from_secs(20),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;
    /// Parses `N/SECS`, e.g. `100/20`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, secs) = s.split_once('/').ok_or_else(|| {
            format!("rate limit {s:?} must look like REQUESTS/SECONDS, e.g. 100/20")
        })?;
        let requests: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate limit requests {n:?} is not a number"))?;
        let secs: f64 = secs
            .trim()
            .trim_end_matches('s')
            .parse()
            .map_err(|_| format!("rate limit period {secs:?} is not a number of seconds"))?;
        if requests == 0 || !secs.is_finite() || secs <= 0.0 {
            return Err(format!("rate limit {s:?} must be positive"));
        }
        Ok(RateLimit {
            requests,
            period: Duration::from_secs_f64(secs),
        })
    }
}

/// Random faults applied to API requests, drawn from an RNG seeded from [`SimConfig::seed`].
///
/// For each API request one number `r` in `0..1` is drawn: `r < error_rate` gives a JSON 5xx,
/// else `r < error_rate + html_rate` an HTML 502 page, else
/// `r < error_rate + html_rate + truncate_rate` a 200 whose body is cut in the middle.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Chaos {
    /// Probability of a JSON 500/502/503/504.
    pub error_rate: f64,
    /// Probability of an HTML 502 page (`text/html`), as a proxy would serve.
    pub html_rate: f64,
    /// Probability of a truncated 200 body.
    pub truncate_rate: f64,
    /// Added to every API request before it is answered.
    pub latency: Duration,
}

impl Chaos {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("html_rate", self.html_rate),
            ("truncate_rate", self.truncate_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within 0..=1, got {v}"));
            }
        }
        if self.error_rate + self.html_rate + self.truncate_rate > 1.0 + 1e-9 {
            return Err("error_rate + html_rate + truncate_rate must not exceed 1".into());
        }
        Ok(())
    }
}

/// Everything a simulator run is configured with. [`SimConfig::default`] is small, quiet and
/// open: 100 people, 50 donations, no rate limit, no auth, no faults, no skew, a free port.
#[derive(Clone)]
pub struct SimConfig {
    /// Seed of all generated content and of the chaos RNG: same seed, same bytes.
    pub seed: u64,
    /// Initial number of people (IDs `1..=people`).
    pub people: usize,
    /// Initial number of donations (IDs `1..=donations`).
    pub donations: usize,
    /// `updated_at` (and `created_at`) of record 1, in Unix microseconds.
    pub base_time_us: i64,
    /// Time between consecutive groups of records, in microseconds.
    pub step_us: i64,
    /// Records per timestamp group: record `i` (1-based) gets
    /// `base_time_us + ((i - 1) / tie_group) * step_us`. `0` and `1` mean no ties.
    pub tie_group: usize,
    /// Stored precision of timestamps.
    pub granularity: Granularity,
    /// How timestamps are written in records.
    pub timestamp_format: TimestampFormat,
    /// JSON:API documents or bare arrays.
    pub envelope: Envelope,
    /// Optional fixed-window rate limit over API requests.
    pub rate_limit: Option<RateLimit>,
    /// When set, API requests whose `Authorization` header is not exactly this value get a 401.
    pub auth: Option<String>,
    /// Latency added to every API request.
    pub latency: Duration,
    /// See [`Chaos::error_rate`].
    pub error_rate: f64,
    /// See [`Chaos::html_rate`].
    pub html_rate: f64,
    /// See [`Chaos::truncate_rate`].
    pub truncate_rate: f64,
    /// Signed offset of the simulator's clock from the real one, in milliseconds. It drives the
    /// `Date` header and the timestamps written by mutations; settable at run time.
    pub clock_skew_ms: i64,
    /// Address to bind; `None` binds `127.0.0.1:0` (a free port).
    pub addr: Option<SocketAddr>,
    /// `per_page` when the request has none (Planning Center: 25).
    pub default_per_page: usize,
    /// Largest `per_page`; larger values are clamped to it (Planning Center: 100).
    pub max_per_page: usize,
    /// Where changes are delivered as signed webhooks (`None`: not delivered); see
    /// [`crate::webhooks`]. Settable at run time.
    pub webhook: Option<WebhookTarget>,
    /// When set, every person's JSON is exactly this many bytes: its resource object as served,
    /// compact (the `data` of `GET <path>/<id>`, an element of a page's `data`, the `data` of a
    /// webhook payload; the flat object with [`Envelope::Bare`]), for the initial records and
    /// after every mutation. The `notes` attribute, the last one, makes up the difference:
    /// `Revision N.` and words (ASCII, nothing to escape), the last word cut short to land
    /// exactly.
    ///
    /// With the shortest notes (`Revision N.`) a person is still about 980 to 1,130 bytes
    /// (more with long IDs or a long base URL, which `links.self` carries), so one longer than
    /// asked leaves out its optional parts, one at a time in this order until it fits: the work
    /// e-mail, `medical_notes`, `anniversary`, `nickname`, `middle_name` (`null`s), the phone
    /// number (`[]`). Everything else, and the random draws, stay as generated (at 1,024
    /// bytes about half the people lose their work e-mail, a few percent more than that).
    /// Still too long with all of them left out (asking for less than about 970 bytes), it
    /// keeps the shortest notes and is longer than asked. Sparse field sets get the full
    /// record's left-out parts and notes as long as its, so only full records have this size.
    /// Donations are unaffected. `None` (the default): the natural content, about 1,100 bytes a person.
    pub record_bytes: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            people: 100,
            donations: 50,
            // 2024-01-01T00:00:00Z
            base_time_us: 1_704_067_200_000_000,
            step_us: 1_000_000,
            tie_group: 1,
            granularity: Granularity::Micros,
            timestamp_format: TimestampFormat::Rfc3339,
            envelope: Envelope::JsonApi,
            rate_limit: None,
            auth: None,
            latency: Duration::ZERO,
            error_rate: 0.0,
            html_rate: 0.0,
            truncate_rate: 0.0,
            clock_skew_ms: 0,
            addr: None,
            default_per_page: 25,
            max_per_page: 100,
            webhook: None,
            record_bytes: None,
        }
    }
}

impl SimConfig {
    /// The chaos part of the configuration.
    pub fn chaos(&self) -> Chaos {
        Chaos {
            error_rate: self.error_rate,
            html_rate: self.html_rate,
            truncate_rate: self.truncate_rate,
            latency: self.latency,
        }
    }

    /// Initial record count of an entity.
    pub fn size(&self, entity: Entity) -> usize {
        match entity {
            Entity::People => self.people,
            Entity::Donations => self.donations,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.chaos().validate()?;
        if self.default_per_page == 0 || self.max_per_page == 0 {
            return Err("default_per_page and max_per_page must be at least 1".into());
        }
        if let Some(rl) = &self.rate_limit
            && (rl.requests == 0 || rl.period.is_zero())
        {
            return Err("rate_limit requests and period must be positive".into());
        }
        if let Some(w) = &self.webhook {
            w.validate()?;
        }
        Ok(())
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("seed", &self.seed)
            .field("people", &self.people)
            .field("donations", &self.donations)
            .field("base_time_us", &self.base_time_us)
            .field("step_us", &self.step_us)
            .field("tie_group", &self.tie_group)
            .field("granularity", &self.granularity)
            .field("timestamp_format", &self.timestamp_format)
            .field("envelope", &self.envelope)
            .field("rate_limit", &self.rate_limit)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("latency", &self.latency)
            .field("error_rate", &self.error_rate)
            .field("html_rate", &self.html_rate)
            .field("truncate_rate", &self.truncate_rate)
            .field("clock_skew_ms", &self.clock_skew_ms)
            .field("addr", &self.addr)
            .field("default_per_page", &self.default_per_page)
            .field("max_per_page", &self.max_per_page)
            .field("webhook", &self.webhook)
            .field("record_bytes", &self.record_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularity_floors_including_negative_values() {
        assert_eq!(Granularity::Seconds.truncate(1_999_999), 1_000_000);
        assert_eq!(Granularity::Millis.truncate(1_999_999), 1_999_000);
        assert_eq!(Granularity::Micros.truncate(1_999_999), 1_999_999);
        assert_eq!(Granularity::Seconds.truncate(-1), -1_000_000);
        assert_eq!(Granularity::Seconds.truncate(i64::MIN), i64::MIN);
    }

    #[test]
    fn rate_limit_parses_and_rejects() {
        let rl: RateLimit = "100/20".parse().unwrap();
        assert_eq!(rl, RateLimit::pco());
        assert!("0/20".parse::<RateLimit>().is_err());
        assert!("100".parse::<RateLimit>().is_err());
        assert!("x/20".parse::<RateLimit>().is_err());
    }

    #[test]
    fn misbehave_parses_flag_lists() {
        assert_eq!("".parse::<Misbehave>(), Ok(Misbehave::default()));
        assert_eq!(
            "ignore_order, clamp_last_page".parse::<Misbehave>(),
            Ok(Misbehave {
                ignore_order: true,
                clamp_last_page: true,
                ..Misbehave::default()
            })
        );
        let mut all = Misbehave::default();
        for name in Misbehave::NAMES {
            *all.flag_mut(name).unwrap() = true;
        }
        assert_eq!(Misbehave::NAMES.join(",").parse::<Misbehave>(), Ok(all));
        assert!("ignore_everything".parse::<Misbehave>().is_err());
    }

    #[test]
    fn corruption_names_round_trip() {
        for c in [
            Corruption::NullDelta,
            Corruption::MissingDelta,
            Corruption::BadDelta,
            Corruption::NaiveTimestamp,
            Corruption::EmptyId,
            Corruption::LongId(7),
            Corruption::LoneSurrogate,
        ] {
            let bytes = match c {
                Corruption::LongId(n) => Some(n),
                _ => None,
            };
            assert_eq!(Corruption::from_name(c.name(), bytes), Ok(c));
        }
        assert!(Corruption::from_name("long_id", None).is_err());
        assert!(Corruption::from_name("null_delta", Some(3)).is_err());
        assert!(Corruption::from_name("nope", None).is_err());
    }

    #[test]
    fn debug_redacts_auth() {
        let cfg = SimConfig {
            auth: Some("Bearer secret-token".into()),
            ..SimConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn chaos_rates_are_validated() {
        let mut cfg = SimConfig {
            error_rate: 1.5,
            ..SimConfig::default()
        };
        assert!(cfg.validate().is_err());
        cfg.error_rate = 0.6;
        cfg.html_rate = 0.6;
        assert!(cfg.validate().is_err());
        cfg.html_rate = 0.4;
        assert!(cfg.validate().is_ok());
    }
}

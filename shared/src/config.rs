//! The endpoint configuration (`infra/endpoints.toml`): the source and each entity.
//!
//! Read once at start-up (`Config::load`); a mistake is a `ConfigError` naming the file, the
//! entity and the field. Secrets are never part of it: `auth` names where the secret lives.

pub mod env;
pub mod reload;
pub mod retention;

pub use env::Env;
pub use reload::{EnvSecret, Reloading, SecretProvider};
pub use retention::TombstoneRetention;

use crate::core::timefmt::TimestampFormat;
use crate::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The configuration embedded at build time.
pub const EMBEDDED: &str = include_str!("../../infra/endpoints.toml");
pub const EMBEDDED_NAME: &str = "infra/endpoints.toml (embedded)";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(rename = "entity")]
    pub entities: Vec<EntityConfig>,
    /// How webhook deliveries are signed and where their events are (the ingest function).
    #[serde(default)]
    pub webhooks: Option<WebhookConfig>,
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// Overridden by `SOURCE_BASE_URL` at run time.
    pub base_url: String,
    pub timestamp_format: TimestampFormat,
    /// The source's timestamp resolution in microseconds (default: from the format, whole
    /// seconds for RFC 3339). Used to turn `>=` into `>` and back; too coarse only over-reads.
    #[serde(default)]
    pub timestamp_resolution_us: Option<i64>,
    /// The UTC offset at which RFC 3339 timestamps written without one are read
    /// (`timestamp_offset = "+01:00"`; `-12:00` to `+14:00`). Unset: a record whose delta value
    /// has no offset is rejected (counted, skipped), since its instant is unknown.
    #[serde(default, deserialize_with = "offset")]
    pub timestamp_offset: Option<time::UtcOffset>,
    pub pagination: Pagination,
    pub filter: Filter,
    /// Query parameter that orders a listing (`order=updated_at`). Required: both listings must
    /// come back in a stable order.
    pub order_param: String,
    /// JSON pointer to the records in a page (`/data`); empty for a bare top-level array.
    #[serde(default)]
    pub records_pointer: String,
    /// JSON pointer to the total count of the listing (`/meta/total_count`), if the source has it.
    #[serde(default)]
    pub total_count_pointer: Option<String>,
    /// Sparse fieldset parameter, `{type}` replaced by the entity's `sparse_type`
    /// (`fields[{type}]`), if the source has sparse fieldsets.
    #[serde(default)]
    pub sparse_fields_param: Option<String>,
    /// Largest page size the source serves (`stream_ids` uses it).
    pub max_page_size: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per request, first included, before a retryable failure surfaces.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Base of the exponential backoff (full jitter), in milliseconds.
    #[serde(default = "default_backoff_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_cap_ms")]
    pub backoff_cap_ms: u64,
    pub rate_limit: RateLimit,
    /// The rate budget every caller of the account shares (`[source.rate_budget]`).
    #[serde(default)]
    pub rate_budget: RateBudgetConfig,
    /// The source's rate-limit headers, when it sends them (`[source.rate_headers]`): the
    /// limit they announce replaces `rate_limit` in the shared budget.
    #[serde(default)]
    pub rate_headers: Option<RateHeaders>,
    pub auth: AuthConfig,
}

/// `[source.rate_budget]`: how the shared budget is keyed and cut (`core::budget`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateBudgetConfig {
    /// Share one budget through the control table (default). `false` leaves each process its
    /// own limiter of `rate_limit` only, as before: for a source without a per-account limit.
    #[serde(default = "yes")]
    pub shared: bool,
    /// The budget's key: one per source account (default: the host of `base_url`).
    #[serde(default)]
    pub account: Option<String>,
    /// Largest slice of delta and reconciliation (tokens per store write).
    #[serde(default = "default_background_slice")]
    pub background_slice: u32,
    /// Largest slice of webhook and targeted fetches.
    #[serde(default = "default_targeted_slice")]
    pub targeted_slice: u32,
    /// How late a token may still be spent (send-time jitter between the callers' requests
    /// and the source's count), in milliseconds.
    #[serde(default = "default_lateness_ms")]
    pub lateness_ms: u64,
}

impl Default for RateBudgetConfig {
    fn default() -> Self {
        RateBudgetConfig {
            shared: true,
            account: None,
            background_slice: default_background_slice(),
            targeted_slice: default_targeted_slice(),
            lateness_ms: default_lateness_ms(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_background_slice() -> u32 {
    crate::core::budget::Shape::default().background_slice
}
fn default_targeted_slice() -> u32 {
    crate::core::budget::Shape::default().targeted_slice
}
fn default_lateness_ms() -> u64 {
    (crate::core::budget::Shape::default().lateness_us / 1000) as u64
}

impl RateBudgetConfig {
    pub fn shape(&self) -> crate::core::budget::Shape {
        crate::core::budget::Shape {
            background_slice: self.background_slice,
            targeted_slice: self.targeted_slice,
            lateness_us: i64::try_from(self.lateness_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }
}

/// `[source.rate_headers]`: the names of the headers announcing the source's limit. The period
/// may be a number of seconds or carry its unit (`20 seconds`, `1 minute`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateHeaders {
    pub limit: String,
    pub period: String,
}

impl RateLimit {
    /// As the budget's arithmetic takes it.
    pub fn as_limit(&self) -> crate::core::budget::Limit {
        crate::core::budget::Limit {
            requests: self.requests,
            per_us: (self.per_seconds * 1e6).round() as i64,
        }
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_attempts() -> u32 {
    6
}
fn default_backoff_ms() -> u64 {
    200
}
fn default_backoff_cap_ms() -> u64 {
    20_000
}

fn offset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<time::UtcOffset>, D::Error> {
    let s = String::deserialize(d)?;
    crate::core::timefmt::parse_offset(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl SourceConfig {
    pub fn resolution_us(&self) -> i64 {
        self.timestamp_resolution_us
            .unwrap_or_else(|| self.timestamp_format.default_resolution_us())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: f64,
}

/// How pages are walked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// `?offset=200&per_page=100`.
    Offset {
        offset_param: String,
        limit_param: String,
    },
    /// `?page=3&per_page=100` (pages counted from `first_page`).
    Page {
        page_param: String,
        limit_param: String,
        #[serde(default = "one")]
        first_page: u32,
    },
    /// JSON:API `links.next`: a full URL in the body.
    LinksNext {
        limit_param: String,
        next_pointer: String,
    },
    /// RFC 8288 `Link: <...>; rel="next"` header.
    LinkHeader { limit_param: String },
    /// An opaque cursor in the body, passed back as a parameter.
    Cursor {
        limit_param: String,
        cursor_param: String,
        next_cursor_pointer: String,
    },
}

fn one() -> u32 {
    1
}

impl Pagination {
    pub fn limit_param(&self) -> &str {
        match self {
            Pagination::Offset { limit_param, .. }
            | Pagination::Page { limit_param, .. }
            | Pagination::LinksNext { limit_param, .. }
            | Pagination::LinkHeader { limit_param }
            | Pagination::Cursor { limit_param, .. } => limit_param,
        }
    }
    /// Offset and page styles are positional: the client pages them by keyset.
    pub fn is_positional(&self) -> bool {
        matches!(self, Pagination::Offset { .. } | Pagination::Page { .. })
    }
}

/// Comparison operator of a delta filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Gt,
    Gte,
}

impl FilterOp {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterOp::Gt => "gt",
            FilterOp::Gte => "gte",
        }
    }
}

/// How a "changed since" filter is written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// `where[updated_at][gt]=...` (Planning Center).
    Bracket { ops: Vec<FilterOp> },
    /// `updated_at_gte=...`.
    Suffix { ops: Vec<FilterOp> },
    /// One named parameter with a fixed operator: `updated_since=...`.
    Named { param: String, op: FilterOp },
}

impl Filter {
    pub fn supports(&self, op: FilterOp) -> bool {
        match self {
            Filter::Bracket { ops } | Filter::Suffix { ops } => ops.contains(&op),
            Filter::Named { op: o, .. } => *o == op,
        }
    }
    /// The query parameter name for `field op value`.
    pub fn param(&self, field: &str, op: FilterOp) -> String {
        match self {
            Filter::Bracket { .. } => format!("where[{field}][{}]", op.as_str()),
            Filter::Suffix { .. } => format!("{field}_{}", op.as_str()),
            Filter::Named { param, .. } => param.clone(),
        }
    }
}

/// Where the source secret lives. The secret itself is never in this file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    None,
    /// `Authorization: Bearer <secret>`.
    Bearer {
        secret: SecretRef,
    },
    /// `Authorization: Basic base64(<secret>)`, the secret being `user:password`.
    Basic {
        secret: SecretRef,
    },
    /// `<header>: <secret>`.
    ApiKey {
        header: String,
        secret: SecretRef,
    },
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::None => f.write_str("None"),
            AuthConfig::Bearer { secret } => write!(f, "Bearer({secret:?})"),
            AuthConfig::Basic { secret } => write!(f, "Basic({secret:?})"),
            AuthConfig::ApiKey { header, secret } => write!(f, "ApiKey({header}, {secret:?})"),
        }
    }
}

impl AuthConfig {
    pub fn secret_ref(&self) -> Option<&SecretRef> {
        match self {
            AuthConfig::None => None,
            AuthConfig::Bearer { secret }
            | AuthConfig::Basic { secret }
            | AuthConfig::ApiKey { secret, .. } => Some(secret),
        }
    }
}

/// Names a secret: an environment variable locally; when deployed, `SOURCE_SECRET_ID` (a
/// Secrets Manager ARN or an `ssm:` parameter name) takes precedence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: String,
}

/// A resolved secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a webhook event means for the record it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAction {
    Upsert,
    Delete,
}

/// The `[webhooks]` table: the signature scheme, where the signing secrets live, and JSON
/// pointers that find each event's name, ID and record ID inside a delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub scheme: SignatureScheme,
    /// Names the environment variable holding the signing secrets locally (one or more,
    /// separated by whitespace or commas: rotation). Deployed, `WEBHOOK_SECRET_ID` (a Secrets
    /// Manager ARN or `ssm:` parameter) takes precedence.
    pub secrets: SecretRef,
    /// Largest body accepted (answered 413 above it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most events in one delivery (answered 413 above it, after the signature is checked): a
    /// delivery must be queued well inside the ingest's timeout, or the sender retries it for
    /// days.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Pointer to an array of events in the body (Planning Center: `/data`); empty when the
    /// body is one event.
    #[serde(default)]
    pub events_pointer: String,
    /// Pointer to the event name inside an event (`/attributes/name`).
    pub event_name_pointer: String,
    /// Pointer to the event's unique ID (`/id`). Empty: the `webhook-id` header (Standard
    /// Webhooks only), suffixed `#<n>` when a body carries several events.
    #[serde(default)]
    pub event_id_pointer: String,
    /// Pointer to the payload inside an event (`/attributes/payload`); the payload may be a JSON
    /// object or a string holding JSON (Planning Center). Empty: the event itself.
    #[serde(default)]
    pub payload_pointer: String,
    /// Pointer to the record's ID inside the payload (`/data/id`).
    pub record_id_pointer: String,
}

fn default_max_body() -> usize {
    1024 * 1024
}

/// The default of `[webhooks] max_events`.
pub const DEFAULT_MAX_EVENTS: usize = 1_000;
/// The largest `[webhooks] max_events` accepted.
pub const MAX_EVENTS_LIMIT: usize = 10_000;

fn default_max_events() -> usize {
    DEFAULT_MAX_EVENTS
}

/// How a delivery is signed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignatureScheme {
    /// HMAC-SHA256 of the raw body in one header (Planning Center: `X-PCO-Webhooks-Authenticity`,
    /// hex). Nothing signs a time, so replays are stopped by event-ID dedup alone.
    HmacHeader {
        header: String,
        encoding: SignatureEncoding,
    },
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,<base64>`
    /// entries) over `id.timestamp.body`, `whsec_` secrets.
    StandardWebhooks {
        #[serde(default = "default_tolerance")]
        tolerance_seconds: u64,
    },
}

fn default_tolerance() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    pub name: String,
    /// Path of the collection (`/people/v2/people`); one record is `<path>/<id>`.
    pub path: String,
    /// JSON pointer to the ID inside a record (`/id`).
    #[serde(alias = "idField")]
    pub id_pointer: String,
    /// Name of the delta field in filters and ordering (`updated_at`).
    #[serde(alias = "deltaSyncField")]
    pub delta_sync_field: String,
    /// JSON pointer to the delta field inside a record (`/attributes/updated_at`).
    pub delta_pointer: String,
    /// Name of the ID in ordering and filters (`id`).
    #[serde(default = "default_id_field")]
    pub id_order_field: String,
    /// The source filters on the ID with the configured filter style (`where[id][gt]=`): ID
    /// listings then page by keyset on it, which no deletion or creation mid-scan can shift.
    /// Without it, offset pages overlap by one record and are checked for continuity.
    #[serde(default)]
    pub id_filter: bool,
    /// How the source orders IDs in a listing ordered by `id_order_field`; ID listings are
    /// checked in this order as they are read. Unset: numeric, with every ID checked to be
    /// digits (Planning Center and the simulator sort numeric IDs numerically).
    #[serde(default)]
    pub id_order: Option<IdOrder>,
    #[serde(alias = "supportsWebhooks")]
    pub supports_webhooks: bool,
    #[serde(default)]
    pub webhook_events: BTreeMap<String, WebhookAction>,
    pub page_size: u32,
    /// An entity's own limit, applied on top of the source's.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Resource type for sparse fieldsets (`Person` in `fields[Person]=updated_at`).
    #[serde(default)]
    pub sparse_type: Option<String>,
    /// The attribute name to ask for in a sparse fieldset (defaults to `delta_sync_field`).
    #[serde(default)]
    pub sparse_delta_attribute: Option<String>,
    /// A source version below the stored one (a restore, a clock fix) is repaired by
    /// reconciliation: it re-fetches the record and writes the source's copy as `regressed`
    /// when that fetch was sent after the stored copy's and the content differs
    /// (`core::decide_regression`). Default false: such records are counted and reported only,
    /// and every write path keeps calling the source's copy stale (I2).
    #[serde(default)]
    pub allow_version_regression: bool,
}

/// How a source orders the IDs of a listing (`[[entity]] id_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdOrder {
    /// IDs are decimal integers ordered by value (`9` before `10`); a non-digit ID is an error.
    Numeric,
    /// IDs ordered by their UTF-8 bytes (`10` before `9`), as most text keys sort.
    Bytewise,
}

impl IdOrder {
    /// The order an entity's IDs are checked in: its `id_order`, numeric when unset.
    pub fn of(e: &EntityConfig) -> IdOrder {
        e.id_order.unwrap_or(IdOrder::Numeric)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdOrder::Numeric => "numeric",
            IdOrder::Bytewise => "bytewise",
        }
    }

    /// `a` against `b` in this order; `None` when an ID is not a decimal integer and the order
    /// is numeric (the configuration is wrong for this source).
    pub fn compare(self, a: &str, b: &str) -> Option<std::cmp::Ordering> {
        match self {
            IdOrder::Bytewise => Some(a.as_bytes().cmp(b.as_bytes())),
            IdOrder::Numeric => {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
                if !digits(a) || !digits(b) {
                    return None;
                }
                let (a, b) = (trim_zeros(a), trim_zeros(b));
                Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
            }
        }
    }
}

/// Digits without their leading zeros (`"0"` stays `"0"`).
fn trim_zeros(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() { &s[s.len() - 1..] } else { t }
}

fn default_id_field() -> String {
    "id".to_owned()
}

impl Config {
    /// `SYNC_CONFIG` names a file, else the embedded configuration; `SOURCE_BASE_URL` overrides
    /// the base URL.
    pub fn load() -> Result<Config, ConfigError> {
        let mut cfg = match std::env::var_os("SYNC_CONFIG") {
            Some(path) => Config::from_file(Path::new(&path))?,
            None => Config::from_toml_str(EMBEDDED, Path::new(EMBEDDED_NAME))?,
        };
        if let Ok(url) = std::env::var("SOURCE_BASE_URL") {
            cfg.source.base_url = url;
            cfg.validate()?;
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    pub fn from_toml_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let invalid = |entity: String, field: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            entity,
            field,
            message,
        };
        let value: toml::Table = toml::from_str(text)
            .map_err(|e| invalid("-".into(), "-".into(), format!("not valid TOML: {e}")))?;
        let mut cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(value.clone()))
            .map_err(|e| {
            let (entity, field) = locate(&value, &e.path().to_string());
            let message = e.into_inner().to_string();
            // A missing field is reported at its table: name the field itself.
            let field = match message.strip_prefix("missing field `") {
                Some(rest) if field == "-" => rest.split('`').next().unwrap_or("-").to_owned(),
                _ => field,
            };
            invalid(entity, field, message)
        })?;
        cfg.file = file.to_owned();
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn entity(&self, name: &str) -> Option<&EntityConfig> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// The `[webhooks]` table, which receiving webhooks needs (the ingest Lambda, `syncctl
    /// serve`); without one, an error naming the file and the table.
    pub fn webhooks(&self) -> Result<&WebhookConfig, ConfigError> {
        self.webhooks.as_ref().ok_or_else(|| ConfigError::Invalid {
            file: self.file.clone(),
            entity: "-".into(),
            field: "webhooks".into(),
            message: "no [webhooks] table configured".into(),
        })
    }

    /// The entities a run covers: `only`, or every configured one in order. `Err` carries a
    /// name that is not configured.
    pub fn entity_names(&self, only: Option<&str>) -> Result<Vec<String>, String> {
        match only {
            Some(e) if self.entity(e).is_some() => Ok(vec![e.to_owned()]),
            Some(e) => Err(e.to_owned()),
            None => Ok(self.entities.iter().map(|e| e.name.clone()).collect()),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |entity: &str, field: &str, message: String| ConfigError::Invalid {
            file: self.file.clone(),
            entity: entity.to_owned(),
            field: field.to_owned(),
            message,
        };
        let s = &self.source;
        match url::Url::parse(&s.base_url) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" => {
                // Plain HTTP sends the secret (and every record) in clear: only to this machine,
                // or to a source that needs no secret.
                if !is_loopback(&u) && s.auth.secret_ref().is_some() {
                    return Err(err(
                        "-",
                        "source.base_url",
                        format!(
                            "http:// to {} would send the source's credentials in clear: use \
                             https://, or auth = {{ kind = \"none\" }} (plain HTTP is allowed \
                             with credentials only to a loopback host: 127.0.0.0/8, [::1], \
                             localhost)",
                            u.host_str().unwrap_or("no host")
                        ),
                    ));
                }
            }
            Ok(u) => {
                return Err(err(
                    "-",
                    "source.base_url",
                    format!("scheme {} is not http(s)", u.scheme()),
                ));
            }
            Err(e) => return Err(err("-", "source.base_url", format!("not a URL: {e}"))),
        }
        if !s.records_pointer.is_empty() && !s.records_pointer.starts_with('/') {
            return Err(err(
                "-",
                "source.records_pointer",
                "a JSON pointer starts with `/` (or is empty for a bare array)".into(),
            ));
        }
        if s.max_page_size < 2 {
            return Err(err(
                "-",
                "source.max_page_size",
                "must be at least 2".into(),
            ));
        }
        if s.max_attempts == 0 {
            return Err(err("-", "source.max_attempts", "must be at least 1".into()));
        }
        check_rate(&s.rate_limit).map_err(|m| err("-", "source.rate_limit", m))?;
        check_budget(s).map_err(|(f, m)| err("-", f, m))?;
        match &s.filter {
            Filter::Bracket { ops } | Filter::Suffix { ops } if ops.is_empty() => {
                return Err(err(
                    "-",
                    "source.filter.ops",
                    "name at least one of gt, gte".into(),
                ));
            }
            _ => {}
        }
        if let Some(r) = s.timestamp_resolution_us
            && r <= 0
        {
            return Err(err(
                "-",
                "source.timestamp_resolution_us",
                "must be positive".into(),
            ));
        }
        if s.timestamp_offset.is_some() && s.timestamp_format != TimestampFormat::Rfc3339 {
            return Err(err(
                "-",
                "source.timestamp_offset",
                "applies to timestamp_format = \"rfc3339\" only (epoch values have no zone)".into(),
            ));
        }
        if self.entities.is_empty() {
            return Err(err(
                "-",
                "entity",
                "configure at least one [[entity]]".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, e) in self.entities.iter().enumerate() {
            let n = e.name.as_str();
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                // An empty name is shown by position, as `locate` shows an unnamed entity.
                let shown = if n.is_empty() {
                    format!("#{i}")
                } else {
                    n.to_owned()
                };
                return Err(err(
                    &shown,
                    "name",
                    "use letters, digits, `_` or `-` (it is part of keys)".into(),
                ));
            }
            if !seen.insert(n) {
                return Err(err(n, "name", "configured twice".into()));
            }
            if !e.path.starts_with('/') {
                return Err(err(n, "path", "must start with `/`".into()));
            }
            for (field, p) in [
                ("id_pointer", &e.id_pointer),
                ("delta_pointer", &e.delta_pointer),
            ] {
                if !p.starts_with('/') {
                    return Err(err(
                        n,
                        field,
                        format!("{p:?} is not a JSON pointer (starts with `/`)"),
                    ));
                }
            }
            if e.delta_sync_field.is_empty() {
                return Err(err(n, "delta_sync_field", "must not be empty".into()));
            }
            if e.page_size < 2 || e.page_size > s.max_page_size {
                return Err(err(
                    n,
                    "page_size",
                    format!(
                        "must be between 2 and source.max_page_size ({})",
                        s.max_page_size
                    ),
                ));
            }
            if let Some(r) = &e.rate_limit {
                check_rate(r).map_err(|m| err(n, "rate_limit", m))?;
            }
            if e.supports_webhooks && e.webhook_events.is_empty() {
                return Err(err(
                    n,
                    "webhook_events",
                    "supports_webhooks is true but no event is mapped".into(),
                ));
            }
            if e.id_filter {
                match &s.filter {
                    Filter::Named { .. } => {
                        return Err(err(
                            n,
                            "id_filter",
                            "a named filter parameter filters on the delta field only".into(),
                        ));
                    }
                    f if !f.supports(FilterOp::Gt) && !f.supports(FilterOp::Gte) => {
                        return Err(err(
                            n,
                            "id_filter",
                            "the filter has neither gt nor gte".into(),
                        ));
                    }
                    _ => {}
                }
            }
            for name in e.webhook_events.keys() {
                if let Some(other) = self
                    .entities
                    .iter()
                    .find(|o| o.name != e.name && o.webhook_events.contains_key(name))
                {
                    return Err(err(
                        n,
                        "webhook_events",
                        format!("event {name:?} is also mapped by entity `{}`", other.name),
                    ));
                }
            }
        }
        if let Some(w) = &self.webhooks {
            self.validate_webhooks(w)?;
        }
        Ok(())
    }

    fn validate_webhooks(&self, w: &WebhookConfig) -> Result<(), ConfigError> {
        let err = |field: &str, message: String| ConfigError::Invalid {
            file: self.file.clone(),
            entity: "-".to_owned(),
            field: format!("webhooks.{field}"),
            message,
        };
        for (field, p, required) in [
            ("events_pointer", &w.events_pointer, false),
            ("event_name_pointer", &w.event_name_pointer, true),
            ("event_id_pointer", &w.event_id_pointer, false),
            ("payload_pointer", &w.payload_pointer, false),
            ("record_id_pointer", &w.record_id_pointer, true),
        ] {
            if (required || !p.is_empty()) && !p.starts_with('/') {
                return Err(err(
                    field,
                    format!("{p:?} is not a JSON pointer (starts with `/`)"),
                ));
            }
        }
        match &w.scheme {
            SignatureScheme::HmacHeader { header, .. } => {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(err(
                        "scheme.header",
                        format!("{header:?} is not a header name"),
                    ));
                }
                if w.event_id_pointer.is_empty() {
                    return Err(err(
                        "event_id_pointer",
                        "required with an hmac_header scheme (no webhook-id header to fall back on)"
                            .into(),
                    ));
                }
            }
            SignatureScheme::StandardWebhooks { tolerance_seconds } => {
                if *tolerance_seconds == 0 || *tolerance_seconds > 3600 {
                    return Err(err(
                        "scheme.tolerance_seconds",
                        "must be between 1 and 3600".into(),
                    ));
                }
            }
        }
        if w.max_body_bytes < 1024 || w.max_body_bytes > 6 * 1024 * 1024 {
            return Err(err(
                "max_body_bytes",
                "must be between 1 KiB and 6 MiB (Lambda's synchronous payload limit)".into(),
            ));
        }
        // At least one event; at most what the ingest queues well inside its timeout (1,000
        // SendMessageBatch calls at 8 in flight).
        if w.max_events == 0 || w.max_events > MAX_EVENTS_LIMIT {
            return Err(err(
                "max_events",
                format!("must be between 1 and {MAX_EVENTS_LIMIT}"),
            ));
        }
        Ok(())
    }
}

/// Whether `u`'s host is this machine: an IPv4 address in 127.0.0.0/8, `[::1]`, or exactly
/// `localhost` (not `localhost.example.com`, which anyone's DNS may answer).
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn check_budget(s: &SourceConfig) -> Result<(), (&'static str, String)> {
    let b = &s.rate_budget;
    if !b.shared {
        return Ok(());
    }
    let min = crate::core::budget::MIN_REQUESTS;
    if s.rate_limit.requests < min {
        return Err((
            "source.rate_limit.requests",
            format!("the shared budget needs at least {min} requests per window"),
        ));
    }
    if b.background_slice == 0 || b.targeted_slice == 0 {
        return Err((
            "source.rate_budget",
            "background_slice and targeted_slice must be at least 1".into(),
        ));
    }
    if !(50..=10_000).contains(&b.lateness_ms) {
        return Err((
            "source.rate_budget.lateness_ms",
            "must be 50 to 10000: under 50 a token expires before a busy process can send it; \
             over 10000 too much is taken out of the source's limit"
                .into(),
        ));
    }
    if let Some(a) = &b.account
        && (a.is_empty() || a.len() > 200 || a.chars().any(char::is_control))
    {
        return Err((
            "source.rate_budget.account",
            "must be 1 to 200 printable characters".into(),
        ));
    }
    for (field, name) in s.rate_headers.iter().flat_map(|h| {
        [
            ("source.rate_headers.limit", &h.limit),
            ("source.rate_headers.period", &h.period),
        ]
    }) {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err((field, format!("{name:?} is not a header name")));
        }
    }
    Ok(())
}

fn check_rate(r: &RateLimit) -> Result<(), String> {
    if r.requests == 0 || !(r.per_seconds > 0.0 && r.per_seconds.is_finite()) {
        return Err("requests and per_seconds must be positive".into());
    }
    Ok(())
}

/// Turn a serde path (`entity[1].page_size`) into (entity name, field).
fn locate(value: &toml::Table, path: &str) -> (String, String) {
    if let Some(rest) = path.strip_prefix("entity[")
        && let Some((idx, field)) = rest.split_once(']')
    {
        let name = idx
            .parse::<usize>()
            .ok()
            .and_then(|i| {
                value
                    .get("entity")?
                    .as_array()?
                    .get(i)?
                    .get("name")?
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("#{idx}"));
        let field = field.trim_start_matches('.');
        return (
            name,
            if field.is_empty() {
                "-".into()
            } else {
                field.to_owned()
            },
        );
    }
    (
        "-".into(),
        if path.is_empty() || path == "." {
            "-".into()
        } else {
            path.to_owned()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("test.toml"))
    }

    #[test]
    fn id_orders_compare_numbers_by_value_and_text_by_bytes() {
        use std::cmp::Ordering::*;
        let n = IdOrder::Numeric;
        assert_eq!(n.compare("9", "10"), Some(Less));
        assert_eq!(n.compare("010", "10"), Some(Equal));
        assert_eq!(n.compare("0", "00"), Some(Equal));
        assert_eq!(n.compare("11", "10"), Some(Greater));
        assert_eq!(n.compare("1a", "10"), None);
        assert_eq!(n.compare("", "1"), None);
        assert_eq!(n.compare("-1", "1"), None);
        assert_eq!(IdOrder::Bytewise.compare("9", "10"), Some(Greater));
        let c = load(&EMBEDDED.replace(
            "sparse_type = \"Person\"",
            "sparse_type = \"Person\"\nid_order = \"bytewise\"",
        ))
        .unwrap();
        assert_eq!(IdOrder::of(&c.entities[0]), IdOrder::Bytewise);
        assert_eq!(IdOrder::of(&c.entities[1]), IdOrder::Numeric);
        assert!(
            load(&EMBEDDED.replace(
                "sparse_type = \"Person\"",
                "sparse_type = \"Person\"\nid_order = \"text\""
            ))
            .is_err()
        );
    }

    #[test]
    fn receiving_webhooks_needs_the_table_and_names_it_when_absent() {
        let mut c = load(EMBEDDED).unwrap();
        assert!(c.webhooks().is_ok());
        c.webhooks = None;
        let e = c.webhooks().unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { field, file, .. }
                if field == "webhooks" && file == Path::new("test.toml")),
            "{e}"
        );
    }

    #[test]
    fn embedded_config_is_valid() {
        let c = load(EMBEDDED).unwrap();
        assert!(c.entity("people").is_some());
        assert!(c.entity("donations").is_some());
    }

    #[test]
    fn version_regression_is_repaired_only_where_an_entity_opts_in() {
        let c = load(EMBEDDED).unwrap();
        assert!(c.entities.iter().all(|e| !e.allow_version_regression));
        let c = load(&with(
            "\npage_size = 100",
            "\npage_size = 100\nallow_version_regression = true",
        ))
        .unwrap();
        assert!(c.entity("people").unwrap().allow_version_regression);
        assert!(!c.entity("donations").unwrap().allow_version_regression);
        expect_invalid(
            &with(
                "\npage_size = 100",
                "\npage_size = 100\nallow_version_regression = \"yes\"",
            ),
            "people",
            "allow_version_regression",
        );
    }

    fn expect_invalid(text: &str, entity: &str, field: &str) {
        match load(text) {
            Err(ConfigError::Invalid {
                file,
                entity: e,
                field: f,
                message,
            }) => {
                assert_eq!(file, Path::new("test.toml"));
                assert_eq!((e.as_str(), f.as_str()), (entity, field), "{message}");
                let shown = ConfigError::Invalid {
                    file,
                    entity: e,
                    field: f,
                    message,
                }
                .to_string();
                assert!(shown.contains("test.toml"), "{shown}");
            }
            other => panic!("expected Invalid({entity}, {field}), got {other:?}"),
        }
    }

    fn with(find: &str, replace: &str) -> String {
        assert!(EMBEDDED.contains(find), "fixture lost: {find}");
        EMBEDDED.replacen(find, replace, 1)
    }

    #[test]
    fn each_kind_of_mistake_names_file_entity_and_field() {
        // wrong type
        expect_invalid(
            &with("\npage_size = 100", "\npage_size = \"many\""),
            "people",
            "page_size",
        );
        // missing field: named (it was `-` until `fuzz::config` found it)
        expect_invalid(
            &with("delta_pointer = \"/attributes/updated_at\"\n", ""),
            "people",
            "delta_pointer",
        );
        // unknown field (a typo)
        expect_invalid(
            &with("supports_webhooks = true", "supports_webhook = true"),
            "people",
            "supports_webhook",
        );
        // bad enum value
        expect_invalid(
            &with(
                "timestamp_format = \"rfc3339\"",
                "timestamp_format = \"iso\"",
            ),
            "-",
            "source.timestamp_format",
        );
        // semantic: page size over the source maximum
        expect_invalid(
            &with("\npage_size = 100", "\npage_size = 1000"),
            "people",
            "page_size",
        );
        // semantic: pointer without a slash
        expect_invalid(
            &with("id_pointer = \"/id\"", "id_pointer = \"id\""),
            "people",
            "id_pointer",
        );
        // duplicate entity
        expect_invalid(
            &with("name = \"donations\"", "name = \"people\""),
            "people",
            "name",
        );
        // bad URL
        expect_invalid(
            &with(
                "base_url = \"http://127.0.0.1:3001\"",
                "base_url = \"ftp://x\"",
            ),
            "-",
            "source.base_url",
        );
        // not TOML at all
        expect_invalid("[source", "-", "-");
    }

    /// The embedded configuration at `url`, with `auth` (a TOML inline table).
    fn at(url: &str, auth: &str) -> Result<Config, ConfigError> {
        load(
            &with(
                "base_url = \"http://127.0.0.1:3001\"",
                &format!("base_url = \"{url}\""),
            )
            .replacen(
                "auth = { kind = \"basic\", secret = { env = \"SOURCE_SECRET\" } }",
                &format!("auth = {auth}"),
                1,
            ),
        )
    }

    #[test]
    fn plain_http_with_credentials_is_refused_unless_the_host_is_this_machine() {
        const BASIC: &str = r#"{ kind = "basic", secret = { env = "SOURCE_SECRET" } }"#;
        const BEARER: &str = r#"{ kind = "bearer", secret = { env = "T" } }"#;
        const KEY: &str = r#"{ kind = "api_key", header = "X-Key", secret = { env = "T" } }"#;
        const NONE: &str = r#"{ kind = "none" }"#;
        let ok = [
            ("https://api.example.com", BASIC),
            ("https://10.0.0.1:8443/v2", BEARER),
            ("http://127.0.0.1:3001", BASIC),
            ("http://127.1.2.3", BEARER),
            ("http://[::1]:8080", KEY),
            ("http://localhost:3001", BASIC),
            ("http://LOCALHOST", BASIC),
            // No secret to leak: plain HTTP anywhere.
            ("http://10.0.0.1", NONE),
            ("http://api.example.com", NONE),
        ];
        for (url, auth) in ok {
            let c = at(url, auth).unwrap_or_else(|e| panic!("{url} with {auth}: {e}"));
            assert_eq!(c.source.base_url, url);
        }
        let refused = [
            ("http://10.0.0.1", BASIC),
            ("http://api.example.com", BEARER),
            ("http://localhost.evil.com", BASIC),
            ("http://127.0.0.1.nip.io", KEY),
            ("http://[::2]", BASIC),
            ("http://[::ffff:127.0.0.1]", BASIC),
            ("http://128.0.0.1", BASIC),
        ];
        for (url, auth) in refused {
            match at(url, auth) {
                Err(e @ ConfigError::Invalid { .. }) => {
                    let ConfigError::Invalid { field, message, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(field, "source.base_url", "{url}: {e}");
                    assert!(
                        message.contains("in clear") && message.contains("https://"),
                        "{url}: {message}"
                    );
                }
                other => panic!("{url} with {auth}: {other:?}"),
            }
        }
        // The check runs again when SOURCE_BASE_URL replaces the file's URL (`Config::load`
        // calls `validate` after the override).
        let mut c = load(EMBEDDED).unwrap();
        c.source.base_url = "http://api.example.com".into();
        assert!(c.validate().is_err());
        c.source.base_url = "https://api.example.com".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn max_events_defaults_to_1000_and_is_range_checked() {
        let c = load(EMBEDDED).unwrap();
        assert_eq!(c.webhooks().unwrap().max_events, DEFAULT_MAX_EVENTS);
        let set = |n: &str| {
            with(
                "max_body_bytes = 1048576",
                &format!("max_body_bytes = 1048576\nmax_events = {n}"),
            )
        };
        assert_eq!(load(&set("1")).unwrap().webhooks().unwrap().max_events, 1);
        assert_eq!(
            load(&set("10000")).unwrap().webhooks().unwrap().max_events,
            MAX_EVENTS_LIMIT
        );
        expect_invalid(&set("0"), "-", "webhooks.max_events");
        expect_invalid(&set("10001"), "-", "webhooks.max_events");
        expect_invalid(&set("-1"), "-", "webhooks.max_events");
    }

    #[test]
    fn the_timestamp_offset_is_read_checked_and_named_when_wrong() {
        assert_eq!(load(EMBEDDED).unwrap().source.timestamp_offset, None);
        let at = |v: &str| {
            with(
                "timestamp_format = \"rfc3339\"",
                &format!("timestamp_format = \"rfc3339\"\ntimestamp_offset = {v}"),
            )
        };
        let c = load(&at("\"+01:00\"")).unwrap();
        assert_eq!(
            c.source.timestamp_offset.map(|o| o.whole_seconds()),
            Some(3600)
        );
        for bad in ["\"+1\"", "\"CET\"", "\"+15:00\"", "1"] {
            expect_invalid(&at(bad), "-", "source.timestamp_offset");
        }
        // Epoch timestamps have no zone to assume.
        expect_invalid(
            &with(
                "timestamp_format = \"rfc3339\"",
                "timestamp_format = \"epoch_seconds\"\ntimestamp_offset = \"+01:00\"",
            ),
            "-",
            "source.timestamp_offset",
        );
    }

    #[test]
    fn missing_field_error_mentions_the_field() {
        let err = load(&with("delta_pointer = \"/attributes/updated_at\"\n", "")).unwrap_err();
        assert!(err.to_string().contains("delta_pointer"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

//! Configuration of webhook delivery: where to, how signed, which faults, which retries.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// How a receiver recognises a Planning Center signature's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PcoEncoding {
    /// Lowercase hex of the HMAC-SHA256 (what Planning Center sends).
    #[default]
    Hex,
    /// Standard base64 (with padding) of the HMAC-SHA256.
    Base64,
}

/// The signing scheme of deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookScheme {
    /// `X-PCO-Webhooks-Authenticity: <HMAC-SHA256(secret bytes, raw body)>`.
    Pco {
        /// Hex or base64.
        encoding: PcoEncoding,
    },
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the
    /// secret is `whsec_<base64 key>` (the prefix is optional).
    Standard,
}

impl Default for WebhookScheme {
    fn default() -> Self {
        WebhookScheme::Pco {
            encoding: PcoEncoding::Hex,
        }
    }
}

impl WebhookScheme {
    /// The CLI and admin name: `pco-hex`, `pco-base64` or `standard`.
    pub fn name(self) -> &'static str {
        match self {
            WebhookScheme::Pco {
                encoding: PcoEncoding::Hex,
            } => "pco-hex",
            WebhookScheme::Pco {
                encoding: PcoEncoding::Base64,
            } => "pco-base64",
            WebhookScheme::Standard => "standard",
        }
    }
}

impl FromStr for WebhookScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pco" | "pco-hex" => Ok(WebhookScheme::Pco {
                encoding: PcoEncoding::Hex,
            }),
            "pco-base64" => Ok(WebhookScheme::Pco {
                encoding: PcoEncoding::Base64,
            }),
            "standard" | "standard-webhooks" => Ok(WebhookScheme::Standard),
            other => Err(format!(
                "unknown webhook scheme {other:?} (expected pco-hex, pco-base64 or standard)"
            )),
        }
    }
}

impl fmt::Display for WebhookScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Random delivery faults, drawn per delivery from an RNG seeded from
/// [`crate::SimConfig::seed`]: the same seed and sequence of changes give the same decisions.
///
/// Per delivery, three numbers are drawn in this order, whatever the rates: drop, duplicate,
/// reorder. A dropped delivery is neither duplicated nor reordered.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct WebhookFaults {
    /// Probability that a delivery is never sent.
    pub drop_rate: f64,
    /// Probability that a delivery is sent twice (two independent sends of the same body and
    /// IDs, each with its own retries).
    pub duplicate_rate: f64,
    /// Probability that a delivery is held back and sent after the next one has had its first
    /// answer (or after 500 ms without a next one).
    pub reorder_rate: f64,
    /// Fixed delay before the first attempt of every delivery.
    pub delay: Duration,
    /// A further random delay in `0..=jitter` before the first attempt.
    pub jitter: Duration,
}

impl WebhookFaults {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("reorder_rate", self.reorder_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("webhook {name} must be within 0..=1, got {v}"));
            }
        }
        Ok(())
    }
}

/// The waits before attempts 2, 3, ...: a delivery is tried `delays.len() + 1` times at most.
/// Any answer other than 200, a connection error or a timeout is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait before attempt `i + 2`.
    pub delays: Vec<Duration>,
}

impl RetrySchedule {
    /// Planning Center-like: 16 attempts over about 5 days (1, 2, 4, ... 32 minutes, then
    /// 1, 2, 4, 8, 16 hours, then four times 24 hours).
    pub fn pco() -> RetrySchedule {
        let m = |n: u64| Duration::from_secs(60 * n);
        let h = |n: u64| Duration::from_secs(3_600 * n);
        RetrySchedule {
            delays: vec![
                m(1),
                m(2),
                m(4),
                m(8),
                m(16),
                m(32),
                h(1),
                h(2),
                h(4),
                h(8),
                h(16),
                h(24),
                h(24),
                h(24),
                h(24),
            ],
        }
    }

    /// For tests: 50, 100, 200, 400 and 800 ms (6 attempts within about 1.5 s).
    pub fn fast() -> RetrySchedule {
        RetrySchedule {
            delays: [50, 100, 200, 400, 800]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        }
    }

    /// One attempt, no retry.
    pub fn none() -> RetrySchedule {
        RetrySchedule { delays: Vec::new() }
    }

    /// The most attempts a delivery gets.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX - 1) + 1
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::pco()
    }
}

impl FromStr for RetrySchedule {
    type Err = String;
    /// `pco`, `fast`, `none`, or milliseconds separated by commas (`50,100,200`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pco" => Ok(RetrySchedule::pco()),
            "fast" => Ok(RetrySchedule::fast()),
            "none" | "" => Ok(RetrySchedule::none()),
            list => list
                .split(',')
                .map(|p| {
                    p.trim().parse::<u64>().map(Duration::from_millis).map_err(|_| {
                        format!(
                            "retry schedule {s:?}: {p:?} is not milliseconds (expected pco, fast, none or e.g. 50,100,200)"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|delays| RetrySchedule { delays }),
        }
    }
}

/// Where and how changes are delivered as webhooks. Build with [`WebhookTarget::new`] and the
/// `with_*` methods; the secret is redacted from `Debug`.
#[derive(Clone, PartialEq)]
pub struct WebhookTarget {
    /// The receiver's URL; every delivery is a `POST` to it.
    pub url: String,
    /// The signing scheme.
    pub scheme: WebhookScheme,
    /// The shared secret: HMAC key bytes as is for [`WebhookScheme::Pco`], `whsec_<base64>` for
    /// [`WebhookScheme::Standard`].
    pub secret: String,
    /// Random delivery faults (none by default).
    pub faults: WebhookFaults,
    /// The retry schedule (default [`RetrySchedule::pco`]).
    pub retry: RetrySchedule,
    /// Events per delivery body, at most (default 1). Above 1, the changes arriving within
    /// `batch_window` of the first share one `data[]` array.
    pub max_events_per_delivery: usize,
    /// How long a batch waits for more changes after its first (default 50 ms).
    pub batch_window: Duration,
    /// HTTP requests in flight at most (default 16); waiting retries hold no slot.
    pub max_in_flight: usize,
    /// Per-attempt timeout; a timeout is retried like a non-200 (default 10 s).
    pub timeout: Duration,
}

impl WebhookTarget {
    /// A target with no faults, the Planning Center retry schedule and one event per delivery.
    pub fn new(url: impl Into<String>, scheme: WebhookScheme, secret: impl Into<String>) -> Self {
        WebhookTarget {
            url: url.into(),
            scheme,
            secret: secret.into(),
            faults: WebhookFaults::default(),
            retry: RetrySchedule::pco(),
            max_events_per_delivery: 1,
            batch_window: Duration::from_millis(50),
            max_in_flight: 16,
            timeout: Duration::from_secs(10),
        }
    }

    /// Replaces the faults.
    pub fn with_faults(mut self, faults: WebhookFaults) -> Self {
        self.faults = faults;
        self
    }

    /// Replaces the retry schedule.
    pub fn with_retry(mut self, retry: RetrySchedule) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the largest number of events per delivery body.
    pub fn with_max_events_per_delivery(mut self, n: usize) -> Self {
        self.max_events_per_delivery = n;
        self
    }

    /// Sets how long a batch waits for more changes.
    pub fn with_batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Sets the largest number of HTTP requests in flight.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The HMAC key: the secret's bytes (PCO) or its base64-decoded part (Standard Webhooks).
    pub(crate) fn key(&self) -> Result<Vec<u8>, String> {
        match self.scheme {
            WebhookScheme::Pco { .. } => Ok(self.secret.as_bytes().to_vec()),
            WebhookScheme::Standard => {
                let b64 = self.secret.strip_prefix("whsec_").unwrap_or(&self.secret);
                STANDARD
                    .decode(b64)
                    .map_err(|e| format!("webhook secret is not whsec_<base64>: {e}"))
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| format!("webhook url {:?} is invalid: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("webhook url {:?} must be http or https", self.url));
        }
        if self.secret.is_empty() {
            return Err("webhook secret must not be empty".into());
        }
        self.key()?;
        self.faults.validate()?;
        if self.max_events_per_delivery == 0 || self.max_in_flight == 0 {
            return Err(
                "webhook max_events_per_delivery and max_in_flight must be at least 1".into(),
            );
        }
        if self.timeout.is_zero() {
            return Err("webhook timeout must be positive".into());
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("secret", &"<redacted>")
            .field("faults", &self.faults)
            .field("retry", &self.retry)
            .field("max_events_per_delivery", &self.max_events_per_delivery)
            .field("batch_window", &self.batch_window)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_schedules_parse() {
        assert_eq!(
            "pco-base64".parse::<WebhookScheme>(),
            Ok(WebhookScheme::Pco {
                encoding: PcoEncoding::Base64
            })
        );
        assert_eq!(
            "standard".parse::<WebhookScheme>(),
            Ok(WebhookScheme::Standard)
        );
        assert!("hmac".parse::<WebhookScheme>().is_err());
        assert_eq!(RetrySchedule::pco().max_attempts(), 16);
        let total: Duration = RetrySchedule::pco().delays.iter().sum();
        assert!(total > Duration::from_secs(4 * 86_400) && total < Duration::from_secs(6 * 86_400));
        let s: RetrySchedule = "10, 20".parse().unwrap();
        assert_eq!(
            s.delays,
            [Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert!("10,x".parse::<RetrySchedule>().is_err());
    }

    #[test]
    fn targets_are_validated_and_debug_redacts_the_secret() {
        let t = WebhookTarget::new(
            "http://127.0.0.1:1/hook",
            WebhookScheme::Standard,
            "whsec_c2VjcmV0",
        );
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.key().unwrap(), b"secret");
        assert!(!format!("{t:?}").contains("c2VjcmV0"));
        let bad = WebhookTarget {
            secret: "whsec_!!".into(),
            ..t.clone()
        };
        assert!(bad.validate().is_err());
        let bad = WebhookTarget {
            url: "ftp://x".into(),
            ..t.clone()
        };
        assert!(bad.validate().is_err());
        let bad = t.with_faults(WebhookFaults {
            drop_rate: 2.0,
            ..WebhookFaults::default()
        });
        assert!(bad.validate().is_err());
    }
}

//! Scripted faults, random chaos and the rate limiter.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{Chaos, RateLimit};

/// A scripted fault. Faults wait in a FIFO queue; each API request (never an admin request)
/// takes the next one, before the rate limit and auth are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON:API error body (`application/json`). A code outside
    /// 100..=999 is served as 500.
    Status(u16),
    /// Answer with this status and an HTML error page (`text/html`), like a proxy's 502.
    Html(u16),
    /// Answer 200 with the normal body cut in the middle (the `Content-Length` matches the cut
    /// body, so the HTTP exchange is valid and the JSON is not).
    Truncate,
    /// Sleep, then answer normally.
    Delay(Duration),
    /// Answer 429 with this `Retry-After` (seconds).
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
}

/// The admin API's JSON form of a [`Fault`]: `{"status":503}`, `{"html":502}`, `"truncate"`,
/// `{"delay_ms":250}`, `{"rate_limited":{"retry_after_secs":2}}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum FaultWire {
    Status(u16),
    Html(u16),
    Truncate,
    DelayMs(u64),
    RateLimited { retry_after_secs: u64 },
}

impl From<FaultWire> for Fault {
    fn from(w: FaultWire) -> Fault {
        match w {
            FaultWire::Status(c) => Fault::Status(c),
            FaultWire::Html(c) => Fault::Html(c),
            FaultWire::Truncate => Fault::Truncate,
            FaultWire::DelayMs(ms) => Fault::Delay(Duration::from_millis(ms)),
            FaultWire::RateLimited { retry_after_secs } => Fault::RateLimited { retry_after_secs },
        }
    }
}

/// What the chaos draw decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChaosOutcome {
    None,
    Status(u16),
    Html(u16),
    Truncate,
}

pub(crate) struct ChaosState {
    pub chaos: Chaos,
    rng: fastrand::Rng,
}

impl ChaosState {
    pub(crate) fn new(chaos: Chaos, seed: u64) -> ChaosState {
        ChaosState {
            chaos,
            rng: fastrand::Rng::with_seed(seed ^ 0xC4A0_5C4A_05C4_A05C),
        }
    }

    /// One draw per API request, so that the same seed and request sequence give the same faults.
    pub(crate) fn draw(&mut self) -> ChaosOutcome {
        let c = self.chaos;
        if c.error_rate == 0.0 && c.html_rate == 0.0 && c.truncate_rate == 0.0 {
            return ChaosOutcome::None;
        }
        let r = self.rng.f64();
        let pick = self.rng.usize(0..4);
        if r < c.error_rate {
            ChaosOutcome::Status([500, 502, 503, 504][pick])
        } else if r < c.error_rate + c.html_rate {
            ChaosOutcome::Html(502)
        } else if r < c.error_rate + c.html_rate + c.truncate_rate {
            ChaosOutcome::Truncate
        } else {
            ChaosOutcome::None
        }
    }
}

/// A fixed-window rate limiter over real (unskewed) time.
pub(crate) struct RateState {
    pub limit: Option<RateLimit>,
    window_start: Instant,
    count: u32,
}

/// The rate headers of one response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateInfo {
    pub limit: u32,
    pub period_secs: u64,
    pub count: u32,
}

impl RateState {
    pub(crate) fn new(limit: Option<RateLimit>) -> RateState {
        RateState {
            limit,
            window_start: Instant::now(),
            count: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.window_start = Instant::now();
        self.count = 0;
    }

    fn roll(&mut self, now: Instant, rl: &RateLimit) {
        if now.duration_since(self.window_start) >= rl.period {
            self.window_start = now;
            self.count = 0;
        }
    }

    /// Admits one request: `Ok(info)` counted, or `Err((retry_after_secs, info))` over the limit
    /// (a refused request is not counted). `Ok(None)` without a limit.
    pub(crate) fn admit(&mut self) -> Result<Option<RateInfo>, (u64, RateInfo)> {
        let Some(rl) = self.limit else {
            return Ok(None);
        };
        let now = Instant::now();
        self.roll(now, &rl);
        if self.count >= rl.requests {
            let left = (self.window_start + rl.period).saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err((secs.max(1), self.info(&rl)));
        }
        self.count += 1;
        Ok(Some(self.info(&rl)))
    }

    /// The current headers without counting a request.
    pub(crate) fn peek(&mut self) -> Option<RateInfo> {
        let rl = self.limit?;
        self.roll(Instant::now(), &rl);
        Some(self.info(&rl))
    }

    fn info(&self, rl: &RateLimit) -> RateInfo {
        let p = rl.period;
        RateInfo {
            limit: rl.requests,
            period_secs: (p.as_secs() + u64::from(p.subsec_nanos() > 0)).max(1),
            count: self.count,
        }
    }
}

/// The canonical reason phrase of a status, for error bodies and pages.
pub(crate) fn reason(code: u16) -> &'static str {
    axum::http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A JSON:API error document.
pub(crate) fn json_error(code: u16, detail: Option<&str>, parameter: Option<&str>) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"errors\":[{\"status\":\"");
    out.push_str(&code.to_string());
    out.push_str("\",\"title\":");
    crate::json::push_str(&mut out, reason(code));
    if let Some(d) = detail {
        out.push_str(",\"detail\":");
        crate::json::push_str(&mut out, d);
    }
    if let Some(p) = parameter {
        out.push_str(",\"source\":{\"parameter\":");
        crate::json::push_str(&mut out, p);
        out.push('}');
    }
    out.push_str("}]}");
    out
}

/// An HTML error page like nginx's.
pub(crate) fn html_page(code: u16) -> String {
    let r = reason(code);
    format!(
        "<!DOCTYPE html>\n<html>\n<head><title>{code} {r}</title></head>\n<body>\n<center><h1>{code} {r}</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_is_deterministic_per_seed() {
        let chaos = Chaos {
            error_rate: 0.3,
            html_rate: 0.2,
            truncate_rate: 0.1,
            latency: Duration::ZERO,
        };
        let run = |seed| {
            let mut s = ChaosState::new(chaos, seed);
            (0..200).map(|_| s.draw()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let draws = run(1);
        let errors = draws
            .iter()
            .filter(|d| matches!(d, ChaosOutcome::Status(_)))
            .count();
        let quiet = draws.iter().filter(|d| **d == ChaosOutcome::None).count();
        assert!((30..=90).contains(&errors), "{errors}");
        assert!((50..=110).contains(&quiet), "{quiet}");
    }

    #[test]
    fn rate_limiter_refuses_over_the_limit() {
        let mut r = RateState::new(Some(RateLimit {
            requests: 2,
            period: Duration::from_secs(60),
        }));
        assert_eq!(r.admit().unwrap().unwrap().count, 1);
        assert_eq!(r.admit().unwrap().unwrap().count, 2);
        let (retry, info) = r.admit().unwrap_err();
        assert!((1..=60).contains(&retry));
        assert_eq!((info.limit, info.period_secs, info.count), (2, 60, 2));
        r.reset();
        assert!(r.admit().is_ok());
        assert!(RateState::new(None).admit().unwrap().is_none());
    }

    #[test]
    fn fault_wire_forms() {
        let v: Vec<FaultWire> = serde_json::from_str(
            r#"[{"status":503},{"html":502},"truncate",{"delay_ms":5},{"rate_limited":{"retry_after_secs":2}}]"#,
        )
        .unwrap();
        let f: Vec<Fault> = v.into_iter().map(Fault::from).collect();
        assert_eq!(
            f,
            [
                Fault::Status(503),
                Fault::Html(502),
                Fault::Truncate,
                Fault::Delay(Duration::from_millis(5)),
                Fault::RateLimited {
                    retry_after_secs: 2
                }
            ]
        );
    }

    #[test]
    fn error_bodies() {
        let v: serde_json::Value =
            serde_json::from_str(&json_error(400, Some("bad \"x\""), Some("offset"))).unwrap();
        assert_eq!(v["errors"][0]["status"], "400");
        assert_eq!(v["errors"][0]["title"], "Bad Request");
        assert_eq!(v["errors"][0]["source"]["parameter"], "offset");
        assert!(html_page(502).contains("502 Bad Gateway"));
    }
}

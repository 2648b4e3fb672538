//! The shared rate budget's arithmetic: a GCRA schedule ("theoretical arrival time") that every
//! caller of one source account shares through one stored item, and the interval that keeps
//! the source's limit in any window whatever the callers do with their tokens.
//!
//! A caller takes a *slice* of `k` tokens in one conditional write. Token `j` of a slice has a
//! nominal time `x_j = first + j * interval`; the stored schedule (`tat_us`) moves to the end
//! of the slice. A background token (delta, reconciliation) is spent at or after its nominal
//! time and no later than `lateness` after it, else it expires; a targeted token (webhook and
//! targeted fetches) may be spent as soon as it is granted, which is up to `tau` before its
//! nominal time. So a request counted by the source in any window `[w, w + P)` holds a token
//! with `x` in `(w - lateness, w + P + tau)`, and at most `(P + lateness + tau) / interval + 1`
//! tokens fit there. [`Plan::new`] picks the interval that makes that at most the source's
//! `requests`: zero 429s by construction, for a fixed window as for a sliding one.
//!
//! Priority lanes are *lookaheads*: a lane may take a slice whose first token lies at most its
//! lookahead past now. Reconciliation takes only when the schedule has caught up with now
//! (after waiting two background slices, as much as delta, so that it too progresses); delta
//! one interval ahead, so that it wins the race against reconciliation; the targeted lane past
//! the longest background reservation, so that a webhook fetch never waits behind a backfill's
//! slice (its early spending is the `tau` above, paid for in the interval).

use crate::model::Micros;

/// Who is asking, highest priority first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Webhook fetches, targeted syncs, reconciliation's re-fetches (`get_by_id`).
    Targeted,
    /// Delta sync's walks (`list_changed_since`).
    Delta,
    /// Reconciliation's ID listings (`stream_ids`).
    Reconcile,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Targeted, Lane::Delta, Lane::Reconcile];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Targeted => "targeted",
            Lane::Delta => "delta",
            Lane::Reconcile => "reconcile",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The limit the source enforces: `requests` per `per_us` (configured, or learned from its
/// rate-limit headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub per_us: Micros,
}

/// The smallest limit the shared budget can keep: one background and one targeted token, and
/// the targeted lane's reach, leave at least one token per window for the steady rate.
pub const MIN_REQUESTS: u32 = 6;

/// How slices are cut (`[source.rate_budget]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Largest background slice (delta, reconciliation): fewer store writes per request
    /// against a longer wait for a targeted fetch arriving behind it.
    pub background_slice: u32,
    /// Largest targeted slice.
    pub targeted_slice: u32,
    /// How late after its nominal time a token may still be spent (send-time jitter, the
    /// network's, the callers' clocks).
    pub lateness_us: Micros,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            background_slice: 6,
            targeted_slice: 2,
            lateness_us: 500_000,
        }
    }
}

/// The interval and the lanes' lookaheads for one limit and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub limit: Limit,
    /// Time between two tokens, in µs.
    pub interval_us: Micros,
    /// The largest slice of a background lane and of the targeted lane, after fitting the
    /// shape to a small limit.
    pub background_slice: u32,
    pub targeted_slice: u32,
    pub lateness_us: Micros,
}

impl Plan {
    /// The interval that keeps `limit` in every window (module doc): with `kb` and `kt` the
    /// slices, the targeted lane's reach is `tau = (kb + kt + 1) * interval` (its lookahead
    /// `(kb + 2) * interval` covers the longest background reservation, an aged reconciliation's
    /// `2 * interval` plus `kb * interval`, and its own slice adds `kt - 1`), so
    /// `interval = (P + lateness) / (requests - 1 - (kb + kt + 1))`. Slices shrink for a small limit
    /// so that at least half of it is left for the interval's denominator.
    pub fn new(limit: Limit, shape: Shape) -> Plan {
        let n = i64::from(limit.requests.max(1));
        // kb + kt + 1 <= (n - 1) / 2
        let room = ((n - 1) / 2 - 1).max(2);
        let mut kb = i64::from(shape.background_slice.max(1));
        let mut kt = i64::from(shape.targeted_slice.max(1));
        while kb + kt > room && (kb > 1 || kt > 1) {
            if kb >= kt && kb > 1 {
                kb -= 1;
            } else {
                kt -= 1;
            }
        }
        let denominator = (n - 1 - (kb + kt + 1)).max(1);
        let span = limit.per_us.max(1) + shape.lateness_us.max(0);
        let interval_us = (span + denominator - 1) / denominator;
        Plan {
            limit,
            interval_us: interval_us.max(1),
            background_slice: kb as u32,
            targeted_slice: kt as u32,
            lateness_us: shape.lateness_us.max(0),
        }
    }

    /// How far past now a lane's first token may lie. `aged`: a reconciliation caller that has
    /// waited two background slices or more looks one interval further than delta, so that it
    /// wins the next race.
    pub fn lookahead_us(&self, lane: Lane, aged: bool) -> Micros {
        let t = self.interval_us;
        match lane {
            // The longest background reservation ends at now + 2t + kb * t.
            Lane::Targeted => (i64::from(self.background_slice) + 2) * t,
            Lane::Delta => t,
            Lane::Reconcile if aged => 2 * t,
            Lane::Reconcile => 0,
        }
    }

    /// How long a reconciliation caller waits before it ages (`lookahead_us`).
    pub fn aging_us(&self) -> Micros {
        2 * i64::from(self.background_slice) * self.interval_us
    }

    /// The most tokens any window of the limit's length can see spent (module doc), for tests
    /// and the documentation.
    pub fn worst_window(&self) -> i64 {
        let tau = (i64::from(self.background_slice) + i64::from(self.targeted_slice) + 1)
            * self.interval_us;
        (self.limit.per_us + self.lateness_us + tau) / self.interval_us + 1
    }

    /// Requests per `limit.per_us` the plan can hand out at most (its steady rate).
    pub fn steady_requests(&self) -> f64 {
        self.limit.per_us as f64 / self.interval_us as f64
    }
}

/// One account's stored budget (the `budget#<account>` item, the `control_budget` row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// The end of the last slice handed out (GCRA's theoretical arrival time).
    pub tat_us: Option<Micros>,
    /// No slice is handed out before this instant (a source's `Retry-After`).
    pub paused_until_us: Option<Micros>,
    /// The limit the source announced in its headers, when it did.
    pub learned: Option<Limit>,
}

/// A request for a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceAsk {
    pub now_us: Micros,
    pub tokens: u32,
    pub interval_us: Micros,
    pub lookahead_us: Micros,
}

impl SliceAsk {
    pub fn span_us(&self) -> Micros {
        i64::from(self.tokens) * self.interval_us
    }
}

/// What a store answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceAnswer {
    /// Tokens at `first_us + j * interval_us`, `j < tokens`.
    Granted {
        first_us: Micros,
        learned: Option<Limit>,
    },
    /// Ask again at `until_us`; `paused` when a `Retry-After` holds every caller.
    Wait {
        until_us: Micros,
        paused: bool,
        learned: Option<Limit>,
    },
}

/// The decision on `ask` given the stored `state`, and the new schedule end when granted.
/// The SQLite store applies it in a transaction; the DynamoDB store expresses the same two
/// cases as conditions (`tat < now`: start at now; `now <= tat <= now + lookahead`: start at
/// tat).
pub fn decide(state: &BudgetState, ask: &SliceAsk) -> (SliceAnswer, Option<Micros>) {
    let learned = state.learned;
    if let Some(p) = state.paused_until_us.filter(|p| *p > ask.now_us) {
        return (
            SliceAnswer::Wait {
                until_us: p,
                paused: true,
                learned,
            },
            None,
        );
    }
    let first = match state.tat_us {
        None => ask.now_us,
        Some(t) if t < ask.now_us => ask.now_us,
        Some(t) if t - ask.now_us <= ask.lookahead_us => t,
        Some(t) => {
            return (
                SliceAnswer::Wait {
                    until_us: t - ask.lookahead_us,
                    paused: false,
                    learned,
                },
                None,
            );
        }
    };
    (
        SliceAnswer::Granted {
            first_us: first,
            learned,
        },
        Some(first + ask.span_us()),
    )
}

/// Parse a rate-limit period header: `20`, `20s`, `20 seconds`, `1 minute`, `500ms`.
pub fn parse_period(v: &str) -> Option<Micros> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale = match unit.as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
        "ms" | "millisecond" | "milliseconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e6,
        "h" | "hour" | "hours" => 3_600e6,
        _ => return None,
    };
    let us = n * scale;
    (us.is_finite() && (1.0..=86_400e6).contains(&us)).then_some(us as Micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCO: Limit = Limit {
        requests: 100,
        per_us: 20_000_000,
    };

    #[test]
    fn the_pco_plan_uses_more_than_85_percent_of_the_limit_and_never_more_than_it() {
        let p = Plan::new(PCO, Shape::default());
        assert!(p.worst_window() <= 100, "{p:?}: {}", p.worst_window());
        let used = p.steady_requests() / 100.0;
        assert!(used >= 0.85, "{p:?}: {used}");
        // Targeted reach covers the longest background reservation.
        let bg = p.lookahead_us(Lane::Delta, false) + i64::from(p.background_slice) * p.interval_us;
        assert!(p.lookahead_us(Lane::Targeted, false) >= bg);
    }

    #[test]
    fn small_limits_shrink_the_slices_and_keep_the_bound() {
        // Six requests per window is the least the budget takes (`MIN_REQUESTS`).
        for requests in [MIN_REQUESTS, 7, 8, 10, 20, 50, 75, 100, 1000] {
            for lateness_us in [0, 500_000, 5_000_000] {
                let p = Plan::new(
                    Limit {
                        requests,
                        per_us: 2_000_000,
                    },
                    Shape {
                        lateness_us,
                        ..Shape::default()
                    },
                );
                assert!(p.worst_window() <= i64::from(requests), "{p:?}");
                assert!(p.background_slice >= 1 && p.targeted_slice >= 1);
            }
        }
    }

    #[test]
    fn lanes_are_ordered_by_lookahead() {
        let p = Plan::new(PCO, Shape::default());
        let la = |l, aged| p.lookahead_us(l, aged);
        assert!(la(Lane::Targeted, false) > la(Lane::Reconcile, true));
        assert!(la(Lane::Reconcile, true) > la(Lane::Delta, false));
        assert!(la(Lane::Delta, false) > la(Lane::Reconcile, false));
    }

    #[test]
    fn decide_starts_at_now_when_idle_at_the_schedule_when_within_reach_and_waits_beyond() {
        let ask = SliceAsk {
            now_us: 1_000,
            tokens: 4,
            interval_us: 10,
            lookahead_us: 20,
        };
        let idle = BudgetState::default();
        assert_eq!(
            decide(&idle, &ask),
            (
                SliceAnswer::Granted {
                    first_us: 1_000,
                    learned: None
                },
                Some(1_040)
            )
        );
        let behind = BudgetState {
            tat_us: Some(900),
            ..idle
        };
        assert_eq!(decide(&behind, &ask).1, Some(1_040));
        let ahead = BudgetState {
            tat_us: Some(1_020),
            ..idle
        };
        assert_eq!(decide(&ahead, &ask).1, Some(1_060));
        let far = BudgetState {
            tat_us: Some(1_021),
            ..idle
        };
        assert_eq!(
            decide(&far, &ask),
            (
                SliceAnswer::Wait {
                    until_us: 1_001,
                    paused: false,
                    learned: None
                },
                None
            )
        );
        let paused = BudgetState {
            paused_until_us: Some(5_000),
            ..idle
        };
        assert_eq!(
            decide(&paused, &ask).0,
            SliceAnswer::Wait {
                until_us: 5_000,
                paused: true,
                learned: None
            }
        );
        let over = BudgetState {
            paused_until_us: Some(1_000),
            ..idle
        };
        assert!(matches!(decide(&over, &ask).0, SliceAnswer::Granted { .. }));
    }

    #[test]
    fn periods_parse_in_the_forms_sources_send() {
        assert_eq!(parse_period("20 seconds"), Some(20_000_000));
        assert_eq!(parse_period("20"), Some(20_000_000));
        assert_eq!(parse_period("20s"), Some(20_000_000));
        assert_eq!(parse_period("1 minute"), Some(60_000_000));
        assert_eq!(parse_period("500ms"), Some(500_000));
        assert_eq!(parse_period("2.5 Seconds"), Some(2_500_000));
        for bad in [
            "",
            "seconds",
            "twenty",
            "-1",
            "0",
            "20 fortnights",
            "1e9 hours",
        ] {
            assert_eq!(parse_period(bad), None, "{bad}");
        }
    }
}

//! Client-side rate limiting: a sliding window, so that no window of `per` seconds ever holds
//! more than `requests` requests. That keeps a fixed-window server (Planning Center's 100 per
//! 20 s) free of 429s in steady state, which a token bucket with a full burst does not.

use crate::config::RateLimit;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct SlidingWindow {
    requests: usize,
    per: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl SlidingWindow {
    pub fn new(limit: &RateLimit) -> Self {
        SlidingWindow {
            requests: limit.requests as usize,
            per: Duration::from_secs_f64(limit.per_seconds),
            sent: Mutex::new(VecDeque::with_capacity(limit.requests as usize)),
        }
    }

    /// Wait until one more request fits in the window, and count it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().await;
                let now = Instant::now();
                while sent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.per)
                {
                    sent.pop_front();
                }
                if sent.len() < self.requests {
                    sent.push_back(now);
                    return;
                }
                // Full: the oldest request leaves the window at front + per.
                sent.front()
                    .map(|t| (*t + self.per).saturating_duration_since(now))
            };
            tokio::time::sleep(wait.unwrap_or(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_per_window() {
        let w = SlidingWindow::new(&RateLimit {
            requests: 5,
            per_seconds: 2.0,
        });
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..12 {
            w.acquire().await;
            at.push(start.elapsed());
        }
        // First five at once, the next five two seconds later, then two more at four seconds.
        assert!(
            at[..5].iter().all(|d| *d < Duration::from_millis(1)),
            "{at:?}"
        );
        assert!(
            at[5..10].iter().all(|d| *d >= Duration::from_secs(2)),
            "{at:?}"
        );
        assert!(at[10] >= Duration::from_secs(4), "{at:?}");
        // Any window of 2 s holds at most 5.
        for (i, t) in at.iter().enumerate() {
            let in_window = at[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(2))
                .count();
            assert!(in_window <= 5, "window from {t:?} holds {in_window}");
        }
    }
}

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
        // Without a stop instant no wait is refused.
        let _ = self.acquire_by(None).await;
    }

    /// [`acquire`](Self::acquire), unless the wait would pass `stop`: then `Err` with the wait,
    /// at once, nothing counted (the caller stops rather than sleeps past its deadline).
    pub async fn acquire_by(&self, stop: Option<std::time::Instant>) -> Result<(), Duration> {
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
                    return Ok(());
                }
                // Full: the oldest request leaves the window at front + per.
                sent.front()
                    .map(|t| (*t + self.per).saturating_duration_since(now))
                    .unwrap_or(Duration::from_millis(1))
            };
            if stop.is_some_and(|t| std::time::Instant::now() + wait > t) {
                return Err(wait);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_past_the_stop_instant_is_refused_at_once_and_not_counted() {
        let w = SlidingWindow::new(&RateLimit {
            requests: 2,
            per_seconds: 60.0,
        });
        let soon = Some(std::time::Instant::now() + Duration::from_secs(5));
        assert_eq!(w.acquire_by(soon).await, Ok(()));
        assert_eq!(w.acquire_by(soon).await, Ok(()));
        // The window is full for about a minute: refused at once, with the wait it would take.
        let wait = w.acquire_by(soon).await.unwrap_err();
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        assert_eq!(
            w.sent.lock().await.len(),
            2,
            "a refused request is not counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_before_the_stop_instant_is_waited() {
        let w = SlidingWindow::new(&RateLimit {
            requests: 1,
            per_seconds: 2.0,
        });
        let later = Some(std::time::Instant::now() + Duration::from_secs(3600));
        w.acquire_by(later).await.unwrap();
        let start = Instant::now();
        w.acquire_by(later).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

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

//! Deadline arithmetic for every handler: when to stop, a margin before the invocation's end.
//! Reads the clock (`SystemTime::now`, `Instant::now`), like `timefmt::now_us`.

use std::time::{Duration, Instant, SystemTime};

/// When to stop, `margin` before an invocation's `deadline`; `None` when there is no deadline
/// (a local invocation's context carries the epoch). A deadline already past, or nearer than the
/// margin, is now.
pub fn stop_instant(deadline: SystemTime, margin: Duration) -> Option<Instant> {
    if deadline == SystemTime::UNIX_EPOCH {
        return None;
    }
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Some(Instant::now() + left.saturating_sub(margin))
}

/// How long until `deadline` (zero when past; `None` without a deadline).
pub fn time_left(deadline: SystemTime) -> Option<Duration> {
    if deadline == SystemTime::UNIX_EPOCH {
        return None;
    }
    Some(
        deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deadline_means_no_stop() {
        assert_eq!(
            stop_instant(SystemTime::UNIX_EPOCH, Duration::from_secs(5)),
            None
        );
        assert_eq!(time_left(SystemTime::UNIX_EPOCH), None);
    }

    #[test]
    fn stops_a_margin_before_the_deadline() {
        let before = Instant::now();
        let at = stop_instant(
            SystemTime::now() + Duration::from_secs(60),
            Duration::from_secs(20),
        )
        .unwrap();
        let d = at.duration_since(before);
        assert!(
            d > Duration::from_secs(39) && d <= Duration::from_secs(41),
            "{d:?}"
        );
        // A deadline nearer than the margin, or past, is now.
        for deadline in [
            SystemTime::now() + Duration::from_secs(5),
            SystemTime::now() - Duration::from_secs(5),
        ] {
            let at = stop_instant(deadline, Duration::from_secs(20)).unwrap();
            assert!(at <= Instant::now());
        }
        let left = time_left(SystemTime::now() + Duration::from_secs(30)).unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
    }
}

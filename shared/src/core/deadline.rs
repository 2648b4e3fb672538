//! Deadline arithmetic for every handler: when to stop, a margin before the invocation's end.
//! Reads the clock (`SystemTime::now`, `Instant::now`), like `timefmt::now_us`.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

tokio::task_local! {
    /// The instant the current invocation's work must stop by (see [`within`]).
    static STOP_AT: Option<Instant>;
}

/// Run `work` with `stop_at` as the instant every wait and every page inside it must respect:
/// the source client caps its waits (`Retry-After`, backoff) at it and its paginators check it
/// between requests, answering `SourceError::Deadline` instead of sleeping past it. `None`
/// means no deadline (a local run).
pub async fn within<F: Future>(stop_at: Option<Instant>, work: F) -> F::Output {
    STOP_AT.scope(stop_at, work).await
}

/// The stop instant set by the innermost [`within`] around the running task; `None` outside
/// one or when it set none.
pub fn current() -> Option<Instant> {
    STOP_AT.try_with(|t| *t).ok().flatten()
}

/// Whether waiting `wait` from now would pass the current stop instant.
pub fn would_pass(wait: Duration) -> bool {
    current().is_some_and(|t| Instant::now() + wait > t)
}

/// A deadline further than this in the past is no Lambda deadline: Lambda gives now plus the
/// timeout (at most 15 minutes), and clocks are synchronised.
const NOT_A_DEADLINE: Duration = Duration::from_secs(86_400);

/// The invocation's deadline, `None` when it has none: a local invocation's context carries
/// the epoch, and a local runtime emulator may send a placeholder (`cargo lambda watch` sends
/// `Lambda-Runtime-Deadline-Ms: 600000`, ten minutes after the epoch). Either way the
/// invocation runs without a stop instant, and a placeholder is logged.
fn real(deadline: SystemTime) -> Option<SystemTime> {
    if deadline == SystemTime::UNIX_EPOCH {
        return None;
    }
    if SystemTime::now()
        .duration_since(deadline)
        .is_ok_and(|ago| ago > NOT_A_DEADLINE)
    {
        tracing::warn!(
            deadline_ms = deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "the invocation's deadline is more than a day past, so it is no Lambda deadline (a \
             local runtime emulator's placeholder): running without a stop instant"
        );
        return None;
    }
    Some(deadline)
}

/// When to stop, `margin` before an invocation's `deadline`; `None` when there is no deadline
/// (see [`real`]). A deadline already past, or nearer than the margin, is now.
pub fn stop_instant(deadline: SystemTime, margin: Duration) -> Option<Instant> {
    let deadline = real(deadline)?;
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Some(Instant::now() + left.saturating_sub(margin))
}

/// How long until `deadline` (zero when past; `None` without a deadline).
pub fn time_left(deadline: SystemTime) -> Option<Duration> {
    let deadline = real(deadline)?;
    Some(
        deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_sets_the_stop_instant_for_the_task_and_nests() {
        assert_eq!(current(), None);
        assert!(!would_pass(Duration::from_secs(3600)));
        let at = Instant::now() + Duration::from_secs(10);
        within(Some(at), async {
            assert_eq!(current(), Some(at));
            assert!(would_pass(Duration::from_secs(11)));
            assert!(!would_pass(Duration::from_secs(5)));
            within(None, async { assert_eq!(current(), None) }).await;
            assert_eq!(current(), Some(at));
        })
        .await;
        assert_eq!(current(), None);
    }

    #[test]
    fn no_deadline_means_no_stop() {
        assert_eq!(
            stop_instant(SystemTime::UNIX_EPOCH, Duration::from_secs(5)),
            None
        );
        assert_eq!(time_left(SystemTime::UNIX_EPOCH), None);
        // cargo lambda watch's placeholder, and anything else more than a day past.
        for placeholder in [
            SystemTime::UNIX_EPOCH + Duration::from_millis(600_000),
            SystemTime::now() - Duration::from_secs(86_400 + 60),
        ] {
            assert_eq!(stop_instant(placeholder, Duration::from_secs(5)), None);
            assert_eq!(time_left(placeholder), None);
        }
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

//! The retry loop of a conditional write, written once for both stores. An attempt sends one
//! conditional `UpdateItem`/`PutItem` and reads the outcome from the answer or from the failed
//! condition's old image; when that image shows the item changed in between (another writer
//! moved it), the attempt asks for another one, possibly with a different condition. After
//! [`MAX_ATTEMPTS`] the write gives up with a retryable [`Contention`] error.
//!
//! The loop holds no SDK type, so its logic is unit-tested here; the emulator tests in
//! `tests/it` cover the real calls.

use super::Contention;
use crate::error::StoreError;
use std::future::Future;

/// Conditional attempts per item before giving up with a retryable error. Every failed attempt
/// after the first means another writer changed the item in between, so this is only reached
/// under extreme contention on one item.
pub(super) const MAX_ATTEMPTS: usize = 16;

/// What one attempt of a conditional write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt<T, S> {
    /// Settled: written, or the old image decided the outcome.
    Done(T),
    /// The item changed under the attempt: try again, from this state (for example the
    /// condition the old image calls for).
    Again(S),
}

/// Runs `attempt` from the state `first` until one settles, at most [`MAX_ATTEMPTS`] times.
/// An attempt's error ends the loop at once. Running out of attempts is
/// `StoreError::Backend` (`op`) over a [`Contention`] naming `key`.
pub(super) async fn until_settled<T, S, F, Fut>(
    op: &'static str,
    key: &str,
    first: S,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut(S) -> Fut,
    Fut: Future<Output = Result<Attempt<T, S>, StoreError>>,
{
    let mut state = first;
    for _ in 0..MAX_ATTEMPTS {
        match attempt(state).await? {
            Attempt::Done(t) => return Ok(t),
            Attempt::Again(next) => state = next,
        }
    }
    Err(StoreError::backend(
        op,
        Contention {
            key: key.to_owned(),
            attempts: MAX_ATTEMPTS,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Runs the loop over a script of attempt results (one per call, `Again` past its end),
    /// returning what the loop returned and the states the attempts were called with.
    async fn run(
        script: Vec<Result<Attempt<&'static str, u32>, StoreError>>,
    ) -> (Result<&'static str, StoreError>, Vec<u32>) {
        let seen = RefCell::new(Vec::new());
        let script = RefCell::new(script.into_iter());
        let out = until_settled("test op", "k#1", 0u32, |state| {
            seen.borrow_mut().push(state);
            let next = script
                .borrow_mut()
                .next()
                .unwrap_or(Ok(Attempt::Again(state + 1)));
            async move {
                // A real attempt awaits the SDK: yield once, as it would.
                tokio::task::yield_now().await;
                next
            }
        })
        .await;
        (out, seen.into_inner())
    }

    #[tokio::test]
    async fn settles_on_the_first_attempt() {
        let (out, seen) = run(vec![Ok(Attempt::Done("written"))]).await;
        assert_eq!(out.expect("settled"), "written");
        assert_eq!(seen, [0]);
    }

    #[tokio::test]
    async fn each_retry_starts_from_the_state_the_last_attempt_returned() {
        let (out, seen) = run(vec![
            Ok(Attempt::Again(7)),
            Ok(Attempt::Again(3)),
            Ok(Attempt::Done("restored")),
        ])
        .await;
        assert_eq!(out.expect("settled"), "restored");
        assert_eq!(seen, [0, 7, 3]);
    }

    #[tokio::test]
    async fn settles_on_the_last_allowed_attempt() {
        let mut script: Vec<_> = (1..MAX_ATTEMPTS as u32)
            .map(|s| Ok(Attempt::Again(s)))
            .collect();
        script.push(Ok(Attempt::Done("late")));
        let (out, seen) = run(script).await;
        assert_eq!(out.expect("settled"), "late");
        assert_eq!(seen.len(), MAX_ATTEMPTS);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_a_retryable_contention() {
        let (out, seen) = run(Vec::new()).await;
        assert_eq!(seen.len(), MAX_ATTEMPTS);
        let err = out.expect_err("never settles");
        assert!(err.is_retryable(), "{err:?}");
        match &err {
            StoreError::Backend { operation, source } => {
                assert_eq!(*operation, "test op");
                let c = source
                    .downcast_ref::<Contention>()
                    .expect("the source is a Contention");
                assert_eq!(c.key, "k#1");
                assert_eq!(c.attempts, MAX_ATTEMPTS);
            }
            other => panic!("want Backend, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_error_ends_the_loop_at_once() {
        let (out, seen) = run(vec![
            Ok(Attempt::Again(1)),
            Err(StoreError::Decode {
                key: "k#1".into(),
                message: "bad image".into(),
            }),
            Ok(Attempt::Done("never")),
        ])
        .await;
        assert!(matches!(out, Err(StoreError::Decode { .. })), "{out:?}");
        assert_eq!(seen, [0, 1]);
    }
}

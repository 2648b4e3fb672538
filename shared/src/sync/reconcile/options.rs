//! What a reconciliation may do and how big its pieces are: [`ReconcileOptions`], its defaults
//! (in `Default` only) and its one reading from the environment ([`ReconcileOptions::from_env`]).

use crate::config::reload::token_key;
use crate::config::{Env, Reloading};
use crate::core::token::TokenKey;
use crate::error::ConfigError;
use crate::model::Micros;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Key prefix of every run's objects in the spill store.
    pub spill_prefix: String,
    /// Pairs per sorted run (the Source step's memory bound: about 40 bytes a pair).
    pub run_size: usize,
    /// Pairs per object of the diff's lists.
    pub chunk_size: usize,
    /// The reconciliation lease; every step renews it.
    pub lease_ttl_us: Micros,
    /// The lease while a run waits for approval (`request_approval` renews it this long): the
    /// approval's timeout and a margin, so that no scheduled run takes the entity meanwhile.
    pub approval_lease_ttl_us: Micros,
    /// Deletions above this share of the destination need approval.
    pub max_delete_share: f64,
    /// Deletions above this count need approval.
    pub max_delete_count: u64,
    /// The guard confirms at most this many candidates with `get_by_id`; more need approval.
    pub max_confirmations: u64,
    /// Above this many records to fetch or refresh, rewind the delta cursor instead of
    /// queueing a message for each.
    pub targeted_limit: u64,
    /// Source calls and deletes in flight.
    pub concurrency: usize,
    /// The Source step stops (resumable) this long before the invocation's deadline: the handler
    /// turns it into `stop_at` (`core::deadline::stop_instant`).
    pub safety_margin: Duration,
    /// The Source step stops (resumable) at this instant: the invocation's deadline less
    /// `safety_margin`.
    pub stop_at: Option<Instant>,
    /// The Source step reads at most this many pages per invocation, then hands the listing to
    /// the next invocation (as at `stop_at`): a bound on one invocation's work whatever the
    /// source serves.
    pub max_source_pages: u64,
    /// The key the Source step signs and checks its resume tokens under (`core::token`):
    /// deployed, the stack's `TokenSigningSecret` (the reconcile function's `main` sets it from
    /// `adapters::secrets::token_key`, re-read when a token names another key); by default a key
    /// generated for this process (`syncctl reconcile` runs every step in one process).
    pub token_key: Arc<Reloading<TokenKey>>,
    /// Negative control for tests: follow the resume token without checking its signature.
    #[cfg(any(test, feature = "testing"))]
    pub verify_resume_tokens: bool,
    /// Negative control for tests: a listing restarted under a rotated key keeps the runs its
    /// earlier attempt spilled (they are then merged with the new ones).
    #[cfg(any(test, feature = "testing"))]
    pub clean_restart: bool,
    /// Negative control for tests: delete on absence, without confirming by `get_by_id`. Only
    /// with the `testing` feature: a shipped function always confirms.
    #[cfg(any(test, feature = "testing"))]
    pub confirm_deletes: bool,
    /// Negative control for tests: `false` fails the source listing at a page holding a
    /// rejected record, as before per-record rejection (the guard then blocks every run).
    #[cfg(any(test, feature = "testing"))]
    pub per_record_rejection: bool,
    /// Negative control for tests: `false` treats a candidate written since the listing
    /// started (created or synced by another strategy meanwhile) as a candidate, as before: the
    /// guard then finds it alive and blocks the run.
    #[cfg(any(test, feature = "testing"))]
    pub skip_recent_candidates: bool,
    /// Negative control for tests: `false` drops the regression rule's fetched-after condition
    /// (`core::decide_regression`): a regressed record is written stamped with the write's
    /// clock instead of its fetch's send time, so that a fetch sent before the stored copy's
    /// can overwrite it.
    #[cfg(any(test, feature = "testing"))]
    pub regression_fetched_after: bool,
    /// Negative control for tests: `false` switches the guard off: every run with candidates
    /// deletes them (each still confirmed by `apply` unless `confirm_deletes` is off), whatever
    /// its listing looked like (empty, cut short, fewer IDs than the source counts) and however
    /// many they are.
    #[cfg(any(test, feature = "testing"))]
    pub guard: bool,
}

/// A key for this process only, never re-read.
fn local_token_key() -> Reloading<TokenKey> {
    Reloading::fixed(TokenKey::generate(), Box::new(token_key))
}

/// What the approval lease outlives the approval's timeout by.
const APPROVAL_LEASE_MARGIN: Duration = Duration::from_secs(3600);

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            spill_prefix: "reconcile".into(),
            run_size: 1_000_000,
            chunk_size: 100_000,
            lease_ttl_us: 2 * 3600 * 1_000_000,
            // A 24-hour approval and the margin.
            approval_lease_ttl_us: 25 * 3600 * 1_000_000,
            max_delete_share: 0.05,
            max_delete_count: 1_000,
            max_confirmations: 200,
            targeted_limit: 10_000,
            concurrency: 8,
            safety_margin: Duration::from_secs(30),
            stop_at: None,
            max_source_pages: 10_000,
            token_key: Arc::new(local_token_key()),
            #[cfg(any(test, feature = "testing"))]
            verify_resume_tokens: true,
            #[cfg(any(test, feature = "testing"))]
            clean_restart: true,
            #[cfg(any(test, feature = "testing"))]
            confirm_deletes: true,
            #[cfg(any(test, feature = "testing"))]
            per_record_rejection: true,
            #[cfg(any(test, feature = "testing"))]
            skip_recent_candidates: true,
            #[cfg(any(test, feature = "testing"))]
            regression_fetched_after: true,
            #[cfg(any(test, feature = "testing"))]
            guard: true,
        }
    }
}

impl ReconcileOptions {
    /// The Lambda's settings: `RECONCILE_MAX_DELETE_PERCENT` (0-100), `RECONCILE_MAX_DELETE_COUNT`
    /// (0-100,000,000), `RECONCILE_MAX_CONFIRMATIONS` (0-100,000), `RECONCILE_TARGETED_LIMIT`
    /// (0-100,000,000), `RECONCILE_RUN_SIZE` (1,000-4,000,000 pairs; 1,000,000 is about 40 MB),
    /// `RECONCILE_SAFETY_MARGIN_SECONDS` (5-300), `RECONCILE_SOURCE_MAX_PAGES` (1-1,000,000
    /// pages per invocation of the Source step), `RECONCILE_APPROVAL_TIMEOUT_SECONDS` (1 s to a
    /// year, a Standard execution's longest: the state machine's `ApprovalTimeoutSeconds`; the
    /// approval lease is that and an hour). Unset means the default; a bad value names its
    /// variable.
    pub fn from_env(env: Env<'_>) -> Result<Self, ConfigError> {
        let d = ReconcileOptions::default();
        let approval_default = Duration::from_micros(d.approval_lease_ttl_us.max(0) as u64)
            .saturating_sub(APPROVAL_LEASE_MARGIN);
        let approval = env.seconds(
            "RECONCILE_APPROVAL_TIMEOUT_SECONDS",
            approval_default,
            1..=31_536_000,
        )?;
        let percent = (d.max_delete_share * 100.0).round() as u64;
        Ok(ReconcileOptions {
            max_delete_share: env.num("RECONCILE_MAX_DELETE_PERCENT", percent, 0..=100)? as f64
                / 100.0,
            max_delete_count: env.num(
                "RECONCILE_MAX_DELETE_COUNT",
                d.max_delete_count,
                0..=100_000_000,
            )?,
            max_confirmations: env.num(
                "RECONCILE_MAX_CONFIRMATIONS",
                d.max_confirmations,
                0..=100_000,
            )?,
            targeted_limit: env.num(
                "RECONCILE_TARGETED_LIMIT",
                d.targeted_limit,
                0..=100_000_000,
            )?,
            run_size: env.num("RECONCILE_RUN_SIZE", d.run_size as u64, 1_000..=4_000_000)? as usize,
            safety_margin: env.seconds(
                "RECONCILE_SAFETY_MARGIN_SECONDS",
                d.safety_margin,
                5..=300,
            )?,
            max_source_pages: env.num(
                "RECONCILE_SOURCE_MAX_PAGES",
                d.max_source_pages,
                1..=1_000_000,
            )?,
            approval_lease_ttl_us: (approval + APPROVAL_LEASE_MARGIN).as_micros() as Micros,
            ..d
        })
    }

    /// Whether deletion candidates are confirmed with `get_by_id` (always, without `testing`).
    pub(super) fn confirms_deletes(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.confirm_deletes;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// Whether the guard decides (always, without `testing`).
    pub(super) fn guards(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.guard;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// Whether resume tokens are checked (always, without `testing`).
    pub(super) fn verifies_resume_tokens(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.verify_resume_tokens;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// Whether a restarted listing removes its earlier attempt's runs (always, without
    /// `testing`).
    pub(super) fn cleans_restart(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.clean_restart;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// Whether a candidate written since the listing started is dropped before it is confirmed
    /// (always, without `testing`).
    pub(super) fn skips_recent_candidates(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.skip_recent_candidates;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// Whether a regressed record keeps its fetch's send time as `fetched_at` (always, without
    /// `testing`), so that the regression rule's fetched-after condition holds.
    pub(super) fn regression_fetched_after(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.regression_fetched_after;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }

    /// Whether a rejected record is taken out of the listing and counted (always, without
    /// `testing`), rather than failing it.
    pub(super) fn rejects_per_record(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.per_record_rejection;
        #[cfg(not(any(test, feature = "testing")))]
        return true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<ReconcileOptions, ConfigError> {
        let get = |n: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        };
        ReconcileOptions::from_env(Env::from_fn(&get))
    }

    #[test]
    fn options_come_from_the_environment_with_named_errors() {
        let o = from(&[]).unwrap();
        let d = ReconcileOptions::default();
        assert_eq!(o.max_delete_share, d.max_delete_share);
        assert_eq!(o.max_delete_count, d.max_delete_count);
        assert_eq!(o.max_confirmations, d.max_confirmations);
        assert_eq!(o.targeted_limit, d.targeted_limit);
        assert_eq!(o.run_size, d.run_size);
        assert_eq!(o.spill_prefix, "reconcile", "the template's grants name it");
        assert!(o.confirm_deletes);
        assert_eq!(o.safety_margin, Duration::from_secs(30));
        assert_eq!(o.approval_lease_ttl_us, (86_400 + 3_600) * 1_000_000);
        assert_eq!(o.approval_lease_ttl_us, d.approval_lease_ttl_us);

        let o = from(&[
            ("RECONCILE_MAX_DELETE_PERCENT", "20"),
            ("RECONCILE_MAX_DELETE_COUNT", "50"),
            ("RECONCILE_MAX_CONFIRMATIONS", "10"),
            ("RECONCILE_TARGETED_LIMIT", "0"),
            ("RECONCILE_RUN_SIZE", "5000"),
            ("RECONCILE_SAFETY_MARGIN_SECONDS", "60"),
            ("RECONCILE_APPROVAL_TIMEOUT_SECONDS", "3600"),
        ])
        .unwrap();
        assert_eq!(o.max_delete_share, 0.2);
        assert_eq!(o.max_delete_count, 50);
        assert_eq!(o.max_confirmations, 10);
        assert_eq!(o.targeted_limit, 0);
        assert_eq!(o.run_size, 5000);
        assert_eq!(o.safety_margin, Duration::from_secs(60));
        assert_eq!(o.approval_lease_ttl_us, 7_200 * 1_000_000);

        for (name, bad) in [
            ("RECONCILE_MAX_DELETE_PERCENT", "101"),
            ("RECONCILE_MAX_DELETE_PERCENT", "5%"),
            ("RECONCILE_MAX_DELETE_COUNT", "-1"),
            ("RECONCILE_MAX_DELETE_COUNT", "100000001"),
            ("RECONCILE_MAX_CONFIRMATIONS", "many"),
            ("RECONCILE_MAX_CONFIRMATIONS", "100001"),
            ("RECONCILE_TARGETED_LIMIT", "1e6"),
            ("RECONCILE_TARGETED_LIMIT", "100000001"),
            ("RECONCILE_RUN_SIZE", "10"),
            ("RECONCILE_RUN_SIZE", "4000001"),
            ("RECONCILE_SAFETY_MARGIN_SECONDS", "0"),
            ("RECONCILE_SAFETY_MARGIN_SECONDS", "301"),
            ("RECONCILE_APPROVAL_TIMEOUT_SECONDS", "0"),
            ("RECONCILE_APPROVAL_TIMEOUT_SECONDS", "31536001"),
        ] {
            let e = from(&[(name, bad)]).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={bad}: {e}");
        }
    }
}

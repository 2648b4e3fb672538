//! How long soft-deleted records are kept: the stack's `TombstoneRetentionDays`, given to the
//! functions that write records as `TOMBSTONE_RETENTION_DAYS` (default 90; 0 keeps them for
//! ever). On DynamoDB a soft delete sets the item's TTL attribute (`expires_at`) to its
//! deletion evidence plus the retention, and every write that restores it removes the
//! attribute; `syncctl purge` removes them by command on either store, with the same default.

use super::Env;
use crate::error::ConfigError;
use crate::model::Micros;

/// The variable the functions (and `syncctl purge`) read.
pub const TOMBSTONE_RETENTION_VAR: &str = "TOMBSTONE_RETENTION_DAYS";

/// The stack's default, in days.
pub const DEFAULT_TOMBSTONE_RETENTION_DAYS: u64 = 90;

/// The longest retention accepted, in days (a hundred years).
pub const MAX_TOMBSTONE_RETENTION_DAYS: u64 = 36_500;

const DAY_US: Micros = 86_400 * 1_000_000;

/// How long a soft-deleted record is kept after its deletion evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombstoneRetention {
    days: u64,
}

impl Default for TombstoneRetention {
    fn default() -> Self {
        TombstoneRetention {
            days: DEFAULT_TOMBSTONE_RETENTION_DAYS,
        }
    }
}

impl TombstoneRetention {
    /// `days` days; 0 keeps soft-deleted records for ever.
    pub fn days(days: u64) -> Self {
        TombstoneRetention {
            days: days.min(MAX_TOMBSTONE_RETENTION_DAYS),
        }
    }

    /// Soft-deleted records are never removed.
    pub fn forever() -> Self {
        TombstoneRetention { days: 0 }
    }

    /// `TOMBSTONE_RETENTION_DAYS`, whole days from 0 to 36500, 90 when unset.
    pub fn from_env(env: Env<'_>) -> Result<Self, ConfigError> {
        Ok(TombstoneRetention {
            days: env.num(
                TOMBSTONE_RETENTION_VAR,
                DEFAULT_TOMBSTONE_RETENTION_DAYS,
                0..=MAX_TOMBSTONE_RETENTION_DAYS,
            )?,
        })
    }

    /// The retention in days; `None` for ever.
    pub fn in_days(self) -> Option<u64> {
        (self.days > 0).then_some(self.days)
    }

    /// The retention in microseconds; `None` for ever.
    pub fn as_us(self) -> Option<Micros> {
        self.in_days().map(|d| d as Micros * DAY_US)
    }

    /// When a record soft-deleted with evidence at `deleted_at_us` may go; `None` for ever.
    pub fn expires_at_us(self, deleted_at_us: Micros) -> Option<Micros> {
        self.as_us().map(|r| deleted_at_us.saturating_add(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::with;

    #[test]
    fn retention_is_ninety_days_by_default_zero_is_for_ever_and_bad_values_name_the_variable() {
        let r = with(&[], |env| TombstoneRetention::from_env(env).unwrap());
        assert_eq!(r, TombstoneRetention::default());
        assert_eq!(r.in_days(), Some(90));
        assert_eq!(r.expires_at_us(1_000), Some(1_000 + 90 * DAY_US));
        let r = with(&[(TOMBSTONE_RETENTION_VAR, "0")], |env| {
            TombstoneRetention::from_env(env).unwrap()
        });
        assert_eq!(
            (r.in_days(), r.as_us(), r.expires_at_us(5)),
            (None, None, None)
        );
        assert_eq!(r, TombstoneRetention::forever());
        for bad in ["-1", "1.5", "ninety", "36501"] {
            let e = with(&[(TOMBSTONE_RETENTION_VAR, bad)], |env| {
                TombstoneRetention::from_env(env).unwrap_err()
            });
            assert!(
                matches!(&e, ConfigError::BadEnv { name, .. } if name == TOMBSTONE_RETENTION_VAR),
                "{bad}: {e}"
            );
        }
        assert_eq!(TombstoneRetention::days(7).in_days(), Some(7));
    }
}

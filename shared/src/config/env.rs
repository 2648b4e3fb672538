//! Settings from the environment: one lookup seam and one rule for required and numeric
//! variables. Read in `main` only, once per cold start (each options type's `from_env`); a
//! missing or bad value fails the cold start with a `ConfigError` naming the variable.
//!
//! Tests pass their own lookup (`Env::from_fn`) instead of changing the process environment.

use crate::error::ConfigError;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Where variables are looked up: the process environment, or a test's table.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    get: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Env<'static> {
    /// The process environment.
    pub fn process() -> Self {
        Env { get: &process_var }
    }
}

impl<'a> Env<'a> {
    /// Any lookup (a test's table).
    pub fn from_fn(get: &'a (dyn Fn(&str) -> Option<String> + Sync)) -> Self {
        Env { get }
    }

    /// The variable, trimmed; unset and blank are both `None`.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A variable that must be set: missing or blank fails, naming it.
    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        match (self.get)(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            Some(_) => Err(ConfigError::BadEnv {
                name: name.to_owned(),
                message: "is empty".into(),
            }),
            None => Err(ConfigError::MissingEnv(name.to_owned())),
        }
    }

    /// A whole number in `range`, `default` when unset or blank; anything else fails, naming
    /// the variable and the range.
    pub fn num(
        &self,
        name: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let Some(v) = self.optional(name) else {
            return Ok(default);
        };
        match v.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ConfigError::BadEnv {
                name: name.to_owned(),
                message: format!(
                    "{v:?} is not a whole number between {} and {}",
                    range.start(),
                    range.end()
                ),
            }),
        }
    }

    /// Whole seconds in `range` (in seconds), `default` when unset or blank.
    pub fn seconds(
        &self,
        name: &str,
        default: Duration,
        range: RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.num(name, default.as_secs(), range)
            .map(Duration::from_secs)
    }
}

impl std::fmt::Debug for Env<'_> {
    // The values may be secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Env")
    }
}

/// Call `f` with an environment holding only `pairs` (for the options types' tests).
#[cfg(test)]
pub(crate) fn with<T>(pairs: &[(&str, &str)], f: impl FnOnce(Env<'_>) -> T) -> T {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let get = move |n: &str| map.get(n).cloned();
    f(Env::from_fn(&get))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_names_a_missing_or_blank_variable() {
        with(&[("A", " x "), ("B", "  ")], |env| {
            assert_eq!(env.required("A").unwrap(), "x");
            let e = env.required("B").unwrap_err();
            assert!(
                matches!(&e, ConfigError::BadEnv { name, .. } if name == "B"),
                "{e}"
            );
            let e = env.required("C").unwrap_err();
            assert!(matches!(&e, ConfigError::MissingEnv(n) if n == "C"), "{e}");
        });
    }

    #[test]
    fn numbers_default_when_unset_and_are_range_checked() {
        with(
            &[("N", "7"), ("BIG", "101"), ("NAN", "7s"), ("BLANK", "")],
            |env| {
                assert_eq!(env.num("N", 1, 0..=100).unwrap(), 7);
                assert_eq!(env.num("UNSET", 3, 0..=100).unwrap(), 3);
                assert_eq!(env.num("BLANK", 3, 0..=100).unwrap(), 3);
                for bad in ["BIG", "NAN"] {
                    let e = env.num(bad, 1, 0..=100).unwrap_err().to_string();
                    assert!(e.contains(bad) && e.contains("between 0 and 100"), "{e}");
                }
                assert_eq!(
                    env.seconds("N", Duration::from_secs(1), 1..=10).unwrap(),
                    Duration::from_secs(7)
                );
            },
        );
    }
}

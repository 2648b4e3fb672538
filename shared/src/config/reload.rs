//! Secrets that can be read again without a cold start. A [`SecretProvider`] reads a secret
//! afresh (deployed: Secrets Manager or SSM, `adapters::secrets`; locally: an environment
//! variable, [`EnvSecret`]); a [`Reloading`] holds what was built from the last read (an auth
//! header, a webhook verifier, a signing key) and re-reads when its holder met a refusal that a
//! rotated secret explains (a source 401, a webhook signature that matches no secret).
//!
//! Re-reads are gated: callers that met a refusal of the same value share one re-read (a
//! generation number tells them that another caller already re-read), and at most one re-read
//! happens per `min_interval`, by one timestamp shared by every caller, so concurrent requests
//! never stampede the secret store.

use crate::config::Secret;
use crate::error::ConfigError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// At most one re-read of a secret per this interval, after a refusal (the source's 401, a
/// webhook signature that matches no secret).
pub const REREAD_INTERVAL: Duration = Duration::from_secs(60);

/// Reads a secret afresh: never cached.
#[async_trait::async_trait]
pub trait SecretProvider: Send + Sync {
    async fn read(&self) -> Result<Secret, ConfigError>;
    /// Where it is read from (an ARN, a parameter or variable name), for logs. Never the value.
    fn name(&self) -> String;
}

/// The value of an environment variable, read at each call (local runs).
#[derive(Debug, Clone)]
pub struct EnvSecret(pub String);

#[async_trait::async_trait]
impl SecretProvider for EnvSecret {
    async fn read(&self) -> Result<Secret, ConfigError> {
        match std::env::var(&self.0) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
            _ => Err(ConfigError::MissingEnv(self.0.clone())),
        }
    }

    fn name(&self) -> String {
        self.0.clone()
    }
}

/// What a holder builds from the secret (a header, a verifier, a key); an error says why the
/// value cannot be used, never the value.
pub type Build<T> = Box<dyn Fn(&Secret) -> Result<T, String> + Send + Sync>;

/// A value built from a secret, rebuilt from a fresh read when the holder asks
/// ([`Reloading::refresh`]).
pub struct Reloading<T> {
    current: RwLock<(u64, Arc<T>)>,
    provider: Option<Arc<dyn SecretProvider>>,
    build: Build<T>,
    min_interval: Duration,
    /// When the last re-read started: one timestamp shared by every caller.
    last: tokio::sync::Mutex<Option<Instant>>,
    rereads: AtomicU64,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("provider", &self.provider.as_ref().map(|p| p.name()))
            .field("generation", &self.current().0)
            .field("rereads", &self.rereads())
            .finish_non_exhaustive()
    }
}

impl<T> Reloading<T> {
    /// `initial` (built from the secret read at cold start); without a provider, never re-read.
    pub fn fixed(initial: T, build: Build<T>) -> Self {
        Reloading {
            current: RwLock::new((0, Arc::new(initial))),
            provider: None,
            build,
            min_interval: Duration::ZERO,
            last: tokio::sync::Mutex::new(None),
            rereads: AtomicU64::new(0),
        }
    }

    /// Re-read from `provider`, at most once per `min_interval`.
    pub fn with_provider(
        mut self,
        provider: Arc<dyn SecretProvider>,
        min_interval: Duration,
    ) -> Self {
        self.provider = Some(provider);
        self.min_interval = min_interval;
        self
    }

    /// Whether a refusal may be followed by a re-read at all.
    pub fn rereads_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The value now, with its generation (pass it to [`refresh`](Self::refresh)).
    pub fn current(&self) -> (u64, Arc<T>) {
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        (g.0, g.1.clone())
    }

    /// Re-reads done so far (for tests and logs).
    pub fn rereads(&self) -> u64 {
        self.rereads.load(Relaxed)
    }

    /// The value of generation `seen` was refused: a newer value when there is one. Another
    /// caller's re-read since `seen` is used as it is; otherwise the secret is read again, unless
    /// the last re-read was less than `min_interval` ago (or there is no provider). `None`: no
    /// newer value can be had now (the refusal stands). A failed read is logged (the store and
    /// the error, never a value) and answers `None`.
    pub async fn refresh(&self, seen: u64) -> Option<(u64, Arc<T>)> {
        let provider = self.provider.as_ref()?;
        let mut last = self.last.lock().await;
        let now = self.current();
        if now.0 != seen {
            return Some(now);
        }
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return None;
        }
        *last = Some(Instant::now());
        self.rereads.fetch_add(1, Relaxed);
        let built = match provider.read().await {
            Ok(s) => (self.build)(&s),
            Err(e) => Err(e.to_string()),
        };
        match built {
            Ok(v) => {
                let mut g = self.current.write().unwrap_or_else(|e| e.into_inner());
                *g = (g.0 + 1, Arc::new(v));
                tracing::info!(secret = %provider.name(), "secret read again after a refusal");
                Some((g.0, g.1.clone()))
            }
            Err(error) => {
                tracing::warn!(secret = %provider.name(), %error, "secret could not be read again");
                None
            }
        }
    }
}

/// A signing key (`core::token`) built from a secret's value (the generated
/// `TokenSigningSecret`): its bytes, at least `core::token::MIN_KEY_BYTES` of them.
pub fn token_key(secret: &Secret) -> Result<crate::core::token::TokenKey, String> {
    crate::core::token::TokenKey::new(secret.expose().as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Counting(Mutex<Vec<&'static str>>, AtomicU64);

    #[async_trait::async_trait]
    impl SecretProvider for Counting {
        async fn read(&self) -> Result<Secret, ConfigError> {
            self.1.fetch_add(1, Relaxed);
            tokio::task::yield_now().await;
            let v = self.0.lock().unwrap().first().copied();
            v.map(Secret::new)
                .ok_or_else(|| ConfigError::MissingEnv("X".into()))
        }
        fn name(&self) -> String {
            "counting".into()
        }
    }

    fn upper() -> Build<String> {
        Box::new(|s| Ok(s.expose().to_uppercase()))
    }

    #[tokio::test]
    async fn a_refusal_rereads_once_and_concurrent_callers_share_it() {
        let p = Arc::new(Counting(Mutex::new(vec!["new"]), AtomicU64::new(0)));
        let r = Arc::new(
            Reloading::fixed("OLD".to_owned(), upper())
                .with_provider(p.clone(), Duration::from_secs(60)),
        );
        let (g, v) = r.current();
        assert_eq!((g, v.as_str()), (0, "OLD"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move { r.refresh(0).await }));
        }
        for t in tasks {
            let (g, v) = t.await.unwrap().expect("the new value");
            assert_eq!((g, v.as_str()), (1, "NEW"));
        }
        assert_eq!(p.1.load(Relaxed), 1, "eight refusals, one read");
        assert_eq!(r.rereads(), 1);
        // Refused again within the interval: no read, the refusal stands.
        assert!(r.refresh(1).await.is_none());
        assert_eq!(p.1.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn the_interval_gates_rereads_and_a_failed_read_keeps_the_value() {
        let p = Arc::new(Counting(Mutex::new(vec![]), AtomicU64::new(0)));
        let r =
            Reloading::fixed("OLD".to_owned(), upper()).with_provider(p.clone(), Duration::ZERO);
        assert!(r.refresh(0).await.is_none(), "nothing to read");
        assert_eq!(r.current().1.as_str(), "OLD");
        p.0.lock().unwrap().push("b");
        assert_eq!(r.refresh(0).await.unwrap().1.as_str(), "B");
        assert_eq!(p.1.load(Relaxed), 2, "no interval: each refusal reads");
        // Without a provider: never.
        let fixed = Reloading::fixed("OLD".to_owned(), upper());
        assert!(!fixed.rereads_enabled());
        assert!(fixed.refresh(0).await.is_none());
    }
}

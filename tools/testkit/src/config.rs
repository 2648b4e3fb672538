//! The configuration pointed at the simulator: the embedded endpoint file
//! (`infra/endpoints.toml`), its base URL replaced.

use shared::config::{AuthConfig, Config, RateLimit};
use std::path::Path;

/// The embedded configuration at `base_url`, without auth, otherwise as shipped (retries,
/// backoff, timeout and rate limit included).
pub fn at(base_url: &str) -> Config {
    let mut cfg = Config::from_toml_str(
        shared::config::EMBEDDED,
        Path::new(shared::config::EMBEDDED_NAME),
    )
    .expect("the embedded config parses");
    cfg.source.base_url = base_url.to_owned();
    cfg.source.auth = AuthConfig::None;
    cfg
}

/// [`at`], made quick for tests that script failures: a 5 ms backoff capped at 50 ms, a 2 s
/// timeout and no practical rate limit; then `edit`.
pub fn quick(base_url: &str, edit: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = at(base_url);
    cfg.source.backoff_base_ms = 5;
    cfg.source.backoff_cap_ms = 50;
    cfg.source.timeout_ms = 2_000;
    cfg.source.rate_limit = RateLimit {
        requests: 10_000,
        per_seconds: 1.0,
    };
    edit(&mut cfg);
    cfg
}

/// Basic auth as `syncctl demo` runs it: the simulator expects [`basic::header`], and the
/// configuration reads the secret from `SOURCE_SECRET`.
pub mod basic {
    use base64::Engine;
    use shared::config::{AuthConfig, Secret, SecretRef};

    /// The `user:password` pair.
    pub const SECRET: &str = "demo:demo-secret";

    /// The `Authorization` header the simulator is started with (`SimConfig::auth`).
    pub fn header() -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(SECRET)
        )
    }

    /// The configuration's auth: the secret from the `SOURCE_SECRET` variable.
    pub fn auth() -> AuthConfig {
        AuthConfig::Basic {
            secret: SecretRef {
                env: "SOURCE_SECRET".into(),
            },
        }
    }

    /// The secret, as `main` would read it.
    pub fn secret() -> Secret {
        Secret::new(SECRET)
    }
}

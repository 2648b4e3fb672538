//! The secrets when deployed: `SOURCE_SECRET_ID` (and `WEBHOOK_SECRET_ID`) names a Secrets
//! Manager secret (its ARN or name) or, with an `ssm:` prefix, an SSM Parameter Store parameter
//! (SecureString); `TOKEN_SIGNING_SECRET_ID` the stack's generated token signing secret. Read at
//! cold start, and again after a refusal that a rotation explains (`config::reload`: a source
//! 401, a webhook signature that matches no secret, a resume token under another key id),
//! through the same [`StoreSecret`] provider. A failure names what is missing and never shows
//! the value.

use crate::config::reload::{EnvSecret, REREAD_INTERVAL, Reloading, SecretProvider};
use crate::config::{AuthConfig, Secret};
use crate::core::token::TokenKey;
use crate::error::ConfigError;
use std::sync::Arc;

/// Where the deployed secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    SecretsManager(String),
    Ssm(String),
}

impl SecretSource {
    pub fn parse(id: &str) -> Self {
        match id.strip_prefix("ssm:") {
            Some(name) => SecretSource::Ssm(name.to_owned()),
            None => SecretSource::SecretsManager(id.to_owned()),
        }
    }
}

/// A secret in Secrets Manager or SSM, read afresh at each call.
pub struct StoreSecret {
    src: SecretSource,
    sdk: aws_config::SdkConfig,
}

impl StoreSecret {
    pub fn new(src: SecretSource, sdk: &aws_config::SdkConfig) -> Self {
        StoreSecret {
            src,
            sdk: sdk.clone(),
        }
    }
}

#[async_trait::async_trait]
impl SecretProvider for StoreSecret {
    async fn read(&self) -> Result<Secret, ConfigError> {
        fetch(&self.src, &self.sdk).await
    }

    fn name(&self) -> String {
        match &self.src {
            SecretSource::SecretsManager(id) => id.clone(),
            SecretSource::Ssm(name) => format!("ssm:{name}"),
        }
    }
}

/// The source secret's provider: `SOURCE_SECRET_ID` when set (deployed), else the environment
/// variable the configuration names (local runs). `None` when the source needs no auth.
pub fn source_provider(
    auth: &AuthConfig,
    sdk: &aws_config::SdkConfig,
) -> Option<Arc<dyn SecretProvider>> {
    auth.secret_ref()
        .map(|env| provider("SOURCE_SECRET_ID", env, sdk))
}

/// Resolve the source secret (see [`source_provider`]).
pub async fn resolve(
    auth: &AuthConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Option<Secret>, ConfigError> {
    match source_provider(auth, sdk) {
        None => Ok(None),
        Some(p) => p.read().await.map(Some),
    }
}

/// The secret `id_var` names (a Secrets Manager ARN or name, or `ssm:` + a parameter name)
/// when set (deployed), else the environment variable `env` names (local runs).
fn provider(
    id_var: &str,
    env: &crate::config::SecretRef,
    sdk: &aws_config::SdkConfig,
) -> Arc<dyn SecretProvider> {
    match std::env::var(id_var) {
        Ok(id) if !id.is_empty() => Arc::new(StoreSecret::new(SecretSource::parse(&id), sdk)),
        _ => Arc::new(EnvSecret(env.env.clone())),
    }
}

/// The webhook signing secrets' provider: `WEBHOOK_SECRET_ID` when set (deployed), else the
/// environment variable the `[webhooks]` table names.
pub fn webhook_provider(
    cfg: &crate::config::WebhookConfig,
    sdk: &aws_config::SdkConfig,
) -> Arc<dyn SecretProvider> {
    provider("WEBHOOK_SECRET_ID", &cfg.secrets, sdk)
}

/// The webhook signing secrets (one or more, separated by whitespace or commas), read from
/// [`webhook_provider`]. Missing or empty fails the cold start, naming what is missing.
pub async fn resolve_webhook_secrets(
    cfg: &crate::config::WebhookConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Secret, ConfigError> {
    let secret = webhook_provider(cfg, sdk).read().await?;
    if crate::webhook::signature::split_secrets(secret.expose()).is_empty() {
        return Err(ConfigError::Secret {
            name: "webhook secrets".into(),
            message: "the value holds no secret".into(),
        });
    }
    Ok(secret)
}

/// The variable naming the token signing secret (the stack's `TokenSigningSecret`).
pub const TOKEN_SIGNING_SECRET_ID: &str = "TOKEN_SIGNING_SECRET_ID";

/// The key resume tokens (and later signed tokens) are signed under: the secret
/// `TOKEN_SIGNING_SECRET_ID` names, read now and again when a token names another key id
/// (at most once per `REREAD_INTERVAL`). Required when deployed: a missing variable, an
/// unreadable secret or one shorter than `core::token::MIN_KEY_BYTES` fails the cold start.
pub async fn token_key(sdk: &aws_config::SdkConfig) -> Result<Reloading<TokenKey>, ConfigError> {
    let id = crate::config::Env::process().required(TOKEN_SIGNING_SECRET_ID)?;
    token_key_from(Arc::new(StoreSecret::new(SecretSource::parse(&id), sdk))).await
}

/// [`token_key`] over any provider.
pub async fn token_key_from(
    provider: Arc<dyn SecretProvider>,
) -> Result<Reloading<TokenKey>, ConfigError> {
    let build = crate::config::reload::token_key;
    let first = build(&provider.read().await?).map_err(|message| ConfigError::Secret {
        name: TOKEN_SIGNING_SECRET_ID.into(),
        message,
    })?;
    Ok(Reloading::fixed(first, Box::new(build)).with_provider(provider, REREAD_INTERVAL))
}

pub async fn fetch(src: &SecretSource, sdk: &aws_config::SdkConfig) -> Result<Secret, ConfigError> {
    match src {
        SecretSource::SecretsManager(id) => {
            let client = aws_sdk_secretsmanager::Client::new(sdk);
            let out = client
                .get_secret_value()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| ConfigError::Secret {
                    name: id.clone(),
                    message: aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
                })?;
            out.secret_string()
                .map(Secret::new)
                .ok_or_else(|| ConfigError::Secret {
                    name: id.clone(),
                    message: "the secret has no string value".into(),
                })
        }
        SecretSource::Ssm(name) => {
            let client = aws_sdk_ssm::Client::new(sdk);
            let out = client
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| ConfigError::Secret {
                    name: name.clone(),
                    message: aws_sdk_ssm::error::DisplayErrorContext(e).to_string(),
                })?;
            out.parameter()
                .and_then(|p| p.value())
                .map(Secret::new)
                .ok_or_else(|| ConfigError::Secret {
                    name: name.clone(),
                    message: "the parameter has no value".into(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids_pick_their_service() {
        assert_eq!(
            SecretSource::parse("ssm:/sync/source"),
            SecretSource::Ssm("/sync/source".into())
        );
        assert_eq!(
            SecretSource::parse("arn:aws:secretsmanager:us-east-1:1:secret:x"),
            SecretSource::SecretsManager("arn:aws:secretsmanager:us-east-1:1:secret:x".into())
        );
    }
}

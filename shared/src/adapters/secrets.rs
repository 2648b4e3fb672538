//! The source secret when deployed: `SOURCE_SECRET_ID` names a Secrets Manager secret (its ARN
//! or name) or, with an `ssm:` prefix, an SSM Parameter Store parameter (SecureString). Read
//! once at cold start; a failure names what is missing and never shows the value.

use crate::config::{AuthConfig, Secret};
use crate::error::ConfigError;

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

/// Resolve the source secret: `SOURCE_SECRET_ID` when set (deployed), else the environment
/// variable the configuration names (local runs). `None` when the source needs no auth.
pub async fn resolve(
    auth: &AuthConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Option<Secret>, ConfigError> {
    match auth.secret_ref() {
        None => Ok(None),
        Some(env) => from_id_or_env("SOURCE_SECRET_ID", env, sdk).await.map(Some),
    }
}

/// The secret `id_var` names (a Secrets Manager ARN or name, or `ssm:` + a parameter name)
/// when set (deployed), else the value of the environment variable `env` names (local runs).
async fn from_id_or_env(
    id_var: &str,
    env: &crate::config::SecretRef,
    sdk: &aws_config::SdkConfig,
) -> Result<Secret, ConfigError> {
    match std::env::var(id_var) {
        Ok(id) if !id.is_empty() => fetch(&SecretSource::parse(&id), sdk).await,
        _ => match std::env::var(&env.env) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
            _ => Err(ConfigError::MissingEnv(env.env.clone())),
        },
    }
}

/// The webhook signing secrets (one or more, separated by whitespace or commas):
/// `WEBHOOK_SECRET_ID` when set (deployed), else the environment variable the `[webhooks]`
/// table names. Missing or empty fails the cold start, naming what is missing.
pub async fn resolve_webhook_secrets(
    cfg: &crate::config::WebhookConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Secret, ConfigError> {
    let secret = from_id_or_env("WEBHOOK_SECRET_ID", &cfg.secrets, sdk).await?;
    if crate::webhook::signature::split_secrets(secret.expose()).is_empty() {
        return Err(ConfigError::Secret {
            name: "webhook secrets".into(),
            message: "the value holds no secret".into(),
        });
    }
    Ok(secret)
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

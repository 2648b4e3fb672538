//! Who makes an operator's change, for the run history: `--actor` when given; on AWS
//! (`--dynamodb`) the caller's ARN (STS GetCallerIdentity); locally the user name.

use crate::stores::StoreArgs;

pub async fn resolve(given: Option<&str>, store: &StoreArgs) -> Result<String, String> {
    if let Some(a) = given {
        let a = a.trim();
        if a.is_empty() || a.len() > 256 || a.chars().any(char::is_control) {
            return Err("--actor must be 1 to 256 printable characters".into());
        }
        return Ok(a.to_owned());
    }
    if store.uses_dynamodb() {
        let sdk = shared::adapters::aws::sdk_config().await;
        return shared::adapters::aws::caller_arn(&sdk).await.map_err(|e| {
            format!(
                "cannot ask AWS who you are ({e}); the change is recorded with who made it: \
                 pass --actor NAME"
            )
        });
    }
    Ok(local_user())
}

/// The local user's name (`USER`, `LOGNAME` or `USERNAME`), or `local user`.
pub fn local_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "local user".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[tokio::test]
    async fn a_given_actor_wins_and_a_bad_one_is_refused() {
        let local = A::parse_from(["x"]).store;
        assert_eq!(resolve(Some(" ana "), &local).await.unwrap(), "ana");
        assert!(resolve(Some(""), &local).await.is_err());
        assert!(resolve(Some("a\nb"), &local).await.is_err());
        assert_eq!(resolve(None, &local).await.unwrap(), local_user());
    }
}

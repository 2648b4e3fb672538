//! AWS Step Functions: what the operator's tools do to the reconciliation state machine
//! (`infra/reconcile.asl.json`): start an execution, and answer the approval a run waits for
//! (its `.waitForTaskToken` task, whose token `request_approval` stored in the run history).
//!
//! - approve: [`StepFunctions::send_task_success`] with `{"approved": true}` (the state machine
//!   then runs Apply with `approved: true`);
//! - reject: [`StepFunctions::send_task_failure`] with the error [`REJECTED`] (the state machine
//!   then finishes the run without deleting).
//!
//! A token that has expired (the approval's `TimeoutSeconds` passed), was used already or
//! belongs to a finished execution is refused by the service; [`is_stale_token`] tells that
//! apart from a transient failure.

use crate::adapters::aws::{AwsError, retry_config, store_error};
use crate::error::StoreError;

/// The error name a rejection sends; the state machine's `WaitForApproval` catches it.
pub const REJECTED: &str = "Reconcile.Rejected";

/// Service error codes for a task token that can no longer be answered.
const STALE_TOKEN_CODES: &[&str] = &["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"];

/// Step Functions' limit on an error name and on a cause (characters).
const MAX_ERROR: usize = 256;
const MAX_CAUSE: usize = 32_768;

/// The Step Functions client (`AWS_ENDPOINT_URL_SFN` for an emulator), with the shared retry
/// policy.
pub fn sfn_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sfn::Client {
    sfn_client_at(sdk, None)
}

/// The Step Functions client, with an explicit endpoint (an emulator, `--sfn-endpoint-url`)
/// when given; set on the client's own configuration, so that it wins over
/// `AWS_ENDPOINT_URL_SFN`.
pub fn sfn_client_at(sdk: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_sfn::Client {
    let mut conf = aws_sdk_sfn::config::Builder::from(sdk).retry_config(retry_config());
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_sfn::Client::from_conf(conf.build())
}

#[derive(Debug, Clone)]
pub struct StepFunctions {
    client: aws_sdk_sfn::Client,
}

impl StepFunctions {
    pub fn new(client: aws_sdk_sfn::Client) -> Self {
        StepFunctions { client }
    }

    /// A client built from a shared SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Self {
        Self::new(sfn_client(sdk))
    }

    /// Complete the task waiting on `token` with `output` (a JSON document: the task's result).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn send_task_success(
        &self,
        token: &str,
        output: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.client
            .send_task_success()
            .task_token(token)
            .output(output.to_string())
            .send()
            .await
            .map_err(|e| store_error("states:SendTaskSuccess", e))?;
        Ok(())
    }

    /// Fail the task waiting on `token` with `error` (what the state's `Catch` matches) and a
    /// human-readable `cause` (both cut to the service's limits).
    #[tracing::instrument(level = "debug", skip_all, fields(error))]
    pub async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), StoreError> {
        self.client
            .send_task_failure()
            .task_token(token)
            .error(truncate(error, MAX_ERROR))
            .cause(truncate(cause, MAX_CAUSE))
            .send()
            .await
            .map_err(|e| store_error("states:SendTaskFailure", e))?;
        Ok(())
    }

    /// Start an execution of the state machine with `input` (a JSON document), named `name`
    /// when given (an execution name is unique per state machine for 90 days: starting the
    /// same name twice with the same input is idempotent, with another input an error).
    /// Returns the execution's ARN.
    #[tracing::instrument(level = "debug", skip_all, fields(state_machine = %state_machine_arn))]
    pub async fn start_execution(
        &self,
        state_machine_arn: &str,
        input: &serde_json::Value,
        name: Option<&str>,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .start_execution()
            .state_machine_arn(state_machine_arn)
            .input(input.to_string())
            .set_name(name.map(str::to_owned))
            .send()
            .await
            .map_err(|e| store_error("states:StartExecution", e))?;
        Ok(out.execution_arn().to_owned())
    }
}

#[async_trait::async_trait]
impl crate::ports::Executions for StepFunctions {
    async fn start(
        &self,
        state_machine: &str,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<String, StoreError> {
        match self.start_execution(state_machine, input, Some(name)).await {
            Ok(arn) => Ok(arn),
            // A retried step: the execution it started the first time.
            Err(e) if error_code(&e) == Some("ExecutionAlreadyExists") => Ok(format!(
                "{}:{name}",
                state_machine.replacen(":stateMachine:", ":execution:", 1)
            )),
            Err(e) => Err(e),
        }
    }
}

/// The service's error code of a failed call (`TaskTimedOut`, `ExecutionAlreadyExists`, ...).
pub fn error_code(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::Backend { source, .. } => source.downcast_ref::<AwsError>()?.code(),
        _ => None,
    }
}

/// The token can no longer be answered: the approval expired, was answered already, or its
/// execution ended. Retrying cannot help.
pub fn is_stale_token(e: &StoreError) -> bool {
    error_code(e).is_some_and(|c| STALE_TOKEN_CODES.contains(&c))
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_and_causes_are_cut_to_the_limits() {
        assert_eq!(
            truncate("Reconcile.Rejected", MAX_ERROR),
            "Reconcile.Rejected"
        );
        assert_eq!(truncate(&"é".repeat(300), MAX_ERROR).chars().count(), 256);
    }

    #[test]
    fn only_backend_errors_carry_a_code() {
        let throttled =
            || StoreError::throttled("SendTaskSuccess", std::io::Error::other("rate exceeded"));
        assert_eq!(error_code(&throttled()), None);
        assert!(!is_stale_token(&throttled()));
    }
}

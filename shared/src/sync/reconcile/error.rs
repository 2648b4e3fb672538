//! Why a step failed, and the error name the state machine's Retry and Catch match on.

use crate::error::{SourceError, StoreError};
use crate::setdiff::SetDiffError;

/// Why a step failed (the state machine retries retryable ones, then takes its failure path).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("unknown entity `{0}`")]
    UnknownEntity(String),
    #[error("bad step input: {0}")]
    BadInput(String),
    /// This run no longer holds the entity's reconciliation lease.
    #[error("reconciliation lease of `{entity}` lost to another run")]
    LeaseLost { entity: String },
    /// Delta sync holds the entity's lease; the cursor rewind waits for it.
    #[error("delta sync of `{0}` is running; retry the step later")]
    DeltaBusy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spill(#[from] SetDiffError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The listing's resume token is not one this stack signed (forged or altered): refused
    /// before any request, never retried (the state machine's failure path records it).
    #[error("resume token refused: {0}")]
    ResumeToken(#[from] crate::core::token::TokenError),
}

impl StepError {
    /// The error name the state machine's Retry and Catch match on.
    pub fn error_type(&self) -> &'static str {
        match self {
            StepError::UnknownEntity(_) | StepError::BadInput(_) | StepError::ResumeToken(_) => {
                "Reconcile.BadInput"
            }
            StepError::LeaseLost { .. } => "Reconcile.LeaseLost",
            StepError::DeltaBusy(_) => "Reconcile.Retryable",
            StepError::Store(e) if e.is_retryable() => "Reconcile.Retryable",
            StepError::Spill(e) if e.is_retryable() => "Reconcile.Retryable",
            StepError::Source(e) if e.is_retryable() => "Reconcile.Retryable",
            _ => "Reconcile.Failed",
        }
    }
}

/// A lost lease as [`StepError::LeaseLost`]; any other store error as it is.
pub(super) fn lease_err(entity: &str) -> impl Fn(StoreError) -> StepError + '_ {
    move |e| match e {
        StoreError::LeaseLost { .. } => StepError::LeaseLost {
            entity: entity.to_owned(),
        },
        other => StepError::Store(other),
    }
}

//! `BudgetStore` on the `control` table: the `budget#<account>` / `state` item (layout in
//! [`super::schema`]). A slice is one conditional UpdateItem in one of two forms, the two
//! cases of `core::budget::decide`:
//!
//! - *idle*: the schedule is behind now (or absent): `SET tat_us = :now + :span`, condition
//!   `attribute_not_exists(tat_us) OR tat_us < :now`, the slice starting at now;
//! - *ahead*: the schedule is ahead of now within the lane's lookahead:
//!   `SET tat_us = tat_us + :span`, condition `tat_us BETWEEN :now AND :now + lookahead`, the
//!   slice starting at the old `tat_us` (read back from `ALL_NEW`).
//!
//! Both also require no pause in force. The form tried first follows the schedule as last
//! seen; a failed condition's old image (`ALL_OLD`) then says which form applies, or how long
//! to wait, without a read.

use super::conditional::{self, Attempt};
use super::control::DynamoControl;
use super::item::{Item, ItemReader, n, s, ttl_seconds};
use super::schema::attr;
use crate::adapters::aws::store_error;
use crate::core::budget::{BudgetState, Limit, SliceAnswer, SliceAsk, decide};
use crate::core::timefmt::now_us;
use crate::error::StoreError;
use crate::model::Micros;
use crate::ports::BudgetStore;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::sync::atomic::Ordering::Relaxed;

const STATE_SK: &str = "state";
/// An idle account's item expires a day after its last slice.
const IDLE_TTL_US: Micros = 24 * 3_600 * 1_000_000;
const NOT_PAUSED: &str = "(attribute_not_exists(#paused) OR #paused <= :now)";

pub fn budget_pk(account: &str) -> String {
    format!("budget#{account}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Idle,
    Ahead,
}

fn decode(key: &str, item: Option<&Item>) -> Result<BudgetState, StoreError> {
    let empty = Item::new();
    let r = ItemReader::new(key, item.unwrap_or(&empty));
    let learned = match (
        r.opt_u64(attr::LIMIT_REQUESTS)?,
        r.opt_i64(attr::LIMIT_PER_US)?,
    ) {
        (Some(n), Some(per)) if n > 0 && per > 0 => Some(Limit {
            requests: u32::try_from(n).unwrap_or(u32::MAX),
            per_us: per,
        }),
        _ => None,
    };
    Ok(BudgetState {
        tat_us: r.opt_i64(attr::TAT_US)?,
        paused_until_us: r.opt_i64(attr::PAUSED_UNTIL_US)?,
        learned,
    })
}

impl DynamoControl {
    /// One attempt of a slice in `form`.
    async fn slice_attempt(
        &self,
        pk: &str,
        ask: &SliceAsk,
        form: Form,
    ) -> Result<Attempt<SliceAnswer, Form>, StoreError> {
        let op = "take budget slice";
        let span = ask.span_us();
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(pk))
            .key(attr::SK, s(STATE_SK))
            .expression_attribute_names("#tat", attr::TAT_US)
            .expression_attribute_names("#paused", attr::PAUSED_UNTIL_US)
            .expression_attribute_names("#ttl", attr::TTL)
            .expression_attribute_values(":now", n(ask.now_us))
            .expression_attribute_values(":ttl", n(ttl_seconds(ask.now_us + IDLE_TTL_US)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let req = match form {
            Form::Idle => req
                .update_expression("SET #tat = :end, #ttl = :ttl")
                .condition_expression(format!(
                    "(attribute_not_exists(#tat) OR #tat < :now) AND {NOT_PAUSED}"
                ))
                .expression_attribute_values(":end", n(ask.now_us + span)),
            Form::Ahead => req
                .update_expression("SET #tat = #tat + :span, #ttl = :ttl")
                .condition_expression(format!("#tat BETWEEN :now AND :latest AND {NOT_PAUSED}"))
                .expression_attribute_values(":span", n(span))
                .expression_attribute_values(":latest", n(ask.now_us + ask.lookahead_us)),
        };
        match req.send().await {
            Ok(out) => {
                let state = decode(pk, out.attributes())?;
                let end = state.tat_us.ok_or_else(|| StoreError::Decode {
                    key: pk.to_owned(),
                    message: "tat_us is missing after a slice".into(),
                })?;
                self.budget_hint.store(end, Relaxed);
                Ok(Attempt::Done(SliceAnswer::Granted {
                    first_us: end - span,
                    learned: state.learned,
                }))
            }
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(f) => {
                    let state = decode(pk, f.item())?;
                    if let Some(t) = state.tat_us {
                        self.budget_hint.store(t, Relaxed);
                    }
                    // The form follows the stored schedule, as the conditions read it: behind
                    // now (or absent) is idle; at or past now, ahead.
                    Ok(match decide(&state, ask) {
                        (wait @ SliceAnswer::Wait { .. }, _) => Attempt::Done(wait),
                        _ if state.tat_us.is_none_or(|t| t < ask.now_us) => {
                            Attempt::Again(Form::Idle)
                        }
                        _ => Attempt::Again(Form::Ahead),
                    })
                }
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }

    /// An unconditional or conditional single-attribute update; a failed condition is `false`.
    async fn budget_update(
        &self,
        op: &'static str,
        pk: &str,
        update: &str,
        condition: Option<&str>,
        values: &[(&str, Micros)],
    ) -> Result<bool, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(pk))
            .key(attr::SK, s(STATE_SK))
            .update_expression(update)
            .set_condition_expression(condition.map(str::to_owned));
        for (name, attr) in [
            ("#tat", attr::TAT_US),
            ("#paused", attr::PAUSED_UNTIL_US),
            ("#n", attr::LIMIT_REQUESTS),
            ("#per", attr::LIMIT_PER_US),
            ("#ttl", attr::TTL),
        ] {
            if update.contains(name) || condition.is_some_and(|c| c.contains(name)) {
                req = req.expression_attribute_names(name, attr);
            }
        }
        for (name, v) in values {
            req = req.expression_attribute_values(*name, n(*v));
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(ctx)) => match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(_) => Ok(false),
                other => Err(store_error(op, other)),
            },
            Err(other) => Err(store_error(op, other)),
        }
    }
}

#[async_trait]
impl BudgetStore for DynamoControl {
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.table, account = %account))]
    async fn take_slice(&self, account: &str, ask: SliceAsk) -> Result<SliceAnswer, StoreError> {
        let pk = budget_pk(account);
        let first = if self.budget_hint.load(Relaxed) < ask.now_us {
            Form::Idle
        } else {
            Form::Ahead
        };
        conditional::until_settled("take budget slice", &pk, first, |form| {
            self.slice_attempt(&pk, &ask, form)
        })
        .await
    }

    async fn pause_budget(&self, account: &str, until_us: Micros) -> Result<(), StoreError> {
        self.budget_update(
            "pause budget",
            &budget_pk(account),
            "SET #paused = :until, #ttl = :ttl",
            Some("attribute_not_exists(#paused) OR #paused < :until"),
            &[
                (":until", until_us),
                (":ttl", ttl_seconds(until_us + IDLE_TTL_US)),
            ],
        )
        .await
        .map(drop)
    }

    async fn learn_limit(&self, account: &str, limit: Limit) -> Result<(), StoreError> {
        self.budget_update(
            "learn budget limit",
            &budget_pk(account),
            "SET #n = :n, #per = :per, #ttl = if_not_exists(#ttl, :ttl)",
            None,
            &[
                (":n", i64::from(limit.requests)),
                (":per", limit.per_us),
                (":ttl", ttl_seconds(now_us() + IDLE_TTL_US)),
            ],
        )
        .await
        .map(drop)
    }

    async fn give_back(
        &self,
        account: &str,
        end_us: Micros,
        back_to_us: Micros,
    ) -> Result<bool, StoreError> {
        self.budget_update(
            "give back budget",
            &budget_pk(account),
            "SET #tat = :back",
            Some("#tat = :end"),
            &[(":back", back_to_us), (":end", end_us)],
        )
        .await
    }
}

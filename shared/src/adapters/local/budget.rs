//! `BudgetStore` on the `control_budget` table: `core::budget::decide` applied inside one
//! IMMEDIATE transaction, so that separate processes sharing the file share the budget as the
//! deployed functions share the DynamoDB item.

use super::{LocalStore, row_error, sql_error};
use crate::core::budget::{BudgetState, Limit, SliceAnswer, SliceAsk, decide};
use crate::error::StoreError;
use crate::model::Micros;
use crate::ports::BudgetStore;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

fn read(conn: &Connection, account: &str) -> Result<BudgetState, StoreError> {
    let op = "read budget";
    let row = conn
        .prepare_cached(
            "SELECT tat_us, paused_until_us, limit_requests, limit_per_us \
             FROM control_budget WHERE account = ?1",
        )
        .and_then(|mut st| {
            st.query_row(params![account], |r| {
                Ok((
                    r.get::<_, Option<i64>>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .optional()
        })
        .map_err(|e| row_error(op, &format!("budget#{account}"), e))?;
    Ok(match row {
        None => BudgetState::default(),
        Some((tat, paused, n, per)) => BudgetState {
            tat_us: tat,
            paused_until_us: paused,
            learned: match (n, per) {
                (Some(n), Some(per)) if n > 0 && per > 0 => Some(Limit {
                    requests: u32::try_from(n).unwrap_or(u32::MAX),
                    per_us: per,
                }),
                _ => None,
            },
        },
    })
}

/// Run `f` on the account's row inside one IMMEDIATE transaction (the row created first).
async fn in_tx<T: Send + 'static>(
    store: &LocalStore,
    op: &'static str,
    account: &str,
    f: impl FnOnce(&Connection, &BudgetState) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let account = account.to_owned();
    store
        .db()
        .call(op, move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error(op, e))?;
            tx.prepare_cached("INSERT OR IGNORE INTO control_budget (account) VALUES (?1)")
                .and_then(|mut st| st.execute(params![account]))
                .map_err(|e| sql_error(op, e))?;
            let state = read(&tx, &account)?;
            let out = f(&tx, &state)?;
            tx.commit().map_err(|e| sql_error(op, e))?;
            Ok(out)
        })
        .await
}

#[async_trait]
impl BudgetStore for LocalStore {
    async fn take_slice(&self, account: &str, ask: SliceAsk) -> Result<SliceAnswer, StoreError> {
        let key = account.to_owned();
        in_tx(self, "take budget slice", account, move |tx, state| {
            let (answer, tat) = decide(state, &ask);
            if let Some(tat) = tat {
                tx.prepare_cached("UPDATE control_budget SET tat_us = ?2 WHERE account = ?1")
                    .and_then(|mut st| st.execute(params![key, tat]))
                    .map_err(|e| sql_error("take budget slice", e))?;
            }
            Ok(answer)
        })
        .await
    }

    async fn pause_budget(&self, account: &str, until_us: Micros) -> Result<(), StoreError> {
        let key = account.to_owned();
        in_tx(self, "pause budget", account, move |tx, _| {
            tx.prepare_cached(
                "UPDATE control_budget SET paused_until_us = ?2 WHERE account = ?1 \
                 AND (paused_until_us IS NULL OR paused_until_us < ?2)",
            )
            .and_then(|mut st| st.execute(params![key, until_us]))
            .map_err(|e| sql_error("pause budget", e))?;
            Ok(())
        })
        .await
    }

    async fn learn_limit(&self, account: &str, limit: Limit) -> Result<(), StoreError> {
        let key = account.to_owned();
        in_tx(self, "learn budget limit", account, move |tx, _| {
            tx.prepare_cached(
                "UPDATE control_budget SET limit_requests = ?2, limit_per_us = ?3 \
                 WHERE account = ?1",
            )
            .and_then(|mut st| st.execute(params![key, limit.requests, limit.per_us]))
            .map_err(|e| sql_error("learn budget limit", e))?;
            Ok(())
        })
        .await
    }

    async fn give_back(
        &self,
        account: &str,
        end_us: Micros,
        back_to_us: Micros,
    ) -> Result<bool, StoreError> {
        let key = account.to_owned();
        in_tx(self, "give back budget", account, move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE control_budget SET tat_us = ?3 WHERE account = ?1 AND tat_us = ?2",
                )
                .and_then(|mut st| st.execute(params![key, end_us, back_to_us]))
                .map_err(|e| sql_error("give back budget", e))?;
            Ok(n == 1)
        })
        .await
    }
}

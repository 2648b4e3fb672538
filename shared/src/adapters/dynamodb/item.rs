//! Reading attributes of an item without panicking: a missing or mistyped attribute is a
//! `StoreError::Decode` naming the item's key.

use crate::adapters::aws::store_error;
use crate::error::StoreError;
use aws_sdk_dynamodb::operation::batch_get_item::builders::BatchGetItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

/// How a read is made: strongly consistent (a read unit per 4 KB), or eventually consistent
/// (half as much; may miss a write of the last moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Strong,
    Eventual,
}

/// The items of `keys` (distinct: DynamoDB refuses a repeated key) that exist in `table`,
/// projected to `projection`: BatchGetItem of at most 100 keys per call, unprocessed keys
/// retried with backoff (a throttling error after 8 rounds), read as `read` says.
///
/// `request` is the caller's `client.batch_get_item()`, so that each adapter's code names the
/// operations it sends (the template's IAM tests trace grants to those calls).
pub async fn batch_get(
    request: BatchGetItemFluentBuilder,
    table: &str,
    keys: Vec<Item>,
    read: Read,
    projection: &[&str],
    op: &'static str,
) -> Result<Vec<Item>, StoreError> {
    let mut found = Vec::with_capacity(keys.len());
    let projection_expression = (0..projection.len())
        .map(|i| format!("#a{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let names: HashMap<String, String> = projection
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("#a{i}"), (*a).to_owned()))
        .collect();
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let chunk: Vec<Item> = keys.by_ref().take(100).collect();
        let mut pending = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(chunk))
                .consistent_read(read == Read::Strong)
                .projection_expression(&projection_expression)
                .set_expression_attribute_names(Some(names.clone()))
                .build()
                .map_err(|e| StoreError::backend(op, e))?,
        );
        let mut round = 0u32;
        while let Some(keys_and_attributes) = pending.take() {
            let mut out = request
                .clone()
                .request_items(table, keys_and_attributes)
                .send()
                .await
                .map_err(|e| store_error(op, e))?;
            pending = out
                .unprocessed_keys()
                .and_then(|u| u.get(table))
                .filter(|k| !k.keys().is_empty())
                .cloned();
            if let Some(items) = out.responses.as_mut().and_then(|r| r.remove(table)) {
                found.extend(items);
            }
            if pending.is_some() {
                round += 1;
                if round > 8 {
                    return Err(StoreError::throttled(
                        "BatchGetItem",
                        crate::error::Unprocessed { rounds: 8 },
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(25 << round.min(6))).await;
            }
        }
    }
    Ok(found)
}

/// An item being decoded, with its key for error messages.
pub struct ItemReader<'a> {
    pub key: &'a str,
    pub item: &'a Item,
}

impl<'a> ItemReader<'a> {
    pub fn new(key: &'a str, item: &'a Item) -> Self {
        ItemReader { key, item }
    }

    pub fn error(&self, message: impl Into<String>) -> StoreError {
        StoreError::Decode {
            key: self.key.to_owned(),
            message: message.into(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a AttributeValue> {
        self.item.get(name)
    }

    pub fn opt_s(&self, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(self.error(format!("{name} is not a string: {}", type_name(other)))),
        }
    }

    pub fn s(&self, name: &str) -> Result<&'a str, StoreError> {
        self.opt_s(name)?
            .ok_or_else(|| self.error(format!("{name} is missing")))
    }

    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse::<i64>()
                .map(Some)
                .map_err(|_| self.error(format!("{name} = {n:?} is not a 64-bit integer"))),
            Some(other) => Err(self.error(format!("{name} is not a number: {}", type_name(other)))),
        }
    }

    pub fn i64(&self, name: &str) -> Result<i64, StoreError> {
        self.opt_i64(name)?
            .ok_or_else(|| self.error(format!("{name} is missing")))
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.error(format!("{name} = {n:?} is not an unsigned integer"))),
            Some(other) => Err(self.error(format!("{name} is not a number: {}", type_name(other)))),
        }
    }
}

fn type_name(av: &AttributeValue) -> &'static str {
    match av {
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::N(_) => "N",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::S(_) => "S",
        AttributeValue::Ss(_) => "SS",
        _ => "unknown",
    }
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Epoch seconds for a TTL attribute, rounded up (DynamoDB's TTL is in seconds; an item must
/// not disappear before the time it names).
pub fn ttl_seconds(us: i64) -> i64 {
    us.saturating_add(999_999).div_euclid(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_and_missing_attributes_are_decode_errors() {
        let item: Item = HashMap::from([
            ("s".to_owned(), s("x")),
            ("n".to_owned(), n(5)),
            ("bad".to_owned(), n("1.5")),
            ("neg".to_owned(), n(-1)),
        ]);
        let r = ItemReader::new("k", &item);
        assert_eq!(r.s("s").expect("s"), "x");
        assert_eq!(r.i64("n").expect("n"), 5);
        assert!(matches!(r.s("n"), Err(StoreError::Decode { .. })));
        assert!(matches!(r.i64("s"), Err(StoreError::Decode { .. })));
        assert!(matches!(r.i64("bad"), Err(StoreError::Decode { .. })));
        assert!(matches!(r.opt_u64("neg"), Err(StoreError::Decode { .. })));
        assert!(matches!(r.s("missing"), Err(StoreError::Decode { .. })));
        assert_eq!(r.opt_i64("missing").expect("absent"), None);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(0), 0);
        assert_eq!(ttl_seconds(1), 1);
        assert_eq!(ttl_seconds(1_000_000), 1);
        assert_eq!(ttl_seconds(1_000_001), 2);
    }
}

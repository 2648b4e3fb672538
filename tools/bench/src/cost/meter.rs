//! An SDK interceptor on the DynamoDB, SQS and S3 clients: every attempt counted per service,
//! resource and operation, with what it bills.
//!
//! DynamoDB units: the interceptor asks every request for `ReturnConsumedCapacity = INDEXES`
//! (DynamoDB Local computes it by item size, the table's and each index's) and takes the answer,
//! except where DynamoDB Local's figure is not DynamoDB's billing, which the model fills in:
//! - a conditional write whose condition failed returns no consumed capacity; DynamoDB bills it
//!   the larger of the existing item (returned by `ReturnValuesOnConditionCheckFailure`, when the
//!   request asked for it) and the item written, 1 WRU per KB rounded up, at least 1;
//! - a key of a `BatchGetItem` with no item costs 0 on DynamoDB Local; DynamoDB reads each key
//!   as a `GetItem`, which costs a read unit for a missing item (half when eventually
//!   consistent);
//! - a `Query` that matches nothing reports 0; DynamoDB's minimum is one read (half when
//!   eventually consistent, as every index query is).
//!
//! SQS: each call is billed per 64 KB chunk of its body (the larger of the request and the
//! answer, HTTP bodies: an overstatement by the envelope). S3: by request class (PUT, COPY, POST
//! and LIST; GET and the rest; DELETE free).

use super::prices::{item_bytes, read_units, sqs_billable_requests, value_bytes, write_units};
use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextMut,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity, ReturnConsumedCapacity};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Dynamodb,
    Sqs,
    S3,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Dynamodb => "dynamodb",
            Service::Sqs => "sqs",
            Service::S3 => "s3",
        }
    }
}

/// How a request is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// DynamoDB read request units.
    Read,
    /// DynamoDB write request units.
    Write,
    /// SQS requests (64 KB chunks).
    Sqs,
    /// S3 PUT, COPY, POST, LIST.
    S3Put,
    /// S3 GET and everything else but DELETE.
    S3Get,
    /// Not billed per request (S3 DELETE; DynamoDB control-plane calls).
    Free,
}

/// What a group of requests of one operation on one resource used.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpUse {
    /// Attempts sent (retries included).
    pub requests: u64,
    /// Requests as billed (SQS's 64 KB chunks; the requests otherwise).
    pub billable: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// DynamoDB request units, table and indexes, modelled ones included.
    pub units: f64,
    /// The part of `units` spent on global secondary indexes.
    pub index_units: f64,
    /// The part of `units` the model added to DynamoDB Local's figures (module doc).
    pub modelled_units: f64,
    /// Conditional writes whose condition failed.
    pub conditional_failures: u64,
}

impl OpUse {
    fn add(&mut self, o: &OpUse) {
        self.requests += o.requests;
        self.billable += o.billable;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.units += o.units;
        self.index_units += o.index_units;
        self.modelled_units += o.modelled_units;
        self.conditional_failures += o.conditional_failures;
    }
}

/// Service, resource (a table's role, a queue, a bucket), operation, billing class.
pub type Key = (Service, &'static str, &'static str, Class);

/// Requests counted over a window.
#[derive(Debug, Default, Clone)]
pub struct Usage(pub BTreeMap<Key, OpUse>);

impl Usage {
    /// The sum of the entries `keep` selects.
    pub fn sum(&self, keep: impl Fn(&Key) -> bool) -> OpUse {
        let mut total = OpUse::default();
        for (_, v) in self.0.iter().filter(|(k, _)| keep(k)) {
            total.add(v);
        }
        total
    }

    pub fn json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((service, resource, op, class), u) in &self.0 {
            let s = out
                .entry(service.name())
                .or_insert_with(|| serde_json::json!({}));
            let mut entry = serde_json::json!({
                "requests": u.requests,
                "bytes_sent": u.bytes_sent,
                "bytes_received": u.bytes_received,
            });
            match class {
                Class::Read | Class::Write => {
                    let kind = if *class == Class::Read {
                        "read_units"
                    } else {
                        "write_units"
                    };
                    entry[kind] = round(u.units, 2).into();
                    entry["of_which_index_units"] = round(u.index_units, 2).into();
                    entry["of_which_modelled_units"] = round(u.modelled_units, 2).into();
                    if u.conditional_failures > 0 {
                        entry["conditional_failures"] = u.conditional_failures.into();
                    }
                }
                Class::Sqs => entry["billable_requests"] = u.billable.into(),
                Class::S3Put => entry["class"] = "PUT/COPY/POST/LIST".into(),
                Class::S3Get => entry["class"] = "GET/other".into(),
                Class::Free => entry["class"] = "not billed per request".into(),
            }
            s[format!("{resource}:{op}")] = entry;
        }
        serde_json::Value::Object(out)
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The interceptor of one client; every client's meter adds to the same [`Usage`].
#[derive(Debug, Clone)]
pub struct Meter {
    service: Service,
    /// Table name → its role (`records`, `control`): the resource named in the usage.
    roles: Arc<HashMap<String, &'static str>>,
    usage: Arc<Mutex<Usage>>,
}

/// The meters of one run: one usage, a meter per client.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    roles: Arc<HashMap<String, &'static str>>,
    usage: Arc<Mutex<Usage>>,
}

impl Meters {
    /// `roles`: the DynamoDB tables' names and what each is (`records`, `control`).
    pub fn new(roles: HashMap<String, &'static str>) -> Self {
        Meters {
            roles: Arc::new(roles),
            usage: Arc::default(),
        }
    }

    pub fn meter(&self, service: Service) -> Meter {
        Meter {
            service,
            roles: self.roles.clone(),
            usage: self.usage.clone(),
        }
    }

    /// What was counted since the last `take`, and a fresh count.
    pub fn take(&self) -> Usage {
        self.usage
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }
}

/// The call being made, noted before it is serialised (and kept across its attempts).
#[derive(Debug, Clone)]
struct Call {
    op: &'static str,
    resource: &'static str,
    class: Class,
    /// BatchGetItem: keys asked for.
    keys: usize,
    strongly_consistent: bool,
    /// Writes: the size of the item written (exact for PutItem; for UpdateItem its key and every
    /// value and name of the expression, an estimate).
    new_item_bytes: usize,
}

impl Storable for Call {
    type Storer = StoreReplace<Self>;
}

impl Call {
    fn new(op: &'static str, resource: &'static str, class: Class) -> Self {
        Call {
            op,
            resource,
            class,
            keys: 0,
            strongly_consistent: false,
            new_item_bytes: 0,
        }
    }
}

impl Meter {
    fn role(&self, table: Option<&str>) -> &'static str {
        table
            .and_then(|t| self.roles.get(t).copied())
            .unwrap_or("other")
    }

    fn add(&self, key: Key, f: impl FnOnce(&mut OpUse)) {
        if let Ok(mut u) = self.usage.lock() {
            f(u.0.entry(key).or_default());
        }
    }

    /// DynamoDB: the units of one answered attempt (module doc).
    fn dynamodb_units(
        call: &Call,
        ctx: &AfterDeserializationInterceptorContextRef<'_>,
    ) -> (f64, f64, f64, bool) {
        use aws_sdk_dynamodb::operation::{
            batch_get_item::BatchGetItemOutput,
            batch_write_item::BatchWriteItemOutput,
            delete_item::{DeleteItemError, DeleteItemOutput},
            get_item::GetItemOutput,
            put_item::{PutItemError, PutItemOutput},
            query::QueryOutput,
            scan::ScanOutput,
            update_item::{UpdateItemError, UpdateItemOutput},
        };
        // (total units, of which index units) as reported.
        fn reported(c: Option<&ConsumedCapacity>) -> (f64, f64) {
            let Some(c) = c else { return (0.0, 0.0) };
            let index = c
                .global_secondary_indexes()
                .map_or(0.0, |m| m.values().filter_map(|x| x.capacity_units()).sum());
            (c.capacity_units().unwrap_or(0.0), index)
        }
        let out = match ctx.output_or_error() {
            Ok(out) => out,
            Err(e) => {
                // A failed condition: no capacity reported, but billed (module doc).
                let Some(err) = e.as_operation_error() else {
                    return (0.0, 0.0, 0.0, false);
                };
                let old = if let Some(UpdateItemError::ConditionalCheckFailedException(f)) =
                    err.downcast_ref::<UpdateItemError>()
                {
                    Some(f.item().map_or(0, item_bytes))
                } else if let Some(PutItemError::ConditionalCheckFailedException(f)) =
                    err.downcast_ref::<PutItemError>()
                {
                    Some(f.item().map_or(0, item_bytes))
                } else if let Some(DeleteItemError::ConditionalCheckFailedException(f)) =
                    err.downcast_ref::<DeleteItemError>()
                {
                    Some(f.item().map_or(0, item_bytes))
                } else {
                    None
                };
                return match old {
                    Some(old) => {
                        let u = write_units(old.max(call.new_item_bytes));
                        (u, 0.0, u, true)
                    }
                    None => (0.0, 0.0, 0.0, false),
                };
            }
        };
        let one_missing = read_units(0, call.strongly_consistent);
        if let Some(o) = out.downcast_ref::<GetItemOutput>() {
            let (u, i) = reported(o.consumed_capacity());
            return (u, i, 0.0, false);
        }
        if let Some(o) = out.downcast_ref::<BatchGetItemOutput>() {
            let (mut u, mut i) = (0.0, 0.0);
            for c in o.consumed_capacity() {
                let (a, b) = reported(Some(c));
                u += a;
                i += b;
            }
            let found: usize = o.responses().map_or(0, |m| m.values().map(Vec::len).sum());
            let unprocessed: usize = o
                .unprocessed_keys()
                .map_or(0, |m| m.values().map(|k| k.keys().len()).sum());
            let missing = call.keys.saturating_sub(found + unprocessed) as f64;
            let modelled = missing * one_missing;
            return (u + modelled, i, modelled, false);
        }
        if let Some(o) = out.downcast_ref::<QueryOutput>() {
            let (u, i) = reported(o.consumed_capacity());
            let modelled = if u == 0.0 { one_missing } else { 0.0 };
            return (u + modelled, i, modelled, false);
        }
        if let Some(o) = out.downcast_ref::<ScanOutput>() {
            let (u, i) = reported(o.consumed_capacity());
            let modelled = if u == 0.0 { one_missing } else { 0.0 };
            return (u + modelled, i, modelled, false);
        }
        let write = if let Some(o) = out.downcast_ref::<PutItemOutput>() {
            reported(o.consumed_capacity())
        } else if let Some(o) = out.downcast_ref::<UpdateItemOutput>() {
            reported(o.consumed_capacity())
        } else if let Some(o) = out.downcast_ref::<DeleteItemOutput>() {
            reported(o.consumed_capacity())
        } else if let Some(o) = out.downcast_ref::<BatchWriteItemOutput>() {
            o.consumed_capacity()
                .iter()
                .map(|c| reported(Some(c)))
                .fold((0.0, 0.0), |(a, b), (c, d)| (a + c, b + d))
        } else {
            (0.0, 0.0)
        };
        (write.0, write.1, 0.0, false)
    }
}

/// The request body's bytes of the attempt in flight.
#[derive(Debug, Clone, Copy)]
struct Sent(u64);

impl Storable for Sent {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Meter {
    fn name(&self) -> &'static str {
        "CostMeter"
    }

    fn modify_before_serialization(
        &self,
        ctx: &mut BeforeSerializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = ctx.input_mut();
        // Closures, so that the type-erased input need not be named.
        let call = match self.service {
            Service::Dynamodb => (|| {
                use aws_sdk_dynamodb::operation::{
                    batch_get_item::BatchGetItemInput, batch_write_item::BatchWriteItemInput,
                    delete_item::DeleteItemInput, get_item::GetItemInput, put_item::PutItemInput,
                    query::QueryInput, scan::ScanInput, update_item::UpdateItemInput,
                };
                let total = Some(ReturnConsumedCapacity::Indexes);
                let key_bytes =
                    |k: &Option<HashMap<String, AttributeValue>>| k.as_ref().map_or(0, item_bytes);
                if let Some(i) = input.downcast_mut::<GetItemInput>() {
                    i.return_consumed_capacity = total;
                    let mut c =
                        Call::new("GetItem", self.role(i.table_name.as_deref()), Class::Read);
                    c.strongly_consistent = i.consistent_read == Some(true);
                    return c;
                }
                if let Some(i) = input.downcast_mut::<BatchGetItemInput>() {
                    i.return_consumed_capacity = total;
                    let (table, ka) = i
                        .request_items
                        .as_ref()
                        .and_then(|m| m.iter().next())
                        .map_or((None, None), |(t, ka)| (Some(t.as_str()), Some(ka)));
                    let mut c = Call::new("BatchGetItem", self.role(table), Class::Read);
                    c.keys = ka.map_or(0, |k| k.keys().len());
                    c.strongly_consistent = ka.and_then(|k| k.consistent_read()) == Some(true);
                    return c;
                }
                if let Some(i) = input.downcast_mut::<QueryInput>() {
                    i.return_consumed_capacity = total;
                    let op = if i.index_name.is_some() {
                        "Query(index)"
                    } else {
                        "Query"
                    };
                    let mut c = Call::new(op, self.role(i.table_name.as_deref()), Class::Read);
                    c.strongly_consistent =
                        i.index_name.is_none() && i.consistent_read == Some(true);
                    return c;
                }
                if let Some(i) = input.downcast_mut::<ScanInput>() {
                    i.return_consumed_capacity = total;
                    let mut c = Call::new("Scan", self.role(i.table_name.as_deref()), Class::Read);
                    c.strongly_consistent = i.consistent_read == Some(true);
                    return c;
                }
                if let Some(i) = input.downcast_mut::<PutItemInput>() {
                    i.return_consumed_capacity = total;
                    let mut c =
                        Call::new("PutItem", self.role(i.table_name.as_deref()), Class::Write);
                    c.new_item_bytes = key_bytes(&i.item);
                    return c;
                }
                if let Some(i) = input.downcast_mut::<UpdateItemInput>() {
                    i.return_consumed_capacity = total;
                    let mut c = Call::new(
                        "UpdateItem",
                        self.role(i.table_name.as_deref()),
                        Class::Write,
                    );
                    let values: usize = i
                        .expression_attribute_values
                        .as_ref()
                        .map_or(0, |m| m.values().map(value_bytes).sum());
                    let names: usize = i
                        .expression_attribute_names
                        .as_ref()
                        .map_or(0, |m| m.values().map(String::len).sum());
                    c.new_item_bytes = key_bytes(&i.key) + values + names;
                    return c;
                }
                if let Some(i) = input.downcast_mut::<DeleteItemInput>() {
                    i.return_consumed_capacity = total;
                    let mut c = Call::new(
                        "DeleteItem",
                        self.role(i.table_name.as_deref()),
                        Class::Write,
                    );
                    c.new_item_bytes = key_bytes(&i.key);
                    return c;
                }
                if let Some(i) = input.downcast_mut::<BatchWriteItemInput>() {
                    i.return_consumed_capacity = total;
                    let table = i
                        .request_items
                        .as_ref()
                        .and_then(|m| m.keys().next().cloned());
                    return Call::new("BatchWriteItem", self.role(table.as_deref()), Class::Write);
                }
                Call::new("control-plane", "other", Class::Free)
            })(),
            Service::Sqs => (|| {
                use aws_sdk_sqs::operation::{
                    change_message_visibility_batch::ChangeMessageVisibilityBatchInput,
                    delete_message::DeleteMessageInput,
                    delete_message_batch::DeleteMessageBatchInput,
                    receive_message::ReceiveMessageInput, send_message::SendMessageInput,
                    send_message_batch::SendMessageBatchInput,
                };
                macro_rules! names {
                    ($($ty:ty => $name:literal),* $(,)?) => {
                        $(if input.downcast_ref::<$ty>().is_some() {
                            return Call::new($name, "queue", Class::Sqs);
                        })*
                    };
                }
                names! {
                    SendMessageBatchInput => "SendMessageBatch",
                    SendMessageInput => "SendMessage",
                    ReceiveMessageInput => "ReceiveMessage",
                    DeleteMessageBatchInput => "DeleteMessageBatch",
                    DeleteMessageInput => "DeleteMessage",
                    ChangeMessageVisibilityBatchInput => "ChangeMessageVisibilityBatch",
                }
                Call::new("other", "queue", Class::Sqs)
            })(),
            Service::S3 => (|| {
                use aws_sdk_s3::operation::{
                    abort_multipart_upload::AbortMultipartUploadInput,
                    complete_multipart_upload::CompleteMultipartUploadInput,
                    copy_object::CopyObjectInput,
                    create_multipart_upload::CreateMultipartUploadInput,
                    delete_object::DeleteObjectInput, delete_objects::DeleteObjectsInput,
                    get_object::GetObjectInput, head_object::HeadObjectInput,
                    list_objects_v2::ListObjectsV2Input, put_object::PutObjectInput,
                    upload_part::UploadPartInput,
                };
                macro_rules! names {
                    ($($ty:ty => ($name:literal, $class:expr)),* $(,)?) => {
                        $(if input.downcast_ref::<$ty>().is_some() {
                            return Call::new($name, "bucket", $class);
                        })*
                    };
                }
                names! {
                    PutObjectInput => ("PutObject", Class::S3Put),
                    CopyObjectInput => ("CopyObject", Class::S3Put),
                    CreateMultipartUploadInput => ("CreateMultipartUpload", Class::S3Put),
                    UploadPartInput => ("UploadPart", Class::S3Put),
                    CompleteMultipartUploadInput => ("CompleteMultipartUpload", Class::S3Put),
                    ListObjectsV2Input => ("ListObjectsV2", Class::S3Put),
                    GetObjectInput => ("GetObject", Class::S3Get),
                    HeadObjectInput => ("HeadObject", Class::S3Get),
                    DeleteObjectsInput => ("DeleteObjects", Class::Free),
                    DeleteObjectInput => ("DeleteObject", Class::Free),
                    AbortMultipartUploadInput => ("AbortMultipartUpload", Class::Free),
                }
                Call::new("other", "bucket", Class::S3Get)
            })(),
        };
        cfg.interceptor_state().store_put(call);
        Ok(())
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(call) = cfg.load::<Call>().cloned() else {
            return Ok(());
        };
        let req = ctx.request();
        let sent = req
            .body()
            .content_length()
            .or_else(|| {
                req.headers()
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        cfg.interceptor_state().store_put(Sent(sent));
        self.add((self.service, call.resource, call.op, call.class), |u| {
            u.requests += 1;
            u.bytes_sent += sent;
        });
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        ctx: &AfterDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(call) = cfg.load::<Call>().cloned() else {
            return Ok(());
        };
        let resp = ctx.response();
        let received = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| resp.body().bytes().map(|b| b.len() as u64))
            .unwrap_or(0);
        let sent = cfg.load::<Sent>().map_or(0, |s| s.0);
        let (units, index, modelled, failed) = match self.service {
            Service::Dynamodb => Self::dynamodb_units(&call, ctx),
            _ => (0.0, 0.0, 0.0, false),
        };
        self.add((self.service, call.resource, call.op, call.class), |u| {
            u.bytes_received += received;
            u.units += units;
            u.index_units += index;
            u.modelled_units += modelled;
            u.conditional_failures += u64::from(failed);
            u.billable += match call.class {
                Class::Sqs => sqs_billable_requests(sent.max(received)),
                _ => 1,
            };
        });
        Ok(())
    }
}

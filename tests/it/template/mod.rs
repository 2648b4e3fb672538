//! `template.yaml` checked against the code. Its functions, offline (no emulator):
//! - every crate under `functions/` is exactly one `AWS::Serverless::Function` built by
//!   cargo-lambda from the workspace root, and every such function is a crate;
//! - IAM (functions and state machines) is inline statements only, with no `*` action and no
//!   `*` resource but an S3 object prefix of a bucket of this template (`${Bucket.Arn}/p/*`);
//! - every action granted is a call the code makes: a DynamoDB action on a table is an SDK call
//!   in that table's adapter (`shared/src/adapters/dynamodb/<table>.rs`), an S3 action one in
//!   `shared/src/adapters/s3.rs` on a bucket of this template (object actions on an object
//!   prefix, `s3:ListBucket` on the bucket; `s3:DeleteObject` authorises DeleteObjects,
//!   `s3:ListBucket` ListObjectsV2), any other action an SDK call somewhere in `shared/src` or
//!   the functions (`sqs:SendMessage` also authorises SendMessageBatch); so a grant the code
//!   stops using fails. SQS actions are on a queue of this template; the actions Lambda's poller
//!   makes with the execution role (ReceiveMessage, DeleteMessage, GetQueueAttributes) are
//!   allowed without a call, but only to the function an event source mapping on that queue
//!   invokes; `lambda:InvokeFunction` only to a state machine, on a function its definition
//!   invokes (a `FunctionName` placeholder its DefinitionSubstitutions map to that function);
//!   `states:StartExecution` (`shared/src/adapters/sfn.rs`) only to a function that builds that
//!   adapter, on a state machine of this template named by its name-based ARN (its explicit
//!   `Name`: a `!Ref` would be a circular dependency), and no other `states:` action;
//! - the delta function: its schedule sends `events/delta-sync/all-entities.json`, its
//!   environment is what the code reads, its grants cover what a run calls, its lease outlives
//!   its longest timeout, and an alarm watches its errors;
//! - webhooks: `POST /webhooks` of an HTTP API reaches the ingest function, which may only send
//!   to the work queue and read its secret; the work queue (standard, SSE, visibility timeout at
//!   least 6 x the worker's timeout for every timeout allowed, a redrive policy to a 14-day DLQ)
//!   feeds the worker through an event source mapping with partial batch responses and a
//!   maximum concurrency; the worker's grants and environment match its code; alarms watch the
//!   DLQ, the 404 ceiling and the worker's errors; the outputs name it all;
//! - reconciliation: a Standard state machine runs `infra/reconcile.asl.json` (every placeholder
//!   substituted, the function's ARN among them) daily with `events/reconcile/start-all-entities.json`
//!   and may only invoke the reconcile function; the function's grants are exactly the steps'
//!   calls (the live_ids index, soft deletes, lease and run history, the spill prefix, the work
//!   queue, the secret, starting the next execution of that one state machine for a long
//!   listing's continuation) and its environment what the code reads, thresholds defaulting to the
//!   code's; the spill bucket is private and encrypted and expires the spill prefix after a week,
//!   longer than an approval may wait; alarms watch failed executions, the guard, pending
//!   approvals and drift (summed over entities by a Metrics Insights query);
//! - security (`security`): TLS-only policies on every bucket and queue, the webhook API's
//!   metadata-only access logs, the delta function's unretried invocations with an on-failure
//!   queue, the worker's and the ingest's control-table grants limited to the key prefixes their
//!   code builds (`dynamodb:LeadingKeys`, traced through the control adapter), and checkov's
//!   suppressions (each at its resource, with a reason);
//! - observability (`alarms`, `dashboard`): every alarm notifies `AlarmTopicArn` and the
//!   `AlarmEmail` topic, each under its condition, and nothing without either; the email topic
//!   lets only this stack's CloudWatch alarms publish; the dashboard's body parses, names only
//!   resources of this template and metrics the code emits, and shows each watched item;
//! - the optional customer managed key (`kms`): with `KmsKeyArn` set every table, queue,
//!   bucket, log group, secret and topic uses it (and without it keeps its own encryption), and
//!   each function is granted exactly the `kms:` actions its resources need, on that key only.
//!
//! Each check returns its findings as a list, so that the tests can also show it catching a
//! broken copy of the template (a check that finds nothing anywhere proves nothing).
//!
//! The files: [`cfn`] queries the template, [`code`] reads the code; the tests are by topic
//! (`crates`, `iam`, `environment`, `alarms`, `dashboard`, `kms`, `wiring`, `state_machine`,
//! `security`), and `tables` checks the
//! tables against `shared::adapters::dynamodb::schema` and DynamoDB Local.

mod alarms;
mod cfn;
mod code;
mod crates;
mod dashboard;
mod environment;
mod iam;
mod kms;
mod secrets;
mod security;
mod state_machine;
mod tables;
mod wiring;

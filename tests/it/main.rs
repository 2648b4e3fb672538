//! Integration tests: DynamoDB Local, moto and the simulator.

mod bad_records;
mod budget;
mod conformance;
mod conformance_dynamodb;
mod conformance_local;
mod converge;
mod deliveries;
mod delta;
mod harness;
mod hostile;
mod lambda_features;
mod reconcile;
mod reconcile_sfn;
mod regress;
mod rehearsal;
mod sfn_proxy;
mod sfn_smoke;
mod smoke_s3;
mod smoke_sqs;
mod source_client;
mod syncctl_get;
mod template;
mod trust;
mod waits;
mod webhooks;
mod worker_evidence;

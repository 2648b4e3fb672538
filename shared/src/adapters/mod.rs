//! Adapters behind the ports. `aws`, `dynamodb`, `sqs`, `s3` and `secrets` are the only modules where
//! `aws_sdk_*` types appear; `local` is the embedded store (SQLite and a spill folder).

pub mod aws;
pub mod deploy;
pub mod dynamodb;
pub mod local;
pub mod s3;
pub mod secrets;
pub mod sfn;
pub mod sqs;

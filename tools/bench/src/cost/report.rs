//! What a path measured (requests, invocations, log lines), and its price.

use super::infra::StateMachine;
use super::logs::{LogCount, Logs};
use super::meter::{self, Class, Meters, Service, Usage};
use super::prices::{LOG_EVENT_OVERHEAD_BYTES, PRICES, billed_seconds, gb_seconds, per_million};
use super::{progress, round};
use shared::ports::SourceApi;
use std::collections::BTreeMap;

/// The sensitivity of Lambda's bill to waiting (not part of the figures): what a source request
/// and an AWS request are assumed to keep a function waiting, one after another (an upper
/// bound: the engine overlaps many of them).
const ASSUMED_SOURCE_WAIT_S: f64 = 0.2;
const ASSUMED_AWS_WAIT_S: f64 = 0.01;

/// A function's invocations in one path.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Invocations {
    pub(super) count: u64,
    pub(super) cpu_seconds: f64,
    pub(super) billed_seconds: f64,
}

/// What a path's invocations did besides AWS requests: Lambda, logs, Step Functions, API
/// Gateway.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) lambdas: BTreeMap<&'static str, Invocations>,
    /// The EMF lines the handlers print (the tracing lines are counted apart).
    pub(super) emf: LogCount,
    /// Lambda's START, END and REPORT lines.
    pub(super) platform: LogCount,
    /// API Gateway's access-log lines.
    pub(super) access_logs: LogCount,
    pub(super) sfn_transitions: u64,
    pub(super) apigw_requests: u64,
}

impl Tally {
    /// One invocation of `function` whose handler took `cpu` seconds, with Lambda's START,
    /// END and REPORT lines.
    pub(super) fn invoked(&mut self, function: &'static str, memory_mb: u32, cpu: f64) {
        let e = self.lambdas.entry(function).or_default();
        e.count += 1;
        e.cpu_seconds += cpu;
        e.billed_seconds += billed_seconds(cpu);
        let id = "8f5b1c2e-3d4a-4b6c-9e7f-0a1b2c3d4e5f";
        for line in [
            format!("START RequestId: {id} Version: $LATEST"),
            format!("END RequestId: {id}"),
            format!(
                "REPORT RequestId: {id}\tDuration: 12.34 ms\tBilled Duration: 13 ms\t\
                 Memory Size: {memory_mb} MB\tMax Memory Used: 38 MB\t"
            ),
        ] {
            self.platform.add(LogCount::line(line.len()));
        }
    }

    /// What the handler prints (EMF): each line of it, an empty string none
    /// (`telemetry::publish` prints nothing for it).
    pub(super) fn published(&mut self, lines: &str) {
        for line in lines.lines().filter(|l| !l.is_empty()) {
            self.emf.add(LogCount::line(line.len()));
        }
    }
}

/// One measured path.
pub(super) struct PathRun {
    pub(super) what: String,
    /// The records the figure is per (0: per run).
    pub(super) records: u64,
    pub(super) usage: Usage,
    pub(super) tally: Tally,
    pub(super) tracing_logs: LogCount,
    pub(super) source_requests: u64,
    pub(super) facts: serde_json::Value,
    /// Against the emulators: not AWS's speed.
    pub(super) wall_seconds: f64,
}

/// The dollars of a path, by line, and their sum.
pub(super) struct Priced {
    pub(super) json: serde_json::Value,
    pub(super) total: f64,
    pub(super) records_write_units: f64,
}

/// The shared pieces of a run.
pub(super) struct Env<'a> {
    pub(super) meters: Meters,
    pub(super) logs: Logs,
    pub(super) memory: &'a BTreeMap<String, u32>,
    pub(super) machine: &'a StateMachine,
    pub(super) access_log_line: &'a str,
}

impl Env<'_> {
    pub(super) fn mb(&self, function: &str) -> u32 {
        self.memory.get(function).copied().unwrap_or(128)
    }

    /// Starts a window: what was counted before is dropped.
    pub(super) fn open(&self, source: &dyn SourceApi) -> Window {
        self.meters.take();
        Window {
            logs: self.logs.count(),
            source: source.usage().requests,
            tally: Tally::default(),
            started: std::time::Instant::now(),
        }
    }

    pub(super) fn close(
        &self,
        w: Window,
        source: &dyn SourceApi,
        what: impl Into<String>,
        records: u64,
        facts: serde_json::Value,
    ) -> PathRun {
        PathRun {
            what: what.into(),
            records,
            usage: self.meters.take(),
            tally: w.tally,
            tracing_logs: self.logs.count().since(w.logs),
            source_requests: source.usage().requests - w.source,
            facts,
            wall_seconds: w.started.elapsed().as_secs_f64(),
        }
    }

    pub(super) fn price(&self, p: &PathRun) -> Priced {
        let sum = |f: &dyn Fn(&meter::Key) -> bool| p.usage.sum(f);
        let write = sum(&|k| k.0 == Service::Dynamodb && k.3 == Class::Write);
        let read = sum(&|k| k.0 == Service::Dynamodb && k.3 == Class::Read);
        let records_write =
            sum(&|k| k.0 == Service::Dynamodb && k.1 == "records" && k.3 == Class::Write);
        let sqs = sum(&|k| k.0 == Service::Sqs);
        let s3_put = sum(&|k| k.0 == Service::S3 && k.3 == Class::S3Put);
        let s3_get = sum(&|k| k.0 == Service::S3 && k.3 == Class::S3Get);
        let mut lambda = serde_json::Map::new();
        let (mut invocations, mut gbs) = (0u64, 0.0);
        for (f, i) in &p.tally.lambdas {
            let mb = self.mb(f);
            let g = gb_seconds(mb, i.billed_seconds);
            invocations += i.count;
            gbs += g;
            lambda.insert(
                (*f).to_owned(),
                serde_json::json!({
                    "invocations": i.count,
                    "memory_mb": mb,
                    "cpu_seconds": round(i.cpu_seconds, 4),
                    "billed_seconds": round(i.billed_seconds, 3),
                    "gb_seconds": round(g, 4),
                }),
            );
        }
        let mut logs = LogCount::default();
        let mut log_json = serde_json::Map::new();
        for (kind, c) in [
            ("tracing", p.tracing_logs),
            ("emf", p.tally.emf),
            ("lambda_platform", p.tally.platform),
            ("apigw_access", p.tally.access_logs),
        ] {
            logs.add(c);
            log_json.insert(
                kind.into(),
                serde_json::json!({"lines": c.events, "bytes": c.bytes}),
            );
        }
        let log_bytes = logs.bytes + logs.events * LOG_EVENT_OVERHEAD_BYTES;
        log_json.insert("bytes_ingested".into(), log_bytes.into());
        let lines: [(&str, f64, f64); 10] = [
            (
                "dynamodb_write_units",
                write.units,
                PRICES.dynamodb_write_request_unit.of(write.units),
            ),
            (
                "dynamodb_read_units",
                read.units,
                PRICES.dynamodb_read_request_unit.of(read.units),
            ),
            (
                "sqs_requests",
                sqs.billable as f64,
                PRICES.sqs_request.of(sqs.billable as f64),
            ),
            (
                "s3_put_class_requests",
                s3_put.requests as f64,
                PRICES.s3_put_copy_post_list.of(s3_put.requests as f64),
            ),
            (
                "s3_get_class_requests",
                s3_get.requests as f64,
                PRICES.s3_get_and_other.of(s3_get.requests as f64),
            ),
            (
                "sfn_state_transitions",
                p.tally.sfn_transitions as f64,
                PRICES
                    .sfn_state_transition
                    .of(p.tally.sfn_transitions as f64),
            ),
            (
                "lambda_requests",
                invocations as f64,
                PRICES.lambda_request.of(invocations as f64),
            ),
            (
                "lambda_gb_seconds",
                gbs,
                PRICES.lambda_arm64_gb_second.of(gbs),
            ),
            (
                "cloudwatch_logs_bytes",
                log_bytes as f64,
                PRICES.cloudwatch_logs_ingested.of(log_bytes as f64),
            ),
            (
                "apigw_requests",
                p.tally.apigw_requests as f64,
                PRICES
                    .apigw_http_api_request
                    .of(p.tally.apigw_requests as f64),
            ),
        ];
        let total: f64 = lines.iter().map(|l| l.2).sum();
        // Waiting, as a sensitivity: the function's requests (not the event source mapping's
        // receives and deletes) at the assumed waits, at the path's average memory.
        let function_requests = p
            .usage
            .sum(|k| !matches!(k.2, "ReceiveMessage" | "DeleteMessageBatch"))
            .requests;
        let avg_gb = if invocations > 0 {
            p.tally
                .lambdas
                .iter()
                .map(|(f, i)| f64::from(self.mb(f)) * i.count as f64)
                .sum::<f64>()
                / invocations as f64
                / 1024.0
        } else {
            0.0
        };
        let wait_s = p.source_requests as f64 * ASSUMED_SOURCE_WAIT_S
            + function_requests as f64 * ASSUMED_AWS_WAIT_S;
        let wait_usd = PRICES.lambda_arm64_gb_second.of(wait_s * avg_gb);
        let mut quantities = serde_json::Map::new();
        let mut usd = serde_json::Map::new();
        let mut usd_per_million = serde_json::Map::new();
        for (name, q, d) in lines {
            quantities.insert(name.into(), round(q, 3).into());
            usd.insert(name.into(), round(d, 9).into());
            if p.records > 0 {
                usd_per_million.insert(name.into(), round(per_million(d, p.records), 4).into());
            }
        }
        let mut json = serde_json::json!({
            "what": p.what,
            "records": p.records,
            "facts": p.facts,
            "requests": p.usage.json(),
            "dynamodb_read_units": round(read.units, 2),
            "dynamodb_write_units": round(write.units, 2),
            "dynamodb_records_table_write_units": round(records_write.units, 2),
            "lambda": lambda,
            "log": log_json,
            "source_requests": p.source_requests,
            "wall_seconds_on_the_emulators": round(p.wall_seconds, 1),
            "quantities": quantities,
            "usd": usd,
            "usd_total": round(total, 9),
            "lambda_wait_sensitivity": {
                "not_in_the_figures": "Lambda bills waiting too; the emulators' waits are not AWS's, so the figures bill CPU time only. This is what waiting would add if each source request kept the function 200 ms and each of its AWS requests 10 ms, one after another (an upper bound: requests overlap)",
                "wait_seconds": round(wait_s, 2),
                "usd": round(wait_usd, 9),
            },
        });
        if p.records > 0 {
            let per = |x: f64| round(x / p.records as f64, 3);
            json["per_record"] = serde_json::json!({
                "dynamodb_write_units": per(write.units),
                "dynamodb_read_units": per(read.units),
                "sqs_requests": per(sqs.billable as f64),
                "log_bytes": per(log_bytes as f64),
                "source_requests": per(p.source_requests as f64),
            });
            json["lambda_wait_sensitivity"]["usd_per_million_records"] =
                round(per_million(wait_usd, p.records), 4).into();
            json["usd_per_million_records_by_line"] = usd_per_million.into();
            json["usd_per_million_records"] = round(per_million(total, p.records), 4).into();
        }
        Priced {
            json,
            total,
            records_write_units: records_write.units,
        }
    }
}

/// Prices a path into `runs` under `name`: its total and its records-table write units.
pub(super) fn priced(
    env: &Env<'_>,
    runs: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    p: &PathRun,
) -> (f64, f64) {
    let pr = env.price(p);
    let per = if p.records > 0 {
        format!(", ${:.4} per million", per_million(pr.total, p.records))
    } else {
        String::new()
    };
    progress(format!(
        "{name}: ${:.6} for {} records{per} ({:.0} s on the emulators)",
        pr.total, p.records, p.wall_seconds
    ));
    runs.insert(name.to_owned(), pr.json);
    (pr.total, pr.records_write_units)
}

pub(super) struct Window {
    pub(super) logs: LogCount,
    pub(super) source: u64,
    pub(super) tally: Tally,
    pub(super) started: std::time::Instant,
}

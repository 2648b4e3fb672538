//! The one price table of `bench cost` (us-east-1 list prices, no free tier), and the
//! arithmetic that turns measured units into dollars: DynamoDB's request units from item sizes,
//! SQS's 64 KB chunks, Lambda's billed milliseconds, the scaling to a million records.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// One list price: `usd` per `per` units of `unit`.
#[derive(Debug, Clone, Copy)]
pub struct Price {
    pub usd: f64,
    pub per: f64,
    pub unit: &'static str,
    /// The public pricing page it was read from.
    pub source: &'static str,
}

impl Price {
    /// The price of `quantity` units.
    pub fn of(&self, quantity: f64) -> f64 {
        quantity * self.usd / self.per
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "usd": self.usd, "per": self.per, "unit": self.unit, "source": self.source,
        })
    }
}

/// Every price the benchmark uses.
#[derive(Debug, Clone, Copy)]
pub struct Prices {
    /// When the prices were read (the pages named in each `source`).
    pub read_on: &'static str,
    pub region: &'static str,
    pub dynamodb_write_request_unit: Price,
    pub dynamodb_read_request_unit: Price,
    pub sqs_request: Price,
    pub s3_put_copy_post_list: Price,
    pub s3_get_and_other: Price,
    pub sfn_state_transition: Price,
    pub lambda_request: Price,
    pub lambda_arm64_gb_second: Price,
    pub cloudwatch_logs_ingested: Price,
    pub apigw_http_api_request: Price,
}

/// us-east-1 list prices, without free tiers, as read on `read_on`. The only place a price is
/// written: change them here (and the date).
pub const PRICES: Prices = Prices {
    read_on: "2026-12-03",
    region: "us-east-1",
    // On-demand, after the November 2024 price cut (halved from $1.25 / $0.25).
    dynamodb_write_request_unit: Price {
        usd: 0.625,
        per: 1e6,
        unit: "write request unit (1 KB of an item written)",
        source: "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    },
    dynamodb_read_request_unit: Price {
        usd: 0.125,
        per: 1e6,
        unit: "read request unit (a strongly consistent read of 4 KB, or two eventually consistent)",
        source: "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    },
    sqs_request: Price {
        usd: 0.40,
        per: 1e6,
        unit: "standard-queue request (each 64 KB chunk of a payload is one request)",
        source: "https://aws.amazon.com/sqs/pricing/",
    },
    s3_put_copy_post_list: Price {
        usd: 0.005,
        per: 1e3,
        unit: "S3 Standard PUT, COPY, POST or LIST request",
        source: "https://aws.amazon.com/s3/pricing/",
    },
    s3_get_and_other: Price {
        usd: 0.0004,
        per: 1e3,
        unit: "S3 Standard GET, SELECT and every other request (DELETE is free)",
        source: "https://aws.amazon.com/s3/pricing/",
    },
    sfn_state_transition: Price {
        usd: 0.025,
        per: 1e3,
        unit: "Standard workflow state transition",
        source: "https://aws.amazon.com/step-functions/pricing/",
    },
    lambda_request: Price {
        usd: 0.20,
        per: 1e6,
        unit: "Lambda request (invocation)",
        source: "https://aws.amazon.com/lambda/pricing/",
    },
    lambda_arm64_gb_second: Price {
        usd: 0.000_013_333_4,
        per: 1.0,
        unit: "Lambda arm64 GB-second (first 7.5 billion a month)",
        source: "https://aws.amazon.com/lambda/pricing/",
    },
    cloudwatch_logs_ingested: Price {
        usd: 0.50,
        per: GB,
        unit: "byte ingested into CloudWatch Logs (Standard class; $0.50 per GB)",
        source: "https://aws.amazon.com/cloudwatch/pricing/",
    },
    apigw_http_api_request: Price {
        usd: 1.00,
        per: 1e6,
        unit: "HTTP API request (first 300 million a month; 512 KB increments)",
        source: "https://aws.amazon.com/api-gateway/pricing/",
    },
};

impl Prices {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "read_on": self.read_on,
            "region": self.region,
            "free_tiers": "not applied",
            "dynamodb_write_request_unit": self.dynamodb_write_request_unit.json(),
            "dynamodb_read_request_unit": self.dynamodb_read_request_unit.json(),
            "sqs_request": self.sqs_request.json(),
            "s3_put_copy_post_list": self.s3_put_copy_post_list.json(),
            "s3_get_and_other": self.s3_get_and_other.json(),
            "sfn_state_transition": self.sfn_state_transition.json(),
            "lambda_request": self.lambda_request.json(),
            "lambda_arm64_gb_second": self.lambda_arm64_gb_second.json(),
            "cloudwatch_logs_ingested": self.cloudwatch_logs_ingested.json(),
            "apigw_http_api_request": self.apigw_http_api_request.json(),
        })
    }
}

/// A gigabyte as AWS bills data (2^30 bytes).
pub const GB: f64 = 1_073_741_824.0;

/// Bytes CloudWatch Logs counts per log event beyond its message (the figure of its
/// PutLogEvents batch size; counted here as ingested, which can only overstate the cost).
pub const LOG_EVENT_OVERHEAD_BYTES: u64 = 26;

/// SQS bills each 64 KB chunk of a request's payload as one request.
pub const SQS_CHUNK_BYTES: u64 = 64 * 1024;

/// Billable SQS requests of one API call moving `payload_bytes` (at least one).
pub fn sqs_billable_requests(payload_bytes: u64) -> u64 {
    payload_bytes.div_ceil(SQS_CHUNK_BYTES).max(1)
}

/// Write request units of one write touching an item of `item_bytes` (the larger of the old and
/// the new image): 1 per KB, rounded up, at least 1. A failed conditional write costs the same.
pub fn write_units(item_bytes: usize) -> f64 {
    item_bytes.div_ceil(1024).max(1) as f64
}

/// Read request units of reading one item of `item_bytes` (its full size, whatever the
/// projection): 1 per 4 KB rounded up, at least 1 (a missing item too); half when eventually
/// consistent.
pub fn read_units(item_bytes: usize, strongly_consistent: bool) -> f64 {
    let units = item_bytes.div_ceil(4096).max(1) as f64;
    if strongly_consistent {
        units
    } else {
        units / 2.0
    }
}

/// An item's size as DynamoDB counts it: each attribute's name (UTF-8 bytes) and value.
pub fn item_bytes(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_bytes(v)).sum()
}

/// A value's size: strings and binaries by their bytes; a number about one byte per two
/// significant digits plus one; booleans and null one byte; a list or map 3 bytes plus one per
/// element plus the elements (and a map's names); sets the sum of their elements.
pub fn value_bytes(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_bytes(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(ss) => ss.iter().map(String::len).sum(),
        AttributeValue::Ns(ns) => ns.iter().map(|n| number_bytes(n)).sum(),
        AttributeValue::Bs(bs) => bs.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_bytes(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_bytes(e))
                .sum::<usize>()
        }
        _ => 0,
    }
}

fn number_bytes(n: &str) -> usize {
    let digits = n
        .trim_start_matches(['-', '+'])
        .split(['e', 'E'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.max(1).div_ceil(2) + 1
}

/// Lambda's billed duration of one invocation whose handler used `cpu_seconds`: rounded up to
/// the millisecond, at least 1 ms.
pub fn billed_seconds(cpu_seconds: f64) -> f64 {
    ((cpu_seconds * 1000.0).ceil().max(1.0)) / 1000.0
}

/// GB-seconds of invocations billed `billed_seconds` in total at `memory_mb`.
pub fn gb_seconds(memory_mb: u32, billed_seconds: f64) -> f64 {
    f64::from(memory_mb) / 1024.0 * billed_seconds
}

/// `usd` spent on `records` records, per million records.
pub fn per_million(usd: f64, records: u64) -> f64 {
    if records == 0 {
        return 0.0;
    }
    usd * 1e6 / records as f64
}

/// The cost of a `target`-record run, a straight line through two measured runs (`small` and
/// `large` records, costing `usd_small` and `usd_large`): fixed costs stay fixed, the rest grows
/// with the records. Never below the larger run's cost.
pub fn extrapolate(small: (u64, f64), large: (u64, f64), target: u64) -> f64 {
    let ((n1, c1), (n2, c2)) = (small, large);
    if n2 <= n1 {
        return per_million(c2, n2) * target as f64 / 1e6;
    }
    let slope = ((c2 - c1) / (n2 - n1) as f64).max(0.0);
    (c2 + slope * (target as f64 - n2 as f64)).max(c2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn units_become_dollars_at_the_listed_prices() {
        let p = PRICES;
        assert!(close(p.dynamodb_write_request_unit.of(1e6), 0.625));
        assert!(close(p.dynamodb_read_request_unit.of(2e6), 0.25));
        assert!(close(p.sqs_request.of(1e6), 0.40));
        assert!(close(p.s3_put_copy_post_list.of(1000.0), 0.005));
        assert!(close(p.s3_get_and_other.of(1000.0), 0.0004));
        assert!(close(p.sfn_state_transition.of(1000.0), 0.025));
        assert!(close(p.lambda_request.of(1e6), 0.20));
        assert!(close(p.apigw_http_api_request.of(1e6), 1.0));
        assert!(close(p.cloudwatch_logs_ingested.of(GB), 0.50));
        assert!(close(p.lambda_arm64_gb_second.of(1e6), 13.3334));
    }

    #[test]
    fn write_units_round_up_per_kilobyte_and_read_units_per_four() {
        assert_eq!(
            write_units(0),
            1.0,
            "a write of a tiny item still costs one unit"
        );
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(
            write_units(1025),
            2.0,
            "a 1 KB record with its metadata is two units"
        );
        assert_eq!(write_units(5000), 5.0);
        assert_eq!(
            read_units(0, true),
            1.0,
            "a missing item costs a strongly consistent read"
        );
        assert_eq!(read_units(4096, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(4097, false), 1.0);
        assert_eq!(read_units(10, false), 0.5);
    }

    #[test]
    fn item_sizes_follow_dynamodbs_rules() {
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("people#12".into())),
            ("n".to_owned(), AttributeValue::N("1704067200000000".into())),
            ("ok".to_owned(), AttributeValue::Bool(true)),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([(
                    "a".to_owned(),
                    AttributeValue::L(vec![AttributeValue::S("xy".into())]),
                )])),
            ),
        ]);
        // pk: 2 + 9; n: 1 + (8 significant digits -> 4 + 1); ok: 2 + 1;
        // m: 1 + 3 + (1 + 1 + (3 + 1 + 2)).
        assert_eq!(item_bytes(&item), 11 + 6 + 3 + 1 + 3 + 8);
        assert_eq!(number_bytes("0"), 2);
        assert_eq!(number_bytes("-12.50"), 3);
    }

    #[test]
    fn sqs_chunks_lambda_milliseconds_and_scaling() {
        assert_eq!(sqs_billable_requests(0), 1);
        assert_eq!(sqs_billable_requests(SQS_CHUNK_BYTES), 1);
        assert_eq!(sqs_billable_requests(SQS_CHUNK_BYTES + 1), 2);
        assert!(
            close(billed_seconds(0.000_2), 0.001),
            "at least a millisecond"
        );
        assert!(
            close(billed_seconds(0.001_2), 0.002),
            "rounded up to the millisecond"
        );
        assert!(close(gb_seconds(256, 2.0), 0.5));
        assert!(close(gb_seconds(512, 1.0), 0.5));
        assert!(close(per_million(0.0125, 20_000), 0.625));
        assert_eq!(per_million(1.0, 0), 0.0);
        // Fixed 0.01 plus 0.001 per thousand records: measured at 2,000 and 20,000.
        let cost = |n: u64| 0.01 + 0.001 * n as f64 / 1000.0;
        let at_million = extrapolate((2_000, cost(2_000)), (20_000, cost(20_000)), 1_000_000);
        assert!(close(at_million, cost(1_000_000)), "{at_million}");
        assert!(
            at_million < per_million(cost(20_000), 20_000),
            "fixed costs are not scaled"
        );
    }
}

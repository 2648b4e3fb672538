//! Every filter style and operator, in every timestamp format, and 400s for bad values.

use source_sim::{Entity, Granularity, SimConfig, TimestampFormat, format_timestamp};

use crate::common::{SEC, base_ts, ids, list, people, start};

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

#[tokio::test]
async fn every_filter_style_and_operator() {
    let sim = people(20).await;
    let t10 = sim.format_timestamp(base_ts(10));
    let t = t10.as_str();
    let cases: Vec<(&str, &str, Vec<u64>)> = vec![
        ("where[updated_at][gt]", t, range(11, 20)),
        ("where[updated_at][gte]", t, range(10, 20)),
        ("where[updated_at][lt]", t, range(1, 9)),
        ("where[updated_at][lte]", t, range(1, 10)),
        ("where[updated_at]", t, vec![10]),
        ("updated_at_gt", t, range(11, 20)),
        ("updated_at_gte", t, range(10, 20)),
        ("updated_at_lt", t, range(1, 9)),
        ("updated_at_lte", t, range(1, 10)),
        ("updated_since", t, range(10, 20)),
        ("where[id][gt]", "9", range(10, 20)),
        ("where[id][gte]", "9", range(9, 20)),
        ("where[id][lt]", "10", range(1, 9)),
        ("where[id][lte]", "10", range(1, 10)),
        ("id_gt", "9", range(10, 20)),
        ("id_gte", "9", range(9, 20)),
        ("id_lt", "10", range(1, 9)),
        ("id_lte", "10", range(1, 10)),
    ];
    for (param, value, want) in cases {
        for order in ["id", "updated_at"] {
            let r = list(
                &sim,
                Entity::People,
                &[(param, value), ("order", order), ("per_page", "100")],
            )
            .await;
            assert_eq!(r.status, 200, "{param}={value}: {}", r.body);
            let page = r.json();
            assert_eq!(ids(&page), want, "{param}={value} order={order}");
            assert_eq!(page["meta"]["total_count"], want.len(), "{param}={value}");
        }
    }
}

#[tokio::test]
async fn filters_combine_as_an_intersection_across_styles() {
    let sim = people(20).await;
    let lo = sim.format_timestamp(base_ts(5));
    let hi = sim.format_timestamp(base_ts(15));
    let r = list(
        &sim,
        Entity::People,
        &[
            ("where[updated_at][gte]", &lo),
            ("updated_at_lt", &hi),
            ("id_gt", "7"),
            ("order", "updated_at"),
        ],
    )
    .await;
    let page = r.json();
    assert_eq!(ids(&page), range(8, 14));
    assert_eq!(page["meta"]["total_count"], 7);
    // An ID filter over an updated_at order (a scan path) and a time filter over the ID order.
    let r = list(
        &sim,
        Entity::People,
        &[
            ("updated_since", &lo),
            ("order", "id"),
            ("per_page", "3"),
            ("offset", "3"),
        ],
    )
    .await;
    let page = r.json();
    assert_eq!(ids(&page), [8, 9, 10]);
    assert_eq!(page["meta"]["total_count"], 16);
}

#[tokio::test]
async fn filters_accept_every_timestamp_format_whatever_the_run_format() {
    for format in [
        TimestampFormat::Rfc3339,
        TimestampFormat::EpochSeconds,
        TimestampFormat::EpochMillis,
    ] {
        let sim = start(SimConfig {
            people: 20,
            timestamp_format: format,
            granularity: Granularity::Millis,
            ..SimConfig::default()
        })
        .await;
        let us = base_ts(10);
        let secs = (us / SEC).to_string();
        let values = [
            format_timestamp(us, TimestampFormat::Rfc3339, Granularity::Millis),
            "2024-01-01T02:00:09+02:00".to_string(),
            "2023-12-31T19:00:09.000-05:00".to_string(),
            sim.format_timestamp(us),
            if format == TimestampFormat::EpochMillis {
                (us / 1000).to_string()
            } else {
                secs.clone()
            },
        ];
        for v in values {
            let r = list(
                &sim,
                Entity::People,
                &[("where[updated_at][gt]", &v), ("per_page", "100")],
            )
            .await;
            assert_eq!(r.status, 200, "{format:?} {v}: {}", r.body);
            assert_eq!(ids(&r.json()), range(11, 20), "{format:?} filter {v}");
        }
    }
}

#[tokio::test]
async fn record_timestamps_follow_the_run_format() {
    let us = base_ts(1) + 123_456;
    for (format, granularity, want) in [
        (
            TimestampFormat::Rfc3339,
            Granularity::Micros,
            serde_json::json!("2024-01-01T00:00:00.123456Z"),
        ),
        (
            TimestampFormat::Rfc3339,
            Granularity::Millis,
            serde_json::json!("2024-01-01T00:00:00.123Z"),
        ),
        (
            TimestampFormat::Rfc3339,
            Granularity::Seconds,
            serde_json::json!("2024-01-01T00:00:00Z"),
        ),
        (
            TimestampFormat::EpochSeconds,
            Granularity::Seconds,
            serde_json::json!(1_704_067_200_i64),
        ),
        (
            TimestampFormat::EpochMillis,
            Granularity::Millis,
            serde_json::json!(1_704_067_200_123_i64),
        ),
    ] {
        let sim = start(SimConfig {
            people: 1,
            base_time_us: us,
            timestamp_format: format,
            granularity,
            ..SimConfig::default()
        })
        .await;
        let page = list(&sim, Entity::People, &[]).await.json();
        assert_eq!(
            page["data"][0]["attributes"]["updated_at"], want,
            "{format:?} {granularity:?}"
        );
        assert_eq!(page["data"][0]["attributes"]["created_at"], want);
    }
}

#[tokio::test]
async fn bad_filter_values_are_json_400s_naming_the_parameter() {
    let sim = people(5).await;
    for (k, v) in [
        ("where[updated_at][gt]", "yesterday"),
        ("updated_at_gte", "2024-13-45T00:00:00Z"),
        ("updated_since", ""),
        ("where[id][gt]", "abc"),
        ("id_lt", "-3"),
        ("where[name][gt]", "x"),
        ("where[updated_at][after]", "1"),
        ("order", "name"),
        ("per_page", "ten"),
        ("offset", "-1"),
        ("page", "0"),
        ("cursor", "not-a-cursor"),
    ] {
        let r = list(&sim, Entity::People, &[(k, v)]).await;
        assert_eq!(r.status, 400, "{k}={v}");
        assert_eq!(r.content_type(), "application/json");
        let body = r.json();
        assert_eq!(body["errors"][0]["status"], "400");
        assert_eq!(body["errors"][0]["source"]["parameter"], k, "{k}={v}");
    }
    assert_eq!(sim.stats().bad_requests, 12);
}

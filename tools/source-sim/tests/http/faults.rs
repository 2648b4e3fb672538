//! Rate limit, auth, scripted faults, random chaos, latency and the skewed clock.

use std::time::{Duration, Instant, SystemTime};

use source_sim::{Chaos, Entity, Fault, RateLimit, SimConfig};

use crate::common::{get, list, people, send, start};

#[tokio::test]
async fn rate_limit_serves_429_with_retry_after_and_pco_headers() {
    let sim = start(SimConfig {
        people: 5,
        rate_limit: Some(RateLimit {
            requests: 3,
            period: Duration::from_secs(60),
        }),
        ..SimConfig::default()
    })
    .await;
    for n in 1..=3 {
        let r = list(&sim, Entity::People, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-pco-api-request-rate-limit"), Some("3"));
        assert_eq!(
            r.header("x-pco-api-request-rate-period"),
            Some("60 seconds")
        );
        assert_eq!(
            r.header("x-pco-api-request-rate-count"),
            Some(n.to_string().as_str())
        );
    }
    let r = get(&format!("{}/1", sim.url(Entity::People))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.content_type(), "application/json");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("integer seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("x-pco-api-request-rate-limit"), Some("3"));
    assert_eq!(r.header("x-pco-api-request-rate-count"), Some("3"));
    assert_eq!(r.json()["errors"][0]["status"], "429");
    // Unknown paths are API requests too, and get the headers.
    let r = get(&format!("{}/nope", sim.base_url())).await;
    assert_eq!(r.status, 429);
    // Admin requests are never limited.
    let r = get(&format!("{}/__admin/stats", sim.base_url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rate_limited"], 2);
    sim.reset_rate_limit();
    let r = list(&sim, Entity::People, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-pco-api-request-rate-count"), Some("1"));
}

#[tokio::test]
async fn rate_limit_window_rolls_over() {
    let sim = start(SimConfig {
        people: 5,
        rate_limit: Some(RateLimit {
            requests: 1,
            period: Duration::from_millis(300),
        }),
        ..SimConfig::default()
    })
    .await;
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
    let r = list(&sim, Entity::People, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("retry-after"),
        Some("1"),
        "rounded up to a whole second"
    );
    assert_eq!(r.header("x-pco-api-request-rate-period"), Some("1 seconds"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
}

#[tokio::test]
async fn auth_rejects_anything_but_the_configured_header() {
    let sim = start(SimConfig {
        people: 5,
        auth: Some("Bearer s3cret".into()),
        ..SimConfig::default()
    })
    .await;
    let client = crate::common::client();
    let url = sim.url(Entity::People);
    for bad in [None, Some("Bearer wrong"), Some("bearer s3cret")] {
        let mut req = client.get(&url);
        if let Some(h) = bad {
            req = req.header("authorization", h);
        }
        let r = send(req).await;
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(r.content_type(), "application/json");
        assert_eq!(r.json()["errors"][0]["status"], "401");
    }
    let r = send(client.get(&url).header("authorization", "Bearer s3cret")).await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.stats().unauthorized, 3);
}

#[tokio::test]
async fn scripted_faults_are_served_in_order_one_per_request() {
    let sim = people(30).await;
    sim.push_faults([
        Fault::Status(503),
        Fault::Html(502),
        Fault::Truncate,
        Fault::Delay(Duration::from_millis(150)),
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        Fault::Status(500),
    ]);
    assert_eq!(sim.pending_faults(), 6);
    // Admin requests do not consume faults.
    assert_eq!(
        get(&format!("{}/__admin/health", sim.base_url()))
            .await
            .status,
        200
    );
    assert_eq!(sim.pending_faults(), 6);

    let r = list(&sim, Entity::People, &[]).await;
    assert_eq!((r.status, r.content_type()), (503, "application/json"));
    assert_eq!(r.json()["errors"][0]["status"], "503");

    let r = list(&sim, Entity::People, &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.content_type().starts_with("text/html"));
    assert!(r.body.contains("502 Bad Gateway"));

    let cut = list(&sim, Entity::People, &[("offset", "5")]).await;
    assert_eq!(cut.status, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&cut.body).is_err(),
        "truncated JSON"
    );

    let t0 = Instant::now();
    let r = list(&sim, Entity::People, &[]).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "the delay was served"
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["meta"]["count"], 25);

    let r = list(&sim, Entity::People, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));

    let r = get(&format!("{}/3", sim.url(Entity::People))).await;
    assert_eq!(r.status, 500);

    let full = list(&sim, Entity::People, &[("offset", "5")]).await;
    assert_eq!(full.status, 200);
    assert_eq!(cut.body.len(), full.body.len() / 2);
    assert!(
        full.body.starts_with(&cut.body),
        "the cut body is the first half"
    );
    assert_eq!(sim.pending_faults(), 0);
    let s = sim.stats();
    assert_eq!((s.faults_served, s.rate_limited, s.requests), (6, 1, 7));

    sim.push_fault(Fault::Status(503));
    sim.clear_faults();
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
}

#[tokio::test]
async fn chaos_rates_at_one_always_fire() {
    for (chaos, check) in [
        (
            Chaos {
                error_rate: 1.0,
                ..Chaos::default()
            },
            (|s: u16, ct: &str, body: &str| {
                (500..=504).contains(&s) && ct == "application/json" && body.contains("errors")
            }) as fn(u16, &str, &str) -> bool,
        ),
        (
            Chaos {
                html_rate: 1.0,
                ..Chaos::default()
            },
            |s, ct, _| s == 502 && ct.starts_with("text/html"),
        ),
        (
            Chaos {
                truncate_rate: 1.0,
                ..Chaos::default()
            },
            |s, _, body| s == 200 && serde_json::from_str::<serde_json::Value>(body).is_err(),
        ),
    ] {
        let sim = people(10).await;
        sim.set_chaos(chaos).expect("valid rates");
        for _ in 0..5 {
            let r = list(&sim, Entity::People, &[]).await;
            assert!(
                check(r.status, r.content_type(), &r.body),
                "{chaos:?}: {} {}",
                r.status,
                r.body
            );
        }
        assert_eq!(sim.stats().faults_served, 5);
        sim.set_chaos(Chaos::default()).expect("valid rates");
        assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
    }
    let sim = people(1).await;
    assert!(
        sim.set_chaos(Chaos {
            error_rate: 2.0,
            ..Chaos::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn seeded_chaos_gives_the_same_fault_sequence() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let sim = start(SimConfig {
            seed,
            people: 10,
            error_rate: 0.3,
            html_rate: 0.2,
            ..SimConfig::default()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(list(&sim, Entity::People, &[]).await.status);
        }
        out
    }
    let a = statuses(9).await;
    assert_eq!(a, statuses(9).await);
    assert_ne!(a, statuses(10).await);
    assert!(a.contains(&200) && a.iter().any(|s| *s >= 500), "{a:?}");
}

#[tokio::test]
async fn latency_is_added_to_api_requests() {
    let sim = start(SimConfig {
        people: 3,
        latency: Duration::from_millis(120),
        ..SimConfig::default()
    })
    .await;
    let t0 = Instant::now();
    assert_eq!(list(&sim, Entity::People, &[]).await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(120));
}

fn date_of(r: &crate::common::Resp) -> SystemTime {
    httpdate::parse_http_date(r.header("date").expect("Date header")).expect("HTTP date")
}

fn secs_apart(a: SystemTime, b: SystemTime) -> u64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs(),
        Err(e) => e.duration().as_secs(),
    }
}

#[tokio::test]
async fn date_header_and_mutation_timestamps_follow_the_skewed_clock() {
    let sim = start(SimConfig {
        people: 3,
        clock_skew_ms: -3_600_000,
        ..SimConfig::default()
    })
    .await;
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let r = list(&sim, Entity::People, &[]).await;
    assert!(
        secs_apart(date_of(&r), hour_ago) <= 5,
        "Date is an hour behind"
    );
    let r = get(&format!("{}/__admin/clock", sim.base_url())).await;
    assert!(
        secs_apart(date_of(&r), hour_ago) <= 5,
        "admin responses too"
    );
    assert_eq!(r.json()["skew_ms"], -3_600_000);

    let v = sim.update(Entity::People, 2, None).expect("exists");
    let real_now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let lag = real_now_us - v.updated_at_us;
    assert!(
        (3_595_000_000..=3_605_000_000).contains(&lag),
        "updated_at is an hour behind: {lag}"
    );

    sim.set_clock_skew_ms(7_200_000);
    let r = list(&sim, Entity::People, &[]).await;
    let ahead = SystemTime::now() + Duration::from_secs(7200);
    assert!(
        secs_apart(date_of(&r), ahead) <= 5,
        "skew is settable at run time"
    );
}

//! Webhook delivery: a tiny receiver in this process checks shapes, signatures (with its own
//! verifier), retries and faults.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use source_sim::{
    Entity, RetrySchedule, SimConfig, SimHandle, WebhookFaults, WebhookScheme, WebhookStats,
    WebhookTarget,
};

use crate::common::{client, send, start};

const PCO_SECRET: &str = "pco-shared-secret";
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    headers: HeaderMap,
    body: String,
    at: Instant,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }

    /// `(delivery id, attempt, name, payload)` of each event.
    fn events(&self) -> Vec<(String, u64, String, Value)> {
        self.json()["data"]
            .as_array()
            .expect("data is an array")
            .iter()
            .map(|e| {
                assert_eq!(e["type"], "EventDelivery");
                let a = &e["attributes"];
                let payload = a["payload"].as_str().expect("payload is a JSON string");
                (
                    e["id"].as_str().expect("id").to_owned(),
                    a["attempt"].as_u64().expect("attempt"),
                    a["name"].as_str().expect("name").to_owned(),
                    serde_json::from_str(payload).expect("payload parses"),
                )
            })
            .collect()
    }
}

/// The receiver's state: what it got and the statuses it will answer (then 200).
#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.hits.lock().unwrap().push(Hit {
        headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        at: Instant::now(),
    });
    let code = r.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).expect("valid status")
}

/// Starts a receiver that answers `script` in order, then 200; returns its URL.
async fn receiver(script: &[u16]) -> (String, Receiver) {
    let r = Receiver::default();
    r.script.lock().unwrap().extend(script);
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), r)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// The receiver side's verifier, written against the specs rather than the sender's code.
fn verifies(scheme: WebhookScheme, secret: &str, hit: &Hit) -> bool {
    let body = hit.body.as_bytes();
    match scheme {
        WebhookScheme::Pco { .. } => {
            let got = hit.header("x-pco-webhooks-authenticity");
            let want = mac(secret.as_bytes(), &[body]);
            let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
            // The receiver accepts either encoding, as a tolerant verifier would.
            got == hex || STANDARD.decode(got).is_ok_and(|g| g == want)
        }
        WebhookScheme::Standard => {
            let key = STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .unwrap();
            let (id, ts) = (hit.header("webhook-id"), hit.header("webhook-timestamp"));
            let want =
                STANDARD.encode(mac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]));
            hit.header("webhook-signature")
                .split(' ')
                .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
        }
    }
}

fn target(url: &str, scheme: WebhookScheme) -> WebhookTarget {
    let secret = match scheme {
        WebhookScheme::Standard => STD_SECRET,
        WebhookScheme::Pco { .. } => PCO_SECRET,
    };
    WebhookTarget::new(url, scheme, secret).with_retry(RetrySchedule::fast())
}

async fn sim_with(t: WebhookTarget) -> SimHandle {
    start(SimConfig {
        people: 10,
        donations: 5,
        webhook: Some(t),
        ..SimConfig::default()
    })
    .await
}

async fn wait(
    sim: &SimHandle,
    what: &str,
    done: impl FnMut(&WebhookStats) -> bool,
) -> WebhookStats {
    match sim.wait_webhooks(WAIT, done).await {
        Ok(s) => s,
        Err(s) => panic!("timed out waiting for {what}: {s:?}"),
    }
}

async fn wait_hits(r: &Receiver, n: usize) -> Vec<Hit> {
    let deadline = Instant::now() + WAIT;
    loop {
        let hits = r.hits();
        if hits.len() >= n {
            return hits;
        }
        assert!(
            Instant::now() < deadline,
            "got {} requests, want {n}",
            hits.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_change_becomes_one_signed_delivery_of_the_right_shape() {
    let (url, r) = receiver(&[]).await;
    let scheme = WebhookScheme::Pco {
        encoding: source_sim::PcoEncoding::Hex,
    };
    let sim = sim_with(target(&url, scheme)).await;
    let v = sim
        .update(Entity::People, 3, None)
        .expect("person 3 exists");
    let s = wait(&sim, "one delivery", |s| s.delivered == 1 && s.pending == 0).await;
    assert_eq!(
        (s.attempts, s.deliveries, s.events, s.non_200),
        (1, 1, 1, 0)
    );

    let hits = r.hits();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.header("content-type"), "application/json");
    let sig = hit.header("x-pco-webhooks-authenticity");
    assert_eq!(sig.len(), 64, "lowercase hex: {sig}");
    assert!(
        sig.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert!(verifies(scheme, PCO_SECRET, hit), "signature verifies");
    assert!(
        !verifies(scheme, "another secret", hit),
        "a wrong secret fails"
    );

    let events = hit.events();
    assert_eq!(events.len(), 1);
    let (id, attempt, name, payload) = &events[0];
    assert_eq!(id.len(), 36, "uuid-shaped: {id}");
    assert_eq!(*attempt, 1);
    assert_eq!(name, "people.v2.events.person.updated");
    assert_eq!(payload["data"]["id"], "3");
    assert_eq!(payload["data"]["type"], "Person");
    assert_eq!(
        payload["data"]["attributes"]["updated_at"],
        json!(sim.format_timestamp(v.updated_at_us))
    );
    // The payload is the record as served by the API right after the change.
    let served: Value = serde_json::from_str(&sim.record_json(Entity::People, 3).unwrap()).unwrap();
    assert_eq!(payload["data"]["attributes"], served["data"]["attributes"]);
}

#[tokio::test]
async fn every_scheme_verifies_and_names_each_kind_of_change() {
    for scheme in ["pco-hex", "pco-base64", "standard"] {
        let scheme: WebhookScheme = scheme.parse().unwrap();
        let (url, r) = receiver(&[]).await;
        let sim = sim_with(target(&url, scheme)).await;
        let created = sim.create(Entity::Donations, None);
        assert!(sim.delete(Entity::People, 2));
        wait(&sim, "two deliveries", |s| {
            s.delivered == 2 && s.pending == 0
        })
        .await;
        let mut hits = r.hits();
        assert_eq!(hits.len(), 2, "{scheme}");
        hits.sort_by_key(|h| h.events()[0].2.clone());
        let secret = match scheme {
            WebhookScheme::Standard => STD_SECRET,
            WebhookScheme::Pco { .. } => PCO_SECRET,
        };
        for hit in &hits {
            assert!(verifies(scheme, secret, hit), "{scheme}: {hit:?}");
            if scheme == WebhookScheme::Standard {
                assert_eq!(hit.header("webhook-id"), hit.events()[0].0);
                let ts: i64 = hit.header("webhook-timestamp").parse().unwrap();
                assert!((ts - sim.now_us() / 1_000_000).abs() < 60, "{ts}");
                assert!(hit.header("x-pco-webhooks-authenticity").is_empty());
            } else {
                assert!(hit.header("webhook-signature").is_empty());
            }
        }
        let (_, _, name, payload) = &hits[0].events()[0];
        assert_eq!(name, "giving.v2.events.donation.created");
        assert_eq!(payload["data"]["id"], created.id.to_string());
        assert_eq!(payload["data"]["type"], "Donation");
        assert!(payload["data"]["attributes"]["amount_cents"].is_number());
        let (_, _, name, payload) = &hits[1].events()[0];
        assert_eq!(name, "people.v2.events.person.destroyed");
        assert_eq!(payload, &json!({"data": {"id": "2", "type": "Person"}}));
    }
}

#[tokio::test]
async fn non_200_answers_are_retried_with_the_same_id_and_a_new_signature() {
    let (url, r) = receiver(&[500, 503]).await;
    let sim = sim_with(target(&url, WebhookScheme::Standard)).await;
    sim.update(Entity::People, 1, None);
    let s = wait(&sim, "delivery after retries", |s| {
        s.delivered == 1 && s.pending == 0
    })
    .await;
    assert_eq!((s.attempts, s.non_200, s.retries, s.given_up), (3, 2, 2, 0));
    let hits = r.hits();
    assert_eq!(hits.len(), 3);
    let events: Vec<_> = hits.iter().map(|h| h.events().remove(0)).collect();
    assert!(events.iter().all(|e| e.0 == events[0].0), "one delivery id");
    assert_eq!(events.iter().map(|e| e.1).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(hits.iter().all(|h| h.header("webhook-id") == events[0].0));
    assert!(
        hits.iter()
            .all(|h| verifies(WebhookScheme::Standard, STD_SECRET, h))
    );
    assert_ne!(
        hits[0].header("webhook-signature"),
        hits[1].header("webhook-signature")
    );
    // The fast schedule waits 50 ms, then 100 ms.
    assert!(hits[2].at - hits[0].at >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_send_gives_up_when_the_schedule_runs_out() {
    let (url, r) = receiver(&[500; 10]).await;
    let retry: RetrySchedule = "10,10".parse().unwrap();
    let sim = sim_with(target(&url, WebhookScheme::Standard).with_retry(retry.clone())).await;
    sim.update(Entity::People, 1, None);
    let s = wait(&sim, "giving up", |s| s.given_up == 1 && s.pending == 0).await;
    assert_eq!((s.attempts, s.non_200, s.delivered), (3, 3, 0));
    assert_eq!(r.hits().len(), 3);

    // Nobody listening: connection errors, retried the same way.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let sim = sim_with(target(&closed, WebhookScheme::Standard).with_retry(retry)).await;
    sim.update(Entity::People, 1, None);
    let s = wait(&sim, "giving up", |s| s.given_up == 1 && s.pending == 0).await;
    assert_eq!((s.attempts, s.connection_errors, s.retries), (3, 3, 2));
}

#[tokio::test]
async fn drop_duplicate_and_delay_faults_behave() {
    let (url, r) = receiver(&[]).await;
    let faults = WebhookFaults {
        drop_rate: 1.0,
        ..WebhookFaults::default()
    };
    let sim = sim_with(target(&url, WebhookScheme::Standard).with_faults(faults)).await;
    for id in 1..=3 {
        sim.update(Entity::People, id, None);
    }
    let s = wait(&sim, "three drops", |s| s.dropped == 3).await;
    assert_eq!((s.attempts, s.pending), (0, 0));

    // Duplicates: two sends of one delivery, same ID and body.
    sim.set_webhook_faults(WebhookFaults {
        duplicate_rate: 1.0,
        ..WebhookFaults::default()
    })
    .unwrap();
    sim.update(Entity::People, 4, None);
    let s = wait(&sim, "a duplicated delivery", |s| {
        s.delivered == 2 && s.pending == 0
    })
    .await;
    assert_eq!((s.duplicated, s.deliveries, s.attempts), (1, 4, 2));
    let hits = r.hits();
    assert_eq!(hits.len(), 2, "the dropped ones never arrived");
    assert_eq!(hits[0].body, hits[1].body);
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));
    assert_eq!(hits[0].events()[0].3["data"]["id"], "4");

    // A fixed delay before the first attempt.
    sim.set_webhook_faults(WebhookFaults {
        delay: Duration::from_millis(300),
        ..WebhookFaults::default()
    })
    .unwrap();
    let before = Instant::now();
    sim.update(Entity::People, 5, None);
    let hits = wait_hits(&r, 3).await;
    assert!(hits[2].at - before >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_reordered_delivery_arrives_after_the_next_one() {
    let (url, r) = receiver(&[]).await;
    let faults = WebhookFaults {
        reorder_rate: 1.0,
        ..WebhookFaults::default()
    };
    let sim = sim_with(target(&url, WebhookScheme::Standard).with_faults(faults)).await;
    sim.update(Entity::People, 1, None);
    sim.update(Entity::People, 2, None);
    let s = wait(&sim, "two deliveries", |s| {
        s.delivered == 2 && s.pending == 0
    })
    .await;
    assert_eq!(s.reordered, 1);
    let order: Vec<_> = r
        .hits()
        .iter()
        .map(|h| h.events()[0].3["data"]["id"].clone())
        .collect();
    assert_eq!(order, [json!("2"), json!("1")]);

    // Without a next change, a held delivery goes out on its own.
    sim.update(Entity::People, 3, None);
    let s = wait(&sim, "the held one", |s| s.delivered == 3 && s.pending == 0).await;
    assert_eq!(s.reordered, 2);
}

#[tokio::test]
async fn batching_puts_several_events_in_one_body() {
    let (url, r) = receiver(&[]).await;
    let scheme = WebhookScheme::Pco {
        encoding: source_sim::PcoEncoding::Base64,
    };
    let t = target(&url, scheme)
        .with_max_events_per_delivery(3)
        .with_batch_window(Duration::from_millis(500));
    let sim = sim_with(t).await;
    let created = sim.create_many(Entity::People, 3, None);
    let s = wait(&sim, "one batch", |s| s.delivered == 1 && s.pending == 0).await;
    assert_eq!((s.deliveries, s.events, s.changes), (1, 3, 3));
    let hits = r.hits();
    assert_eq!(hits.len(), 1);
    assert!(verifies(scheme, PCO_SECRET, &hits[0]));
    let events = hits[0].events();
    let ids: Vec<_> = events.iter().map(|e| e.3["data"]["id"].clone()).collect();
    let want: Vec<_> = created.iter().map(|c| json!(c.id.to_string())).collect();
    assert_eq!(ids, want);
    assert!(
        events
            .iter()
            .all(|e| e.2 == "people.v2.events.person.created" && e.1 == 1)
    );
    let mut dids: Vec<_> = events.iter().map(|e| e.0.clone()).collect();
    dids.dedup();
    assert_eq!(dids.len(), 3, "each event has its own id");
}

#[tokio::test]
async fn the_admin_api_sets_the_target_and_faults_and_reads_stats() {
    let (url, r) = receiver(&[]).await;
    let sim = start(SimConfig::default()).await;
    let admin = |m: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client().request(m, format!("{}/__admin/webhooks{path}", sim.base_url()));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        send(req)
    };
    use reqwest::Method;
    assert_eq!(admin(Method::GET, "", None).await.body, "null");
    let bad = admin(
        Method::PUT,
        "",
        Some(json!({"url": url, "secret": "whsec_!!", "scheme": "standard"})),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let put = admin(
        Method::PUT,
        "",
        Some(json!({"url": url, "secret": STD_SECRET, "scheme": "standard", "retry": "fast"})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!put.body.contains(STD_SECRET), "the secret is never shown");
    assert_eq!(put.json()["retry_ms"], json!([50, 100, 200, 400, 800]));

    sim.update(Entity::People, 1, None);
    wait(&sim, "one delivery", |s| s.delivered == 1).await;
    assert!(verifies(WebhookScheme::Standard, STD_SECRET, &r.hits()[0]));
    let stats = admin(Method::GET, "/stats", None).await.json();
    assert_eq!(
        (stats["delivered"].clone(), stats["attempts"].clone()),
        (json!(1), json!(1))
    );

    let f = admin(Method::PUT, "/faults", Some(json!({"drop_rate": 1.0}))).await;
    assert_eq!(f.json()["faults"]["drop_rate"], 1.0);
    sim.update(Entity::People, 2, None);
    wait(&sim, "a drop", |s| s.dropped == 1).await;
    assert_eq!(admin(Method::POST, "/stats/reset", None).await.status, 204);
    assert_eq!(sim.webhook_stats().delivered, 0);

    assert_eq!(admin(Method::PUT, "", Some(json!(null))).await.body, "null");
    let f = admin(Method::PUT, "/faults", Some(json!({"drop_rate": 0.5}))).await;
    assert_eq!(f.status, 409);
}

//! Helpers: a tiny HTTP client wrapper and query builders.

use reqwest::header::HeaderMap;
use serde_json::Value;
use source_sim::{Entity, SimConfig, SimHandle};

/// One second in microseconds.
pub const SEC: i64 = 1_000_000;

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.expect("request failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("body read failed");
    Resp {
        status,
        headers,
        body,
    }
}

thread_local! {
    // One client per test thread (each test has its own thread and runtime): building a client
    // loads TLS roots, which is slow in debug builds.
    static CLIENT: reqwest::Client = reqwest::Client::new();
}

/// The test thread's client.
pub fn client() -> reqwest::Client {
    CLIENT.with(Clone::clone)
}

pub async fn get(url: &str) -> Resp {
    send(client().get(url)).await
}

/// `?k=v&...`, form-encoded.
pub fn qs(pairs: &[(&str, &str)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let s = ser.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

pub async fn list(sim: &SimHandle, entity: Entity, pairs: &[(&str, &str)]) -> Resp {
    get(&format!("{}{}", sim.url(entity), qs(pairs))).await
}

/// IDs of a JSON:API page, as numbers.
pub fn ids(page: &Value) -> Vec<u64> {
    page["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .expect("id is a string")
                .parse()
                .expect("numeric id")
        })
        .collect()
}

pub async fn start(cfg: SimConfig) -> SimHandle {
    source_sim::start(cfg).await.expect("simulator starts")
}

/// A quiet simulator with `people` people (1 s apart from `SimConfig::default().base_time_us`).
pub async fn people(n: usize) -> SimHandle {
    start(SimConfig {
        people: n,
        donations: 10,
        ..SimConfig::default()
    })
    .await
}

/// `updated_at` of initial record `id` (1 s steps, no ties).
pub fn base_ts(id: u64) -> i64 {
    SimConfig::default().base_time_us + (id as i64 - 1) * SEC
}

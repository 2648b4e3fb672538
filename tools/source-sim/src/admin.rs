//! The HTTP admin interface under `/__admin/` (JSON in, JSON out), and the router of the whole
//! server. Admin requests are never counted in the stats, never rate limited, never faulted and
//! never need auth.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `GET /__admin/health` | | `{"ok":true,"base_url":..}` |
//! | `GET /__admin/stats` | | [`crate::Stats`] |
//! | `POST /__admin/stats/reset` | | 204 |
//! | `GET /__admin/clock` | | `{"skew_ms":..,"now_us":..,"now":"<run format>"}` |
//! | `PUT /__admin/clock` | `{"skew_ms":-5000}` | as GET |
//! | `GET /__admin/faults` | | `{"pending":n}` |
//! | `POST /__admin/faults` | a fault or an array of them: `{"status":503}`, `{"html":502}`, `"truncate"`, `{"delay_ms":250}`, `{"rate_limited":{"retry_after_secs":2}}` | `{"pending":n}` |
//! | `DELETE /__admin/faults` | | 204 |
//! | `GET /__admin/chaos` | | `{"error_rate":..,"html_rate":..,"truncate_rate":..,"latency_ms":..}` |
//! | `PUT /__admin/chaos` | any subset of those fields | as GET (400 when out of range) |
//! | `GET /__admin/rate-limit` | | `{"requests":..,"period_ms":..}` or `null` |
//! | `PUT /__admin/rate-limit` | `{"requests":100,"period_ms":20000}` or `null` | as GET |
//! | `POST /__admin/rate-limit/reset` | | 204 |
//! | `GET /__admin/{entity}/records` | | `{"count":n,"records":[[id,updated_at_us],...]}` by ID |
//! | `POST /__admin/{entity}/records` | optional `{"count":k,"updated_at_us":..}` or `"updated_at":"<any format>"` | 201 `{"records":[{"id":..,"updated_at_us":..,"mutation":0}]}` (k records sharing one timestamp) |
//! | `GET /__admin/{entity}/records/{id}` | | the document `GET <path>/<id>` serves, or a JSON 404 |
//! | `PATCH /__admin/{entity}/records/{id}` | optional `{"updated_at_us":..}` or `{"updated_at":".."}` | `{"id":..,"updated_at_us":..,"mutation":..}`, or 404 |
//! | `DELETE /__admin/{entity}/records/{id}` | | 204, or 404 |
//! | `PUT /__admin/{entity}/records/{id}/corrupt` | `{"kind":"null_delta"\|"missing_delta"\|"bad_delta"\|"naive_timestamp"\|"empty_id"\|"long_id"\|"lone_surrogate"}`, plus `"bytes":n` for `long_id` | `{"id":..,"kind":..}` (and `"bytes"`); the record is served broken in listings and `GET <path>/<id>` until cleared (see [`crate::Corruption`]); 400 on an unknown kind |
//! | `DELETE /__admin/{entity}/records/{id}/corrupt` | | 204: served intact again |
//! | `GET /__admin/misbehave` | | `{"ignore_filter":false,"ignore_id_filter":false,"ignore_order":false,"ignore_offset":false,` `"ignore_page":false,"ignore_cursor":false,"clamp_last_page":false,"ignore_per_page":false,"reverse_order":false}` (see [`crate::Misbehave`]) |
//! | `PUT /__admin/misbehave` | any subset of those fields | as GET (400 on an unknown field) |
//! | `GET /__admin/webhooks` | | the target without its secret (`{"url":..,"scheme":"standard",` `"retry_ms":[..],"max_events_per_delivery":..,"batch_window_ms":..,"max_in_flight":..,` `"timeout_ms":..,"faults":{..}}`) or `null` |
//! | `PUT /__admin/webhooks` | `{"url":..,"secret":..,"scheme":"pco-hex"\|"pco-base64"\|"standard"}` plus optional `"retry":"pco"\|"fast"\|"none"\|"50,100"`, the other fields of GET, or `null` to stop | as GET (400 when invalid) |
//! | `PUT /__admin/webhooks/faults` | any subset of `{"drop_rate":..,"duplicate_rate":..,"reorder_rate":..,"delay_ms":..,"jitter_ms":..}` | as GET (409 without a target) |
//! | `GET /__admin/webhooks/stats` | | [`crate::WebhookStats`] |
//! | `POST /__admin/webhooks/stats/reset` | | 204 |
//!
//! `{entity}` is `people` or `donations`.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::middleware::map_response_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{Chaos, Corruption, Entity, Misbehave, RateLimit};
use crate::faults::{Fault, FaultWire, json_error};
use crate::server::{Reply, add_date, api};
use crate::sim::Sim;
use crate::timefmt::parse_timestamp;
use crate::webhooks::{RetrySchedule, WebhookFaults, WebhookScheme, WebhookTarget};

/// The whole server: admin routes, then the API fallback; a skewed `Date` on every response.
pub(crate) fn router(sim: Sim) -> Router {
    Router::new()
        .route("/__admin/health", get(health))
        .route("/__admin/stats", get(stats))
        .route("/__admin/stats/reset", post(stats_reset))
        .route("/__admin/clock", get(clock_get).put(clock_put))
        .route(
            "/__admin/faults",
            get(faults_get).post(faults_post).delete(faults_delete),
        )
        .route("/__admin/chaos", get(chaos_get).put(chaos_put))
        .route("/__admin/rate-limit", get(rate_get).put(rate_put))
        .route("/__admin/rate-limit/reset", post(rate_reset))
        .route("/__admin/misbehave", get(misbehave_get).put(misbehave_put))
        .route("/__admin/webhooks", get(webhooks_get).put(webhooks_put))
        .route(
            "/__admin/webhooks/faults",
            axum::routing::put(webhook_faults_put),
        )
        .route("/__admin/webhooks/stats", get(webhook_stats))
        .route("/__admin/webhooks/stats/reset", post(webhook_stats_reset))
        .route(
            "/__admin/{entity}/records",
            get(records_list).post(records_create),
        )
        .route(
            "/__admin/{entity}/records/{id}",
            get(record_get).patch(record_update).delete(record_delete),
        )
        .route(
            "/__admin/{entity}/records/{id}/corrupt",
            axum::routing::put(corrupt_put).delete(corrupt_delete),
        )
        .fallback(api)
        .with_state(sim.clone())
        .layer(map_response_with_state(sim, add_date))
}

fn json_resp(status: u16, v: &Value) -> Response {
    Reply::json(status, v.to_string()).into_response()
}

fn no_content() -> Response {
    Reply {
        status: 204,
        content_type: "application/json",
        body: Vec::new(),
        headers: Vec::new(),
    }
    .into_response()
}

fn error(status: u16, detail: &str) -> Response {
    Reply::json(status, json_error(status, Some(detail), None)).into_response()
}

/// Parses an optional JSON body; an empty body is `T::default()`.
#[allow(clippy::result_large_err)]
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Response> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| error(400, &format!("invalid JSON body: {e}")))
}

#[allow(clippy::result_large_err)]
fn entity(name: &str) -> Result<Entity, Response> {
    Entity::from_name(name).ok_or_else(|| error(404, &format!("unknown entity {name:?}")))
}

async fn health(State(sim): State<Sim>) -> Response {
    json_resp(200, &json!({"ok": true, "base_url": sim.base_url()}))
}

async fn stats(State(sim): State<Sim>) -> Response {
    json_resp(200, &json!(sim.stats()))
}

async fn stats_reset(State(sim): State<Sim>) -> Response {
    sim.reset_stats();
    no_content()
}

fn clock_json(sim: &Sim) -> Value {
    let now = sim.now_us();
    json!({"skew_ms": sim.clock_skew_ms(), "now_us": now, "now": sim.format_timestamp(now)})
}

async fn clock_get(State(sim): State<Sim>) -> Response {
    json_resp(200, &clock_json(&sim))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    skew_ms: Option<i64>,
}

async fn clock_put(State(sim): State<Sim>, bytes: Bytes) -> Response {
    match body::<ClockBody>(&bytes) {
        Ok(b) => {
            if let Some(s) = b.skew_ms {
                sim.set_clock_skew_ms(s);
            }
            json_resp(200, &clock_json(&sim))
        }
        Err(r) => r,
    }
}

async fn faults_get(State(sim): State<Sim>) -> Response {
    json_resp(200, &json!({"pending": sim.pending_faults()}))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultsBody {
    Many(Vec<FaultWire>),
    One(FaultWire),
}

async fn faults_post(State(sim): State<Sim>, bytes: Bytes) -> Response {
    match serde_json::from_slice::<FaultsBody>(&bytes) {
        Ok(FaultsBody::Many(v)) => sim.push_faults(v.into_iter().map(Fault::from)),
        Ok(FaultsBody::One(f)) => sim.push_fault(f.into()),
        Err(e) => return error(400, &format!("invalid fault list: {e}")),
    }
    json_resp(200, &json!({"pending": sim.pending_faults()}))
}

async fn faults_delete(State(sim): State<Sim>) -> Response {
    sim.clear_faults();
    no_content()
}

fn chaos_json(c: &Chaos) -> Value {
    json!({
        "error_rate": c.error_rate,
        "html_rate": c.html_rate,
        "truncate_rate": c.truncate_rate,
        "latency_ms": c.latency.as_millis() as u64,
    })
}

async fn chaos_get(State(sim): State<Sim>) -> Response {
    json_resp(200, &chaos_json(&sim.chaos()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChaosBody {
    error_rate: Option<f64>,
    html_rate: Option<f64>,
    truncate_rate: Option<f64>,
    latency_ms: Option<u64>,
}

async fn chaos_put(State(sim): State<Sim>, bytes: Bytes) -> Response {
    let b = match body::<ChaosBody>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut c = sim.chaos();
    c.error_rate = b.error_rate.unwrap_or(c.error_rate);
    c.html_rate = b.html_rate.unwrap_or(c.html_rate);
    c.truncate_rate = b.truncate_rate.unwrap_or(c.truncate_rate);
    if let Some(ms) = b.latency_ms {
        c.latency = Duration::from_millis(ms);
    }
    match sim.set_chaos(c) {
        Ok(()) => json_resp(200, &chaos_json(&c)),
        Err(e) => error(400, &e.0),
    }
}

fn rate_json(r: Option<RateLimit>) -> Value {
    match r {
        Some(r) => json!({"requests": r.requests, "period_ms": r.period.as_millis() as u64}),
        None => Value::Null,
    }
}

async fn rate_get(State(sim): State<Sim>) -> Response {
    let limit = crate::sim::lock(&sim.inner.rate).limit;
    json_resp(200, &rate_json(limit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    requests: u32,
    period_ms: u64,
}

async fn rate_put(State(sim): State<Sim>, bytes: Bytes) -> Response {
    let parsed: Result<Option<RateBody>, _> = serde_json::from_slice(&bytes);
    let limit = match parsed {
        Ok(b) => b.map(|b| RateLimit {
            requests: b.requests,
            period: Duration::from_millis(b.period_ms),
        }),
        Err(e) => return error(400, &format!("invalid rate limit: {e}")),
    };
    match sim.set_rate_limit(limit) {
        Ok(()) => json_resp(200, &rate_json(limit)),
        Err(e) => error(400, &e.0),
    }
}

async fn rate_reset(State(sim): State<Sim>) -> Response {
    sim.reset_rate_limit();
    no_content()
}

fn misbehave_json(m: &Misbehave) -> Value {
    let mut m = *m;
    let mut out = serde_json::Map::new();
    for name in Misbehave::NAMES {
        let on = m.flag_mut(name).is_some_and(|f| *f);
        out.insert(name.to_owned(), Value::Bool(on));
    }
    Value::Object(out)
}

async fn misbehave_get(State(sim): State<Sim>) -> Response {
    json_resp(200, &misbehave_json(&sim.misbehave()))
}

async fn misbehave_put(State(sim): State<Sim>, bytes: Bytes) -> Response {
    let b = match body::<serde_json::Map<String, Value>>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut m = sim.misbehave();
    for (name, v) in &b {
        let Some(flag) = m.flag_mut(name) else {
            return error(
                400,
                &format!(
                    "unknown misbehaviour {name:?} (expected any of {})",
                    Misbehave::NAMES.join(", ")
                ),
            );
        };
        let Some(on) = v.as_bool() else {
            return error(400, &format!("{name} must be true or false"));
        };
        *flag = on;
    }
    sim.set_misbehave(m);
    json_resp(200, &misbehave_json(&m))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn webhook_faults_json(f: &WebhookFaults) -> Value {
    json!({
        "drop_rate": f.drop_rate,
        "duplicate_rate": f.duplicate_rate,
        "reorder_rate": f.reorder_rate,
        "delay_ms": millis(f.delay),
        "jitter_ms": millis(f.jitter),
    })
}

fn webhook_json(t: Option<WebhookTarget>) -> Value {
    match t {
        Some(t) => json!({
            "url": t.url,
            "scheme": t.scheme.name(),
            "retry_ms": t.retry.delays.iter().map(|d| millis(*d)).collect::<Vec<_>>(),
            "max_events_per_delivery": t.max_events_per_delivery,
            "batch_window_ms": millis(t.batch_window),
            "max_in_flight": t.max_in_flight,
            "timeout_ms": millis(t.timeout),
            "faults": webhook_faults_json(&t.faults),
        }),
        None => Value::Null,
    }
}

async fn webhooks_get(State(sim): State<Sim>) -> Response {
    json_resp(200, &webhook_json(sim.webhook_target()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WebhookFaultsBody {
    drop_rate: Option<f64>,
    duplicate_rate: Option<f64>,
    reorder_rate: Option<f64>,
    delay_ms: Option<u64>,
    jitter_ms: Option<u64>,
}

impl WebhookFaultsBody {
    fn apply(&self, mut f: WebhookFaults) -> WebhookFaults {
        f.drop_rate = self.drop_rate.unwrap_or(f.drop_rate);
        f.duplicate_rate = self.duplicate_rate.unwrap_or(f.duplicate_rate);
        f.reorder_rate = self.reorder_rate.unwrap_or(f.reorder_rate);
        if let Some(ms) = self.delay_ms {
            f.delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.jitter_ms {
            f.jitter = Duration::from_millis(ms);
        }
        f
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
    secret: String,
    scheme: String,
    retry: Option<String>,
    max_events_per_delivery: Option<usize>,
    batch_window_ms: Option<u64>,
    max_in_flight: Option<usize>,
    timeout_ms: Option<u64>,
    faults: Option<WebhookFaultsBody>,
}

impl WebhookBody {
    fn target(self) -> Result<WebhookTarget, String> {
        let scheme: WebhookScheme = self.scheme.parse()?;
        let mut t = WebhookTarget::new(self.url, scheme, self.secret);
        if let Some(r) = self.retry {
            t.retry = r.parse::<RetrySchedule>()?;
        }
        t.max_events_per_delivery = self
            .max_events_per_delivery
            .unwrap_or(t.max_events_per_delivery);
        t.max_in_flight = self.max_in_flight.unwrap_or(t.max_in_flight);
        if let Some(ms) = self.batch_window_ms {
            t.batch_window = Duration::from_millis(ms);
        }
        if let Some(ms) = self.timeout_ms {
            t.timeout = Duration::from_millis(ms);
        }
        if let Some(f) = self.faults {
            t.faults = f.apply(t.faults);
        }
        Ok(t)
    }
}

async fn webhooks_put(State(sim): State<Sim>, bytes: Bytes) -> Response {
    let target = match serde_json::from_slice::<Option<WebhookBody>>(&bytes) {
        Ok(None) => None,
        Ok(Some(b)) => match b.target() {
            Ok(t) => Some(t),
            Err(e) => return error(400, &e),
        },
        Err(e) => return error(400, &format!("invalid webhook target: {e}")),
    };
    match sim.set_webhook_target(target) {
        Ok(()) => json_resp(200, &webhook_json(sim.webhook_target())),
        Err(e) => error(400, &e.0),
    }
}

async fn webhook_faults_put(State(sim): State<Sim>, bytes: Bytes) -> Response {
    let b = match body::<WebhookFaultsBody>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(t) = sim.webhook_target() else {
        return error(409, "no webhook target is set");
    };
    match sim.set_webhook_faults(b.apply(t.faults)) {
        Ok(()) => json_resp(200, &webhook_json(sim.webhook_target())),
        Err(e) => error(400, &e.0),
    }
}

async fn webhook_stats(State(sim): State<Sim>) -> Response {
    json_resp(200, &json!(sim.webhook_stats()))
}

async fn webhook_stats_reset(State(sim): State<Sim>) -> Response {
    sim.reset_webhook_stats();
    no_content()
}

async fn records_list(State(sim): State<Sim>, Path(name): Path<String>) -> Response {
    let e = match entity(&name) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let versions = sim.versions(e);
    let mut out = String::with_capacity(32 + versions.len() * 28);
    out.push_str(&format!("{{\"count\":{},\"records\":[", versions.len()));
    for (i, (id, us)) in versions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("[{id},{us}]"));
    }
    out.push_str("]}");
    Reply::json(200, out).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StampBody {
    count: Option<usize>,
    updated_at_us: Option<i64>,
    updated_at: Option<Value>,
}

impl StampBody {
    #[allow(clippy::result_large_err)]
    fn stamp(&self, sim: &Sim) -> Result<Option<i64>, Response> {
        match (&self.updated_at_us, &self.updated_at) {
            (Some(us), _) => Ok(Some(*us)),
            (None, None) => Ok(None),
            (None, Some(v)) => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(error(400, "updated_at must be a string or a number")),
                };
                parse_timestamp(&text, sim.config().timestamp_format)
                    .map(Some)
                    .ok_or_else(|| error(400, &format!("updated_at {text:?} is not a timestamp")))
            }
        }
    }
}

async fn records_create(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Response {
    let e = match entity(&name) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let b = match body::<StampBody>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let at = match b.stamp(&sim) {
        Ok(at) => at,
        Err(r) => return r,
    };
    let created = sim.create_many(e, b.count.unwrap_or(1), at);
    json_resp(201, &json!({"records": created}))
}

#[allow(clippy::result_large_err)]
fn target(name: &str, id: &str) -> Result<(Entity, u64), Response> {
    let e = entity(name)?;
    let id = id
        .parse::<u64>()
        .map_err(|_| Reply::json(404, json_error(404, None, None)).into_response())?;
    Ok((e, id))
}

async fn record_get(State(sim): State<Sim>, Path((name, id)): Path<(String, String)>) -> Response {
    let (e, id) = match target(&name, &id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match sim.record_json(e, id) {
        Some(doc) => Reply::json(200, doc).into_response(),
        None => Reply::json(404, json_error(404, None, None)).into_response(),
    }
}

async fn record_update(
    State(sim): State<Sim>,
    Path((name, id)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    let (e, id) = match target(&name, &id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let b = match body::<StampBody>(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let at = match b.stamp(&sim) {
        Ok(at) => at,
        Err(r) => return r,
    };
    match sim.update(e, id, at) {
        Some(v) => json_resp(200, &json!(v)),
        None => Reply::json(404, json_error(404, None, None)).into_response(),
    }
}

async fn record_delete(
    State(sim): State<Sim>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let (e, id) = match target(&name, &id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if sim.delete(e, id) {
        no_content()
    } else {
        Reply::json(404, json_error(404, None, None)).into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorruptBody {
    kind: String,
    bytes: Option<usize>,
}

async fn corrupt_put(
    State(sim): State<Sim>,
    Path((name, id)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    let (e, id) = match target(&name, &id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let b: CorruptBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return error(400, &format!("invalid corruption: {e}")),
    };
    let c = match Corruption::from_name(&b.kind, b.bytes) {
        Ok(c) => c,
        Err(msg) => return error(400, &msg),
    };
    sim.corrupt(e, id, Some(c));
    let mut out = json!({"id": id, "kind": c.name()});
    if let Corruption::LongId(n) = c {
        out["bytes"] = json!(n);
    }
    json_resp(200, &out)
}

async fn corrupt_delete(
    State(sim): State<Sim>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let (e, id) = match target(&name, &id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    sim.corrupt(e, id, None);
    no_content()
}

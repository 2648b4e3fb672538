//! API Gateway request in → `shared::webhook::Ingest` → HTTP answer out. No business rules here.

use lambda_http::http::{Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use shared::model::Micros;
use shared::webhook::Ingest;
use std::time::Duration;

/// The events must be queued this long before the invocation's deadline, or the answer is 503
/// (the sender retries at once, rather than after a timeout).
pub const STOP_MARGIN: Duration = Duration::from_secs(2);

/// Answer one request. `now_us` is injected so that tests can replay signed samples.
pub async fn handle(ingest: &Ingest, req: Request, now_us: Micros) -> Response<Body> {
    if req.method() != Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"use POST"}"#.to_owned(),
        );
    }
    let stop_at = req
        .lambda_context_ref()
        .and_then(|c| shared::core::deadline::stop_instant(c.deadline(), STOP_MARGIN));
    let (parts, body) = req.into_parts();
    let bytes: &[u8] = match &body {
        Body::Empty => &[],
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    };
    let answer =
        shared::core::deadline::within(stop_at, ingest.handle(&parts.headers, bytes, now_us)).await;
    shared::telemetry::publish(&answer.metrics());
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, answer.body)
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::Text(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests;

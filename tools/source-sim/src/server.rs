//! The API side of the HTTP server: routing, faults, rate limit, auth, list and get.

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use crate::config::{Entity, Envelope};
use crate::data::write_record;
use crate::faults::{ChaosOutcome, Fault, RateInfo, html_page, json_error};
use crate::json::push_str;
use crate::query::{
    ListQuery, Paging, ParseCfg, QueryError, decode_pairs, encode_cursor, next_query, parse_fields,
    parse_list,
};
use crate::sim::{Counters, Sim, lock};
use crate::store::{PageReq, Start};

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// A response before it becomes an HTTP one (so that a fault can cut its body).
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, detail: Option<&str>) -> Reply {
        Reply::json(status, json_error(status, detail, None))
    }

    fn html(status: u16) -> Reply {
        Reply {
            status,
            content_type: HTML,
            body: html_page(status).into_bytes(),
            headers: Vec::new(),
        }
    }

    fn bad_request(e: &QueryError) -> Reply {
        Reply::json(400, json_error(400, Some(&e.detail), Some(&e.parameter)))
    }

    fn too_many(retry_after_secs: u64) -> Reply {
        let mut r = Reply::error(429, Some("Rate limit exceeded"));
        r.headers
            .push(("retry-after", retry_after_secs.to_string()));
        r
    }

    fn rate_headers(&mut self, info: Option<RateInfo>) {
        if let Some(i) = info {
            self.headers
                .push(("x-pco-api-request-rate-limit", i.limit.to_string()));
            self.headers.push((
                "x-pco-api-request-rate-period",
                format!("{} seconds", i.period_secs),
            ));
            self.headers
                .push(("x-pco-api-request-rate-count", i.count.to_string()));
        }
    }

    pub(crate) fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.append(HeaderName::from_static(name), v);
            }
        }
        resp
    }
}

enum Route<'a> {
    List(Entity),
    Get(Entity, &'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let p = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    for e in Entity::ALL {
        if p == e.path() {
            return Route::List(e);
        }
        if let Some(rest) = p.strip_prefix(e.path()).and_then(|r| r.strip_prefix('/'))
            && !rest.is_empty()
            && !rest.contains('/')
        {
            return Route::Get(e, rest);
        }
    }
    Route::Unknown
}

/// Adds the simulator's (skewed) `Date` to every response, admin ones included.
pub(crate) async fn add_date(State(sim): State<Sim>, mut resp: Response) -> Response {
    let date = httpdate::fmt_http_date(sim.now_system_time());
    if let Ok(v) = HeaderValue::from_str(&date) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

/// The fallback handler: everything that is not an admin route.
pub(crate) async fn api(State(sim): State<Sim>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/__admin" || path.starts_with("/__admin/") {
        return Reply::json(404, json_error(404, Some("unknown admin route"), None))
            .into_response();
    }
    let query = req.uri().query().map(str::to_owned);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    sim.serve_api(req.method(), &path, query.as_deref(), auth.as_deref())
        .await
        .into_response()
}

impl Sim {
    async fn serve_api(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        auth: Option<&[u8]>,
    ) -> Reply {
        let (mut reply, rate) = self.serve_api_inner(method, path, query, auth).await;
        let rate = match rate {
            Some(r) => Some(r),
            None => lock(&self.inner.rate).peek(),
        };
        reply.rate_headers(rate);
        reply
    }

    async fn serve_api_inner(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        auth: Option<&[u8]>,
    ) -> (Reply, Option<RateInfo>) {
        let st = &self.inner.stats;
        Counters::bump(&st.requests);
        let route = route(path);
        match route {
            Route::List(_) => Counters::bump(&st.list_requests),
            Route::Get(..) => Counters::bump(&st.get_requests),
            Route::Unknown => Counters::bump(&st.unknown_path),
        }

        let latency = lock(&self.inner.chaos).chaos.latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }

        let mut truncate = false;
        let fault = lock(&self.inner.faults).pop_front();
        if let Some(fault) = fault {
            Counters::bump(&st.faults_served);
            match fault {
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::Truncate => truncate = true,
                Fault::Status(code) => return (Reply::error(code, Some("Injected fault")), None),
                Fault::Html(code) => return (Reply::html(code), None),
                Fault::RateLimited { retry_after_secs } => {
                    Counters::bump(&st.rate_limited);
                    return (Reply::too_many(retry_after_secs), None);
                }
            }
        }

        let admitted = lock(&self.inner.rate).admit();
        let rate = match admitted {
            Ok(info) => info,
            Err((retry, info)) => {
                Counters::bump(&st.rate_limited);
                return (Reply::too_many(retry), Some(info));
            }
        };

        if let Some(expected) = self.auth()
            && auth != Some(expected.as_bytes())
        {
            Counters::bump(&st.unauthorized);
            let mut r = Reply::error(401, Some("Missing or invalid credentials"));
            r.headers
                .push(("www-authenticate", "Bearer realm=\"source-sim\"".into()));
            return (r, rate);
        }

        let outcome = lock(&self.inner.chaos).draw();
        match outcome {
            ChaosOutcome::None => {}
            ChaosOutcome::Status(code) => {
                Counters::bump(&st.faults_served);
                return (Reply::error(code, Some("Random fault")), rate);
            }
            ChaosOutcome::Html(code) => {
                Counters::bump(&st.faults_served);
                return (Reply::html(code), rate);
            }
            ChaosOutcome::Truncate => {
                Counters::bump(&st.faults_served);
                truncate = true;
            }
        }

        let mut reply = match route {
            Route::Unknown => Reply::html(404),
            Route::List(_) | Route::Get(..) if method != Method::GET => {
                let mut r = Reply::error(405, Some("Only GET is supported"));
                r.headers.push(("allow", "GET".into()));
                r
            }
            Route::List(e) => self.list(e, path, query),
            Route::Get(e, id) => self.get_one(e, id, query),
        };
        if truncate {
            let keep = reply.body.len() / 2;
            reply.body.truncate(keep);
        }
        (reply, rate)
    }

    fn get_one(&self, entity: Entity, id: &str, query: Option<&str>) -> Reply {
        let rec = id
            .parse::<u64>()
            .ok()
            .filter(|n| n.to_string() == id)
            .and_then(|n| self.get_rec(entity, n).map(|r| (n, r)));
        match rec {
            Some((n, r)) => {
                let fields = parse_fields(&decode_pairs(query), entity);
                Reply::json(200, self.render_single(entity, n, &r, &fields))
            }
            None => {
                Counters::bump(&self.inner.stats.not_found);
                Reply::json(404, json_error(404, None, None))
            }
        }
    }

    fn list(&self, entity: Entity, path: &str, query: Option<&str>) -> Reply {
        let cfg = &self.inner.cfg;
        let m = self.misbehave();
        let parse_cfg = ParseCfg {
            hint: cfg.timestamp_format,
            default_per_page: cfg.default_per_page,
            max_per_page: cfg.max_per_page,
            misbehave: m,
        };
        let q = match parse_list(decode_pairs(query), entity, parse_cfg) {
            Ok(q) => q,
            Err(e) => {
                Counters::bump(&self.inner.stats.bad_requests);
                return Reply::bad_request(&e);
            }
        };
        // The asked position; an ignored one serves from the start.
        let asked = q.offset();
        let ignored = match q.paging {
            Paging::Cursor(_) => m.ignore_cursor,
            Paging::Offset(_) => m.ignore_offset,
            Paging::Page(_) => m.ignore_page,
        };
        let start = match q.paging {
            _ if ignored => Start::Offset(0),
            Paging::Cursor(k) => Start::After(k),
            Paging::Offset(_) | Paging::Page(_) => Start::Offset(asked.unwrap_or(0)),
        };
        let req = |start| PageReq {
            order: q.order,
            bounds: q.bounds,
            start,
            limit: q.per_page,
        };
        let mut out = self.page(entity, &req(start));
        if m.clamp_last_page
            && out.rows.is_empty()
            && out.total > 0
            && matches!(start, Start::Offset(_))
        {
            // Past the end: the last non-empty page, as if asked for (no next page).
            let last = (out.total - 1) / q.per_page * q.per_page;
            out = self.page(entity, &req(Start::Offset(last)));
        }
        if ignored && let Some(o) = asked {
            // Links and meta as if the asked offset had been served.
            out.has_next = o.saturating_add(out.rows.len()) < out.total;
        }
        let count = out.rows.len();
        let next_cursor = if out.has_next {
            out.last_key(q.order.key).map(|k| encode_cursor(q.order, k))
        } else {
            None
        };
        let base = &self.inner.base_url;
        let next_url = if out.has_next {
            next_query(&q, count, next_cursor.as_deref()).map(|qs| format!("{base}{path}?{qs}"))
        } else {
            None
        };
        let ctx = self.render_ctx(&q.fields);
        let bad = self.corruptions(entity);
        let bad = |id: &u64| bad.get(id).copied();
        let mut body = String::with_capacity(512 + count * 1_100);
        match cfg.envelope {
            Envelope::Bare => {
                body.push('[');
                for (i, (id, rec)) in out.rows.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    write_record(&mut body, &ctx, entity, *id, rec, bad(id));
                }
                body.push(']');
            }
            Envelope::JsonApi => {
                body.push_str("{\"data\":[");
                for (i, (id, rec)) in out.rows.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    write_record(&mut body, &ctx, entity, *id, rec, bad(id));
                }
                body.push_str("],\"included\":[],\"links\":{\"self\":");
                let self_url = match query {
                    Some(qs) if !qs.is_empty() => format!("{base}{path}?{qs}"),
                    _ => format!("{base}{path}"),
                };
                push_str(&mut body, &self_url);
                if let Some(n) = &next_url {
                    body.push_str(",\"next\":");
                    push_str(&mut body, n);
                }
                write_meta(
                    &mut body,
                    &q,
                    out.total,
                    count,
                    out.has_next,
                    next_cursor.as_deref(),
                );
                body.push('}');
            }
        }
        let mut reply = Reply::json(200, body);
        reply.headers.push(("x-total-count", out.total.to_string()));
        if let Some(n) = next_url {
            reply.headers.push(("link", format!("<{n}>; rel=\"next\"")));
        }
        reply
    }
}

fn write_meta(
    body: &mut String,
    q: &ListQuery,
    total: usize,
    count: usize,
    has_next: bool,
    cursor: Option<&str>,
) {
    let _ = write!(
        body,
        "}},\"meta\":{{\"total_count\":{total},\"count\":{count}"
    );
    if has_next && let Some(off) = q.offset() {
        let _ = write!(body, ",\"next\":{{\"offset\":{}}}", off + count);
    }
    if let Some(c) = cursor {
        body.push_str(",\"next_cursor\":");
        push_str(body, c);
    }
    body.push_str(
        ",\"can_order_by\":[\"id\",\"updated_at\"],\"can_query_by\":[\"id\",\"updated_at\"]}",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route("/people/v2/people"),
            Route::List(Entity::People)
        ));
        assert!(matches!(
            route("/people/v2/people/"),
            Route::List(Entity::People)
        ));
        assert!(matches!(
            route("/giving/v2/donations/7"),
            Route::Get(Entity::Donations, "7")
        ));
        assert!(matches!(
            route("/people/v2/people/7/emails"),
            Route::Unknown
        ));
        assert!(matches!(route("/people/v2/peoplex"), Route::Unknown));
        assert!(matches!(route("/"), Route::Unknown));
    }

    use crate::config::SimConfig;

    fn sim(envelope: Envelope, record_bytes: Option<usize>) -> Sim {
        let cfg = SimConfig {
            people: 200,
            envelope,
            record_bytes,
            ..SimConfig::default()
        };
        Sim::new(cfg, "http://127.0.0.1:54321".into())
    }

    /// Person `id` as `GET <path>/<id>` serves it: the resource object's bytes, cut out of the
    /// document.
    fn served(sim: &Sim, id: u64) -> String {
        let doc = sim.record_json(Entity::People, id).unwrap();
        match sim.config().envelope {
            Envelope::JsonApi => doc
                .strip_prefix("{\"data\":")
                .and_then(|d| d.strip_suffix(",\"included\":[],\"meta\":{}}"))
                .unwrap()
                .to_owned(),
            Envelope::Bare => doc,
        }
    }

    /// Every person of a listing of 100 a page, parsed.
    fn listed(sim: &Sim) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        for offset in [0, 100] {
            let query = format!("per_page=100&offset={offset}");
            let reply = sim.list(Entity::People, Entity::People.path(), Some(&query));
            assert_eq!(reply.status, 200);
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            let page = match sim.config().envelope {
                Envelope::JsonApi => v["data"].clone(),
                Envelope::Bare => v,
            };
            all.extend(page.as_array().unwrap().iter().cloned());
        }
        all
    }

    fn assert_all_sized(sim: &Sim, n: usize) {
        let listed = listed(sim);
        assert_eq!(listed.len(), 200);
        for (id, element) in (1..=200).zip(&listed) {
            let raw = served(sim, id);
            assert_eq!(raw.len(), n, "person {id}: {raw}");
            let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
            // What a client measures after parsing, and the same record in a page.
            assert_eq!(v.to_string().len(), n, "person {id}");
            assert_eq!(element, &v, "person {id} in a page");
        }
    }

    #[test]
    fn sized_people_are_exactly_the_asked_bytes_in_pages_and_after_updates() {
        for envelope in [Envelope::JsonApi, Envelope::Bare] {
            let sim = sim(envelope, Some(1024));
            assert_all_sized(&sim, 1024);
            for id in (1..=200).step_by(7) {
                sim.update(Entity::People, id, None).unwrap();
            }
            for _ in 0..12 {
                sim.update(Entity::People, 5, None).unwrap();
            }
            assert_all_sized(&sim, 1024);
            let notes = |id| {
                let v: serde_json::Value = serde_json::from_str(&served(&sim, id)).unwrap();
                let attrs = match envelope {
                    Envelope::JsonApi => v["attributes"].clone(),
                    Envelope::Bare => v,
                };
                attrs["notes"].as_str().unwrap().to_owned()
            };
            assert!(notes(5).starts_with("Revision 12. "), "{}", notes(5));
            assert!(notes(8).starts_with("Revision 1. "), "{}", notes(8));
            assert!(notes(2).starts_with("Revision 0. "), "{}", notes(2));
        }
    }

    #[test]
    fn a_size_every_person_reaches_changes_only_the_notes() {
        let natural = sim(Envelope::JsonApi, None);
        let sized = sim(Envelope::JsonApi, Some(1_300));
        assert_all_sized(&sized, 1_300);
        for (mut a, mut b) in listed(&natural).into_iter().zip(listed(&sized)) {
            let (na, nb) = (
                a["attributes"]["notes"].take(),
                b["attributes"]["notes"].take(),
            );
            assert_eq!(a, b);
            // The same revision mark, then other words.
            let revision = |n: &serde_json::Value| n.as_str().unwrap()[..11].to_owned();
            assert_eq!(revision(&na), revision(&nb));
        }
    }

    #[test]
    fn a_size_too_small_leaves_out_the_extras_and_keeps_the_shortest_notes() {
        let sim = sim(Envelope::JsonApi, Some(200));
        for (id, v) in (1..=200).zip(listed(&sim)) {
            assert!(served(&sim, id).len() > 200);
            let a = &v["attributes"];
            assert_eq!(a["notes"], "Revision 0.");
            assert_eq!(a["emails"].as_array().unwrap().len(), 1);
            assert_eq!(a["phone_numbers"], serde_json::json!([]));
            for absent in ["medical_notes", "anniversary", "nickname", "middle_name"] {
                assert!(a[absent].is_null(), "{absent} of person {id}");
            }
        }
    }

    #[test]
    fn sparse_people_leave_out_what_the_full_records_do() {
        let sim = sim(Envelope::JsonApi, Some(1024));
        let reply = sim.list(
            Entity::People,
            Entity::People.path(),
            Some("per_page=100&fields[Person]=emails,phone_numbers,name"),
        );
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        for (id, sparse) in (1..=100).zip(v["data"].as_array().unwrap()) {
            let full: serde_json::Value = serde_json::from_str(&served(&sim, id)).unwrap();
            for a in ["emails", "phone_numbers", "name"] {
                assert_eq!(
                    sparse["attributes"][a], full["attributes"][a],
                    "{a} of {id}"
                );
            }
        }
    }

    #[test]
    fn sparse_notes_are_as_long_as_the_full_records() {
        let sim = sim(Envelope::JsonApi, Some(1024));
        let reply = sim.list(
            Entity::People,
            Entity::People.path(),
            Some("per_page=100&fields[Person]=notes"),
        );
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        for (id, sparse) in (1..=100).zip(v["data"].as_array().unwrap()) {
            let full: serde_json::Value = serde_json::from_str(&served(&sim, id)).unwrap();
            let len = |v: &serde_json::Value| v["attributes"]["notes"].as_str().unwrap().len();
            assert_eq!(len(sparse), len(&full), "person {id}");
        }
    }
}

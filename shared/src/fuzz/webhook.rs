//! Webhook deliveries: signature verification with arbitrary header bytes, and event extraction
//! from arbitrary bodies.
//!
//! - `webhook_verify`: a delivery is accepted exactly when it carries, in the scheme's exact
//!   encoding, the HMAC of what it carries under a configured secret (and, for Standard
//!   Webhooks, a valid ID and a timestamp inside the window). The oracle here decodes strictly
//!   (hex digits only, canonical base64), independently of the verifier's decoders.
//! - `webhook_extract`: never a panic; every event queued has an ID `validate_id` takes, an
//!   event ID that can be a dedup key, and an entity that takes webhooks; every event of the
//!   delivery is accounted for (queued, ignored or malformed).

use super::{Budget, Outcome, drive, re};
use crate::config::{Config, EMBEDDED, SignatureEncoding, SignatureScheme, WebhookConfig};
use crate::webhook::extract::{EventMap, MAX_EVENT_ID, extract};
use crate::webhook::signature::{Verifier, hmac_sha256, sign, whsec_key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use std::path::Path;

const NOW_S: i64 = 1_700_000_000;
const HMAC_HEADER: &str = "x-pco-webhooks-authenticity";

/// Who signed the delivery.
#[derive(Debug, Clone)]
pub enum Signer {
    /// One of the configured secrets.
    Configured(Index),
    /// A secret that is not configured.
    Other(Vec<u8>),
    /// Nobody: no signature headers.
    Nobody,
}

/// What happened to the delivery after it was signed.
#[derive(Debug, Clone)]
pub enum Tamper {
    None,
    /// XOR a body byte.
    Body(Index, u8),
    /// Replace a header's value with arbitrary bytes (skipped if not a header value at all).
    Header(Index, Vec<u8>),
    /// Remove a header.
    Drop(Index),
    /// Change a character of a header value to another printable one.
    Char(Index, Index, char),
    /// A `0` nibble of a hex signature written `+` (`u8::from_str_radix` takes a sign).
    PlusSign(Index),
    /// Hex in upper case (the same MAC).
    Upper,
    /// Another `v1,` entry before the real ones (Standard Webhooks).
    ExtraEntry(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct VerifyCase {
    /// `None`: Standard Webhooks with this tolerance; else the HMAC header in this encoding.
    pub hex: Option<bool>,
    pub tolerance_s: u64,
    pub secrets: Vec<Vec<u8>>,
    pub body: Vec<u8>,
    pub signer: Signer,
    pub webhook_id: String,
    pub skew_s: i64,
    pub tamper: Tamper,
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        6 => Just(Tamper::None),
        2 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Tamper::Body(i, m)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 0..80))
            .prop_map(|(i, v)| Tamper::Header(i, v)),
        1 => any::<Index>().prop_map(Tamper::Drop),
        2 => (any::<Index>(), any::<Index>(), prop::char::range(' ', '~'))
            .prop_map(|(h, i, c)| Tamper::Char(h, i, c)),
        2 => any::<Index>().prop_map(Tamper::PlusSign),
        1 => Just(Tamper::Upper),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Tamper::ExtraEntry),
    ]
}

pub fn verify_cases() -> impl Strategy<Value = VerifyCase> {
    (
        prop::option::of(any::<bool>()),
        prop_oneof![Just(300u64), any::<u64>(), 0u64..5],
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..4),
        prop::collection::vec(any::<u8>(), 0..300),
        prop_oneof![
            3 => any::<Index>().prop_map(Signer::Configured),
            1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Signer::Other),
            1 => Just(Signer::Nobody),
        ],
        prop_oneof![re("msg_[a-zA-Z0-9]{1,20}"), re("[ -~]{0,300}")],
        prop_oneof![3 => -400i64..400, 1 => any::<i64>()],
        tamper(),
    )
        .prop_map(
            |(hex, tolerance_s, secrets, body, signer, webhook_id, skew_s, tamper)| VerifyCase {
                hex,
                tolerance_s,
                secrets,
                body,
                signer,
                webhook_id,
                skew_s,
                tamper,
            },
        )
}

/// The secret strings the configuration would hold: raw for the HMAC header (made printable),
/// `whsec_` + base64 for Standard Webhooks.
fn secret_text(hex: Option<bool>, bytes: &[u8]) -> String {
    match hex {
        Some(_) => bytes.iter().map(|b| char::from(b'!' + b % 94)).collect(),
        None => format!("whsec_{}", B64.encode(bytes)),
    }
}

fn scheme_of(c: &VerifyCase) -> SignatureScheme {
    match c.hex {
        Some(hex) => SignatureScheme::HmacHeader {
            header: HMAC_HEADER.into(),
            encoding: if hex {
                SignatureEncoding::Hex
            } else {
                SignatureEncoding::Base64
            },
        },
        None => SignatureScheme::StandardWebhooks {
            tolerance_seconds: c.tolerance_s,
        },
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the delivery carries, exactly, a MAC of its content under one of `keys`.
fn authentic(c: &VerifyCase, keys: &[Vec<u8>], headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match c.hex {
        Some(hex) => {
            let Some(given) = text(HMAC_HEADER) else {
                return false;
            };
            let given = given.trim();
            keys.iter().any(|k| {
                let mac = hmac_sha256(k, &[&c.body]);
                if hex {
                    given.eq_ignore_ascii_case(&to_hex(&mac))
                } else {
                    given == B64.encode(mac)
                }
            })
        }
        None => {
            let (Some(id), Some(ts_text), Some(sigs)) = (
                text("webhook-id"),
                text("webhook-timestamp"),
                text("webhook-signature"),
            ) else {
                return false;
            };
            let Ok(ts) = ts_text.trim().parse::<i64>() else {
                return false;
            };
            if id.is_empty()
                || id.len() > 256
                || NOW_S.saturating_sub(ts).unsigned_abs() > c.tolerance_s
            {
                return false;
            }
            keys.iter().any(|k| {
                let mac = hmac_sha256(k, &[id.as_bytes(), b".", ts_text.as_bytes(), b".", &c.body]);
                let want = format!("v1,{}", B64.encode(mac));
                sigs.split(' ').any(|e| e == want)
            })
        }
    }
}

/// The property of one delivery.
pub fn check_verify(c: VerifyCase) -> Result<(), String> {
    let scheme = scheme_of(&c);
    let secrets: Vec<String> = c.secrets.iter().map(|s| secret_text(c.hex, s)).collect();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let verifier = Verifier::new(scheme.clone(), &refs).map_err(|e| format!("secrets: {e}"))?;
    let keys: Vec<Vec<u8>> = secrets
        .iter()
        .map(|s| match c.hex {
            Some(_) => s.as_bytes().to_vec(),
            None => whsec_key(s).expect("generated whsec"),
        })
        .collect();
    let signer = match &c.signer {
        Signer::Configured(i) => Some(secrets[i.index(secrets.len())].clone()),
        Signer::Other(b) => Some(secret_text(c.hex, b)),
        Signer::Nobody => None,
    };
    let ts = NOW_S.saturating_add(c.skew_s);
    let mut pairs: Vec<(String, Vec<u8>)> = match &signer {
        Some(s) => sign(&scheme, s, &c.body, &c.webhook_id, ts)
            .map_err(|e| format!("sign: {e}"))?
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_bytes()))
            .collect(),
        None => Vec::new(),
    };
    let mut body = c.body.clone();
    match &c.tamper {
        Tamper::None => {}
        Tamper::Body(i, m) if !body.is_empty() => {
            let at = i.index(body.len());
            body[at] ^= m;
        }
        Tamper::Header(i, v) if !pairs.is_empty() => {
            let at = i.index(pairs.len());
            pairs[at].1 = v.clone();
        }
        Tamper::Drop(i) if !pairs.is_empty() => {
            pairs.remove(i.index(pairs.len()));
        }
        Tamper::Char(h, i, ch) if !pairs.is_empty() => {
            let h = h.index(pairs.len());
            let v = &mut pairs[h].1;
            if !v.is_empty() {
                let at = i.index(v.len());
                v[at] = *ch as u8;
            }
        }
        Tamper::PlusSign(i) => {
            for (_, v) in pairs.iter_mut() {
                let zeros: Vec<usize> = (0..v.len())
                    .step_by(2)
                    .filter(|&j| v[j] == b'0' && v.len() == 64)
                    .collect();
                if !zeros.is_empty() {
                    v[zeros[i.index(zeros.len())]] = b'+';
                }
            }
        }
        Tamper::Upper => pairs.iter_mut().for_each(|(_, v)| {
            if v.len() == 64 {
                v.make_ascii_uppercase()
            }
        }),
        Tamper::ExtraEntry(e) => {
            for (k, v) in pairs.iter_mut() {
                if k == "webhook-signature" {
                    let mut x = b"v1,".to_vec();
                    x.extend_from_slice(e);
                    x.push(b' ');
                    x.extend_from_slice(v);
                    *v = x;
                }
            }
        }
        _ => {}
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.insert(k, v);
        }
    }
    let c = VerifyCase { body, ..c };
    let got = verifier.verify(&headers, &c.body, NOW_S);
    let want = authentic(&c, &keys, &headers);
    match (&got, want) {
        (Ok(v), true) => {
            let want_id = c
                .hex
                .is_none()
                .then(|| headers["webhook-id"].to_str().expect("checked").to_owned());
            if v.webhook_id != want_id {
                return Err(format!("webhook_id {:?}", v.webhook_id));
            }
            Ok(())
        }
        (Err(_), false) => Ok(()),
        (Ok(_), false) => Err("accepted a delivery not signed by a configured secret".into()),
        (Err(e), true) => Err(format!("refused an authentic delivery: {e}")),
    }
}

pub fn run_verify(budget: Budget) -> Outcome {
    drive("webhook_verify", budget, verify_cases(), check_verify)
}

/// A JSON value to put where an ID, a name or a payload is looked for.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => re("[0-9]{1,12}").prop_map(Value::from),
        2 => any::<String>().prop_map(Value::from),
        1 => re("[\u{0}-\u{1f}\u{7f}-\u{9f}\u{2028}\u{feff} a]{0,6}").prop_map(Value::from),
        1 => (250usize..1030).prop_map(|n| Value::from("x".repeat(n))),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!({"id": 1})),
        1 => Just(json!([])),
        1 => Just(Value::from("")),
    ]
}

/// One event of a delivery, Planning Center shaped: name, event ID, and a payload (an object,
/// or a string holding JSON, or neither) holding the record ID at `/data/id`.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: Value,
    pub event_id: Value,
    pub record_id: Value,
    /// 0: payload as a JSON string; 1: as an object; 2: an arbitrary value; 3: a string that is
    /// not JSON.
    pub payload_form: u8,
    pub other: Value,
}

#[derive(Debug, Clone)]
pub struct ExtractCase {
    /// Standard Webhooks-shaped configuration (one event per body, the header's ID).
    pub standard: bool,
    pub events: Vec<Event>,
    /// 0: `{"data":[...]}`; 1: `{"data":{one}}`; 2: `{"data": other}`; 3: raw bytes.
    pub shape: u8,
    pub raw: Vec<u8>,
    pub webhook_id: Option<String>,
}

fn event() -> impl Strategy<Value = Event> {
    let names = prop_oneof![
        4 => prop::sample::select(
            &[
                "people.v2.events.person.created",
                "people.v2.events.person.updated",
                "people.v2.events.person.destroyed",
                "giving.v2.events.donation.created",
                "giving.v2.events.donation.destroyed",
            ][..]
        )
        .prop_map(Value::from),
        1 => scalar(),
    ];
    (names, scalar(), scalar(), 0u8..4, scalar()).prop_map(
        |(name, event_id, record_id, payload_form, other)| Event {
            name,
            event_id,
            record_id,
            payload_form,
            other,
        },
    )
}

pub fn extract_cases() -> impl Strategy<Value = ExtractCase> {
    (
        any::<bool>(),
        prop::collection::vec(event(), 0..8),
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        prop::collection::vec(any::<u8>(), 0..64),
        prop::option::of(prop_oneof![re("msg_[a-z0-9]{1,10}"), re("[ -~]{0,300}")]),
    )
        .prop_map(|(standard, events, shape, raw, webhook_id)| ExtractCase {
            standard,
            events,
            shape,
            raw,
            webhook_id,
        })
}

fn event_json(e: &Event, standard: bool) -> Value {
    let inner = json!({"data": {"id": e.record_id, "type": "Person"}});
    let payload = match e.payload_form {
        0 => Value::from(inner.to_string()),
        1 => inner,
        2 => e.other.clone(),
        _ => Value::from("{not json"),
    };
    if standard {
        json!({"type": e.name, "data": payload["data"].clone()})
    } else {
        json!({"id": e.event_id, "type": "EventDelivery",
            "attributes": {"name": e.name, "attempt": 1, "payload": payload}})
    }
}

/// The embedded configuration, and a Standard Webhooks-shaped copy of its `[webhooks]`.
fn configs() -> (Config, WebhookConfig, WebhookConfig) {
    let cfg = Config::from_toml_str(EMBEDDED, Path::new("endpoints.toml")).expect("embedded");
    let pco = cfg.webhooks.clone().expect("[webhooks]");
    let mut std_cfg = pco.clone();
    std_cfg.events_pointer = String::new();
    std_cfg.event_name_pointer = "/type".into();
    std_cfg.event_id_pointer = String::new();
    std_cfg.payload_pointer = String::new();
    (cfg, pco, std_cfg)
}

/// The property of one delivery's extraction.
pub fn check_extract(
    c: ExtractCase,
    cfg: &Config,
    pco: &WebhookConfig,
    std_cfg: &WebhookConfig,
) -> Result<(), String> {
    let wh = if c.standard { std_cfg } else { pco };
    let events: Vec<Value> = c.events.iter().map(|e| event_json(e, c.standard)).collect();
    let body: Vec<u8> = match (c.standard, c.shape) {
        (_, 3) => c.raw.clone(),
        (true, _) => events
            .first()
            .cloned()
            .unwrap_or(json!({}))
            .to_string()
            .into_bytes(),
        (false, 0) => json!({ "data": events }).to_string().into_bytes(),
        (false, 1) => json!({"data": events.first().cloned().unwrap_or(json!({}))})
            .to_string()
            .into_bytes(),
        (false, _) => json!({"data": c.events.first().map(|e| e.other.clone())})
            .to_string()
            .into_bytes(),
    };
    let map = EventMap::new(cfg);
    let got = extract(wh, &map, &body, c.webhook_id.as_deref());
    // How many events the body holds, as serde_json reads it.
    let expected = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|root| {
            if wh.events_pointer.is_empty() {
                return Some(1);
            }
            match root.pointer(&wh.events_pointer) {
                Some(Value::Array(a)) => Some(a.len()),
                Some(Value::Object(_)) => Some(1),
                _ => None,
            }
        });
    let out = match (got, expected) {
        (Ok(out), Some(_)) => out,
        (Err(_), None) => return Ok(()),
        (got, expected) => {
            return Err(format!(
                "extract says {:?}; the body holds {expected:?} events",
                got.map(|o| o.events.len())
            ));
        }
    };
    let n = out.events.len() + out.ignored.len() + out.malformed.len();
    if Some(n) != expected {
        return Err(format!(
            "{n} events accounted for, the body holds {expected:?}"
        ));
    }
    for ev in &out.events {
        crate::source::validate_id(&ev.id).map_err(|e| format!("queued ID {:?}: {e}", ev.id))?;
        if ev.event_id.is_empty()
            || ev.event_id.len() > MAX_EVENT_ID
            || ev.event_id.chars().any(char::is_control)
        {
            return Err(format!("queued event ID {:?}", ev.event_id));
        }
        let entity = cfg
            .entity(&ev.entity)
            .ok_or_else(|| format!("unknown entity {}", ev.entity))?;
        if !entity.supports_webhooks || entity.webhook_events.get(&ev.name) != Some(&ev.action) {
            return Err(format!("{} is not mapped to {}", ev.name, ev.entity));
        }
    }
    Ok(())
}

pub fn run_extract(budget: Budget) -> Outcome {
    let (cfg, pco, std_cfg) = configs();
    drive("webhook_extract", budget, extract_cases(), |c| {
        check_extract(c, &cfg, &pco, &std_cfg)
    })
}

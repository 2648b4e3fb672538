//! A record's JSON ↔ its DynamoDB attribute: a native value when it can be one, else
//! zlib-compressed JSON. Pure functions (SDK value types only, no IO).
//!
//! Which payloads are stored at all is the size rule of both stores, `core::size`:
//! - JSON text up to [`INLINE_PAYLOAD_MAX_BYTES`] is always stored;
//! - longer JSON is stored when its zlib compression (default level) fits in
//!   [`COMPRESSED_PAYLOAD_MAX_BYTES`](size::COMPRESSED_PAYLOAD_MAX_BYTES), else the upsert fails with `StoreError::TooLarge`
//!   (DynamoDB's item limit is 400 KB).
//!
//! How it is stored (DynamoDB only):
//! - `payload`, a native value (objects → M, arrays → L, strings → S, numbers → N,
//!   booleans → BOOL, null → NULL), readable by the application, when the JSON is at most
//!   [`INLINE_PAYLOAD_MAX_BYTES`], every number is one DynamoDB can hold (38 significant digits,
//!   magnitude 1e-130 to 1e126), lists and maps nest at most [`MAX_NESTING`] levels, no object has an
//!   empty key, and the whole item is estimated at most [`INLINE_ITEM_MAX_BYTES`] (DynamoDB's
//!   own size accounting: a list of small numbers is larger than its JSON text);
//! - otherwise `payload_z` (B, zlib of the JSON text exactly as the source sent it) with
//!   `payload_encoding = "zlib-json"`.
//!
//! Read back, a native payload is the same JSON value up to DynamoDB's number normalisation
//! (`2.0` comes back as `2`, `1e3` as `1000`); a compressed one is byte-exact.

use crate::core::size::{self, INLINE_PAYLOAD_MAX_BYTES};
use crate::error::StoreError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;

/// A native payload is used only when the whole item is estimated at most this large
/// (DynamoDB's limit is 400 KB = 409,600 bytes; the margin covers the estimate's slack).
pub const INLINE_ITEM_MAX_BYTES: usize = 350 * 1024;
/// Lists and maps nest at most this deep, the payload attribute being level 1: DynamoDB counts
/// 32 levels including the scalars inside (measured on DynamoDB Local 3.3: 31 nested lists
/// around a value are accepted, 32 nested lists are refused, even empty).
pub const MAX_NESTING: usize = 31;
/// Inflating more than this from `payload_z` is refused (a corrupt item, not a record).
const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// How a payload is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredPayload {
    /// `payload`: the JSON as a native DynamoDB value.
    Native(AttributeValue),
    /// `payload_z`: zlib-compressed JSON text.
    Compressed(Vec<u8>),
}

/// Choose and build the stored form of `raw` (the record's JSON text), or `TooLarge`.
/// `other_bytes` is the estimated size of the item's other attributes.
pub fn encode(key: &str, raw: &str, other_bytes: usize) -> Result<StoredPayload, StoreError> {
    if raw.len() <= INLINE_PAYLOAD_MAX_BYTES
        && let Ok(value) = serde_json::from_str::<Value>(raw)
        && let Some((av, size)) = to_attribute(&value, 1)
        && size.saturating_add(other_bytes) <= INLINE_ITEM_MAX_BYTES
    {
        return Ok(StoredPayload::Native(av));
    }
    let z =
        size::compress(raw.as_bytes()).map_err(|e| StoreError::backend("compress payload", e))?;
    size::check_compressed(key, raw.len(), z.len())?;
    Ok(StoredPayload::Compressed(z))
}

/// The JSON value of a stored item's payload: `payload` (native) or `payload_z` (with
/// `payload_encoding = "zlib-json"`). Errors are messages for `StoreError::Decode`.
pub fn decode(
    native: Option<&AttributeValue>,
    compressed: Option<&Blob>,
    encoding: Option<&str>,
) -> Result<Value, String> {
    match (native, compressed) {
        (Some(av), None) => from_attribute(av, 1),
        (None, Some(z)) => {
            if encoding != Some(super::schema::PAYLOAD_ENCODING_ZLIB_JSON) {
                return Err(format!(
                    "payload_z with payload_encoding {encoding:?}, want \"zlib-json\""
                ));
            }
            let mut json = Vec::new();
            flate2::read::ZlibDecoder::new(z.as_ref())
                .take(MAX_INFLATED_BYTES + 1)
                .read_to_end(&mut json)
                .map_err(|e| format!("payload_z does not inflate: {e}"))?;
            if json.len() as u64 > MAX_INFLATED_BYTES {
                return Err(format!(
                    "payload_z inflates to more than {MAX_INFLATED_BYTES} bytes"
                ));
            }
            serde_json::from_slice(&json).map_err(|e| format!("payload_z is not JSON: {e}"))
        }
        (Some(_), Some(_)) => Err("both payload and payload_z are present".into()),
        (None, None) => Err("neither payload nor payload_z is present".into()),
    }
}

/// The native DynamoDB value of `v` and its size as DynamoDB counts it, or `None` when `v`
/// cannot be one (a number DynamoDB cannot hold, nesting too deep, an empty object key).
/// `depth` is the nesting level of `v` (the payload attribute is level 1).
pub fn to_attribute(v: &Value, depth: usize) -> Option<(AttributeValue, usize)> {
    Some(match v {
        Value::Null => (AttributeValue::Null(true), 1),
        Value::Bool(b) => (AttributeValue::Bool(*b), 1),
        Value::String(s) => (AttributeValue::S(s.clone()), s.len()),
        Value::Number(n) => {
            let text = number_text(n)?;
            let size = number_size(&text);
            (AttributeValue::N(text), size)
        }
        Value::Array(items) => {
            if depth > MAX_NESTING {
                return None;
            }
            let mut size = 3;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let (av, s) = to_attribute(item, depth + 1)?;
                size += 1 + s;
                out.push(av);
            }
            (AttributeValue::L(out), size)
        }
        Value::Object(map) => {
            if depth > MAX_NESTING {
                return None;
            }
            let mut size = 3;
            let mut out = HashMap::with_capacity(map.len());
            for (k, item) in map {
                if k.is_empty() {
                    return None;
                }
                let (av, s) = to_attribute(item, depth + 1)?;
                size += 1 + k.len() + s;
                out.insert(k.clone(), av);
            }
            (AttributeValue::M(out), size)
        }
    })
}

/// The text of a JSON number for an `N` attribute, when DynamoDB can hold it (up to 38
/// significant digits; magnitude 1e-130 up to 1e126). Integers (at most 20 digits) always can.
fn number_text(n: &serde_json::Number) -> Option<String> {
    if n.is_i64() || n.is_u64() {
        return Some(n.to_string());
    }
    let f = n.as_f64()?;
    let a = f.abs();
    if !f.is_finite() || (a != 0.0 && !(1e-130..1e126).contains(&a)) {
        return None;
    }
    // The shortest text that reads back as the same f64 (at most 17 significant digits).
    Some(n.to_string())
}

/// DynamoDB's size of a number: about one byte per two significant digits, plus one.
/// Counting every digit of the text (exponent included) makes this an upper bound.
fn number_size(text: &str) -> usize {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    digits.div_ceil(2) + 1
}

/// The JSON value of a native DynamoDB value (`depth` as in [`to_attribute`]).
pub fn from_attribute(av: &AttributeValue, depth: usize) -> Result<Value, String> {
    if depth > 2 * MAX_NESTING {
        return Err("payload nested too deep".into());
    }
    Ok(match av {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => Value::Number(parse_number(n)?),
        AttributeValue::L(items) => Value::Array(
            items
                .iter()
                .map(|i| from_attribute(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        AttributeValue::M(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), from_attribute(v, depth + 1)?);
            }
            Value::Object(out)
        }
        AttributeValue::Ss(items) => {
            Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
        }
        AttributeValue::Ns(items) => Value::Array(
            items
                .iter()
                .map(|n| parse_number(n).map(Value::Number))
                .collect::<Result<_, _>>()?,
        ),
        other => {
            return Err(format!(
                "payload holds a value JSON has no type for: {other:?}"
            ));
        }
    })
}

/// A DynamoDB number as JSON: an integer when it is one that fits 64 bits, else a float.
fn parse_number(text: &str) -> Result<serde_json::Number, String> {
    let t = text.trim();
    if !t.contains(['.', 'e', 'E']) {
        if let Ok(u) = t.parse::<u64>() {
            return Ok(u.into());
        }
        if let Ok(i) = t.parse::<i64>() {
            return Ok(i.into());
        }
    }
    t.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .ok_or_else(|| format!("number {text:?} is not a JSON number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::size::{COMPRESSED_PAYLOAD_MAX_BYTES, compress};
    use serde_json::json;

    fn native(v: &Value) -> AttributeValue {
        match encode("k", &v.to_string(), 0).expect("encode") {
            StoredPayload::Native(av) => av,
            StoredPayload::Compressed(_) => panic!("{v} should be native"),
        }
    }

    #[test]
    fn json_types_map_to_native_types() {
        let v = json!({"s": "x", "n": 1, "f": 1.5, "b": true, "z": null, "l": [1, "a"], "m": {"k": {}}});
        let AttributeValue::M(m) = native(&v) else {
            panic!("an object is a map");
        };
        assert_eq!(m["s"], AttributeValue::S("x".into()));
        assert_eq!(m["n"], AttributeValue::N("1".into()));
        assert_eq!(m["f"], AttributeValue::N("1.5".into()));
        assert_eq!(m["b"], AttributeValue::Bool(true));
        assert_eq!(m["z"], AttributeValue::Null(true));
        assert_eq!(
            m["l"],
            AttributeValue::L(vec![
                AttributeValue::N("1".into()),
                AttributeValue::S("a".into())
            ])
        );
        assert_eq!(
            m["m"],
            AttributeValue::M(HashMap::from([(
                "k".into(),
                AttributeValue::M(HashMap::new())
            )]))
        );
        assert_eq!(from_attribute(&AttributeValue::M(m), 1).expect("decode"), v);
    }

    #[test]
    fn unrepresentable_payloads_are_compressed_and_round_trip() {
        // 32 nested lists: one level too many.
        let mut deep = json!("leaf");
        for _ in 0..=MAX_NESTING {
            deep = json!([deep]);
        }
        let cases = [
            json!({"": "empty key"}),
            json!({"huge": 1e200}),
            json!({"tiny": 1e-200}),
            deep.clone(),
            json!({"zeros": vec![0; 170 * 1024]}),
        ];
        for v in cases {
            let raw = v.to_string();
            let StoredPayload::Compressed(z) = encode("k", &raw, 0).expect("encode") else {
                panic!("{} should be compressed", &raw[..raw.len().min(40)]);
            };
            let back = decode(None, Some(&Blob::new(z)), Some("zlib-json")).expect("decode");
            assert_eq!(back, v);
        }
        // 31 nested lists around a value are fine as a native value.
        let Value::Array(mut inner) = deep else {
            panic!("array")
        };
        let shallower = inner.pop().expect("one item");
        assert!(matches!(
            encode("k", &shallower.to_string(), 0),
            Ok(StoredPayload::Native(_))
        ));
    }

    #[test]
    fn encode_applies_the_size_rule() {
        let big_compressible = format!("{{\"a\":\"{}\"}}", "ab".repeat(300 * 1024));
        assert!(matches!(
            encode("k", &big_compressible, 0),
            Ok(StoredPayload::Compressed(_))
        ));
        let noise = crate::core::size::noise(600 * 1024);
        let raw = format!("{{\"a\":\"{noise}\"}}");
        match encode("people#1", &raw, 0) {
            Err(StoreError::TooLarge { key, bytes }) => {
                assert_eq!(key, "people#1");
                assert!(bytes > COMPRESSED_PAYLOAD_MAX_BYTES);
            }
            other => panic!("want TooLarge, got {other:?}"),
        }
        // Incompressible but within the inline limit: stored (compressed when not native).
        let raw = format!("{{\"a\":\"{}\"}}", &noise[..340 * 1024]);
        assert!(encode("k", &raw, 20 * 1024).is_ok());
    }

    #[test]
    fn numbers_read_back_as_json_numbers() {
        assert_eq!(parse_number("42").expect("n"), serde_json::Number::from(42));
        assert_eq!(
            parse_number("-42").expect("n"),
            serde_json::Number::from(-42)
        );
        assert_eq!(
            parse_number("18446744073709551615").expect("n"),
            serde_json::Number::from(u64::MAX)
        );
        assert_eq!(parse_number("1.5").expect("n").as_f64(), Some(1.5));
        assert_eq!(parse_number("1E+30").expect("n").as_f64(), Some(1e30));
        assert!(parse_number("abc").is_err());
        assert!(from_attribute(&AttributeValue::B(Blob::new(vec![1])), 1).is_err());
    }

    #[test]
    fn corrupt_compressed_payloads_are_errors() {
        assert!(decode(None, Some(&Blob::new(vec![1, 2, 3])), Some("zlib-json")).is_err());
        let z = compress(b"{\"a\":1}").expect("compress");
        assert!(decode(None, Some(&Blob::new(z.clone())), Some("gzip")).is_err());
        assert!(
            decode(
                None,
                Some(&Blob::new(compress(b"not json").expect("compress"))),
                Some("zlib-json")
            )
            .is_err()
        );
        assert!(decode(None, None, None).is_err());
        assert!(
            decode(
                Some(&AttributeValue::Null(true)),
                Some(&Blob::new(z)),
                Some("zlib-json")
            )
            .is_err()
        );
    }
}

//! Webhook signatures, checked before the body is parsed, in constant time, against every
//! configured secret (rotation: old and new accepted together).
//!
//! - `HmacHeader`: HMAC-SHA256 of the raw body, hex or base64, in one header (Planning Center).
//! - `StandardWebhooks`: HMAC-SHA256 of `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed by
//!   the base64 part of a `whsec_` secret, sent as space-separated `v1,<base64>` entries; a
//!   timestamp outside the tolerance is refused (replay window).

use crate::config::{SignatureEncoding, SignatureScheme};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature was refused (all answered 401). Never holds a secret or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed header {header}: {reason}")]
    MalformedHeader {
        header: &'static str,
        reason: &'static str,
    },
    #[error("timestamp {skew_s} s away from now (tolerance {tolerance_s} s)")]
    StaleTimestamp { skew_s: i64, tolerance_s: u64 },
    #[error("no signature matches any configured secret")]
    Mismatch,
}

/// A secret that cannot be used: found at cold start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("no webhook secret configured")]
    Empty,
    #[error("secret #{index}: a Standard Webhooks secret is `whsec_` + base64")]
    NotWhsec { index: usize },
    #[error("secret #{index}: the part after `whsec_` is not base64")]
    BadBase64 { index: usize },
}

/// What a valid signature tells about the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Standard Webhooks' `webhook-id` (stable across the sender's retries).
    pub webhook_id: Option<String>,
}

/// Verifies deliveries under one scheme with one or more keys.
#[derive(Clone)]
pub struct Verifier {
    scheme: SignatureScheme,
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Split a secrets value (whitespace- or comma-separated) into its secrets.
pub fn split_secrets(value: &str) -> Vec<&str> {
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .collect()
}

/// The key bytes of a `whsec_` secret.
pub fn whsec_key(secret: &str) -> Option<Vec<u8>> {
    B64.decode(secret.strip_prefix("whsec_")?).ok()
}

const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Longest `webhook-id` accepted (it becomes a dedup key).
const MAX_WEBHOOK_ID: usize = 256;

impl Verifier {
    /// `secrets`: the configured secrets (raw strings; `whsec_...` for Standard Webhooks).
    pub fn new(scheme: SignatureScheme, secrets: &[&str]) -> Result<Self, SecretFormatError> {
        if secrets.is_empty() {
            return Err(SecretFormatError::Empty);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(index, s)| match &scheme {
                SignatureScheme::HmacHeader { .. } => Ok(s.as_bytes().to_vec()),
                SignatureScheme::StandardWebhooks { .. } => {
                    if !s.starts_with("whsec_") {
                        return Err(SecretFormatError::NotWhsec { index });
                    }
                    whsec_key(s).ok_or(SecretFormatError::BadBase64 { index })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier { scheme, keys })
    }

    pub fn scheme(&self) -> &SignatureScheme {
        &self.scheme
    }

    /// Check `body` against the headers. `now_s`: the current Unix time in seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: i64,
    ) -> Result<Verified, SignatureError> {
        match &self.scheme {
            SignatureScheme::HmacHeader { header, encoding } => {
                let value = headers
                    .get(header.as_str())
                    .ok_or(SignatureError::MissingHeader("signature"))?;
                let text = value
                    .to_str()
                    .map_err(|_| SignatureError::MalformedHeader {
                        header: "signature",
                        reason: "not ASCII",
                    })?;
                let given =
                    decode_mac(text.trim(), *encoding).ok_or(SignatureError::MalformedHeader {
                        header: "signature",
                        reason: "not a hex or base64 HMAC-SHA256",
                    })?;
                if self.keys.iter().any(|k| mac_matches(k, &[body], &given)) {
                    Ok(Verified { webhook_id: None })
                } else {
                    Err(SignatureError::Mismatch)
                }
            }
            SignatureScheme::StandardWebhooks { tolerance_seconds } => {
                let id = header_str(headers, WEBHOOK_ID)?;
                if id.is_empty() || id.len() > MAX_WEBHOOK_ID {
                    return Err(SignatureError::MalformedHeader {
                        header: WEBHOOK_ID,
                        reason: "empty or longer than 256 bytes",
                    });
                }
                let ts_text = header_str(headers, WEBHOOK_TIMESTAMP)?;
                let ts: i64 =
                    ts_text
                        .trim()
                        .parse()
                        .map_err(|_| SignatureError::MalformedHeader {
                            header: WEBHOOK_TIMESTAMP,
                            reason: "not whole Unix seconds",
                        })?;
                let sigs = header_str(headers, WEBHOOK_SIGNATURE)?;
                // The time window first: a stale delivery is refused whatever it carries.
                let skew = now_s.saturating_sub(ts);
                if skew.unsigned_abs() > *tolerance_seconds {
                    return Err(SignatureError::StaleTimestamp {
                        skew_s: skew,
                        tolerance_s: *tolerance_seconds,
                    });
                }
                let candidates: Vec<Vec<u8>> = sigs
                    .split(' ')
                    .filter_map(|entry| entry.strip_prefix("v1,"))
                    .filter_map(|b| B64.decode(b).ok())
                    .filter(|m| m.len() == 32)
                    .collect();
                if candidates.is_empty() {
                    return Err(SignatureError::MalformedHeader {
                        header: WEBHOOK_SIGNATURE,
                        reason: "no v1 signature",
                    });
                }
                let prefix = format!("{id}.{ts_text}.");
                let matched = self.keys.iter().any(|k| {
                    candidates
                        .iter()
                        .any(|c| mac_matches(k, &[prefix.as_bytes(), body], c))
                });
                if matched {
                    Ok(Verified {
                        webhook_id: Some(id.to_owned()),
                    })
                } else {
                    Err(SignatureError::Mismatch)
                }
            }
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .ok_or(SignatureError::MissingHeader(name))?
        .to_str()
        .map_err(|_| SignatureError::MalformedHeader {
            header: name,
            reason: "not ASCII",
        })
}

fn decode_mac(text: &str, encoding: SignatureEncoding) -> Option<Vec<u8>> {
    let bytes = match encoding {
        SignatureEncoding::Hex => decode_hex(text)?,
        SignatureEncoding::Base64 => B64.decode(text).ok()?,
    };
    (bytes.len() == 32).then_some(bytes)
}

#[cfg(any(test, feature = "testing"))]
thread_local! {
    /// Tests only: hex signatures decoded by `u8::from_str_radix` alone, which takes a `+` sign
    /// (`+f` for `0f`): the negative control of the hex-digit check (`fuzz::webhook`).
    pub(crate) static LENIENT_HEX: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn hex_digits_checked() -> bool {
    #[cfg(any(test, feature = "testing"))]
    {
        !LENIENT_HEX.with(std::cell::Cell::get)
    }
    #[cfg(not(any(test, feature = "testing")))]
    {
        true
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    // Hex digits only: `from_str_radix` alone also takes a sign, so that `+f` would pass for
    // `0f` (a second spelling of one signature; found by `fuzz::webhook`).
    if hex_digits_checked() && !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// HMAC-SHA256 of the concatenated `parts`, compared with `given` in constant time
/// (`Mac::verify_slice`).
fn mac_matches(key: &[u8], parts: &[&[u8]], given: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(given).is_ok()
}

/// HMAC-SHA256 of the concatenated `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers a sender would attach (for `syncctl sign`, tests and benchmarks).
/// `webhook_id`/`timestamp_s` are used by Standard Webhooks only.
pub fn sign(
    scheme: &SignatureScheme,
    secret: &str,
    body: &[u8],
    webhook_id: &str,
    timestamp_s: i64,
) -> Result<Vec<(String, String)>, SecretFormatError> {
    Ok(match scheme {
        SignatureScheme::HmacHeader { header, encoding } => {
            let mac = hmac_sha256(secret.as_bytes(), &[body]);
            let value = match encoding {
                SignatureEncoding::Hex => to_hex(&mac),
                SignatureEncoding::Base64 => B64.encode(mac),
            };
            vec![(header.clone(), value)]
        }
        SignatureScheme::StandardWebhooks { .. } => {
            let key = whsec_key(secret).ok_or(SecretFormatError::NotWhsec { index: 0 })?;
            let ts = timestamp_s.to_string();
            let mac = hmac_sha256(
                &key,
                &[webhook_id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            vec![
                (WEBHOOK_ID.to_owned(), webhook_id.to_owned()),
                (WEBHOOK_TIMESTAMP.to_owned(), ts),
                (
                    WEBHOOK_SIGNATURE.to_owned(),
                    format!("v1,{}", B64.encode(mac)),
                ),
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        decode_hex(s).unwrap()
    }

    fn headers(pairs: &[(String, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn pco(encoding: SignatureEncoding) -> SignatureScheme {
        SignatureScheme::HmacHeader {
            header: "X-PCO-Webhooks-Authenticity".into(),
            encoding,
        }
    }

    fn std_scheme() -> SignatureScheme {
        SignatureScheme::StandardWebhooks {
            tolerance_seconds: 300,
        }
    }

    /// RFC 4231, test cases 1-4, 6 and 7 (case 5 is a truncated MAC).
    #[test]
    fn rfc4231_hmac_sha256_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                (1u8..=25).collect(),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(to_hex(&hmac_sha256(&key, &[&data])), expected);
            // The verifier's path agrees, and one flipped bit fails it.
            let mut want = hex(expected);
            assert!(mac_matches(&key, &[&data], &want));
            want[31] ^= 1;
            assert!(!mac_matches(&key, &[&data], &want));
        }
    }

    /// The Standard Webhooks specification's published example.
    #[test]
    fn standard_webhooks_published_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signed = sign(
            &std_scheme(),
            secret,
            body,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
        )
        .unwrap();
        assert_eq!(
            signed[2].1,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let v = Verifier::new(std_scheme(), &[secret]).unwrap();
        let h = headers(&[
            ("webhook-id".into(), "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            ("webhook-timestamp".into(), "1614265330".into()),
            (
                "webhook-signature".into(),
                "v1,bm9ldHUNTWF0Y2hpbmc= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
            ),
        ]);
        assert_eq!(
            v.verify(&h, body, 1614265330 + 10)
                .unwrap()
                .webhook_id
                .as_deref(),
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek")
        );
        // Outside the tolerance, either way.
        assert!(matches!(
            v.verify(&h, body, 1614265330 + 301),
            Err(SignatureError::StaleTimestamp { skew_s: 301, .. })
        ));
        assert!(matches!(
            v.verify(&h, body, 1614265330 - 301),
            Err(SignatureError::StaleTimestamp { skew_s: -301, .. })
        ));
        // A changed body, id or timestamp fails.
        assert_eq!(
            v.verify(&h, br#"{"test": 2432232315}"#, 1614265330),
            Err(SignatureError::Mismatch)
        );
        let mut other_id = h.clone();
        other_id.insert("webhook-id", "msg_other".parse().unwrap());
        assert_eq!(
            v.verify(&other_id, body, 1614265330),
            Err(SignatureError::Mismatch)
        );
        let mut other_ts = h.clone();
        other_ts.insert("webhook-timestamp", "1614265331".parse().unwrap());
        assert_eq!(
            v.verify(&other_ts, body, 1614265330),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn hmac_header_hex_and_base64_with_rotation() {
        let body = br#"{"data":[]}"#;
        for enc in [SignatureEncoding::Hex, SignatureEncoding::Base64] {
            let scheme = pco(enc);
            let old = sign(&scheme, "old-secret", body, "", 0).unwrap();
            let new = sign(&scheme, "new-secret", body, "", 0).unwrap();
            let stranger = sign(&scheme, "stranger", body, "", 0).unwrap();
            let both = Verifier::new(scheme.clone(), &["old-secret", "new-secret"]).unwrap();
            let only_new = Verifier::new(scheme.clone(), &["new-secret"]).unwrap();
            assert!(both.verify(&headers(&old), body, 0).is_ok());
            assert!(both.verify(&headers(&new), body, 0).is_ok());
            assert_eq!(
                only_new.verify(&headers(&old), body, 0),
                Err(SignatureError::Mismatch)
            );
            assert_eq!(
                both.verify(&headers(&stranger), body, 0),
                Err(SignatureError::Mismatch)
            );
            assert_eq!(
                both.verify(&HeaderMap::new(), body, 0),
                Err(SignatureError::MissingHeader("signature"))
            );
            assert!(matches!(
                both.verify(&headers(&[(old[0].0.clone(), "zz".into())]), body, 0),
                Err(SignatureError::MalformedHeader { .. })
            ));
            // The header name is case-insensitive.
            let lower = vec![(old[0].0.to_lowercase(), old[0].1.clone())];
            assert!(both.verify(&headers(&lower), body, 0).is_ok());
        }
        // Planning Center's hex is lowercase; uppercase hex decodes to the same bytes.
        let scheme = pco(SignatureEncoding::Hex);
        let h = sign(&scheme, "s", body, "", 0).unwrap();
        let upper = vec![(h[0].0.clone(), h[0].1.to_uppercase())];
        let v = Verifier::new(scheme, &["s"]).unwrap();
        assert!(v.verify(&headers(&upper), body, 0).is_ok());
    }

    #[test]
    fn standard_webhooks_rotation_and_missing_parts() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = "whsec_c2Vjb25kLXNlY3JldC1mb3ItdGVzdHM=";
        let v = Verifier::new(std_scheme(), &[new, old]).unwrap();
        let body = b"{}";
        for s in [old, new] {
            let h = sign(&std_scheme(), s, body, "msg_1", 1000).unwrap();
            assert!(v.verify(&headers(&h), body, 1000).is_ok());
        }
        let h = sign(&std_scheme(), old, body, "msg_1", 1000).unwrap();
        for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut hm = headers(&h);
            hm.remove(missing);
            assert!(matches!(
                v.verify(&hm, body, 1000),
                Err(SignatureError::MissingHeader(m)) if m == missing
            ));
        }
        let mut v2 = headers(&h);
        v2.insert("webhook-signature", "v2,abc".parse().unwrap());
        assert!(matches!(
            v2.get("webhook-signature")
                .map(|_| v.verify(&v2, body, 1000)),
            Some(Err(SignatureError::MalformedHeader { .. }))
        ));
        assert_eq!(
            Verifier::new(std_scheme(), &["not-whsec"]).unwrap_err(),
            SecretFormatError::NotWhsec { index: 0 }
        );
        assert_eq!(
            Verifier::new(std_scheme(), &["whsec_!!!"]).unwrap_err(),
            SecretFormatError::BadBase64 { index: 0 }
        );
        assert_eq!(
            Verifier::new(std_scheme(), &[]).unwrap_err(),
            SecretFormatError::Empty
        );
    }

    #[test]
    fn secrets_split_on_whitespace_and_commas() {
        assert_eq!(split_secrets(" a, b\nc  "), vec!["a", "b", "c"]);
        assert!(split_secrets(" , ").is_empty());
    }

    #[test]
    fn debug_never_shows_keys() {
        let v = Verifier::new(pco(SignatureEncoding::Hex), &["hunter2"]).unwrap();
        let d = format!("{v:?}");
        assert!(!d.contains("hunter2") && d.contains("keys: 1"), "{d}");
    }
}

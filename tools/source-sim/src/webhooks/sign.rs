//! Signatures of deliveries (an implementation independent of the receiver's verifier).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::config::PcoEncoding;

/// The Planning Center header name.
pub const PCO_HEADER: &str = "X-PCO-Webhooks-Authenticity";

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The `X-PCO-Webhooks-Authenticity` value: HMAC-SHA256 keyed with the secret's bytes over the
/// raw body, in lowercase hex or standard base64.
pub fn pco(secret: &[u8], body: &[u8], encoding: PcoEncoding) -> String {
    let mac = hmac_sha256(secret, &[body]);
    match encoding {
        PcoEncoding::Hex => hex(&mac),
        PcoEncoding::Base64 => STANDARD.encode(mac),
    }
}

/// The Standard Webhooks `webhook-signature` value, `v1,<base64>`, over
/// `"{msg_id}.{timestamp}.{body}"` keyed with the decoded secret (`key`).
pub fn standard(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::{WebhookScheme, WebhookTarget};

    #[test]
    fn standard_webhooks_published_vector() {
        let t = WebhookTarget::new(
            "http://x/",
            WebhookScheme::Standard,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let sig = standard(
            &t.key().unwrap(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn pco_matches_rfc_4231_case_2_in_both_encodings() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let body = b"what do ya want for nothing?";
        assert_eq!(pco(b"Jefe", body, PcoEncoding::Hex), want);
        let b64 = pco(b"Jefe", body, PcoEncoding::Base64);
        assert_eq!(hex(&STANDARD.decode(b64).unwrap()), want);
    }
}

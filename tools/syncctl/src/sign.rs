//! `syncctl sign`: the signature headers a sender would attach to a body, for trying the ingest
//! by hand (`syncctl serve`, or the deployed URL) with `curl`. Standard Webhooks signatures hold
//! a timestamp and go stale after the tolerance (5 minutes), so committed samples cannot be
//! replayed: sign them afresh.

use clap::{Args, ValueEnum};
use shared::config::{SignatureEncoding, SignatureScheme};
use shared::webhook::signature::sign;
use std::io::Read;
use std::path::PathBuf;

/// The Planning Center signature header (the default configuration's).
pub const PCO_HEADER: &str = "X-PCO-Webhooks-Authenticity";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// HMAC-SHA256 of the body, lowercase hex, in X-PCO-Webhooks-Authenticity (Planning Center).
    PcoHex,
    /// The same in standard base64.
    PcoBase64,
    /// Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature; a `whsec_` secret.
    Standard,
}

impl Scheme {
    pub fn config(self) -> SignatureScheme {
        match self {
            Scheme::PcoHex => SignatureScheme::HmacHeader {
                header: PCO_HEADER.into(),
                encoding: SignatureEncoding::Hex,
            },
            Scheme::PcoBase64 => SignatureScheme::HmacHeader {
                header: PCO_HEADER.into(),
                encoding: SignatureEncoding::Base64,
            },
            Scheme::Standard => SignatureScheme::StandardWebhooks {
                tolerance_seconds: 300,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The signing secret (`whsec_<base64>` for --scheme standard). Prefer the variable to the
    /// flag: a flag stays in the shell history.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, value_enum, default_value_t = Scheme::PcoHex)]
    pub scheme: Scheme,
    /// The `webhook-id` (Standard Webhooks; default: a fresh `msg_<uuid>`).
    #[arg(long)]
    pub id: Option<String>,
    /// The `webhook-timestamp` in Unix seconds, or `now` (Standard Webhooks).
    #[arg(long, default_value = "now")]
    pub timestamp: String,
    /// Also print a curl command posting the body to this URL with the headers.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
    /// The body to sign, byte for byte; `-` reads standard input.
    #[arg(value_name = "BODY_FILE|-")]
    pub body: PathBuf,
}

/// What `sign` prints: the headers, then the curl command when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub curl: Option<String>,
}

impl Signed {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\n"));
        }
        if let Some(c) = &self.curl {
            out.push('\n');
            out.push_str(c);
            out.push('\n');
        }
        out
    }
}

pub fn run(args: SignArgs) -> Result<(), String> {
    let from_stdin = args.body.as_os_str() == "-";
    let body = if from_stdin {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        b
    } else {
        std::fs::read(&args.body).map_err(|e| format!("{}: {e}", args.body.display()))?
    };
    let now_s = shared::core::timefmt::now_us().div_euclid(1_000_000);
    let signed = signed(&args, &body, now_s)?;
    print!("{}", signed.render());
    Ok(())
}

/// Sign `body` as `args` say; `now_s` stands in for `--timestamp now`.
pub fn signed(args: &SignArgs, body: &[u8], now_s: i64) -> Result<Signed, String> {
    let timestamp = match args.timestamp.trim() {
        "now" => now_s,
        t => t
            .parse::<i64>()
            .map_err(|_| format!("--timestamp {t:?}: expected Unix seconds or `now`"))?,
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    let headers = sign(&args.scheme.config(), &args.secret, body, &id, timestamp).map_err(|e| {
        format!("{e} (for --scheme standard the secret is whsec_ followed by base64)")
    })?;
    let curl = args.curl.as_ref().map(|url| {
        let mut parts = vec![
            "curl -sS -i -X POST".to_owned(),
            shell_quote(url),
            "-H 'content-type: application/json'".to_owned(),
        ];
        for (k, v) in &headers {
            parts.push(format!("-H {}", shell_quote(&format!("{k}: {v}"))));
        }
        if args.body.as_os_str() == "-" {
            // Standard input is spent: the body goes inline (exact bytes, quoted).
            parts.push(format!(
                "--data-binary {}",
                shell_quote(&String::from_utf8_lossy(body))
            ));
        } else {
            parts.push(format!(
                "--data-binary {}",
                shell_quote(&format!("@{}", args.body.display()))
            ));
        }
        parts.join(" \\\n  ")
    });
    if args.curl.is_some() && args.body.as_os_str() == "-" && std::str::from_utf8(body).is_err() {
        return Err(
            "a body from standard input that is not UTF-8 cannot go inline in a curl \
                    command: pass it as a file"
                .into(),
        );
    }
    Ok(Signed { headers, curl })
}

/// POSIX shell single quotes: `it's` → `'it'\''s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use shared::webhook::{SignatureError, Verifier};

    fn args(scheme: Scheme, secret: &str) -> SignArgs {
        SignArgs {
            secret: secret.into(),
            scheme,
            id: Some("msg_test".into()),
            timestamp: "now".into(),
            curl: None,
            body: "body.json".into(),
        }
    }

    fn header_map(h: &[(String, String)]) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        for (k, v) in h {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    /// Parse `sign`'s printed output back into headers, as a user copying it would.
    fn parse(printed: &str) -> Vec<(String, String)> {
        printed
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("name: value");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    const BODY: &[u8] = br#"{"data":[{"id":"e1","attributes":{"name":"x","payload":"{}"}}]}"#;

    #[test]
    fn every_scheme_verifies_and_a_changed_body_or_secret_does_not() {
        let whsec = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef")
        );
        let now = 1_700_000_000;
        for (scheme, secret) in [
            (Scheme::PcoHex, "s3cret"),
            (Scheme::PcoBase64, "s3cret"),
            (Scheme::Standard, whsec.as_str()),
        ] {
            let printed = signed(&args(scheme, secret), BODY, now).unwrap().render();
            let headers = header_map(&parse(&printed));
            let v = Verifier::new(scheme.config(), &[secret]).unwrap();
            assert!(
                v.verify(&headers, BODY, now).is_ok(),
                "{scheme:?}: {printed}"
            );
            assert_eq!(
                v.verify(&headers, b"{}", now).unwrap_err(),
                SignatureError::Mismatch,
                "{scheme:?}: another body"
            );
            let other = if scheme == Scheme::Standard {
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(b"another key")
                )
            } else {
                "other".to_owned()
            };
            let v2 = Verifier::new(scheme.config(), &[other.as_str()]).unwrap();
            assert!(
                v2.verify(&headers, BODY, now).is_err(),
                "{scheme:?}: another secret"
            );
        }
    }

    #[test]
    fn pco_hex_prints_one_lowercase_hex_header() {
        let s = signed(&args(Scheme::PcoHex, "s3cret"), BODY, 0).unwrap();
        assert_eq!(s.headers.len(), 1);
        assert_eq!(s.headers[0].0, PCO_HEADER);
        assert_eq!(s.headers[0].1.len(), 64);
        assert!(
            s.headers[0]
                .1
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn standard_uses_the_given_id_and_timestamp_and_goes_stale() {
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(b"k")
        );
        let mut a = args(Scheme::Standard, &secret);
        a.timestamp = "1700000000".into();
        let s = signed(&a, BODY, 42).unwrap();
        let get = |n: &str| {
            s.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("webhook-id").as_deref(), Some("msg_test"));
        assert_eq!(get("webhook-timestamp").as_deref(), Some("1700000000"));
        let v = Verifier::new(Scheme::Standard.config(), &[secret.as_str()]).unwrap();
        let h = header_map(&s.headers);
        assert!(v.verify(&h, BODY, 1_700_000_000 + 299).is_ok());
        assert!(matches!(
            v.verify(&h, BODY, 1_700_000_000 + 301),
            Err(SignatureError::StaleTimestamp { .. })
        ));
    }

    #[test]
    fn a_standard_scheme_refuses_a_secret_without_whsec_and_a_bad_timestamp_is_named() {
        let e = signed(&args(Scheme::Standard, "plain"), BODY, 0).unwrap_err();
        assert!(e.contains("whsec_"), "{e}");
        let mut a = args(Scheme::PcoHex, "s");
        a.timestamp = "yesterday".into();
        assert!(signed(&a, BODY, 0).unwrap_err().contains("--timestamp"));
    }

    #[test]
    fn curl_quotes_everything_and_points_at_the_file() {
        let mut a = args(Scheme::PcoHex, "s");
        a.curl = Some("http://127.0.0.1:3002/webhooks".into());
        a.body = "it's body.json".into();
        let s = signed(&a, BODY, 0).unwrap();
        let c = s.curl.unwrap().replace(" \\\n  ", " ");
        assert!(
            c.starts_with("curl -sS -i -X POST 'http://127.0.0.1:3002/webhooks'"),
            "{c}"
        );
        assert!(
            c.contains(&format!("-H '{PCO_HEADER}: {}'", s.headers[0].1)),
            "{c}"
        );
        assert!(c.contains(r"--data-binary '@it'\''s body.json'"), "{c}");

        a.body = "-".into();
        let c = signed(&a, b"{\"a\":\"it's\"}", 0)
            .unwrap()
            .curl
            .unwrap()
            .replace(" \\\n  ", " ");
        assert!(c.ends_with(r#"--data-binary '{"a":"it'\''s"}'"#), "{c}");
        assert!(
            signed(&a, &[0xff, 0xfe], 0).is_err(),
            "non-UTF-8 cannot go inline"
        );
    }
}

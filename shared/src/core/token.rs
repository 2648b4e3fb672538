//! Signed tokens: an HMAC-SHA256 tag over a purpose and the parts a token carries, under a key
//! only the functions hold (deployed: the stack's `TokenSigningSecret`, read at cold start;
//! locally: one generated per process). Generic: each kind of token names its own purpose
//! (`"reconcile-resume"`, later an OAuth `state`), and the purpose is bound into the MAC, so a
//! tag made for one purpose never verifies for another.
//!
//! A tag reads `t1.<key id>.<base64url MAC>`. The key id (12 hex digits of an HMAC of a fixed
//! label under the key) tells a token signed under another key (the secret was rotated since)
//! from a forged one; it reveals nothing usable about the key. The MAC is checked in constant
//! time (`Mac::verify_slice`).
//!
//! The MAC input is each of purpose and parts as a 4-byte big-endian length and its bytes:
//! no two different lists of parts give the same input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted (bytes): a generated `TokenSigningSecret` has 64 characters.
pub const MIN_KEY_BYTES: usize = 32;
const VERSION: &str = "t1";
const KEY_ID_LABEL: &[u8] = b"sync-engine token key id";

/// The signing key. Its `Debug` shows the key id only.
#[derive(Clone)]
pub struct TokenKey {
    id: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a key cannot be used (found at cold start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenKeyError {
    #[error("the token signing key has {len} bytes; it needs at least {MIN_KEY_BYTES}")]
    TooShort { len: usize },
}

/// Why a token's tag was refused. Never holds the key or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token that should carry a tag carries none.
    #[error("the token is not signed")]
    Unsigned,
    #[error("the token's signature is malformed")]
    Malformed,
    /// Signed under another key: the signing secret was rotated since (or the tag is forged;
    /// the two cannot be told apart, and neither is followed).
    #[error("the token was signed under another key (key id {key_id})")]
    OtherKey { key_id: String },
    /// Signed under this key's id, but the MAC does not match: altered or forged.
    #[error("the token's signature does not match: the token was altered or forged")]
    Mismatch,
}

impl TokenKey {
    /// A key from secret bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(secret: &[u8]) -> Result<Self, TokenKeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(TokenKeyError::TooShort { len: secret.len() });
        }
        let mut mac = mac(secret);
        mac.update(KEY_ID_LABEL);
        let digest = mac.finalize().into_bytes();
        let id = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(TokenKey {
            id,
            key: secret.to_vec(),
        })
    }

    /// A random key for one process (local runs, tests): 244 random bits from the operating
    /// system's generator (two v4 UUIDs), so tokens signed under it verify in this process only.
    pub fn generate() -> Self {
        let mut bytes = Vec::with_capacity(MIN_KEY_BYTES);
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        TokenKey::new(&bytes).expect("32 bytes")
    }

    /// The key id a tag carries.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac_of(&self, purpose: &str, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = mac(&self.key);
        for p in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// The tag of `parts` for `purpose`: `t1.<key id>.<MAC>`.
    pub fn sign(&self, purpose: &str, parts: &[&[u8]]) -> String {
        let tag = self.mac_of(purpose, parts).finalize().into_bytes();
        format!("{VERSION}.{}.{}", self.id, B64.encode(tag))
    }

    /// Check `tag` over `parts` for `purpose`, in constant time.
    pub fn verify(&self, purpose: &str, parts: &[&[u8]], tag: &str) -> Result<(), TokenError> {
        let mut it = tag.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(mac)) = (it.next(), it.next(), it.next()) else {
            return Err(TokenError::Malformed);
        };
        let mac = B64.decode(mac).map_err(|_| TokenError::Malformed)?;
        if mac.len() != 32 || key_id.is_empty() || key_id.len() > 64 {
            return Err(TokenError::Malformed);
        }
        if key_id != self.id {
            return Err(TokenError::OtherKey {
                key_id: key_id.chars().filter(char::is_ascii_alphanumeric).collect(),
            });
        }
        self.mac_of(purpose, parts)
            .verify_slice(&mac)
            .map_err(|_| TokenError::Mismatch)
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tag_verifies_only_for_its_purpose_parts_and_key() {
        let k = TokenKey::new(K).unwrap();
        let tag = k.sign("resume", &[b"people", b"run-1", b"{\"after\":\"9\"}"]);
        assert!(tag.starts_with(&format!("t1.{}.", k.id())), "{tag}");
        k.verify("resume", &[b"people", b"run-1", b"{\"after\":\"9\"}"], &tag)
            .unwrap();
        // Altered parts, another purpose, parts split differently: refused.
        for (purpose, parts) in [
            ("resume", [&b"people"[..], b"run-1", b"{\"after\":\"8\"}"]),
            ("resume", [b"people", b"run-2", b"{\"after\":\"9\"}"]),
            ("state", [b"people", b"run-1", b"{\"after\":\"9\"}"]),
            ("resume", [b"peopler", b"un-1", b"{\"after\":\"9\"}"]),
        ] {
            assert_eq!(
                k.verify(purpose, &parts, &tag),
                Err(TokenError::Mismatch),
                "{purpose} {parts:?}"
            );
        }
        // Another key with the same id cannot be had; another key is told apart by its id.
        let other = TokenKey::new(b"another key, 32 bytes or more....").unwrap();
        assert_ne!(other.id(), k.id());
        let theirs = other.sign("resume", &[b"x"]);
        assert_eq!(
            k.verify("resume", &[b"x"], &theirs),
            Err(TokenError::OtherKey {
                key_id: other.id().to_owned()
            })
        );
        // A forged tag under our key id.
        let forged = format!("t1.{}.{}", k.id(), B64.encode([7u8; 32]));
        assert_eq!(
            k.verify("resume", &[b"x"], &forged),
            Err(TokenError::Mismatch)
        );
        for bad in ["", "t1", "t1.x", "t2.a.b", &format!("t1.{}.%%", k.id())] {
            assert_eq!(
                k.verify("resume", &[b"x"], bad),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_long_enough_and_never_shown() {
        assert_eq!(
            TokenKey::new(b"short").unwrap_err(),
            TokenKeyError::TooShort { len: 5 }
        );
        let a = TokenKey::generate();
        let b = TokenKey::generate();
        assert_ne!(a.id(), b.id(), "generated keys differ");
        let k = TokenKey::new(K).unwrap();
        assert!(!format!("{k:?}").contains("0123"), "{k:?}");
        // The key id is stable for a key (a rotated secret changes it).
        assert_eq!(TokenKey::new(K).unwrap().id(), k.id());
    }
}

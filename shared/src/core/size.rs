//! The one size rule of the record stores, beside the version rule: what both stores accept and
//! what they refuse with `StoreError::TooLarge`, so that a record the local store takes is one
//! DynamoDB takes too. Both call these functions; the conformance suite checks they agree.
//!
//! - Keys: an item's key is `"<entity>#<id>"` ([`record_key`]). The ID is at most
//!   [`MAX_ID_BYTES`] (it is the sort key of DynamoDB's live-ID index, which holds 1024 bytes),
//!   the key at most [`MAX_PK_BYTES`] (DynamoDB's partition-key limit). A longer one is
//!   `TooLarge` with the ID's length in `bytes`: an SDK validation error would look retryable.
//!   A key that breaks the rule was never written, so reads and deletes of it find nothing.
//! - Payloads: JSON text up to [`INLINE_PAYLOAD_MAX_BYTES`] is always stored; longer JSON only
//!   when its zlib compression ([`compress`], default level) is at most
//!   [`COMPRESSED_PAYLOAD_MAX_BYTES`], else `TooLarge` with the compressed length in `bytes`
//!   (DynamoDB's item limit is 400 KB; how DynamoDB stores a payload is
//!   `adapters::dynamodb::payload`).
//!
//! Lengths are bytes of UTF-8, never characters. Pure: no IO (compression is in memory).

use crate::error::StoreError;
use std::io::Write;

/// JSON text up to this many bytes is never refused (DynamoDB may store it as a native map).
pub const INLINE_PAYLOAD_MAX_BYTES: usize = 350 * 1024;
/// Above [`INLINE_PAYLOAD_MAX_BYTES`], the zlib-compressed JSON must fit in this many bytes.
pub const COMPRESSED_PAYLOAD_MAX_BYTES: usize = 390 * 1024;
/// Longest ID, in bytes: DynamoDB's live-ID index has it as a sort key (1024 bytes at most).
pub const MAX_ID_BYTES: usize = 1024;
/// Longest item key (`"<entity>#<id>"`), in bytes: DynamoDB's partition-key limit.
pub const MAX_PK_BYTES: usize = 2048;

/// The item key of a record in both stores: `"<entity>#<id>"`.
pub fn record_key(entity: &str, id: &str) -> String {
    let mut k = String::with_capacity(entity.len() + 1 + id.len());
    k.push_str(entity);
    k.push('#');
    k.push_str(id);
    k
}

/// Whether a record of this entity and ID is within the key limits (without building the key).
pub fn key_fits(entity: &str, id: &str) -> bool {
    id.len() <= MAX_ID_BYTES && entity.len() + 1 + id.len() <= MAX_PK_BYTES
}

/// The key limits: `TooLarge` (key, the ID's length) when the ID or the key is too long.
pub fn check_key(entity: &str, id: &str) -> Result<(), StoreError> {
    if key_fits(entity, id) {
        return Ok(());
    }
    Err(StoreError::TooLarge {
        key: record_key(entity, id),
        bytes: id.len(),
    })
}

/// The payload rule on lengths, for a caller that has compressed the JSON already:
/// `TooLarge` (`key`, the compressed length) when the JSON is over the inline limit and its
/// compression over the compressed limit.
pub fn check_compressed(
    key: &str,
    json_bytes: usize,
    compressed_bytes: usize,
) -> Result<(), StoreError> {
    if json_bytes > INLINE_PAYLOAD_MAX_BYTES && compressed_bytes > COMPRESSED_PAYLOAD_MAX_BYTES {
        return Err(StoreError::TooLarge {
            key: key.to_owned(),
            bytes: compressed_bytes,
        });
    }
    Ok(())
}

/// The payload rule on the JSON text: compresses (counting the bytes only, keeping none) only
/// when the text is over the inline limit.
pub fn check_payload(entity: &str, id: &str, json: &str) -> Result<(), StoreError> {
    if json.len() <= INLINE_PAYLOAD_MAX_BYTES {
        return Ok(());
    }
    check_compressed(
        &record_key(entity, id),
        json.len(),
        zlib_len(json.as_bytes()),
    )
}

/// The key limits, then the payload rule: what a store checks of each record before it writes
/// anything of a batch.
pub fn check_record(entity: &str, id: &str, json: &str) -> Result<(), StoreError> {
    check_key(entity, id)?;
    check_payload(entity, id, json)
}

/// The zlib stream of `bytes` at the default level: the compression the payload rule measures.
pub fn compress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        flate2::Compression::default(),
    );
    enc.write_all(bytes)?;
    enc.finish()
}

/// Length of [`compress`]'s output, without keeping it.
fn zlib_len(bytes: &[u8]) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut enc = flate2::write::ZlibEncoder::new(Count(0), flate2::Compression::default());
    // Writing into a counter cannot fail; should it, the payload counts as incompressible.
    match enc.write_all(bytes).and_then(|()| enc.finish()) {
        Ok(c) => c.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
/// Base64-like text from a seeded xorshift: compresses to about 3/4 of its length.
pub(crate) fn noise(len: usize) -> String {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(x % 64) as usize],
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(())`, or the `bytes` of a `TooLarge` (any other error fails the test).
    fn verdict(r: Result<(), StoreError>) -> Result<(), usize> {
        match r {
            Ok(()) => Ok(()),
            Err(StoreError::TooLarge { bytes, .. }) => Err(bytes),
            Err(other) => panic!("want TooLarge, got {other:?}"),
        }
    }

    /// A JSON string of exactly `len` bytes of noise.
    fn noise_json(len: usize) -> String {
        format!("\"{}\"", noise(len - 2))
    }

    #[test]
    fn id_limit_at_under_and_over() {
        let cases: &[(usize, Result<(), usize>)] = &[
            (0, Ok(())),
            (MAX_ID_BYTES - 1, Ok(())),
            (MAX_ID_BYTES, Ok(())),
            (MAX_ID_BYTES + 1, Err(MAX_ID_BYTES + 1)),
            (4 * MAX_ID_BYTES, Err(4 * MAX_ID_BYTES)),
        ];
        for (len, want) in cases {
            let id = "i".repeat(*len);
            assert_eq!(
                verdict(check_key("people", &id)),
                *want,
                "id of {len} bytes"
            );
            assert_eq!(key_fits("people", &id), want.is_ok(), "id of {len} bytes");
        }
    }

    #[test]
    fn id_limit_counts_bytes_not_characters() {
        // 512 two-byte characters: 1024 bytes, the limit.
        let at = "é".repeat(MAX_ID_BYTES / 2);
        assert_eq!(at.len(), MAX_ID_BYTES);
        assert_eq!(verdict(check_key("people", &at)), Ok(()));
        let over = format!("{at}x");
        assert_eq!(verdict(check_key("people", &over)), Err(MAX_ID_BYTES + 1));
        // 513 characters, but 1026 bytes.
        let wide = "é".repeat(MAX_ID_BYTES / 2 + 1);
        assert_eq!(verdict(check_key("people", &wide)), Err(MAX_ID_BYTES + 2));
    }

    #[test]
    fn key_limit_at_under_and_over() {
        // The ID at its own limit; the entity makes the key one under, at and one over.
        let id = "i".repeat(MAX_ID_BYTES);
        let entity_at = MAX_PK_BYTES - 1 - MAX_ID_BYTES;
        let cases: &[(usize, Result<(), usize>)] = &[
            (entity_at - 1, Ok(())),
            (entity_at, Ok(())),
            // Too long a key is reported with the ID's length, as DynamoDB's store did.
            (entity_at + 1, Err(MAX_ID_BYTES)),
        ];
        for (entity_len, want) in cases {
            let entity = "e".repeat(*entity_len);
            assert_eq!(
                record_key(&entity, &id).len(),
                entity_len + 1 + MAX_ID_BYTES
            );
            assert_eq!(
                verdict(check_key(&entity, &id)),
                *want,
                "entity of {entity_len} bytes"
            );
            assert_eq!(key_fits(&entity, &id), want.is_ok());
        }
    }

    #[test]
    fn too_large_names_the_key() {
        let id = "x".repeat(MAX_ID_BYTES + 1);
        match check_key("people", &id) {
            Err(StoreError::TooLarge { key, .. }) => assert_eq!(key, format!("people#{id}")),
            other => panic!("want TooLarge, got {other:?}"),
        }
        match check_payload("people", "7", &noise_json(600 * 1024)) {
            Err(StoreError::TooLarge { key, .. }) => assert_eq!(key, "people#7"),
            other => panic!("want TooLarge, got {other:?}"),
        }
        assert_eq!(record_key("people", "a#b"), "people#a#b");
    }

    #[test]
    fn payload_limits_on_lengths_at_under_and_over() {
        const I: usize = INLINE_PAYLOAD_MAX_BYTES;
        const C: usize = COMPRESSED_PAYLOAD_MAX_BYTES;
        let cases: &[(usize, usize, Result<(), usize>)] = &[
            // Up to the inline limit, whatever the compression gives.
            (I - 1, usize::MAX, Ok(())),
            (I, usize::MAX, Ok(())),
            (I, C + 1, Ok(())),
            // Over it: the compressed length decides.
            (I + 1, C - 1, Ok(())),
            (I + 1, C, Ok(())),
            (I + 1, C + 1, Err(C + 1)),
            (10 * I, C, Ok(())),
            (10 * I, C + 1, Err(C + 1)),
        ];
        for (json, z, want) in cases {
            assert_eq!(
                verdict(check_compressed("k", *json, *z)),
                *want,
                "json {json} bytes, compressed {z}"
            );
        }
    }

    #[test]
    fn payload_limits_on_text() {
        // At the inline limit and incompressible: stored.
        let at = noise_json(INLINE_PAYLOAD_MAX_BYTES);
        assert_eq!(at.len(), INLINE_PAYLOAD_MAX_BYTES);
        assert_eq!(verdict(check_payload("e", "i", &at)), Ok(()));
        assert_eq!(
            verdict(check_payload("e", "i", &at[..at.len() - 1])),
            Ok(())
        );
        // One byte over, compressing to well under the compressed limit: stored.
        let over = noise_json(INLINE_PAYLOAD_MAX_BYTES + 1);
        assert!(zlib_len(over.as_bytes()) < COMPRESSED_PAYLOAD_MAX_BYTES);
        assert_eq!(verdict(check_payload("e", "i", &over)), Ok(()));
        // Far over, but compressible: stored.
        let repetitive = format!("\"{}\"", "ab".repeat(INLINE_PAYLOAD_MAX_BYTES));
        assert_eq!(verdict(check_payload("e", "i", &repetitive)), Ok(()));
        // Incompressible beyond the compressed limit: refused with the compressed length.
        let huge = noise_json(600 * 1024);
        let z = compress(huge.as_bytes()).expect("compress").len();
        assert!(z > COMPRESSED_PAYLOAD_MAX_BYTES);
        assert_eq!(verdict(check_payload("e", "i", &huge)), Err(z));
    }

    #[test]
    fn the_counted_length_is_the_compressed_length() {
        for len in [0, 1, 1000, 100 * 1024] {
            let text = noise(len);
            assert_eq!(
                zlib_len(text.as_bytes()),
                compress(text.as_bytes()).expect("compress").len()
            );
        }
    }

    #[test]
    fn a_record_is_checked_key_first() {
        let long_id = "x".repeat(MAX_ID_BYTES + 1);
        let huge = noise_json(600 * 1024);
        // Both limits broken: the key's error (the ID's length), as both stores always did.
        assert_eq!(
            verdict(check_record("people", &long_id, &huge)),
            Err(MAX_ID_BYTES + 1)
        );
        assert!(verdict(check_record("people", "1", &huge)).is_err());
        assert_eq!(verdict(check_record("people", "1", "{}")), Ok(()));
    }
}

//! `adapters::s3::S3Spill` (the real SDK) against moto's S3.

use crate::harness;
use futures::StreamExt;
use shared::StoreError;
use shared::adapters::s3::S3Spill;
use shared::ports::SpillStore;
use tokio::io::AsyncReadExt;

async fn spill(prefix: &str) -> (S3Spill, String, aws_sdk_s3::Client) {
    let s3 = harness::s3_client().await;
    let bucket = harness::create_bucket(&s3).await;
    (S3Spill::new(s3.clone(), &bucket, prefix), bucket, s3)
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn smoke_s3_put_open_list() {
    let (s, bucket, s3) = spill("spill/").await;
    for key in ["run-1/b", "run-2/a", "run-1/a", "run-10/x", "run-1/c/d"] {
        s.put(key, key.as_bytes().to_vec()).await.expect("put");
    }
    // Outside the store's prefix: never listed.
    s3.put_object()
        .bucket(&bucket)
        .key("elsewhere/run-1/z")
        .body(b"no".to_vec().into())
        .send()
        .await
        .expect("put outside");

    let mut r = s.open("run-1/c/d").await.expect("open");
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"run-1/c/d");

    assert_eq!(
        s.list("run-1/").await.expect("list"),
        vec!["run-1/a", "run-1/b", "run-1/c/d"]
    );
    assert_eq!(
        s.list("run-1").await.expect("list"),
        vec!["run-1/a", "run-1/b", "run-1/c/d", "run-10/x"]
    );
    assert_eq!(
        s.list("").await.expect("list all"),
        vec!["run-1/a", "run-1/b", "run-1/c/d", "run-10/x", "run-2/a"]
    );
    assert!(s.list("nothing/").await.expect("list").is_empty());

    // Overwrite, and an empty object.
    s.put("run-2/a", Vec::new()).await.expect("put empty");
    let mut r = s.open("run-2/a").await.expect("open");
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read");
    assert!(got.is_empty());
}

#[tokio::test]
async fn smoke_s3_large_object_streams() {
    let (s, _bucket, _s3) = spill("big").await;
    let body = pattern(12 * 1024 * 1024 + 123);
    s.put("run/one", body.clone()).await.expect("put 12 MiB");
    let mut r = s.open("run/one").await.expect("open");
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0usize;
    let mut reads = 0usize;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        assert_eq!(
            &buf[..n],
            &body[offset..offset + n],
            "bytes at offset {offset}"
        );
        offset += n;
        reads += 1;
    }
    assert_eq!(offset, body.len());
    assert!(reads >= body.len() / buf.len(), "read piece by piece");
}

#[tokio::test]
async fn smoke_s3_delete_prefix_over_a_thousand() {
    let (s, bucket, s3) = spill("spill").await;
    let n = 1005usize;
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(0..n)
        .map(|i| {
            let s = &s;
            async move { s.put(&format!("run-7/part-{i:05}"), vec![b'x'; 16]).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "every put went");
    for key in ["run-70/a", "keep/a", "keep/b"] {
        s.put(key, b"stay".to_vec()).await.expect("put");
    }
    let listed = s.list("run-7/").await.expect("list");
    assert_eq!(listed.len(), n, "listing pages past 1,000");
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted");

    assert_eq!(s.delete_prefix("run-7/").await.expect("delete"), n as u64);
    assert!(s.list("run-7/").await.expect("list").is_empty());
    assert_eq!(
        s.list("").await.expect("list"),
        vec!["keep/a", "keep/b", "run-70/a"]
    );
    // Nothing under the prefix: nothing to do.
    assert_eq!(s.delete_prefix("run-7/").await.expect("delete"), 0);
    let left = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list the bucket");
    assert_eq!(left.key_count(), Some(3));
}

#[tokio::test]
async fn smoke_s3_missing_object_and_bucket_are_errors() {
    let (s, _bucket, s3) = spill("spill").await;
    match s.open("run-1/none").await {
        Err(StoreError::Decode { key, message }) => {
            assert!(key.ends_with("/spill/run-1/none"), "{key}");
            assert!(message.contains("NoSuchKey"), "{message}");
        }
        Err(other) => panic!("expected a not-found error, got {other:?}"),
        Ok(_) => panic!("a missing object opened"),
    }
    let gone = S3Spill::new(s3, harness::unique_name("it-nobucket"), "spill");
    assert!(matches!(
        gone.list("").await,
        Err(StoreError::Backend { .. })
    ));
    assert!(matches!(
        gone.put("a", vec![1]).await,
        Err(StoreError::Backend { .. })
    ));
}

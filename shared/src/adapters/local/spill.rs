//! `SpillStore` on a folder: one file per key, keys use `/` whatever the platform.
//!
//! Invariants: a key never names anything outside the folder (no `..`, no absolute path, no
//! empty or `.` component, no backslash); an object appears whole or not at all (written to a
//! temp file under `.spill-tmp/`, then renamed into place); `list` never shows temp files.

use crate::error::StoreError;
use crate::ports::SpillStore;
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};

/// Where `put` writes before renaming; not a valid first key component.
const TMP_DIR: &str = ".spill-tmp";

/// Read buffer of `open`'s reader.
const READ_BUFFER: usize = 256 * 1024;

/// Spilled objects in a folder.
#[derive(Debug, Clone)]
pub struct LocalSpill {
    root: PathBuf,
}

impl LocalSpill {
    /// Use the folder `root`, creating it when missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(root.join(TMP_DIR)).map_err(|e| io("spill folder", e))?;
        Ok(LocalSpill { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`, after checking that it stays inside the folder.
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key, false)?;
        Ok(key.split('/').fold(self.root.clone(), |p, c| p.join(c)))
    }
}

fn io(operation: &'static str, e: std::io::Error) -> StoreError {
    StoreError::backend(operation, e)
}

fn invalid(key: &str, why: &str) -> StoreError {
    StoreError::Decode {
        key: key.to_owned(),
        message: format!("invalid spill key: {why}"),
    }
}

/// A key (or, with `prefix`, a key prefix: may be empty or end with `/`) that stays inside the
/// folder.
fn check_key(key: &str, prefix: bool) -> Result<(), StoreError> {
    if key.is_empty() {
        return if prefix {
            Ok(())
        } else {
            Err(invalid(key, "empty"))
        };
    }
    if key.starts_with('/') {
        return Err(invalid(key, "absolute path"));
    }
    if key.contains('\\') || key.contains('\0') {
        return Err(invalid(key, "backslash or NUL"));
    }
    let body = if prefix {
        key.strip_suffix('/').unwrap_or(key)
    } else {
        key
    };
    for (i, c) in body.split('/').enumerate() {
        match c {
            "" => return Err(invalid(key, "empty path component")),
            "." | ".." => return Err(invalid(key, "`.` or `..` component")),
            TMP_DIR if i == 0 => return Err(invalid(key, "reserved folder")),
            _ => {}
        }
    }
    Ok(())
}

/// Every file under `dir`, as keys relative to `root`, that start with `prefix`.
fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("spill list", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io("spill list", e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| io("spill list", e))?;
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|r| {
                r.components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
            })
            .map(|parts| parts.join("/"))
            .ok_or_else(|| StoreError::Decode {
                key: path.display().to_string(),
                message: "file name in the spill folder is not UTF-8".into(),
            })?;
        if kind.is_dir() {
            if dir == root && rel == TMP_DIR {
                continue;
            }
            // Descend only where keys under this folder can match the prefix.
            let as_prefix = format!("{rel}/");
            if as_prefix.starts_with(prefix) || prefix.starts_with(&as_prefix) {
                walk(root, &path, prefix, out)?;
            }
        } else if kind.is_file() && rel.starts_with(prefix) {
            out.push(rel);
        }
        // Symbolic links and other special files are never ours: skipped.
    }
    Ok(())
}

fn list_keys(root: &Path, prefix: &str) -> Result<Vec<String>, StoreError> {
    check_key(prefix, true)?;
    // Start at the deepest folder the prefix names in full.
    let start = match prefix.rfind('/') {
        Some(i) => prefix[..i]
            .split('/')
            .fold(root.to_path_buf(), |p, c| p.join(c)),
        None => root.to_path_buf(),
    };
    let mut keys = Vec::new();
    walk(root, &start, prefix, &mut keys)?;
    keys.sort_unstable();
    Ok(keys)
}

#[async_trait]
impl SpillStore for LocalSpill {
    #[tracing::instrument(level = "debug", skip_all, fields(key = %key, bytes = body.len()))]
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let dest = self.path_of(key)?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io("spill put", e))?;
        }
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(uuid::Uuid::new_v4().to_string());
        let written = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&body).await?;
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &dest).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io("spill put", e));
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %key))]
    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError> {
        let path = self.path_of(key)?;
        let f = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // As S3's NoSuchKey: not retryable, the object is not coming back.
                StoreError::Decode {
                    key: key.to_owned(),
                    message: "no such spill object".into(),
                }
            } else {
                io("spill open", e)
            }
        })?;
        Ok(Box::new(BufReader::with_capacity(READ_BUFFER, f)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(prefix = %prefix))]
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_keys(&root, &prefix))
            .await
            .map_err(|e| StoreError::backend("spill list", e))?
    }

    #[tracing::instrument(level = "debug", skip_all, fields(prefix = %prefix))]
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let keys = list_keys(&root, &prefix)?;
            let mut dirs = std::collections::BTreeSet::new();
            for key in &keys {
                let path = key.split('/').fold(root.clone(), |p, c| p.join(c));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    // Gone already (a concurrent delete): the outcome wanted.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("spill delete", e)),
                }
                let mut p = path.parent();
                while let Some(d) = p.filter(|d| *d != root) {
                    dirs.insert(d.to_path_buf());
                    p = d.parent();
                }
            }
            // Deepest first; a folder that still holds something stays (remove_dir fails).
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            Ok(keys.len() as u64)
        })
        .await
        .map_err(|e| StoreError::backend("spill delete", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local::testutil::TempDir;
    use tokio::io::AsyncReadExt;

    async fn read_all(s: &LocalSpill, key: &str) -> Vec<u8> {
        let mut r = s.open(key).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn put_open_round_trip_and_overwrite() {
        let dir = TempDir::new();
        let s = LocalSpill::new(dir.path().join("spill")).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        s.put("run-1/source/000001.run", big.clone()).await.unwrap();
        assert_eq!(read_all(&s, "run-1/source/000001.run").await, big);
        s.put("run-1/source/000001.run", b"short".to_vec())
            .await
            .unwrap();
        assert_eq!(read_all(&s, "run-1/source/000001.run").await, b"short");
        s.put("empty", Vec::new()).await.unwrap();
        assert!(read_all(&s, "empty").await.is_empty());
        assert!(matches!(
            s.open("run-1/missing").await,
            Err(StoreError::Decode { .. })
        ));
    }

    #[tokio::test]
    async fn list_is_sorted_recursive_by_string_prefix() {
        let dir = TempDir::new();
        let s = LocalSpill::new(dir.path()).unwrap();
        for k in [
            "r1/src/2",
            "r1/src/10",
            "r1/dst/1",
            "r10/src/1",
            "r1x",
            "r2/src/1",
        ] {
            s.put(k, k.as_bytes().to_vec()).await.unwrap();
        }
        assert_eq!(
            s.list("").await.unwrap(),
            [
                "r1/dst/1",
                "r1/src/10",
                "r1/src/2",
                "r10/src/1",
                "r1x",
                "r2/src/1"
            ]
        );
        assert_eq!(
            s.list("r1/").await.unwrap(),
            ["r1/dst/1", "r1/src/10", "r1/src/2"]
        );
        // A prefix is a string prefix, as in S3, not a folder.
        assert_eq!(
            s.list("r1").await.unwrap(),
            ["r1/dst/1", "r1/src/10", "r1/src/2", "r10/src/1", "r1x"]
        );
        assert_eq!(s.list("r1/src/1").await.unwrap(), ["r1/src/10"]);
        assert!(s.list("nothing/here/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_prefix_removes_only_under_it() {
        let dir = TempDir::new();
        let s = LocalSpill::new(dir.path()).unwrap();
        for k in ["a/1", "a/b/2", "a/b/c/3", "ab/4", "z"] {
            s.put(k, vec![1]).await.unwrap();
        }
        assert_eq!(s.delete_prefix("a/").await.unwrap(), 3);
        assert_eq!(s.list("").await.unwrap(), ["ab/4", "z"]);
        assert!(!dir.path().join("a").exists(), "empty folders removed");
        assert_eq!(s.delete_prefix("a/").await.unwrap(), 0);
        assert_eq!(s.delete_prefix("").await.unwrap(), 2);
        assert!(s.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_that_escape_the_folder_are_rejected() {
        let dir = TempDir::new();
        let s = LocalSpill::new(dir.path().join("spill")).unwrap();
        for bad in [
            "../outside",
            "a/../../outside",
            "/etc/passwd",
            "a/./b",
            "a//b",
            "a/",
            "",
            "..",
            "a\\..\\b",
            ".spill-tmp/x",
        ] {
            assert!(
                matches!(s.put(bad, vec![1]).await, Err(StoreError::Decode { .. })),
                "put {bad:?}"
            );
            assert!(
                matches!(s.open(bad).await, Err(StoreError::Decode { .. })),
                "open {bad:?}"
            );
        }
        for bad in ["../", "/", "a/../", "../x"] {
            assert!(
                matches!(s.list(bad).await, Err(StoreError::Decode { .. })),
                "list {bad:?}"
            );
            assert!(
                matches!(s.delete_prefix(bad).await, Err(StoreError::Decode { .. })),
                "delete_prefix {bad:?}"
            );
        }
        assert!(!dir.path().join("outside").exists());
        // A name that merely contains dots is fine.
        s.put("a/..b/c..", vec![7]).await.unwrap();
        assert_eq!(s.list("").await.unwrap(), ["a/..b/c.."]);
    }

    #[tokio::test]
    async fn temp_files_never_listed() {
        let dir = TempDir::new();
        let s = LocalSpill::new(dir.path()).unwrap();
        std::fs::write(dir.path().join(TMP_DIR).join("partial"), b"x").unwrap();
        s.put("k", vec![1]).await.unwrap();
        assert_eq!(s.list("").await.unwrap(), ["k"]);
        assert_eq!(s.delete_prefix("").await.unwrap(), 1);
    }
}

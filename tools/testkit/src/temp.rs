//! Temporary folders for store files and spill folders.

use std::path::{Path, PathBuf};

/// A uniquely named folder, created now and removed with everything in it on drop (a store
/// file's journal files included).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<system temp>/<label>/<unique>`.
    pub fn new(label: &str) -> TempDir {
        TempDir::under(std::env::temp_dir(), label)
    }

    /// `<base>/<label>/<unique>`: integration tests pass cargo's scratch folder
    /// (`env!("CARGO_TARGET_TMPDIR")`), which is on the build disk rather than in memory.
    pub fn under(base: impl AsRef<Path>, label: &str) -> TempDir {
        let dir = base
            .as_ref()
            .join(label)
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create the folder {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the folder.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_unique_and_gone_after_drop() {
        let a = TempDir::new("testkit");
        let b = TempDir::new("testkit");
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("sync.sqlite-wal"), b"x").unwrap();
        let kept = a.path().to_owned();
        assert!(kept.is_dir());
        drop(a);
        assert!(!kept.exists(), "{} removed with its files", kept.display());
        assert!(b.path().is_dir(), "the other folder stays");
    }
}

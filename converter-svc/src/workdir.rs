//! The converter's scratch space. Each process works in a directory of its
//! own under `WORK_DIR`, holding a lock on a file inside it for as long as it
//! lives; at start, every other directory whose lock can be taken belongs to
//! a process that died (SIGKILL, OOM, a node crash) and is removed. Several
//! converters may share one `WORK_DIR` (local development); in Kubernetes it
//! is an emptyDir per pod.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

const PREFIX: &str = "converter-";
const LOCK: &str = ".lock";

#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    /// Held (locked) until the process ends; the OS releases it even on
    /// SIGKILL.
    _lock: File,
}

impl WorkDir {
    /// Removes what dead converters left in `root`, then makes our own
    /// directory. Returns it and how many stale ones were removed.
    pub(crate) fn create(root: &Path, instance: &str) -> std::io::Result<(Self, usize)> {
        fs::create_dir_all(root)?;
        let removed = remove_stale(root);
        let path = root.join(format!("{PREFIX}{instance}"));
        fs::create_dir_all(&path)?;
        let lock = File::create(path.join(LOCK))?;
        lock.try_lock()
            .map_err(|e| std::io::Error::other(format!("locking {}: {e}", path.display())))?;
        Ok((Self { path, _lock: lock }, removed))
    }

    /// A fresh directory for one job, removed when dropped.
    pub(crate) fn job(&self, job_id: &str) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("job-{job_id}-"))
            .tempdir_in(&self.path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes the directories of converters that no longer run.
fn remove_stale(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX));
        if !ours || !path.is_dir() {
            continue;
        }
        // A directory without a lock file is being created right now by a
        // starting converter, or is debris; only a lock we can take proves
        // its owner is gone.
        let alive = match File::open(path.join(LOCK)) {
            Ok(f) => f.try_lock().is_err(),
            Err(_) => true,
        };
        if !alive && fs::remove_dir_all(&path).is_ok() {
            tracing::info!(dir = %path.display(), "removed the work directory of a converter that died");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_dead_converters_go_and_live_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        // A converter that died: its directory with a lock nobody holds.
        let dead = root.path().join(format!("{PREFIX}dead"));
        fs::create_dir_all(dead.join("job-1")).unwrap();
        fs::write(dead.join("job-1/input"), b"61 MB of video").unwrap();
        File::create(dead.join(LOCK)).unwrap();
        // Something else in the same directory is not ours to remove.
        fs::create_dir_all(root.path().join("other")).unwrap();

        let (live, removed) = WorkDir::create(root.path(), "a").unwrap();
        assert_eq!(removed, 1);
        assert!(!dead.exists());
        assert!(root.path().join("other").exists());

        // A second converter starting beside the first leaves it alone.
        let (second, removed) = WorkDir::create(root.path(), "b").unwrap();
        assert_eq!(removed, 0);
        assert!(live.path.as_path().exists());
        let job = live.job("42").unwrap();
        assert!(job.path().starts_with(&live.path));
        drop(second);
        drop(job);
        let path = live.path.clone();
        drop(live);
        assert!(!path.exists(), "removed on a clean exit");
    }
}

//! The converter's scratch space. Each process works in a directory of its
//! own under `WORK_DIR`, holding a lock on a file inside it for as long as it
//! lives; at start, every other directory whose lock can be taken belongs to
//! a process that died (SIGKILL, OOM, a node crash) and is removed. Several
//! converters may share one `WORK_DIR` (local development); in Kubernetes it
//! is an emptyDir per pod.
//!
//! A directory appears under its `converter-` name only with its lock already
//! held: it is made and locked under a staging name no converter judges, then
//! renamed into place (one atomic step). Made and locked in place, another
//! converter starting at that instant could take the not-yet-held lock, judge
//! the directory dead and remove it under its owner.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};
use tokio::io::AsyncWrite;

const PREFIX: &str = "converter-";
const STAGING: &str = ".staging-converter-";
const LOCK: &str = ".lock";

#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    /// Held (locked) until the process ends; the OS releases it even on
    /// SIGKILL.
    _lock: File,
    /// The disk space spools may take together.
    spools: Arc<SpoolSpace>,
}

impl WorkDir {
    /// Removes what dead converters left in `root`, then makes our own
    /// directory. Returns it and how many stale ones were removed.
    pub(crate) fn create(
        root: &Path,
        instance: &str,
        max_spool: u64,
    ) -> std::io::Result<(Self, usize)> {
        fs::create_dir_all(root)?;
        let removed = remove_stale(root);
        let staging = root.join(format!("{STAGING}{instance}"));
        let path = root.join(format!("{PREFIX}{instance}"));
        fs::create_dir(&staging)?;
        let locked = File::create(staging.join(LOCK)).and_then(|lock| {
            lock.try_lock().map_err(|e| {
                std::io::Error::other(format!("locking {}: {e}", staging.display()))
            })?;
            // The lock is on the open file, so it moves with the directory.
            fs::rename(&staging, &path)?;
            Ok(lock)
        });
        match locked {
            Ok(lock) => Ok((
                Self {
                    path,
                    _lock: lock,
                    spools: Arc::new(SpoolSpace {
                        max: max_spool,
                        used: AtomicU64::new(0),
                    }),
                },
                removed,
            )),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// A claim on spool space, empty until it grows; what it took is given
    /// back when it is dropped (with the job's directory).
    pub(crate) fn spool_space(&self) -> Reservation {
        Reservation {
            space: self.spools.clone(),
            held: 0,
        }
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

/// The disk space every spool of this converter may take together
/// (`MAX_SPOOL_BYTES`).
#[derive(Debug)]
struct SpoolSpace {
    max: u64,
    used: AtomicU64,
}

/// Part of [`SpoolSpace`], taken as a spool grows.
#[derive(Debug)]
pub(crate) struct Reservation {
    space: Arc<SpoolSpace>,
    held: u64,
}

impl Reservation {
    /// Takes `n` more bytes; false (nothing taken) if that would pass the
    /// bound.
    fn grow(&mut self, n: u64) -> bool {
        let used = &self.space.used;
        let taken = used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
            u.checked_add(n).filter(|t| *t <= self.space.max)
        });
        if taken.is_ok() {
            self.held += n;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.space.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// A writer that takes spool space for what it writes and fails once there
/// is none (the error [`is_full`] recognises).
pub(crate) struct Bounded<'a, W> {
    inner: W,
    space: &'a mut Reservation,
}

impl<'a, W> Bounded<'a, W> {
    pub(crate) fn new(inner: W, space: &'a mut Reservation) -> Self {
        Self { inner, space }
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// The bound it writes within.
    pub(crate) fn limit(&self) -> u64 {
        self.space.space.max
    }
}

/// The error a [`Bounded`] writer fails with when the space is used up.
#[derive(Debug, thiserror::Error)]
#[error("spool space used up")]
struct Full;

pub(crate) fn is_full(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Full>())
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Bounded<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Space for the whole buffer first; what is not written is given
        // back at once.
        if !this.space.grow(buf.len() as u64) {
            return Poll::Ready(Err(io::Error::other(Full)));
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        let unwritten = match &res {
            Poll::Ready(Ok(n)) => (buf.len() - n) as u64,
            _ => buf.len() as u64,
        };
        this.space.held -= unwritten;
        this.space.space.used.fetch_sub(unwritten, Ordering::AcqRel);
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let staging = name.starts_with(STAGING);
        if !(name.starts_with(PREFIX) || staging) || !path.is_dir() {
            continue;
        }
        // A staging directory may belong to a converter starting right
        // now: not even its lock is touched (taking it, however briefly,
        // would fail that start) until it is too old to be one.
        if staging && !older_than(&path, STAGING_GRACE) {
            continue;
        }
        let alive = match File::open(path.join(LOCK)) {
            Ok(f) => f.try_lock().is_err(),
            // In place, a directory always has its lock (see the module
            // docs): without one it is debris.
            Err(_) => false,
        };
        if !alive && fs::remove_dir_all(&path).is_ok() {
            tracing::info!(dir = %path.display(), "removed the work directory of a converter that died");
            removed += 1;
        }
    }
    removed
}

/// How long a staging directory may lack its lock before it is debris.
const STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn older_than(path: &Path, age: std::time::Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e > age)
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

        let (live, removed) = WorkDir::create(root.path(), "a", 1 << 20).unwrap();
        assert_eq!(removed, 1);
        assert!(!dead.exists());
        assert!(root.path().join("other").exists());

        // A second converter starting beside the first leaves it alone.
        let (second, removed) = WorkDir::create(root.path(), "b", 1 << 20).unwrap();
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

    #[tokio::test]
    async fn spools_together_stay_within_their_bound() {
        use tokio::io::AsyncWriteExt;
        let root = tempfile::tempdir().unwrap();
        let (w, _) = WorkDir::create(root.path(), "s", 10_000).unwrap();
        let (mut a, mut b) = (w.spool_space(), w.spool_space());
        let mut out_a = Bounded::new(Vec::new(), &mut a);
        out_a.write_all(&[0; 6000]).await.unwrap();
        let mut out_b = Bounded::new(Vec::new(), &mut b);
        let e = out_b.write_all(&[0; 6000]).await.unwrap_err();
        assert!(is_full(&e), "{e}");
        drop(out_a);
        drop(a); // the first job's directory went: its space is back
        let mut out_b = Bounded::new(Vec::new(), &mut b);
        out_b.write_all(&[0; 6000]).await.unwrap();
        assert_eq!(w.spools.used.load(Ordering::Acquire), 6000);
        drop(out_b);
        drop(b);
        assert_eq!(w.spools.used.load(Ordering::Acquire), 0);
    }

    /// Converters starting at the same instant on one `WORK_DIR`, while
    /// others work in it, never remove a live one's directory.
    #[test]
    fn converters_starting_together_keep_each_others_directories() {
        use std::sync::{Arc, Barrier};
        let root = tempfile::tempdir().unwrap();
        let root = root.path().to_owned();
        // Converters that keep running, each with a job under way.
        let mut running: Vec<(WorkDir, tempfile::TempDir)> = Vec::new();
        for round in 0..100 {
            let barrier = Arc::new(Barrier::new(16));
            let starting: Vec<_> = (0..16)
                .map(|i| {
                    let (root, barrier) = (root.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        WorkDir::create(&root, &format!("r{round}-{i}"), 1 << 20).map(|(w, _)| w)
                    })
                })
                .collect();
            for t in starting {
                let w = t.join().unwrap().expect("a converter starts");
                let job = w.job("42").expect("a converter's own directory is there");
                running.push((w, job));
            }
            for (w, job) in &running {
                assert!(
                    w.path.exists(),
                    "round {round}: {} was removed",
                    w.path.display()
                );
                assert!(
                    job.path().exists(),
                    "round {round}: a job's directory was removed"
                );
            }
            // Some stop (cleanly) as others start.
            let stop = running.len().saturating_sub(16);
            running.drain(..stop);
        }
    }
}

//! How every service's `main` starts: the allocator tuned, then a Tokio
//! runtime driving the service's `run` future.

use std::future::Future;

/// Tunes the allocator, builds the multi-threaded runtime and runs `service`
/// on it to completion.
pub fn run<F>(service: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(service)
}

/// glibc's malloc, left alone, keeps what a service's bursts of large buffers
/// (GridFS batches, ffmpeg pipes) once used: each thread may get its own
/// arena, and after the first large buffer is freed the threshold above which
/// buffers are mapped (and unmapped when freed) grows to 32 MiB, so later
/// ones come from the arenas and stay resident. Measured on converter-svc
/// (converter-bench, 100 jobs): peak RSS 57.6 MiB with the defaults. Two
/// arenas and a fixed 128 KiB threshold keep memory flat; it must be set
/// before the runtime's threads allocate.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread of ours exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

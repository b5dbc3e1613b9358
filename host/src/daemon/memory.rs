//! Handing freed memory back to the operating system.
//!
//! The daemon's memory comes in bursts: opening and syncing a database allocates
//! read windows, write buffers and SQLite's caches, and parking it frees them. With
//! glibc's defaults those frees often stay in the process: a large buffer freed once
//! raises the size above which buffers get their own mapping, so later ones come from
//! the heap, and freed heap pages stay resident until something trims them. Spread
//! over the arenas of the runtime's threads, that was most of the resident memory
//! of 200 idle databases.
//!
//! So large buffers always get their own mapping (returned whole on free), and a
//! short while after databases park the heap is trimmed once.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

/// Buffers of this size or more are mapped on their own and unmapped when freed.
const OWN_MAPPING_BYTES: i32 = 128 * 1024;

/// How long the trim waits after the last park that asked for one, so that many
/// databases parking together cost one trim.
const TRIM_AFTER: Duration = Duration::from_secs(2);

/// Process-wide allocator settings; call before the threads start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called once, at start.
    unsafe {
        // Fixing the threshold also stops glibc from raising it as buffers are freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_BYTES);
    }
}

fn wanted() -> &'static Notify {
    static WANTED: OnceLock<Notify> = OnceLock::new();
    WANTED.get_or_init(Notify::new)
}

/// Asks for a trim soon (after a database parked). Cheap; requests coalesce.
pub fn release_soon() {
    wanted().notify_one();
}

/// Runs for the daemon's life on its runtime: trims the heap [`TRIM_AFTER`] after
/// a request, at most once per request burst.
pub async fn trimmer() {
    loop {
        wanted().notified().await;
        tokio::time::sleep(TRIM_AFTER).await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! Handing freed memory back to the operating system, at the right time.
//!
//! The daemon's memory comes in bursts: a sync allocates read windows, write
//! buffers and SQLite's caches and frees them when it ends; parking a database
//! frees the rest. glibc moves the size above which a buffer gets its own mapping
//! (it rises to the size of any such buffer freed), and what is freed on the heap
//! stays resident in the arenas of the runtime's threads until something trims
//! them: most of the resident memory of 200 idle databases. A threshold fixed low
//! (every large buffer unmapped when freed) cost a fifth of the CPU under a load of
//! 200 transactions a second, every sync faulting fresh pages in.
//!
//! So the threshold is fixed at 1 MiB: read windows and write buffers (256 KiB)
//! come from the heap, where the next sync finds them, while upload parts and
//! other large buffers are mapped and unmapped whole (fixed at 32 MiB, those piled
//! up in the threads' arenas: peak RSS under that load went from 30 to 35 MiB). A
//! short while after databases park, the heap is trimmed, and once more after the
//! idle blocking threads have exited. The daemon runs without glibc's per-thread
//! caches, whose chunks would keep pages from being trimmed
//! ([`without_thread_caches`]).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

/// Buffers this large get their own mapping (fixed: glibc no longer moves it).
const OWN_MAPPING_BYTES: i32 = 1 << 20;

/// How long the trim waits after the last park that asked for one, so that many
/// databases parking together cost one trim.
const TRIM_AFTER: Duration = Duration::from_secs(2);

/// How long an idle blocking thread of the daemon's runtime lives (tokio's
/// default, which the S3 client's runtime keeps too).
pub const IDLE_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// When the trim runs again: once the idle blocking threads have exited. Where
/// glibc's thread caches are on (the caller set them, or the re-execution in
/// [`without_thread_caches`] failed), a thread's cached chunks return to the heap
/// only when it exits, and until then keep their neighbours from being released.
const TRIM_AGAIN_AFTER: Duration = Duration::from_secs(IDLE_THREAD_KEEP_ALIVE.as_secs() + 1);

/// glibc's per-thread caches of freed chunks off, in the form glibc reads at start.
const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// Carries the caller's own `GLIBC_TUNABLES` (empty when it had none) across the
/// re-execution in [`without_thread_caches`].
const CALLERS_TUNABLES: &str = "SLUICE_CALLERS_GLIBC_TUNABLES";

/// Turns glibc's per-thread caches (tcache) off for the daemon, which glibc allows
/// only from the environment it starts with: the process executes itself again
/// (same pid, same arguments) with the setting added, and then gives its children
/// (`-exec`) the environment it was given. Call first thing in `main`, while the
/// process has one thread. Does nothing when the caller set the cache size itself,
/// or when the re-execution fails.
///
/// Why: each thread keeps up to 7 freed chunks of each small size, handed back to
/// the heap only when the thread exits. The runtime's worker threads never exit,
/// and their cached chunks, scattered over pages otherwise free, keep those pages
/// from being trimmed: 3 MiB of 30 for 200 idle databases. Under load the cost did
/// not show (paired 40 s runs at 200 transactions a second).
pub fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if let Some(callers) = std::env::var_os(CALLERS_TUNABLES) {
            // SAFETY: called while the process has a single thread (see above).
            unsafe {
                if callers.is_empty() {
                    std::env::remove_var("GLIBC_TUNABLES");
                } else {
                    std::env::set_var("GLIBC_TUNABLES", callers);
                }
                std::env::remove_var(CALLERS_TUNABLES);
            }
            return;
        }
        let callers = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if callers.contains("tcache_count") {
            return;
        }
        let tunables =
            if callers.is_empty() { NO_THREAD_CACHES.to_string() } else { format!("{callers}:{NO_THREAD_CACHES}") };
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else { return };
        // Only returns if it failed; then the daemon runs with the caches.
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(CALLERS_TUNABLES, callers)
            .exec();
    }
}

/// Process-wide allocator settings; call before the threads start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called once, at start.
    unsafe {
        // Fixing the threshold also stops glibc from raising it as buffers are freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_BYTES);
        // Free memory at the top of a heap is kept up to the same size (glibc's
        // default is 128 KiB): the 256 KiB windows and buffers of a busy database's
        // syncs and uploads are then reused rather than returned and faulted in
        // again each time (about a tenth of the CPU under load, measured).
        libc::mallopt(libc::M_TRIM_THRESHOLD, OWN_MAPPING_BYTES);
        // malloc_trim cannot shorten the top of a thread arena (only free() can,
        // down to the threshold above), so every arena may keep up to 1 MiB while
        // idle: at most one per core (glibc's default is eight per core; with them
        // 200 idle databases took 6 MiB more).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as i32);
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
/// a request, at most once per request burst, and again [`TRIM_AGAIN_AFTER`] it
/// unless another request came meanwhile (that one's trims follow).
pub async fn trimmer() {
    loop {
        wanted().notified().await;
        tokio::time::sleep(TRIM_AFTER).await;
        let _ = tokio::task::spawn_blocking(trim).await;
        tokio::select! {
            _ = tokio::time::sleep(TRIM_AGAIN_AFTER - TRIM_AFTER) => {
                let _ = tokio::task::spawn_blocking(trim).await;
            }
            _ = wanted().notified() => wanted().notify_one(),
        }
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! Stalls made visible: a replica pass (upload, compaction, snapshot, retention)
//! that makes no progress for longer than a bound is logged as an error, counted
//! in `sluice_replica_stalls_total`, and holds the heartbeat back until it ends.
//! Progress is any operation of the replica's client ending, or bytes moving
//! through it (see [`Progress`]), so a slow upload is not a stall; a wait that
//! never ends is.
//!
//! The bound is 5 minutes; `SLUICE_STALL_AFTER` (a duration such as `30s`) sets
//! another. A stop waits for a pass under way for at most `shutdown-sync-timeout`
//! plus the smaller of this bound and a minute (see `daemon::run`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::capture::db::Shared;
use crate::replica::metered::Progress;

pub const DEFAULT_BOUND: Duration = Duration::from_secs(300);

/// The stall bound: `SLUICE_STALL_AFTER`, else [`DEFAULT_BOUND`].
pub fn bound() -> Duration {
    static BOUND: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var("SLUICE_STALL_AFTER")
            .ok()
            .and_then(|v| humantime::parse_duration(v.trim()).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_BOUND)
    })
}

/// Watches the passes of one replica of one database.
pub struct StallWatch {
    progress: Arc<Progress>,
    shared: Arc<Shared>,
    index: usize,
    name: String,
    location: String,
    bound: Duration,
}

impl StallWatch {
    pub fn new(progress: Arc<Progress>, shared: Arc<Shared>, index: usize, name: &str, location: String) -> Self {
        StallWatch { progress, shared, index, name: name.to_string(), location, bound: bound() }
    }

    /// Runs `pass` (described by `what`, e.g. "replica pass"), reporting it once
    /// if it goes without progress for longer than the bound.
    pub async fn watch<T>(&self, what: &str, pass: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let what = format!("{what} of {}", self.location);
        self.shared.health.record_pass_under_way(self.index, Some(&what));
        let check = (self.bound / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut stalled = false;
        tokio::pin!(pass);
        let out = loop {
            tokio::select! {
                out = &mut pass => break out,
                _ = tokio::time::sleep(check) => {
                    let idle = self.progress.since().map_or(started.elapsed(), |d| d.min(started.elapsed()));
                    if !stalled && idle >= self.bound {
                        stalled = true;
                        self.shared.health.record_stall(self.index);
                        self.shared.metrics.record_stall(&self.name);
                        error!(
                            db = %self.shared.path.display(),
                            replica = %self.location,
                            "replication stalled: the {what} has made no progress for {}s; check the endpoint and the network (a stop gives up on it)",
                            idle.as_secs()
                        );
                    }
                }
            }
        };
        self.shared.health.record_pass_under_way(self.index, None);
        if stalled {
            info!(db = %self.shared.path.display(), replica = %self.location, "the stalled {what} ended after {}s", started.elapsed().as_secs());
        }
        out
    }
}

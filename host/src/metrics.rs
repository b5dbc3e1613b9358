//! Prometheus metrics, served at `GET /metrics` on the config's `addr` (as
//! Litestream does), under Litestream's metric names and labels so that existing
//! dashboards and alerts keep working. Sluice adds `sluice_replica_txid`, the
//! newest TXID stored in the replica, so lag is one subtraction away.
//!
//! Metrics are always counted (a few atomic adds per sync); the HTTP endpoint runs
//! only when `addr` is set.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use prometheus::{
    Counter, CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tracing::{info, warn};

pub struct Metrics {
    registry: Registry,
    db_size: IntGaugeVec,
    wal_size: IntGaugeVec,
    total_wal_bytes: IntCounterVec,
    txid: IntGaugeVec,
    sync_count: IntCounterVec,
    sync_error_count: IntCounterVec,
    sync_seconds: CounterVec,
    checkpoint_count: IntCounterVec,
    checkpoint_error_count: IntCounterVec,
    checkpoint_seconds: CounterVec,
    pub(crate) op_total: IntCounterVec,
    pub(crate) op_bytes: IntCounterVec,
    pub(crate) op_errors: IntCounterVec,
    pub(crate) op_seconds: HistogramVec,
    replica_txid: IntGaugeVec,
    position_mismatch: IntCounterVec,
    named_replica_txid: IntGaugeVec,
    replica_failing: IntGaugeVec,
    replica_stalls: IntCounterVec,
    verify_last_success: IntGaugeVec,
    verify_failures: IntCounterVec,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let igauge = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let icounter = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let fcounter = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, CounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let op = &["replica_type", "operation"];
        Metrics {
            db_size: igauge("litestream_db_size", "The current size of the database file, in bytes", &["db"]),
            wal_size: igauge("litestream_wal_size", "The WAL offset replication has reached, in bytes", &["db"]),
            total_wal_bytes: icounter("litestream_total_wal_bytes", "WAL bytes captured into LTX files", &["db"]),
            txid: igauge("litestream_txid", "The newest TXID captured locally", &["db"]),
            sync_count: icounter("litestream_sync_count", "Number of syncs (WAL captures)", &["db"]),
            sync_error_count: icounter("litestream_sync_error_count", "Number of failed syncs", &["db"]),
            sync_seconds: fcounter("litestream_sync_seconds", "Time spent syncing, in seconds", &["db"]),
            checkpoint_count: icounter("litestream_checkpoint_count", "Number of checkpoints", &["db", "mode"]),
            checkpoint_error_count: icounter(
                "litestream_checkpoint_error_count",
                "Number of failed checkpoints",
                &["db", "mode"],
            ),
            checkpoint_seconds: fcounter(
                "litestream_checkpoint_seconds",
                "Time spent checkpointing, in seconds",
                &["db", "mode"],
            ),
            op_total: icounter("litestream_replica_operation_total", "Replica operations performed", op),
            op_bytes: icounter("litestream_replica_operation_bytes", "Bytes moved by replica operations", op),
            op_errors: icounter(
                "litestream_replica_operation_errors_total",
                "Failed replica operations",
                &["replica_type", "operation", "code"],
            ),
            op_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("litestream_replica_operation_duration_seconds", "Replica operation time")
                        .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0]),
                    op,
                )
                .expect("valid metric"),
            ),
            replica_txid: igauge(
                "sluice_replica_txid",
                "The newest TXID stored in the replica (with several replicas: in every one of them)",
                &["db"],
            ),
            named_replica_txid: igauge(
                "sluice_replica_newest_txid",
                "The newest TXID stored in each replica",
                &["db", "replica"],
            ),
            replica_failing: igauge(
                "sluice_replica_failing",
                "1 while a replica's last pass failed, else 0",
                &["db", "replica"],
            ),
            replica_stalls: icounter(
                "sluice_replica_stalls_total",
                "Replica passes that made no progress for longer than the stall bound",
                &["db", "replica"],
            ),
            verify_last_success: igauge(
                "sluice_verify_last_success_seconds",
                "Unix time of the last restore drill (verify:) that passed",
                &["db"],
            ),
            verify_failures: icounter("sluice_verify_failures_total", "Restore drills (verify:) that failed", &["db"]),
            position_mismatch: icounter(
                "sluice_position_mismatch_total",
                "Times the captured state did not match the database file and a snapshot was forced",
                &["db"],
            ),
            registry,
        }
    }

    /// The metrics of one database, with its label values resolved once, so that
    /// recording a sync takes a few atomic adds.
    pub fn for_db(&self, db: &Path) -> DbMetrics {
        let db = db.to_string_lossy();
        let l = [db.as_ref()];
        let checkpoint = |mode: &str| {
            let l = [db.as_ref(), mode];
            CheckpointMetrics {
                count: self.checkpoint_count.with_label_values(&l),
                // Created at once, so that alerts see 0 rather than no series.
                errors: self.checkpoint_error_count.with_label_values(&l),
                seconds: self.checkpoint_seconds.with_label_values(&l),
            }
        };
        DbMetrics {
            db_size: self.db_size.with_label_values(&l),
            wal_size: self.wal_size.with_label_values(&l),
            total_wal_bytes: self.total_wal_bytes.with_label_values(&l),
            txid: self.txid.with_label_values(&l),
            sync_count: self.sync_count.with_label_values(&l),
            sync_errors: self.sync_error_count.with_label_values(&l),
            sync_seconds: self.sync_seconds.with_label_values(&l),
            replica_txid: self.replica_txid.with_label_values(&l),
            position_mismatch: self.position_mismatch.with_label_values(&l),
            db: db.to_string(),
            passive: checkpoint("PASSIVE"),
            truncate: checkpoint("TRUNCATE"),
        }
    }

    /// The newest TXID captured for `db` (what `litestream_txid` shows).
    pub fn txid_of(&self, db: &Path) -> u64 {
        self.txid.get_metric_with_label_values(&[db.to_string_lossy().as_ref()]).map_or(0, |g| g.get() as u64)
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
struct CheckpointMetrics {
    count: IntCounter,
    errors: IntCounter,
    seconds: Counter,
}

/// One database's series (label `db`), held by its [`crate::capture::db::Shared`] state.
#[derive(Clone, Debug)]
pub struct DbMetrics {
    db_size: IntGauge,
    wal_size: IntGauge,
    total_wal_bytes: IntCounter,
    txid: IntGauge,
    sync_count: IntCounter,
    sync_errors: IntCounter,
    sync_seconds: Counter,
    replica_txid: IntGauge,
    position_mismatch: IntCounter,
    db: String,
    passive: CheckpointMetrics,
    truncate: CheckpointMetrics,
}

impl DbMetrics {
    /// One sync: its outcome, duration, the position after it and the WAL bytes it
    /// captured.
    pub fn record_sync(&self, ok: bool, took: Duration, txid: u64, wal_offset: u64, captured: u64) {
        self.sync_count.inc();
        self.sync_errors.inc_by(u64::from(!ok));
        self.sync_seconds.inc_by(took.as_secs_f64());
        self.txid.set(txid as i64);
        self.wal_size.set(wal_offset as i64);
        self.total_wal_bytes.inc_by(captured);
    }

    /// One checkpoint; `truncate` tells the mode.
    pub fn record_checkpoint(&self, truncate: bool, ok: bool, took: Duration) {
        let m = if truncate { &self.truncate } else { &self.passive };
        m.count.inc();
        m.errors.inc_by(u64::from(!ok));
        m.seconds.inc_by(took.as_secs_f64());
    }

    /// The database file's size (it changes only when pages are written back).
    pub fn set_db_size(&self, bytes: u64) {
        self.db_size.set(bytes as i64);
    }

    /// The captured state was found not to match the database (a snapshot follows).
    pub fn record_position_mismatch(&self) {
        self.position_mismatch.inc();
    }

    /// The newest TXID the replica holds (every replica, with several).
    pub fn set_replica_txid(&self, txid: u64) {
        self.replica_txid.set(txid as i64);
    }

    /// The newest TXID the replica named `replica` holds.
    pub fn set_named_replica_txid(&self, replica: &str, txid: u64) {
        metrics().named_replica_txid.with_label_values(&[self.db.as_str(), replica]).set(txid as i64);
    }

    pub fn set_replica_failing(&self, replica: &str, failing: bool) {
        metrics().replica_failing.with_label_values(&[self.db.as_str(), replica]).set(i64::from(failing));
    }

    /// A pass of the replica named `replica` stalled.
    pub fn record_stall(&self, replica: &str) {
        metrics().replica_stalls.with_label_values(&[self.db.as_str(), replica]).inc();
    }

    /// A restore drill ended: a pass records its time, a failure is counted.
    pub fn record_verify(&self, ok: bool) {
        let m = metrics();
        if ok {
            m.verify_last_success.with_label_values(&[self.db.as_str()]).set(chrono::Utc::now().timestamp());
        } else {
            m.verify_failures.with_label_values(&[self.db.as_str()]).inc();
        }
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own, until the process exits.
pub fn serve(addr: &str) -> Result<SocketAddr> {
    let listener = crate::background::bind_tcp("addr", addr)?;
    let local = listener.local_addr()?;
    crate::background::serve_http("metrics", crate::background::Listener::Tcp(listener), |req| async move {
        let (status, body) = match (req.method(), req.uri().path()) {
            (&hyper::Method::GET, "/metrics") => (200, metrics().render()),
            _ => (404, "not found: metrics are at /metrics\n".to_string()),
        };
        hyper::Response::builder()
            .status(status)
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
    })?;
    info!(addr = %local, "serving Prometheus metrics at /metrics");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_match_litestream() {
        let m = metrics().for_db(Path::new("/tmp/names.db"));
        m.record_sync(true, Duration::from_millis(5), 7, 4152, 4152);
        m.record_checkpoint(false, true, Duration::from_millis(1));
        let text = metrics().render();
        assert!(text.contains("litestream_txid{db=\"/tmp/names.db\"} 7"), "{text}");
        assert!(text.contains("litestream_wal_size{db=\"/tmp/names.db\"} 4152"), "{text}");
        assert!(text.contains("litestream_sync_count{db=\"/tmp/names.db\"} 1"), "{text}");
        assert!(text.contains("litestream_checkpoint_count{db=\"/tmp/names.db\",mode=\"PASSIVE\"} 1"), "{text}");
    }
}

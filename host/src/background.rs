//! Background threads that each run one async task (the metrics endpoint, the
//! control socket, the heartbeat) on a single-threaded runtime of their own, so
//! that none of them shares a runtime with replication.

use std::future::Future;

use tracing::warn;

/// Starts thread `name` running the task `make` returns, until the process exits.
pub fn spawn<F, Fut>(name: &'static str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new().name(name.into()).spawn(move || match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(make()),
        Err(e) => warn!("{name} cannot start: {e}"),
    })?;
    Ok(())
}

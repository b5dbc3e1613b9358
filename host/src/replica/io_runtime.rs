//! The tokio runtime the async backend clients (the S3 SDK, NATS) run on, behind
//! the blocking replica trait: one for the process, two worker threads.

use std::sync::OnceLock;

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("replica-io")
            .enable_all()
            .build()
            .expect("cannot start the replica I/O runtime")
    })
}

//! Background threads that each run one async task (the metrics endpoint, the MCP
//! server, the control socket, the heartbeat) on a single-threaded runtime of their
//! own, so that none of them shares a runtime with replication; and the one HTTP
//! accept loop the three servers among them share.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
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

/// Parses `addr` the way Litestream does: `host:port`, or `:port` for every interface.
pub fn parse_addr(addr: &str) -> Result<SocketAddr> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("invalid addr {addr:?}: expected HOST:PORT or :PORT, for example :9090"))?;
    if port.is_empty() || port.parse::<u16>().is_err() {
        bail!("invalid addr {addr:?}: the port is missing or not a number; for example :9090");
    }
    let host = if host.is_empty() { "0.0.0.0" } else { host.trim_start_matches('[').trim_end_matches(']') };
    (host, port.parse::<u16>()?)
        .to_socket_addrs()
        .with_context(|| format!("invalid addr {addr:?}: cannot resolve {host:?}"))?
        .next()
        .ok_or_else(|| anyhow!("invalid addr {addr:?}: {host:?} resolves to no address"))
}

/// Listens on `addr` (the value of config key `key`), or says what to do.
pub fn bind_tcp(key: &str, addr: &str) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(parse_addr(addr)?)
        .map_err(|e| anyhow!("cannot listen on {key} {addr}: {e}; choose another port or stop what uses it"))
}

/// Where [`serve_http`] accepts connections.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Serves HTTP/1.1 on `listener` from thread `name` until the process exits; each
/// request goes to `handle`.
pub fn serve_http<H, F, E>(name: &'static str, listener: Listener, handle: H) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true)?,
        Listener::Unix(l) => l.set_nonblocking(true)?,
    }
    spawn(name, move || async move {
        match listener {
            Listener::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
                Ok(l) => loop {
                    if let Ok((stream, _)) = l.accept().await {
                        connection(stream, handle.clone());
                    }
                },
                Err(e) => warn!("{name} cannot start: {e}"),
            },
            Listener::Unix(l) => match tokio::net::UnixListener::from_std(l) {
                Ok(l) => loop {
                    if let Ok((stream, _)) = l.accept().await {
                        connection(stream, handle.clone());
                    }
                },
                Err(e) => warn!("{name} cannot start: {e}"),
            },
        }
    })
}

/// Serves one connection on a task of its own.
fn connection<S, H, F, E>(stream: S, handle: H)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(handle);
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_forms() {
        assert_eq!(parse_addr(":9090").unwrap(), "0.0.0.0:9090".parse().unwrap());
        assert_eq!(parse_addr("127.0.0.1:9091").unwrap(), "127.0.0.1:9091".parse().unwrap());
        assert!(parse_addr("localhost:9092").unwrap().ip().is_loopback());
        assert!(format!("{:#}", parse_addr("9090").unwrap_err()).contains("HOST:PORT"));
        assert!(format!("{:#}", parse_addr("host:").unwrap_err()).contains("port"));
    }
}

//! The control socket (`socket: {enabled: true, path, permissions}`): HTTP/1.1
//! over a Unix socket, with Litestream's routes for what Sluice supports:
//!
//! - `GET /info` → `{version, pid, uptime_seconds, started_at, database_count}`
//! - `GET /list` → `{databases: [{path, status, last_sync_at}]}`
//! - `GET /txid?path=DB` → `{txid}`
//! - `POST /sync {path, wait, timeout}` → `{status, path, txid, replicated_txid}`:
//!   capture now, and with `wait` upload now too, whatever `sync-interval` says.
//!
//! - `POST /register {path, replica_url}` → `{status, path}`: replicate another
//!   database (default settings) until `unregister` or shutdown.
//! - `POST /unregister {path, timeout}` → `{status, path}`, after its final sync.
//! - `POST /stop {path, timeout}` / `POST /start {path, timeout}`: stop a database
//!   (after its final sync) but keep it listed as stopped; start it again.
//!
//! Errors are `{error, details}` with a 4xx/5xx status. The socket file is created
//! with `permissions` (default 0600), so only its owner can drive the daemon.
//! `sluice info`, `list`, `sync`, `register`, `unregister`, `start` and `stop` are
//! the clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use crate::daemon::{Control, Endpoints, SpecFromUrl, ToCapture};

pub const DEFAULT_PATH: &str = "/var/run/litestream.sock";

#[derive(Clone, Debug)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub permissions: u32,
}

struct State {
    dbs: Endpoints,
    requests: std::sync::Mutex<std::sync::mpsc::Sender<Control>>,
    spec_from_url: SpecFromUrl,
}

/// Binds the socket (replacing a stale socket file) and serves it from a thread.
pub fn serve(
    cfg: SocketConfig,
    dbs: Endpoints,
    requests: std::sync::mpsc::Sender<Control>,
    spec_from_url: SpecFromUrl,
) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(&cfg.path) {
        if !m.file_type().is_socket() {
            bail!("socket path {} exists and is not a socket; choose another socket.path", cfg.path.display());
        }
        std::fs::remove_file(&cfg.path).with_context(|| format!("cannot replace {}", cfg.path.display()))?;
    }
    // Made in a private directory beside it, given its mode, then renamed into
    // place: nobody can connect in the instant before the mode is set.
    let parent = cfg.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = parent.join(format!(".sluice-socket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| anyhow!("cannot create control socket {}: {e}; check socket.path", cfg.path.display()))?;
    let made = staging.join("sock");
    let bound = std::os::unix::net::UnixListener::bind(&made)
        .and_then(|l| std::fs::set_permissions(&made, std::fs::Permissions::from_mode(cfg.permissions)).map(|_| l))
        .and_then(|l| std::fs::rename(&made, &cfg.path).map(|_| l));
    let _ = std::fs::remove_dir_all(&staging);
    let listener =
        bound.map_err(|e| anyhow!("cannot create control socket {}: {e}; check socket.path", cfg.path.display()))?;
    let state = std::sync::Arc::new(State { dbs, requests: std::sync::Mutex::new(requests), spec_from_url });
    let listener = crate::background::Listener::Unix(listener);
    crate::background::serve_http("control", listener, move |req| handle(state.clone(), req))?;
    info!(path = %cfg.path.display(), "control socket listening");
    Ok(())
}

fn reply(status: StatusCode, body: Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    Ok(r)
}

fn error(status: StatusCode, error: &str, details: impl Into<String>) -> Answer {
    reply(status, json!({"error": error, "details": details.into()}))
}

async fn handle(state: std::sync::Arc<State>, req: Request<hyper::body::Incoming>) -> Answer {
    let (method, path, query) =
        (req.method().clone(), req.uri().path().to_string(), req.uri().query().map(str::to_string));
    let find = |p: &str| state.dbs.lock().unwrap().iter().find(|(d, _)| d == Path::new(p)).cloned();
    match (method, path.as_str()) {
        (Method::GET, "/info") => {
            let mut info = crate::daemon::process_info();
            info.insert("database_count".into(), state.dbs.lock().unwrap().len().into());
            reply(StatusCode::OK, Value::Object(info))
        }
        (Method::GET, "/list") => {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = state.requests.lock().unwrap().send(Control::Stopped { reply: tx });
            let stopped = answer(rx, Duration::from_secs(5)).await.unwrap_or_default();
            let mut dbs: Vec<Value> = state
                .dbs
                .lock()
                .unwrap()
                .iter()
                .map(|(p, _)| {
                    let at = crate::health::last_sync(p);
                    json!({"path": p.display().to_string(), "status": "replicating",
                           "last_sync_at": at.map(|t| t.to_rfc3339()),
                           "replicas": crate::health::replicas(p)})
                })
                .collect();
            dbs.extend(stopped.iter().map(|p| json!({"path": p.display().to_string(), "status": "stopped"})));
            reply(StatusCode::OK, json!({ "databases": dbs }))
        }
        (Method::GET, "/txid") => {
            let want = query.as_deref().and_then(|q| query_value(q, "path")).unwrap_or_default();
            match find(&want) {
                Some((p, _)) => reply(StatusCode::OK, json!({"txid": crate::metrics::metrics().txid_of(&p)})),
                None => error(StatusCode::NOT_FOUND, "database not found", format!("{want} is not replicated here")),
            }
        }
        (Method::POST, "/sync") => {
            let v = match read_json(req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(path) = v["path"].as_str() else {
                return error(StatusCode::BAD_REQUEST, "path required", "give the database path");
            };
            let Some((p, tx)) = find(path) else {
                return error(StatusCode::NOT_FOUND, "database not found", format!("{path} is not replicated here"));
            };
            let wait = v["wait"].as_bool().unwrap_or(false);
            let timeout = Duration::from_secs(v["timeout"].as_u64().unwrap_or(30).max(1));
            let (reply_tx, reply_rx) = std::sync::mpsc::channel();
            if tx.send(ToCapture::Sync { wait, reply: reply_tx }).is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "database stopped", "replication of it has ended");
            }
            match answer(reply_rx, timeout).await {
                Some(Ok((txid, replicated))) => reply(
                    StatusCode::OK,
                    json!({"status": "synced", "path": p.display().to_string(),
                           "txid": txid, "replicated_txid": replicated}),
                ),
                Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "sync failed", e),
                _ => error(StatusCode::GATEWAY_TIMEOUT, "sync timed out", format!("no answer within {timeout:?}")),
            }
        }
        (Method::POST, route @ ("/register" | "/unregister" | "/start" | "/stop")) => {
            let v = match read_json(req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(path) = v["path"].as_str().map(str::to_string) else {
                return error(StatusCode::BAD_REQUEST, "path required", "give the database path");
            };
            let timeout = Duration::from_secs(v["timeout"].as_u64().unwrap_or(30).max(1));
            let (reply_tx, reply_rx) = std::sync::mpsc::channel();
            let request = if route == "/register" {
                let Some(url) = v["replica_url"].as_str() else {
                    return error(StatusCode::BAD_REQUEST, "replica_url required", "give the replica URL");
                };
                match (state.spec_from_url)(&path, url) {
                    Ok(spec) => Control::Register { spec: Box::new(spec), url: url.to_string(), reply: reply_tx },
                    Err(e) => return error(StatusCode::BAD_REQUEST, "invalid database or replica", format!("{e:#}")),
                }
            } else {
                let p = crate::fsutil::clean_db_path(&path).unwrap_or_default();
                match route {
                    "/unregister" => Control::Unregister { path: p, reply: reply_tx },
                    "/stop" => Control::Stop { path: p, reply: reply_tx },
                    _ => Control::Start { path: p, reply: reply_tx },
                }
            };
            if state.requests.lock().unwrap().send(request).is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down", "the daemon is stopping");
            }
            match answer(reply_rx, timeout).await {
                Some(Ok(())) => reply(StatusCode::OK, json!({"status": route.trim_start_matches('/'), "path": path})),
                Some(Err(e)) => error(StatusCode::CONFLICT, "refused", e),
                _ => error(StatusCode::GATEWAY_TIMEOUT, "timed out", format!("no answer within {timeout:?}")),
            }
        }

        _ => error(StatusCode::NOT_FOUND, "not found", format!("no route {path}")),
    }
}

type Answer = Result<Response<Full<Bytes>>, std::convert::Infallible>;

/// Waits (off the async thread) for the daemon's answer to a request; none if it
/// does not come within `timeout`.
async fn answer<T: Send + 'static>(rx: std::sync::mpsc::Receiver<T>, timeout: Duration) -> Option<T> {
    tokio::task::spawn_blocking(move || rx.recv_timeout(timeout).ok()).await.ok().flatten()
}

/// The request's JSON body, or the error answer to send.
async fn read_json(req: Request<hyper::body::Incoming>) -> Result<Value, Answer> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "cannot read request", format!("{e} (at most 1 MiB)")));
        }
    };
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, "invalid JSON", e.to_string()))
}

/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// The first value of `key` in a query string, decoded (`+` and `%XX`).
pub fn query_value(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// A request to the control socket at `socket`; returns the JSON answer, or the
/// server's `{error, details}` as an error.
pub fn request(socket: &Path, method: &str, route: &str, body: Option<Value>, timeout: Duration) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            anyhow!(
                "cannot connect to the control socket {}: {e}; is `sluice replicate` running with socket.enabled: true?",
                socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(route)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
        let resp = tokio::time::timeout(timeout, sender.send_request(req))
            .await
            .map_err(|_| anyhow!("no answer from {} within {timeout:?}", socket.display()))??;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{}: {}",
                v["error"].as_str().unwrap_or(status.as_str()),
                v["details"].as_str().unwrap_or("")
            );
        }
        Ok(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(query_value("path=%2Fdata%2Fa.db", "path").as_deref(), Some("/data/a.db"));
        assert_eq!(query_value("x=1&path=a%zz", "path").as_deref(), Some("a%zz"));
        // Non-ASCII, raw or encoded, and a lone % at the end: decoded, never a panic.
        assert_eq!(query_value("path=%C3%A9t%C3%A9.db", "path").as_deref(), Some("été.db"));
        assert_eq!(query_value("path=é%", "path").as_deref(), Some("é%"));
        assert_eq!(query_value("path=%é", "path").as_deref(), Some("%é"));
        assert_eq!(query_value("other=1", "path"), None);
    }

    #[test]
    fn unknown_routes_and_missing_databases_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let (tx, _rx) = std::sync::mpsc::channel();
        let spec_from_url: SpecFromUrl = std::sync::Arc::new(|_: &str, _: &str| anyhow::bail!("not in this test"));
        serve(SocketConfig { path: sock.clone(), permissions: 0o600 }, Default::default(), tx, spec_from_url).unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(request(&sock, "GET", "/info", None, t).unwrap()["database_count"], 0);
        let e = request(&sock, "POST", "/sync", Some(json!({"path": "/nope.db"})), t).unwrap_err();
        assert!(format!("{e:#}").contains("database not found"), "{e:#}");
        let e = request(&sock, "POST", "/register", Some(json!({})), t).unwrap_err();
        assert!(format!("{e:#}").contains("path required"), "{e:#}");
        let e = request(&sock, "POST", "/start", Some(json!({})), t).unwrap_err();
        assert!(format!("{e:#}").contains("path required"), "{e:#}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
